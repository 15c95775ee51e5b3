"""Training data: synthesis, augmentation, resumable sampling, NIfTI folders/CSVs, config."""
from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage
from scipy.stats import spearmanr

from transreg.training.config import ConfigError, DataConfig, TrainConfig, load_config, parse_set
from transreg.data import (
    DataError,
    LabelMapPairs,
    PairDataset,
    ShapesPairs,
    StepBatchSampler,
    augment_pair,
    build_datasets,
    random_affine,
)
from transreg.data.nifti import find_subjects, load_subjects, read_csv
from transreg.data.synth import gaussian_blur, random_deformation, random_shapes, synthesize_image
from transreg.spatial import jacobian_determinant, warp


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- synthesis


def test_gaussian_blur_matches_scipy_inside():
    x = torch.rand(1, 1, 24, 20, 18, generator=gen())
    ours = gaussian_blur(x, 1.3)[0, 0].numpy()
    ref = ndimage.gaussian_filter(x[0, 0].numpy().astype(np.float64), 1.3, mode="constant", truncate=3.0)
    inner = (slice(5, -5),) * 3
    # scipy's radius is int(3σ + 0.5) = 4, ours ceil(3σ) = 4: identical kernels inside
    assert np.allclose(ours[inner], ref[inner], atol=1e-5)
    flat = gaussian_blur(torch.full((1, 2, 10, 12), 3.0), 2.0)
    assert torch.allclose(flat, torch.full_like(flat, 3.0), atol=1e-5)  # renormalised borders


def test_random_shapes_and_deformation():
    labels = random_shapes((40, 36), 6, gen())
    assert labels.shape == (1, 1, 40, 36) and labels.dtype == torch.int64
    assert set(labels.unique().tolist()) <= set(range(6)) and len(labels.unique()) >= 3
    flow = random_deformation((24, 24, 24), gen(1), max_std=3.0)
    assert flow.shape == (1, 3, 24, 24, 24) and flow.abs().max() > 0.1
    assert jacobian_determinant(flow).min() > 0  # scaling and squaring: no folding


def test_synthesize_image_follows_labels():
    labels = torch.zeros(1, 1, 32, 32, dtype=torch.long)
    labels[..., 8:24, 8:24] = 1
    image = synthesize_image(labels, 2, gen(3), std_range=(0.0, 0.0), max_blur=0.0, max_bias=0.0, gamma_std=0.0)
    assert image.min() == 0 and image.max() == 1
    assert torch.unique(image).numel() == 2  # one intensity per label
    same = synthesize_image(labels, 2, gen(3), std_range=(0.0, 0.0), max_blur=0.0, max_bias=0.0, gamma_std=0.0)
    assert torch.equal(image, same)
    # given means: the label with the larger mean is the brighter one
    fixed = synthesize_image(labels, 2, gen(9), std_range=(0.0, 0.0), max_blur=0.0, max_bias=0.0, gamma_std=0.0,
                             means=torch.tensor([0.8, 0.2]))
    assert float(fixed[labels == 0].mean()) == 1.0 and float(fixed[labels == 1].mean()) == 0.0


@pytest.mark.parametrize("size", [(48, 40), (24, 24, 24)])
def test_shapes_pairs(size):
    ds = ShapesPairs(size, num_labels=5, seed=4)
    a, b = ds[3], ds[3]
    assert all(torch.equal(a[k], b[k]) for k in a)  # a pure function of (seed, key)
    assert not torch.equal(ds[4]["moving"], a["moving"])
    for role in ("moving", "fixed"):
        assert a[role].shape == (1, *size) and a[role].dtype == torch.float32
        assert 0 <= float(a[role].min()) and float(a[role].max()) <= 1
        assert a[f"{role}_labels"].shape == (1, *size) and int(a[f"{role}_labels"].max()) < 5
    # the two label maps are one map under two different warps: overlapping, not equal
    overlap = (a["moving_labels"] == a["fixed_labels"]).float().mean()
    assert 0.3 < overlap < 1.0

    def label_order_agreement(shared: bool) -> float:
        """Mean Spearman correlation of per-label mean intensities, moving vs fixed."""
        ds = ShapesPairs(size, num_labels=5, seed=4, shared_contrast=shared)
        rhos = []
        for k in range(6):
            it = ds[k]
            present = [lab for lab in range(5) if (it["moving_labels"] == lab).any() and (it["fixed_labels"] == lab).any()]
            m = [float(it["moving"][it["moving_labels"] == lab].mean()) for lab in present]
            f = [float(it["fixed"][it["fixed_labels"] == lab].mean()) for lab in present]
            rhos.append(spearmanr(m, f).correlation)
        return float(np.mean(rhos))

    # shared contrast keeps the intensity order of the labels (bias, gamma, noise aside);
    # independent contrasts do not
    if len(size) == 2:
        assert label_order_agreement(True) > 0.8
        assert label_order_agreement(False) < 0.5


