"""Build the benchmark data: real anatomy, synthetic T1-like intensities, fixed seeds.

Sources (``../shared/data``, see its README for licences):

- SynthSeg training label maps 01–12 (FreeSurfer aseg labels, 1 mm, LIA, native head
  position). Brain labels only (aseg labels < 100; skull and other extra-cerebral labels
  become background, i.e. skull-stripped scans).
- HCP label maps of ``hcp_labels/train`` (20 subjects, labels 1 white matter, 2 cortex,
  3 hippocampus, 4 amygdala, 5 thalamus; 1 mm, LAS, native position). They hold no
  aseg labels: the evaluation uses all their non-zero labels.

Every volume is brought to ``--spacing`` mm (2 mm: every second voxel, so the grid points
are original voxel centres), cropped to the brain with a margin and kept in its native
position and orientation (the affine says where it is). A T1-like image is synthesised
from each label map with :func:`transreg.data.synth.synthesize_image` and a fixed seed
per subject: every label gets the intensity of its SynthSeg T1 generation class, drawn
from the T1 priors shipped with SynthSeg (``prior_means_t1.npy``; HCP labels use the
classes of the matching aseg structures, the rest of the brain mask the CSF class),
then blur, bias field, gamma. The intensities are synthetic ("synthetic intensities on
real anatomy").

Split by subject (fixed): SynthSeg 01–07 train, 08–09 validation, 10–12 test; HCP (sorted
ids) first 14 train, next 2 validation, last 4 test. Outputs under ``--out``::

    subjects.csv                 subject, dataset, split, image, labels (native)
    native/<subject>/image.nii.gz, labels.nii.gz
    aligned/<subject>/image.nii.gz, labels.nii.gz, affine.txt
    test_pairs.csv               all ordered SynthSeg test pairs (native position) — the aseg benchmark
    test_pairs_hcp.csv           all ordered HCP test pairs (native position)
    val_pairs.csv, val_pairs_hcp.csv
    train_aligned.csv, val_aligned.csv   image,labels,group (dataset) of the aligned volumes (for
                                         `transreg train`: random pairs within a dataset)
    generation_*.npy, prior_means_t1.npy SynthSeg's generation tables (copied), and
    generation_aliases.json              the aligned HCP labels → the aseg labels whose classes they
                                         take, "mask" → CSF in the "mask_groups" (for the ``synthbrain:`` data specs,
                                         transreg/data/generation.py)

``aligned/`` holds every subject affinely registered by transreg's affine stage
(:func:`transreg.register` with ``affine_only=True, affine="classic"``) to one common space: the first
SynthSeg training subject resampled to an RAS grid of ``--aligned-size`` voxels at
``--spacing`` mm centred on its brain. In the aligned label maps the HCP labels are
shifted by 100 (101 white matter … 105 thalamus) so that one training run mixing both
datasets has one label numbering in which no HCP class shares a value with an aseg
structure (a Dice term then compares only like with like). The same command gives the
same files.

    python evaluate/build_data.py                       # 2 mm, all subjects → data/bench_2mm
    python evaluate/build_data.py --spacing 1 --out data/bench_1mm
    python evaluate/build_data.py --subjects synthseg_10 synthseg_11 --no-aligned --out /tmp/tiny
"""
from __future__ import annotations

import argparse
import csv
import itertools
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
BRAIN_LABEL_LIMIT = 100  # aseg labels below this are brain structures
MARGIN_MM = 8.0
SEED = 20240601
# HCP label → the aseg label whose T1 generation class it takes; 0 inside the brain mask → CSF (24)
HCP_AS_ASEG = {1: 2, 2: 3, 3: 17, 4: 18, 5: 10}
HCP_MASK_AS_ASEG = 24
HCP_ALIGNED_LABEL_OFFSET = 100  # aligned HCP labels 101-105: disjoint from the aseg values
REFERENCE = "synthseg_01"  # the common space of the aligned copies
ALIGNED_SIZE_2MM = (96, 112, 96)
SYNTHSEG_SPLIT = {"train": range(1, 8), "val": range(8, 10), "test": range(10, 13)}
HCP_SPLIT_SIZES = {"train": 14, "val": 2, "test": 4}


@dataclass(frozen=True)
class Source:
    """One subject: ``name`` (e.g. ``synthseg_10``), dataset, split, label file, mask file."""

    name: str
    dataset: str
    split: str
    labels: Path
    mask: Path | None = None


