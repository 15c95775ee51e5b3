"""Contrast-agnostic brain pairs (transreg.data.brain_synth): determinism, labels and
images warped together, contrasts, the generation tables, validation pairs, errors."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from transreg.training.config import DataConfig
from transreg.data import DataError, SynthBrainPairs, T1MeanPairs, build_datasets
from transreg.data.brain_maps import brain_envelope
from transreg.data.brain_synth import SynthSettings
from transreg.data.generation import load_generation_table

SHAPE = (20, 24, 20)
# a small generation table: labels 0, 2, 3, 41 (41 shares 2's fine class); 4 has no class
GEN_LABELS = [0, 2, 3, 41]
GEN_FINE = [0, 1, 2, 1]
GEN_T1 = [0, 1, 2, 1]
T1_MEANS = np.array([[10.0, 200.0, 100.0], [1.0, 1.0, 1.0]])
QUIET = SynthSettings(std_range=(0.0, 0.0), max_blur=0.0, max_bias=0.0, gamma_std=0.0)


def _aseg_map(seed: int) -> np.ndarray:
    """Blocks of labels 2, 3, 41, 4 at random offsets inside a background margin."""
    rng = np.random.default_rng(seed)
    out = np.zeros(SHAPE, np.int16)
    cut = [int(c) for c in rng.integers(8, 13, size=3)]
    out[3:cut[0], 3:-3, 3:-3] = 2
    out[cut[0]:-3, 3:cut[1], 3:-3] = 3
    out[cut[0]:-3, cut[1]:-3, 3:cut[2]] = 41
    out[cut[0]:-3, cut[1]:-3, cut[2]:-3] = 4
    return out


def _hcp_map(seed: int) -> np.ndarray:
    """A shell of label 101 around a hollow (enclosed background) and a block of 102."""
    out = np.zeros(SHAPE, np.int16)
    out[3:-3, 3:-3, 3:-3] = 101
    out[7:-7, 8:-8, 7:-7] = 0  # the hollow: inside the brain envelope
    out[4:6, 4 + seed:10 + seed, 4:8] = 102
    return out


def _write(folder, name, labels):
    path = folder / name / "labels.nii.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(labels, np.eye(4)), path)
    nib.save(nib.Nifti1Image((labels > 0).astype(np.uint8) * 100, np.eye(4)), path.parent / "image.nii.gz")
    return f"{name}/image.nii.gz,{name}/labels.nii.gz"


@pytest.fixture
def data(tmp_path):
    """train.csv: 3 aseg subjects + 2 'hcp' subjects; val.csv: 2 aseg subjects without label 4."""
    np.save(tmp_path / "generation_labels.npy", np.array(GEN_LABELS))
    np.save(tmp_path / "generation_classes.npy", np.array(GEN_FINE))
    np.save(tmp_path / "generation_classes_contrast_specific.npy", np.array(GEN_T1))
    np.save(tmp_path / "prior_means_t1.npy", T1_MEANS)
    (tmp_path / "generation_aliases.json").write_text(json.dumps({"101": 2, "102": 3, "mask": 3, "mask_groups": ["hcp"]}))
    rows = [_write(tmp_path, f"a{i}", _aseg_map(i)) + ",aseg" for i in range(3)]
    rows += [_write(tmp_path, f"h{i}", _hcp_map(i)) + ",hcp" for i in range(2)]
    (tmp_path / "train.csv").write_text("image,labels,group\n" + "\n".join(rows) + "\n")
    val = []
    for i in range(2):
        lab = _aseg_map(10 + i)
        lab[lab == 4] = 3
        val.append(_write(tmp_path, f"v{i}", lab) + ",aseg")
    (tmp_path / "val.csv").write_text("image,labels,group\n" + "\n".join(val) + "\n")
    return tmp_path


def _label_means(image: torch.Tensor, labels: torch.Tensor) -> dict[int, tuple[float, float]]:
    """Per label present: (mean, std) of the image inside it."""
    out = {}
    for v in labels.unique().tolist():
        x = image[labels == v]
        out[v] = (float(x.mean()), float(x.std()) if x.numel() > 1 else 0.0)
    return out


def test_generation_table_classes_aliases_and_extra_labels(data):
    table = load_generation_table(data)
    ds = SynthBrainPairs(data / "train.csv", SHAPE, seed=0)
    assert ds.label_values.tolist() == [0, 2, 3, 4, 41, 101, 102]
    # fine classes: 0→0, 2→1, 3→2, 4→own class 3, 41→1 (as 2), 101→1 (alias of 2), 102→2 (alias of 3);
    # the mask id (7) → 3's class 2
    assert ds.lut.tolist() == [0, 1, 2, 3, 1, 1, 2, 2] and ds.num_classes == 4
    lut, n = table.lut(np.array([0, 4, 3]), "t1")
    assert lut.tolist() == [0, 3, 2] and n == 4


def test_brain_envelope_marks_the_hollow_of_hcp_maps_only(data):
    ds = SynthBrainPairs(data / "train.csv", SHAPE, seed=0)
    mask_id = ds.maps.mask_id
    hcp = ds.maps.maps[3][0, 0]
    assert (hcp[7:-7, 8:-8, 7:-7] == mask_id).all()  # the enclosed hole
    assert (hcp[0] == 0).all() and (hcp[:, :, -1] == 0).all()  # outside stays background
    assert all(not (m == mask_id).any() for m in ds.maps.maps[:3])  # aseg group: no mask rule
    env = brain_envelope(np.pad(np.ones((3, 3, 3)), 2), closing=1)
    assert env.sum() == 27


def test_items_are_seeded_and_pairs_stay_within_a_group(data):
    a = SynthBrainPairs(data / "train.csv", SHAPE, seed=3)
    b = SynthBrainPairs(data / "train.csv", SHAPE, seed=3)
    for k in (0, 7):
        x, y = a[k], b[k]
        assert all(torch.equal(x[key], y[key]) for key in x)
    assert not torch.equal(a[0]["moving"], a[1]["moving"])
    assert not torch.equal(a[0]["moving"], SynthBrainPairs(data / "train.csv", SHAPE, seed=4)[0]["moving"])
    hcp_values = {5, 6}
    for k in range(12):
        item = a[k]
        m, f = set(item["moving_labels"].unique().tolist()) - {0}, set(item["fixed_labels"].unique().tolist()) - {0}
        assert (m <= hcp_values) == (f <= hcp_values)  # same dataset
        assert item["moving"].shape == (1, *SHAPE) and item["moving"].dtype == torch.float32
        assert 0.0 <= float(item["moving"].min()) and float(item["moving"].max()) <= 1.0


def test_images_and_labels_are_warped_together(data):
    ds = SynthBrainPairs(data / "train.csv", SHAPE, seed=1, settings=QUIET)
    lut = ds.lut
    for k in range(6):
        item = ds[k]
        for role in ("moving", "fixed"):
            labels, image = item[f"{role}_labels"][0], item[role][0]
            # no noise, blur, bias, gamma: the image is constant on every label (one class each)
            assert all(std < 1e-5 for _, std in _label_means(image, labels).values())
        # the maps were deformed: not one of the stored maps
        assert not any(torch.equal(item["moving_labels"], m[0]) for m in ds.maps.maps)
    # labels of one fine class (2 and 41) share one intensity
    item = ds[0]
    means = _label_means(item["moving"][0], item["moving_labels"][0])
    if 1 in means and 4 in means:
        assert abs(means[1][0] - means[4][0]) < 1e-5
    assert lut[1] == lut[4]


def _mean_correlation(item) -> float:
    """Pearson correlation of the per-label mean intensity of moving and fixed."""
    mm, fm = _label_means(item["moving"][0], item["moving_labels"][0]), _label_means(item["fixed"][0], item["fixed_labels"][0])
    common = sorted(set(mm) & set(fm))
    return float(np.corrcoef([mm[v][0] for v in common], [fm[v][0] for v in common])[0, 1])


def test_contrast_is_shared_or_independent_as_asked(data):
    shared = SynthBrainPairs(data / "train.csv", SHAPE, seed=2,
                             settings=SynthSettings(**{**QUIET.__dict__, "p_independent": 0.0}))
    independent = SynthBrainPairs(data / "train.csv", SHAPE, seed=2,
                                  settings=SynthSettings(**{**QUIET.__dict__, "p_independent": 1.0}))
    keys = [k for k in range(20) if len(set(shared[k]["moving_labels"].unique().tolist())) >= 4][:6]
    assert len(keys) >= 3
    # min-max normalisation is affine: shared class means → correlation 1 exactly
    assert all(_mean_correlation(shared[k]) > 0.9999 for k in keys)
    assert all(_mean_correlation(independent[k]) < 0.99 for k in keys)


def test_t1_mean_validation_pairs(data):
    train = SynthBrainPairs(data / "train.csv", SHAPE)
    val = T1MeanPairs(data / "train.csv", SHAPE, label_values=train.label_values)
    assert len(val) == 3 * 2 + 2 * 1  # ordered pairs within each group
    item = val[0]
    inside = item["moving_labels"][0] == 1  # label 2: T1 class 1, prior mean 200
    assert abs(float(item["moving"][0][inside].median()) - 200 / 255) < 0.03
    assert torch.equal(val[0]["moving"], T1MeanPairs(data / "train.csv", SHAPE)[0]["moving"])
    assert torch.equal(item["moving_labels"][0], train.maps.maps[0][0, 0])  # no deformation


def test_build_datasets_specs_share_the_training_numbering(data):
    cfg = DataConfig(train=f"synthbrain:{data / 'train.csv'}", val=f"synthbrain-t1mean:{data / 'val.csv'}",
                     size=list(SHAPE))
    train, val = build_datasets(cfg, seed=0)
    assert isinstance(train, SynthBrainPairs) and isinstance(val, T1MeanPairs)
    assert val.label_values.tolist() == train.label_values.tolist()  # val lacks label 4, numbering kept
    assert val[0]["moving_labels"].max() <= train.num_labels - 1


def test_errors_name_the_file(data):
    csv = data / "train.csv"
    text = csv.read_text()
    (data / "missing.csv").write_text(text.replace("a1/labels.nii.gz", "gone/labels.nii.gz"))
    with pytest.raises(DataError, match="gone/labels.nii.gz.*does not exist"):
        SynthBrainPairs(data / "missing.csv", SHAPE)
    nib.save(nib.Nifti1Image(np.zeros(SHAPE, np.int16), np.eye(4)), data / "a2" / "labels.nii.gz")
    with pytest.raises(DataError, match="a2/labels.nii.gz.*empty"):
        SynthBrainPairs(csv, SHAPE)
    with pytest.raises(DataError, match="shape"):
        SynthBrainPairs(data / "val.csv", (16, 16, 16))
    (data / "prior_means_t1.npy").unlink()
    with pytest.raises(DataError, match="prior_means_t1.npy"):
        SynthBrainPairs(data / "val.csv", SHAPE)
    with pytest.raises(DataError, match="needs a CSV"):
        build_datasets(DataConfig(train="synthbrain:", size=list(SHAPE)))


def test_t1_pairs_use_the_t1_classes_and_priors(data):
    settings = SynthSettings(**{**QUIET.__dict__, "p_t1": 1.0})
    ds = SynthBrainPairs(data / "train.csv", SHAPE, seed=0, settings=settings)
    for k in range(4):
        item = ds[k]
        means = _label_means(item["moving"][0], item["moving_labels"][0])
        # T1 priors: label 2 (class 1, 200 ± 1) brighter than label 3 (class 2, 100 ± 1) brighter than background
        if 1 in means and 2 in means:
            assert means[1][0] > means[2][0] > means[0][0]
    cfg = DataConfig(train=f"synthbrain:{data / 'train.csv'}?p_t1=0.25&max_velocity=1", size=list(SHAPE))
    train, _ = build_datasets(cfg)
    assert train.settings.p_t1 == 0.25 and train.settings.max_velocity == 1.0
    with pytest.raises(DataError, match="unknown option 'bogus'"):
        build_datasets(DataConfig(train=f"synthbrain:{data / 'train.csv'}?bogus=1", size=list(SHAPE)))
