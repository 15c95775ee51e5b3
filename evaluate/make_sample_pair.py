"""Make the sample pair shipped in ``transreg/assets/sample/`` (run from the repo root).

Two real SynthSeg label maps (subjects 10 → moving, 11 → fixed: test subjects of
evaluate/build_data.py's split, never seen by the zoo's training; github.com/
BBillot/SynthSeg, Apache-2.0, Billot et al., MedIA 2023) are subsampled from 1 mm to
2 mm (every second voxel, so the grid points are original voxel centres), reduced to the
brain labels (FreeSurfer aseg labels < 100; skull and other extra-cerebral labels become
background), cropped to the brain with a 3-voxel margin and kept in their native head
position and LIA orientation (so the pair needs affine pre-alignment). T1-like
intensities are synthesised from the labels with fixed seeds, following the SynthSeg
recipe: per-class Gaussian intensities drawn from the T1 priors shipped with SynthSeg,
blur, a smooth multiplicative bias field and noise. The intensities are synthetic.

    python evaluate/make_sample_pair.py [--data ../shared/data/synthseg_labelmaps]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

REPO = Path(__file__).resolve().parents[1]
SUBJECTS = {"moving": ("training_seg_10.nii.gz", 10), "fixed": ("training_seg_11.nii.gz", 11)}
MARGIN = 3


def load_labels(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Brain labels at 2 mm (every second voxel) and their voxel-to-world affine."""
    img = nib.load(str(path))
    labels = np.rint(np.asarray(img.dataobj)).astype(np.int32)[::2, ::2, ::2]
    labels[labels >= 100] = 0
    affine = img.affine @ np.diag([2.0, 2.0, 2.0, 1.0])
    lo = np.maximum(np.argwhere(labels > 0).min(0) - MARGIN, 0)
    hi = np.minimum(np.argwhere(labels > 0).max(0) + MARGIN + 1, labels.shape)
    affine = affine.copy()
    affine[:3, 3] = affine[:3, :3] @ lo + affine[:3, 3]
    return labels[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]], affine


def synthesise(labels: np.ndarray, data: Path, seed: int) -> np.ndarray:
    """T1-like uint8 image from a label map (SynthSeg priors, blur, bias field, noise)."""
    rng = np.random.default_rng(seed)
    gen_labels = np.load(data / "generation_labels.npy")
    classes = np.load(data / "generation_classes_contrast_specific.npy")
    means, stds = np.load(data / "prior_means_t1.npy"), np.load(data / "prior_stds_t1.npy")
    n_classes = classes.max() + 1
    class_mean = np.clip(rng.normal(means[0, :n_classes], means[1, :n_classes]), 0, 255)
    class_std = np.clip(rng.normal(stds[0, :n_classes], stds[1, :n_classes]), 0, 25) * 0.3
    lut_mean = np.zeros(gen_labels.max() + 1)
    lut_std = np.zeros(gen_labels.max() + 1)
    lut_mean[gen_labels] = class_mean[classes]
    lut_std[gen_labels] = class_std[classes]
    lut_mean[0] = lut_std[0] = 0.0
    image = lut_mean[labels] + lut_std[labels] * rng.standard_normal(labels.shape)
    image = ndimage.gaussian_filter(image, 0.6)
    coarse = rng.normal(0.0, 0.15, size=(4, 4, 4))
    bias = ndimage.zoom(coarse, [s / 4 for s in labels.shape], order=3)[tuple(slice(0, s) for s in labels.shape)]
    image = image * np.exp(bias)
    image = image + rng.normal(0.0, 1.0, labels.shape) * (labels > 0)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def save(data: np.ndarray, affine: np.ndarray, path: Path) -> None:
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, str(path))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/synthseg_labelmaps")
    parser.add_argument("--out", type=Path, default=REPO / "transreg/assets/sample")
    args = parser.parse_args()
    missing = [name for name, _ in SUBJECTS.values() if not (args.data / name).exists()] if args.data.is_dir() else None
    if missing is None or missing:
        what = f"{args.data.resolve()} does not exist" if missing is None else \
            f"{args.data.resolve()} lacks {', '.join(missing)}"
        sys.exit(f"make_sample_pair: {what} (the SynthSeg label maps of the shared data, ../shared/data beside the "
                 "repository); give their folder with --data")
    args.out.mkdir(parents=True, exist_ok=True)
    for role, (name, seed) in SUBJECTS.items():
        labels, affine = load_labels(args.data / name)
        save(synthesise(labels, args.data, seed), affine, args.out / f"{role}.nii.gz")
        save(labels.astype(np.uint8), affine, args.out / f"{role}_labels.nii.gz")
        print(f"{role}: {name} → {labels.shape} at 2 mm")


if __name__ == "__main__":
    main()