def sources(data: Path) -> list[Source]:
    """Every subject of both datasets with its split, in a fixed order."""
    out = []
    for split, numbers in SYNTHSEG_SPLIT.items():
        for n in numbers:
            out.append(Source(f"synthseg_{n:02d}", "synthseg", split,
                              data / "synthseg_labelmaps" / f"training_seg_{n:02d}.nii.gz"))
    hcp = sorted(p.name for p in (data / "hcp_labels" / "train").iterdir() if p.is_dir())
    start = 0
    for split, count in HCP_SPLIT_SIZES.items():
        for sid in hcp[start:start + count]:
            folder = data / "hcp_labels" / "train" / sid
            out.append(Source(f"hcp_{sid}", "hcp", split, folder / "labels_native.nii.gz",
                              folder / "Brainmasknative.nii.gz"))
        start += count
    return sorted(out, key=lambda s: (s.dataset, s.name))


def _subject_seed(name: str) -> int:
    """A fixed seed per subject name (independent of which subjects are built)."""
    return SEED + sum((i + 1) * ord(c) for i, c in enumerate(name))


class T1Priors:
    """SynthSeg's T1 generation classes and priors: label → class, class → mean intensity."""

    def __init__(self, folder: Path):
        labels = np.load(folder / "generation_labels.npy").astype(int)
        classes = np.load(folder / "generation_classes_contrast_specific.npy").astype(int)
        self.class_of = {int(lab): int(c) for lab, c in zip(labels, classes)}
        self.means = np.load(folder / "prior_means_t1.npy")  # (2, classes): mean, std of the class mean
        self.num_classes = self.means.shape[1]

    def class_map(self, labels: np.ndarray) -> np.ndarray:
        """Generation class of every voxel (labels without a class → background class)."""
        lut = np.zeros(int(labels.max()) + 1, dtype=np.int64)
        for lab in np.unique(labels):
            lut[lab] = self.class_of.get(int(lab), self.class_of[0])
        return lut[labels]

    def draw_means(self, gen: torch.Generator) -> torch.Tensor:
        """Class mean intensities in [0, 1]: ``N(prior mean, prior std) / 255``, clipped."""
        mu = torch.as_tensor(self.means[0], dtype=torch.float32)
        sd = torch.as_tensor(self.means[1], dtype=torch.float32)
        return ((mu + sd * torch.randn(self.num_classes, generator=gen)) / 255.0).clamp(0.0, 1.0)


def synthesise(class_map: np.ndarray, priors: T1Priors, seed: int) -> np.ndarray:
    """A T1-like uint8 image from a generation-class map (transreg's SynthMorph synthesis)."""
    from transreg.data.synth import synthesize_image

    gen = torch.Generator().manual_seed(seed)
    means = priors.draw_means(gen)
    labels = torch.as_tensor(class_map, dtype=torch.int64)[None, None]
    image = synthesize_image(labels, priors.num_classes, gen, std_range=(0.01, 0.04), max_blur=0.8,
                             max_bias=0.2, gamma_std=0.1, means=means)[0, 0]
    return np.rint(image.numpy() * 255.0).astype(np.uint8)