def _label_volume(seed: int, shape=(30, 34, 28), values=(0, 2, 4, 41)) -> np.ndarray:
    noise = ndimage.gaussian_filter(np.random.default_rng(seed).random((len(values) - 1, *shape)), (0, 3, 3, 3))
    lab = np.asarray(values[1:])[noise.argmax(0)]
    out = np.zeros((shape[0] + 10, shape[1] + 6, shape[2] + 4), np.int32)  # background margin
    out[5:-5, 3:-3, 2:-2] = lab
    return out


@pytest.mark.parametrize("size", [(24, 24, 24), (32, 32)])
def test_label_map_pairs(tmp_path, size):
    for i in range(3):
        nib.save(nib.Nifti1Image(_label_volume(i), np.eye(4)), tmp_path / f"m{i}.nii.gz")
    ds = LabelMapPairs(tmp_path, size, seed=1)
    assert ds.num_labels == 4 and ds.label_values.tolist() == [0, 2, 4, 41]
    item = ds[5]
    assert item["moving"].shape == (1, *size) and item["fixed_labels"].shape == (1, *size)
    assert set(item["fixed_labels"].unique().tolist()) <= {0, 1, 2, 3}
    # cropped to the foreground: the margin is gone, labels fill the grid
    assert (item["fixed_labels"] > 0).float().mean() > 0.6


def test_label_map_pairs_errors(tmp_path):
    with pytest.raises(DataError, match="no NIfTI label maps"):
        LabelMapPairs(tmp_path, (16, 16))
    nib.save(nib.Nifti1Image(np.random.rand(8, 8, 8).astype(np.float32), np.eye(4)), tmp_path / "x.nii.gz")
    with pytest.raises(DataError, match="non-integer"):
        LabelMapPairs(tmp_path, (16, 16))


# --------------------------------------------------------------------------- augmentation


def test_random_affine_is_the_drawn_affine():
    shape = (20, 24, 18)
    flow = random_affine(shape, gen(2), degrees=10, scale=0.1, shift=2)
    grid = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in shape], indexing="ij"))
    src = (grid + flow[0]).reshape(3, -1).T.double()
    pts = grid.reshape(3, -1).T.double()
    design = torch.cat([pts, torch.ones(len(pts), 1, dtype=torch.float64)], 1)
    fit = torch.linalg.lstsq(design, src).solution.T  # (3, 4): src = A x + t
    assert (design @ fit.T - src).abs().max() < 1e-3  # exactly affine
    a = fit[:, :3]
    sv = torch.linalg.svdvals(a)
    assert sv.min() > 0.9 - 1e-4 and sv.max() < 1.1 + 1e-4  # scale within ±10 %
    rot = a / torch.linalg.det(a).abs() ** (1 / 3)
    angle = math.degrees(math.acos(max(-1.0, min(1.0, (float(torch.trace(rot)) - 1) / 2))))
    assert angle < 10 * math.sqrt(3) + 1
    centre = (torch.tensor(shape, dtype=torch.float64) - 1) / 2
    assert ((a @ centre + fit[:, 3]) - centre).abs().max() <= 2 + 1e-3  # shift ≤ 2 voxels at the centre


def test_augment_pair_flips_all_and_warps_moving():
    item = ShapesPairs((32, 32), seed=0)[0]
    g = gen(0)
    flipped = augment_pair(item, g, flip=True)
    g = gen(0)
    axes = [1 + a for a in range(2) if float(torch.rand((), generator=g)) < 0.5]
    assert axes  # this seed flips at least one axis
    for k in item:
        assert torch.equal(flipped[k], item[k].flip(axes))
    moved = augment_pair(item, gen(5), affine_degrees=5, affine_shift=1)
    assert torch.equal(moved["fixed"], item["fixed"]) and torch.equal(moved["fixed_labels"], item["fixed_labels"])
    flow = random_affine((32, 32), gen(5), 5, 0.0, 1)
    assert torch.allclose(moved["moving"], warp(item["moving"][None], flow)[0])
    assert torch.equal(moved["moving_labels"], warp(item["moving_labels"][None], flow, mode="nearest")[0])


