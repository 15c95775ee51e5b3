"""Test images made by a synthesis that no training draws from (zoo v2, issue 19).

Both zoo versions train on images synthesised *on the 2 mm grid* from nearest-neighbour
label maps (v1: T1 prior intensities per SynthSeg T1 class, `evaluate/build_data.py`; v2:
random intensities per fine class, `transreg/data/brain_synth.py`): every voxel is one
label's intensity, boundaries are one voxel sharp. Real 2 mm scans are not like that. This
script re-makes the images of the benchmark's test subjects (SynthSeg 10-12, the 4 HCP
test subjects) another way, on the same grids and with the same label maps:

1. at the original **1 mm** resolution of the label maps (not the 2 mm grid);
2. intensities per SynthSeg T1 class (``--contrast t1``: each class mean drawn once per
   subject from the T1 priors, like a T1 scan) or with the brain classes' T1 prior means
   mirrored (``--contrast t2like``: ``1 - mean`` inside the brain, background dark: CSF
   bright, white matter dark), per-voxel Gaussian texture (class std 3 % of the range);
3. a smooth bias field (a random quadratic polynomial in RAS mm, ±20 %) — training uses
   upsampled coarse noise; Rician noise (σ 2 %) — training adds Gaussian noise before
   the blur;
4. partial volume: a ``[1/4, 1/2, 1/4]`` filter along each axis, then every second voxel
   (the grid points of `data/bench_2mm/native`), rescaled to uint8 0-255.

Writes ``OUT/native/<subject>/image.nii.gz`` (+ a copy of the labels) and
``OUT/test_pairs.csv``, ``OUT/test_pairs_hcp.csv`` (same pairs as the benchmark's).

    python evaluate/synth_test.py                      # data/bench_2mm/test_t1pv
    python evaluate/synth_test.py --contrast t2like    # data/bench_2mm/test_t2likepv
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import build_data as bd  # noqa: E402

SEED = 777_001  # not build_data's seeds
TEXTURE, NOISE, BIAS = 0.03, 0.02, 0.2


def class_means(priors: bd.T1Priors, contrast: str, gen: torch.Generator) -> torch.Tensor:
    """Mean intensity in [0, 1] of each T1 class (module docstring, step 2)."""
    means = priors.draw_means(gen)
    if contrast == "t2like":
        background = priors.class_of[0]
        means = 1.0 - means
        means[background] = 0.02
    return means


def bias_field(shape: tuple[int, ...], affine: np.ndarray, gen: torch.Generator) -> torch.Tensor:
    """exp of a random quadratic polynomial of the RAS coordinates (metres) → ``shape``."""
    axes = [torch.arange(n, dtype=torch.float32) for n in shape]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), 0).reshape(3, -1)
    a = torch.as_tensor(affine, dtype=torch.float32)
    ras = (a[:3, :3] @ grid + a[:3, 3:]) / 1000.0
    ras = ras - ras.mean(1, keepdim=True)
    terms = [ras[i] for i in range(3)] + [ras[i] * ras[j] for i in range(3) for j in range(i, 3)]
    coef = torch.randn(len(terms), generator=gen) * torch.tensor([2.0] * 3 + [20.0] * 6)
    field = sum(c * t for c, t in zip(coef, terms))
    field = field / field.abs().max().clamp_min(1e-6) * float(np.log1p(BIAS))
    return torch.exp(field).reshape(shape)


def partial_volume(image: torch.Tensor) -> torch.Tensor:
    """``[1/4, 1/2, 1/4]`` along each axis of a 3-D tensor (edges replicated)."""
    k = torch.tensor([0.25, 0.5, 0.25])
    x = image[None, None]
    for axis in range(3):
        view = [1, 1, 1]
        view[axis] = 3
        pad = [0] * 6
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = 1
        x = F.conv3d(F.pad(x, pad, mode="replicate"), k.view(1, 1, *view))
    return x[0, 0]


def synthesise_1mm(classes: np.ndarray, affine: np.ndarray, priors: bd.T1Priors, contrast: str,
                   seed: int) -> np.ndarray:
    """Steps 2-4 before subsampling: a float image on the 1 mm grid of ``classes``."""
    gen = torch.Generator().manual_seed(seed)
    means = class_means(priors, contrast, gen)
    c = torch.as_tensor(classes, dtype=torch.int64)
    image = means[c] + TEXTURE * torch.randn(c.shape, generator=gen)
    image = image * bias_field(tuple(c.shape), affine, gen)
    real = image + NOISE * torch.randn(c.shape, generator=gen)
    imag = NOISE * torch.randn(c.shape, generator=gen)
    image = torch.sqrt(real**2 + imag**2)  # Rician
    return partial_volume(image).numpy()


def make_subject(src: bd.Source, priors: bd.T1Priors, contrast: str, spacing: int, bench: Path,
                 out: Path) -> None:
    """One test subject's new image on its benchmark grid (checked against the bench files)."""
    import nibabel as nib

    labels, affine = bd._load_int(src.labels)
    if src.dataset == "synthseg":
        labels[labels >= bd.BRAIN_LABEL_LIMIT] = 0
        classes, brain = priors.class_map(labels), labels > 0
    else:
        mask = bd._load_int(src.mask)[0] > 0
        as_aseg = np.zeros(max(bd.HCP_AS_ASEG) + 1, dtype=np.int32)
        for hcp, aseg in bd.HCP_AS_ASEG.items():
            as_aseg[hcp] = aseg
        aseg_like = as_aseg[labels]
        aseg_like[(labels == 0) & mask] = bd.HCP_MASK_AS_ASEG
        classes, brain = priors.class_map(aseg_like), mask | (labels > 0)
    image = synthesise_1mm(classes, affine, priors, contrast, SEED + bd._subject_seed(src.name))
    (image, sub_labels), sub_affine = bd._subsample_and_crop([image, labels], affine, brain, spacing)
    ref = nib.load(str(bench / "native" / src.name / "labels.nii.gz"))
    if not (np.allclose(ref.affine, sub_affine) and np.array_equal(np.asarray(ref.dataobj), sub_labels)):
        raise SystemExit(f"synth_test: {src.name} does not land on the grid of {bench / 'native' / src.name}")
    lo, hi = np.percentile(image, [0.0, 99.9])
    image = np.clip((image - lo) / (hi - lo), 0, 1)
    folder = out / "native" / src.name
    bd._save(folder / "image.nii.gz", np.rint(image * 255).astype(np.uint8), sub_affine)
    shutil.copyfile(bench / "native" / src.name / "labels.nii.gz", folder / "labels.nii.gz")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=bd.DATA)
    parser.add_argument("--bench", type=Path, default=bd.REPO / "data" / "bench_2mm",
                        help="the benchmark built by evaluate/build_data.py (its grids and pairs)")
    parser.add_argument("--contrast", choices=["t1", "t2like"], default="t1")
    parser.add_argument("--out", type=Path, default=None, help="default BENCH/test_t1pv or BENCH/test_t2likepv")
    args = parser.parse_args(argv)
    out = args.out or args.bench / f"test_{args.contrast}pv"
    priors = bd.T1Priors(args.data / "synthseg_labelmaps")
    tests = [s for s in bd.sources(args.data) if s.split == "test"]
    for src in tests:
        make_subject(src, priors, args.contrast, 2, args.bench, out)
        print(f"{src.name} → {out / 'native' / src.name}")
    header = ["moving", "fixed", "moving_labels", "fixed_labels"]
    for dataset, suffix in (("synthseg", ""), ("hcp", "_hcp")):
        bd._write_csv(out / f"test_pairs{suffix}.csv", header, bd._pairs([s.name for s in tests if s.dataset == dataset]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