def _load_int(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib

    img = nib.load(str(path))
    return np.rint(np.asarray(img.dataobj, dtype=np.float64)).astype(np.int32), np.asarray(img.affine, dtype=np.float64)


def _subsample_and_crop(volumes: list[np.ndarray], affine: np.ndarray, brain: np.ndarray,
                        spacing: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Every ``spacing``-th voxel, then the brain's bounding box plus a margin."""
    step = (slice(None, None, spacing),) * 3
    brain = brain[step]
    affine = affine @ np.diag([spacing, spacing, spacing, 1.0])
    margin = int(round(MARGIN_MM / spacing))
    nz = np.argwhere(brain)
    lo = np.maximum(nz.min(0) - margin, 0)
    hi = np.minimum(nz.max(0) + margin + 1, brain.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    affine = affine.copy()
    affine[:3, 3] = affine[:3, :3] @ lo + affine[:3, 3]
    return [v[step][box] for v in volumes], affine


def make_native(source: Source, priors: T1Priors, spacing: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(image uint8, labels, affine)`` of one subject at ``spacing`` mm, native position."""
    labels, affine = _load_int(source.labels)
    if source.dataset == "synthseg":
        labels[labels >= BRAIN_LABEL_LIMIT] = 0
        classes = priors.class_map(labels)
        brain = labels > 0
    else:
        mask = _load_int(source.mask)[0] > 0
        as_aseg = np.zeros(max(HCP_AS_ASEG) + 1, dtype=np.int32)
        for hcp, aseg in HCP_AS_ASEG.items():
            as_aseg[hcp] = aseg
        aseg_like = as_aseg[labels]
        aseg_like[(labels == 0) & mask] = HCP_MASK_AS_ASEG
        classes = priors.class_map(aseg_like)
        brain = mask | (labels > 0)
    (labels, classes), affine = _subsample_and_crop([labels, classes], affine, brain, spacing)
    image = synthesise(classes, priors, _subject_seed(source.name))
    return image, labels.astype(np.int16), affine


def reference_grid(labels: np.ndarray, affine: np.ndarray, spacing: float, size: tuple[int, ...]) -> np.ndarray:
    """The common space: an RAS grid of ``size`` voxels of ``spacing`` mm centred on the
    centre of the brain's bounding box (world) → its 4×4 affine."""
    nz = np.argwhere(labels > 0)
    centre_vox = (nz.min(0) + nz.max(0)) / 2.0
    centre = affine[:3, :3] @ centre_vox + affine[:3, 3]
    out = np.diag([spacing, spacing, spacing, 1.0])
    out[:3, 3] = centre - spacing * (np.asarray(size) - 1) / 2.0
    return out


def _save(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    from transreg.registration.io import save_image

    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(path, data, affine)


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def _pairs(names: list[str]) -> list[list[str]]:
    return [[f"native/{m}/image.nii.gz", f"native/{f}/image.nii.gz", f"native/{m}/labels.nii.gz",
             f"native/{f}/labels.nii.gz"] for m, f in itertools.permutations(names, 2)]


def align_all(chosen: list[Source], out: Path, spacing: float, size: tuple[int, ...], device: str,
              log=print) -> None:
    """Every chosen subject affinely registered (transreg's affine stage) to the common
    space of the reference subject :data:`REFERENCE` → ``aligned/<subject>/``."""
    from transreg import register
    from transreg.evaluation.methods import affine_world_matrix
    from transreg.registration.io import Image, load_image
    from transreg.registration.preprocess import Grid, coordinates, resample_image, sample, voxel_map

    ref_img = load_image(out / "native" / REFERENCE / "image.nii.gz")
    ref_lab = load_image(out / "native" / REFERENCE / "labels.nii.gz", labels=True)
    target = Grid(tuple(size), reference_grid(ref_lab.data, ref_lab.affine, spacing, size))
    source = Grid.of(ref_img)
    coords = coordinates(voxel_map(target, source), target.shape)
    ref_on_grid = resample_image(ref_img.data, source, target)[0, 0].numpy()
    ref_labels = sample(torch.as_tensor(ref_lab.data.astype(np.int64))[None, None], coords, mode="nearest")[0, 0].numpy()
    fixed = Image(ref_on_grid, target.affine, "common space")
    for src in chosen:
        start = time.perf_counter()
        if src.name == REFERENCE:
            image, labels, world = ref_on_grid, ref_labels, np.eye(4)
        else:
            moving = load_image(out / "native" / src.name / "image.nii.gz")
            moving_labels = load_image(out / "native" / src.name / "labels.nii.gz", labels=True)
            # the classical optimiser (register's default): learned+classic with its former
            # 30 + 20-step refinement misaligned synthseg_09 (aseg Dice to the reference 0.22
            # against 0.39 classic)
            result = register(moving, fixed, affine_only=True, affine="classic", moving_labels=moving_labels,
                              device=device)
            image, labels = result.warped.data, result.warped_labels.data
            world = affine_world_matrix(3, result.report)
        if src.dataset == "hcp":
            labels = np.where(labels > 0, labels + HCP_ALIGNED_LABEL_OFFSET, 0)
        folder = out / "aligned" / src.name
        _save(folder / "image.nii.gz", np.clip(np.rint(image), 0, 255).astype(np.uint8), target.affine)
        _save(folder / "labels.nii.gz", np.asarray(labels).astype(np.int16), target.affine)
        np.savetxt(folder / "affine.txt", world, fmt="%.8f",
                   header="world map (RAS mm) from a common-space point to the native-image point")
        log(f"aligned {src.name} ({time.perf_counter() - start:.1f} s)")


GENERATION_FILES = ("generation_labels.npy", "generation_classes.npy", "generation_classes_contrast_specific.npy",
                    "prior_means_t1.npy")


def write_generation_tables(data: Path, out: Path) -> None:
    """SynthSeg's generation tables and the HCP aliases next to the CSVs (module docstring)."""
    import json
    import shutil

    for name in GENERATION_FILES:
        shutil.copyfile(data / "synthseg_labelmaps" / name, out / name)
    aliases = {str(hcp + HCP_ALIGNED_LABEL_OFFSET): aseg for hcp, aseg in HCP_AS_ASEG.items()}
    aliases["mask"] = HCP_MASK_AS_ASEG
    aliases["mask_groups"] = ["hcp"]
    (out / "generation_aliases.json").write_text(json.dumps(aliases, indent=1) + "\n")


def build(data: Path, out: Path, spacing: int = 2, subjects: list[str] | None = None, aligned: bool = True,
          aligned_size: tuple[int, ...] | None = None, device: str = "cpu", log=print) -> list[Source]:
    """Build the benchmark data (module docstring) → the subjects written."""
    everything = sources(data)
    if subjects:
        unknown = sorted(set(subjects) - {s.name for s in everything})
        if unknown:
            raise SystemExit(f"build_data: unknown subject(s) {', '.join(unknown)}; "
                             f"known: {', '.join(s.name for s in everything)}")
    chosen = [s for s in everything if not subjects or s.name in subjects]
    if aligned and REFERENCE not in {s.name for s in chosen}:
        raise SystemExit(f"build_data: the aligned copies need {REFERENCE} (the common space); "
                         "add it to --subjects or pass --no-aligned")
    priors = T1Priors(data / "synthseg_labelmaps")
    out.mkdir(parents=True, exist_ok=True)
    write_generation_tables(data, out)
    rows = []
    for src in chosen:
        image, labels, affine = make_native(src, priors, spacing)
        _save(out / "native" / src.name / "image.nii.gz", image, affine)
        _save(out / "native" / src.name / "labels.nii.gz", labels, affine)
        rows.append([src.name, src.dataset, src.split, f"native/{src.name}/image.nii.gz",
                     f"native/{src.name}/labels.nii.gz"])
        log(f"native {src.name} ({src.split}) {image.shape} at {spacing} mm")
    _write_csv(out / "subjects.csv", ["subject", "dataset", "split", "image", "labels"], rows)
    header = ["moving", "fixed", "moving_labels", "fixed_labels"]
    for split in ("val", "test"):
        for dataset, suffix in (("synthseg", ""), ("hcp", "_hcp")):
            names = [s.name for s in chosen if s.split == split and s.dataset == dataset]
            if len(names) >= 2:
                _write_csv(out / f"{split}_pairs{suffix}.csv", header, _pairs(names))
    if aligned:
        size = tuple(aligned_size) if aligned_size else tuple(n * 2 // spacing for n in ALIGNED_SIZE_2MM)
        align_all(chosen, out, float(spacing), size, device, log)
        for split in ("train", "val"):
            _write_csv(out / f"{split}_aligned.csv", ["image", "labels", "group"],
                       [[f"aligned/{s.name}/image.nii.gz", f"aligned/{s.name}/labels.nii.gz", s.dataset]
                        for s in chosen if s.split == split])
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA, help="the shared data folder (default ../shared/data)")
    parser.add_argument("--out", type=Path, default=REPO / "data" / "bench_2mm")
    parser.add_argument("--spacing", type=int, default=2, choices=[1, 2], help="voxel size in mm")
    parser.add_argument("--subjects", nargs="*", help="only these subjects (e.g. synthseg_10 hcp_100307)")
    parser.add_argument("--no-aligned", action="store_true", help="skip the affinely aligned training copies")
    parser.add_argument("--aligned-size", type=int, nargs=3, default=None,
                        help="common-space grid in voxels (default 96 112 96 at 2 mm, 192 224 192 at 1 mm)")
    parser.add_argument("--device", default="cpu", help="device of the affine stage (cpu, cuda)")
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        sys.exit(f"build_data: the label-map folder {args.data.resolve()} does not exist (the shared data, "
                 "../shared/data beside the repository, see its README); give its place with --data")
    start = time.perf_counter()
    chosen = build(args.data, args.out, args.spacing, args.subjects, not args.no_aligned, args.aligned_size,
                   args.device)
    print(f"{len(chosen)} subjects → {args.out} ({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