# --------------------------------------------------------------------------- sampler


def test_step_batch_sampler_resumes_and_splits_ranks():
    def take(sampler, n):
        it = iter(sampler)
        return [next(it) for _ in range(n)]

    full = take(StepBatchSampler(10, 3, seed=1), 9)  # 3 batches per epoch, 3 epochs
    assert take(StepBatchSampler(10, 3, seed=1, start_batch=4), 5) == full[4:]
    epoch0 = [k for b in full[:3] for k in b]
    assert len(set(epoch0)) == 9 and all(0 <= k < 10 for k in epoch0)
    assert all(10 <= k < 20 for b in full[3:6] for k in b)  # keys carry the epoch
    assert [k % 10 for b in full[:3] for k in b] != [k % 10 for b in full[3:6] for k in b]
    r0 = [k for b in take(StepBatchSampler(10, 2, world_size=2, rank=0), 2) for k in b]
    r1 = [k for b in take(StepBatchSampler(10, 2, world_size=2, rank=1), 2) for k in b]
    assert not set(r0) & set(r1)
    with pytest.raises(ValueError, match="cannot fill one batch"):
        StepBatchSampler(3, 2, world_size=2)


# --------------------------------------------------------------------------- NIfTI data


def _save(path, data, affine=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0]) if affine is None else affine), path)


def _subject_arrays(i: int, shape=(20, 22, 18)):
    labels = _label_volume(i, shape=(shape[0] - 10, shape[1] - 6, shape[2] - 4), values=(0, 3, 7))
    image = (labels * 10.0 + np.random.default_rng(i).normal(0, 1, labels.shape)).astype(np.float32)
    return image, labels.astype(np.int16)


def test_folder_layouts_and_csv(tmp_path):
    for i in range(3):
        image, labels = _subject_arrays(i)
        _save(tmp_path / "a" / "images" / f"s{i}.nii.gz", image)
        _save(tmp_path / "a" / "labels" / f"s{i}.nii.gz", labels)
        _save(tmp_path / "b" / f"s{i}.nii.gz", image)
        _save(tmp_path / "b" / f"s{i}_seg.nii.gz", labels)
    sa, sb = find_subjects(tmp_path / "a"), find_subjects(tmp_path / "b")
    assert [s.image.name for s in sa] == [s.image.name for s in sb] == ["s0.nii.gz", "s1.nii.gz", "s2.nii.gz"]
    assert [s.labels.name for s in sb] == ["s0_seg.nii.gz", "s1_seg.nii.gz", "s2_seg.nii.gz"]
    (tmp_path / "list.csv").write_text("image,labels\n" + "".join(f"b/s{i}.nii.gz,b/s{i}_seg.nii.gz\n" for i in range(3)))
    subjects, pairs = read_csv(tmp_path / "list.csv")
    assert pairs is None and [s.image for s in subjects] == [s.image for s in sb]
    (tmp_path / "pairs.csv").write_text("moving,fixed\nb/s0.nii.gz,b/s1.nii.gz\nb/s2.nii.gz,b/s1.nii.gz\n")
    subjects, pairs = read_csv(tmp_path / "pairs.csv")
    assert len(subjects) == 3 and [(m.image.name, f.image.name) for m, f in pairs] == [
        ("s0.nii.gz", "s1.nii.gz"), ("s2.nii.gz", "s1.nii.gz")]
    (tmp_path / "bad.csv").write_text("path\nx\n")
    with pytest.raises(DataError, match="needs columns"):
        read_csv(tmp_path / "bad.csv")


def test_loading_preprocesses_onto_the_model_grid(tmp_path):
    image, labels = _subject_arrays(0)
    _save(tmp_path / "s0.nii.gz", image)
    _save(tmp_path / "s0_seg.nii.gz", labels)
    [item] = load_subjects(find_subjects(tmp_path), spacing=None, size=(16, 16, 16))
    assert item["image"].shape == (1, 16, 16, 16) and item["labels"].shape == (1, 16, 16, 16)
    assert float(item["image"].min()) >= 0 and float(item["image"].max()) <= 1
    # centre crop: voxel (2, 3, 1) of the crop is voxel (4, 6, 2) of the file (offsets (20-16)//2 ...)
    assert int(item["labels"][0, 2, 3, 1]) == int(labels[4, 6, 2])
    [coarse] = load_subjects(find_subjects(tmp_path), spacing=[4.0, 4.0, 4.0], size=None)
    assert coarse["image"].shape == (1, 10, 11, 9)  # 2 mm → 4 mm


def test_pair_dataset_random_and_atlas(tmp_path):
    items = [{"image": torch.full((1, 8, 8), float(i)), "labels": torch.full((1, 8, 8), 10 * i)} for i in range(4)]
    ds = PairDataset(items, seed=3)
    assert ds.num_labels == 4 and ds.label_values == [0, 10, 20, 30]
    for key in range(12):
        pair = ds[key]
        m, f = int(pair["moving"][0, 0, 0]), int(pair["fixed"][0, 0, 0])
        assert f == key % 4 and m != f
        assert int(pair["moving_labels"][0, 0, 0]) == m  # relabelled 10·i → i
    atlas = {"image": torch.full((1, 8, 8), 9.0)}
    ds = PairDataset(items, atlas=atlas)
    assert all(float(ds[k]["moving"][0, 0, 0]) == 9.0 for k in range(4))
    assert "moving_labels" not in ds[0]  # the atlas has no labels
    with pytest.raises(DataError, match="at least 2"):
        PairDataset(items[:1])


def test_random_pairs_stay_within_their_group(tmp_path):
    groups = ["a", "a", "b", "b", "b"]
    for i in range(5):
        image, labels = _subject_arrays(i)
        _save(tmp_path / f"s{i}.nii.gz", image)
        _save(tmp_path / f"s{i}_seg.nii.gz", labels)
    (tmp_path / "list.csv").write_text("image,labels,group\n" + "".join(
        f"s{i}.nii.gz,s{i}_seg.nii.gz,{g}\n" for i, g in enumerate(groups)))
    subjects, _ = read_csv(tmp_path / "list.csv")
    assert [s.group for s in subjects] == groups
    train, _ = build_datasets(DataConfig(train=str(tmp_path / "list.csv"), size=[16, 16, 16]))
    subject_of = {round(float(it["image"].sum()), 3): i for i, it in enumerate(train.items)}
    assert len(subject_of) == 5  # every subject's image is told apart by its sum
    seen = set()
    for key in range(60):
        pair = train[key]
        m, f = (subject_of[round(float(pair[k].sum()), 3)] for k in ("moving", "fixed"))
        assert m != f and groups[m] == groups[f] and f == key % 5
        seen.add((m, f))
    assert seen == {(m, f) for m in range(5) for f in range(5) if m != f and groups[m] == groups[f]}
    with pytest.raises(DataError, match="group\\(s\\) c hold a single subject"):
        PairDataset(train.items[:3], groups=["a", "a", "c"])


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda d: d.mkdir(), "no NIfTI images"),
        (lambda d: (d.mkdir(), (d / "a.nii").write_text("garbage")), "not a readable NIfTI"),
        (lambda d: (_save(d / "images" / "a.nii.gz", _subject_arrays(0)[0]),
                    _save(d / "labels" / "a.nii.gz", np.zeros((5, 5, 5), np.int16))), "does not match its image"),
        (lambda d: (_save(d / "a.nii.gz", _subject_arrays(0)[0]),
                    _save(d / "a_seg.nii.gz", np.random.rand(*_subject_arrays(0)[0].shape).astype(np.float32))),
         "non-integer"),
        (lambda d: (_save(d / "a.nii.gz", _subject_arrays(0)[0]), _save(d / "a_seg.nii.gz", _subject_arrays(0)[1]),
                    _save(d / "b.nii.gz", _subject_arrays(1)[0])), "some images have label maps"),
    ],
    ids=["empty", "unreadable", "label-shape", "label-values", "labels-partial"],
)
def test_bad_data_errors(tmp_path, setup, message):
    setup(tmp_path / "d")
    cfg = DataConfig(train=str(tmp_path / "d"), size=[16, 16, 16])
    with pytest.raises(DataError, match=message):
        build_datasets(cfg)


def test_build_datasets_specs(tmp_path):
    train, val = build_datasets(DataConfig(train="synthetic:shapes", size=[32, 32], val_pairs=3), seed=5)
    assert isinstance(train, ShapesPairs) and len(val) == 3 and val.seed != train.seed
    with pytest.raises(DataError, match="needs data.size"):
        build_datasets(DataConfig(train="synthetic:shapes"))
    with pytest.raises(DataError, match="unknown synthetic"):
        build_datasets(DataConfig(train="synthetic:blobs", size=[8, 8]))
    with pytest.raises(DataError, match="does not exist"):
        build_datasets(DataConfig(train=str(tmp_path / "missing")))
    for i in range(5):
        image, labels = _subject_arrays(i)
        _save(tmp_path / "d" / f"s{i}.nii.gz", image)
        _save(tmp_path / "d" / f"s{i}_seg.nii.gz", labels)
    train, val = build_datasets(DataConfig(train=str(tmp_path / "d"), size=[16, 16, 16], val_split=0.4, flip=True))
    assert len(train) == 3 and len(val) == 2 and train.ndim == 3 and train.num_labels == val.num_labels == 3
    assert train.label_values == val.label_values == [0, 3, 7]  # one numbering for both
    train_images = {float(it["image"].sum()) for it in train.items}
    assert not train_images & {float(it["image"].sum()) for it in val.items}  # held-out subjects
    atlas_cfg = DataConfig(train=str(tmp_path / "d"), size=[16, 16, 16], pairing="atlas",
                           atlas=str(tmp_path / "d" / "s0.nii.gz"), atlas_labels=str(tmp_path / "d" / "s0_seg.nii.gz"))
    train, val = build_datasets(atlas_cfg)
    assert val is None and len(train) == 5
    atlas = train.atlas["image"]
    assert all(torch.equal(train[k]["moving"], atlas) for k in range(5))
    assert [float(train[k]["fixed"].sum()) for k in range(5)] == [float(it["image"].sum()) for it in train.items]
    with pytest.raises(ConfigError, match="needs data.atlas"):
        TrainConfig.from_dict({"data": {"pairing": "atlas"}})


# --------------------------------------------------------------------------- config


def test_config_errors_and_overrides(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) 'lerning_rate' in section 'optim'"):
        TrainConfig.from_dict({"optim": {"lerning_rate": 1}})
    with pytest.raises(ConfigError, match="unknown config key"):
        TrainConfig.from_dict({"optimizer": {}})
    with pytest.raises(ConfigError, match="'run.steps' must be an integer"):
        TrainConfig.from_dict({"run": {"steps": "many"}})
    recipe = tmp_path / "r.yaml"
    recipe.write_text("optim:\n  lr: 1e-4\n  schedule: cosine\nrun:\n  precision: 32\n")
    cfg = load_config(recipe, parse_set(["optim.lr=3e-4", "data.size=[64, 64]", "run.precision=bf16-mixed"]))
    assert cfg.optim.lr == pytest.approx(3e-4) and cfg.optim.schedule == "cosine"
    assert cfg.data.size == [64, 64] and cfg.run.precision == "bf16-mixed"
    assert load_config(recipe).run.precision == "32"
    with pytest.raises(ConfigError, match="section.key"):
        cfg.with_overrides({"lr": 1.0})
    with pytest.raises(ConfigError, match="key=value"):
        parse_set(["optim.lr"])


def test_validation_labels_must_match_training_labels(tmp_path):
    for i in range(2):
        image, labels = _subject_arrays(i)
        _save(tmp_path / "train" / f"s{i}.nii.gz", image)
        _save(tmp_path / "train" / f"s{i}_seg.nii.gz", labels)
        _save(tmp_path / "val" / f"s{i}.nii.gz", image)
        _save(tmp_path / "val" / f"s{i}_seg.nii.gz", (labels * 2).astype(np.int16))
    cfg = DataConfig(train=str(tmp_path / "train"), val=str(tmp_path / "val"), size=[16, 16, 16])
    with pytest.raises(DataError, match=r"validation label maps hold the labels \[0, 6, 14\]"):
        build_datasets(cfg)
