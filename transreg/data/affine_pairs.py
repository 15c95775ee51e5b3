"""Synthetic pairs for the learned affine stage: real label maps under large random affines.

Each item is two different subjects' label maps (whole heads, or skull-stripped brains —
labels ``>= BRAIN_LABEL_LIMIT`` removed — with probability 1/2, the same for both images
of a pair), each moved in world space by a random affine about its centre (moving:
rotations ``U(±degrees)`` about each axis, per-axis scaling ``U(1 ± scale)``, translation
``U(±shift)`` mm; fixed: a third of each range), sampled (nearest) on an RAS grid of
``size`` voxels of ``spacing`` mm centred on the moved head's centre ± ``jitter`` mm, and
synthesised with random contrast per original label
(:func:`transreg.data.synth.synthesize_image`, dark background). The returned label maps
hold coarse groups (:data:`ASEG_GROUPS`: hemispheres' white matter, cortex, cerebellum,
deep grey matter, ventricles, brainstem, the rest of the brain, extra-cerebral tissue):
large structures give an affine's Dice loss a smooth landscape, 54 small ones a flat one
(measured: ``train/README.md``). This is the input :func:`transreg.registration.learned_affine.learned_affine`
builds at inference (grids centred on each image's centre of mass), so the network
learns the residual voxel map fixed grid → moving grid.

Items: ``{"moving", "fixed": (1, *size) float32 in [0, 1], "moving_labels",
"fixed_labels": (1, *size) int64}`` (group ids; ``label_values`` = ``0..len(ASEG_GROUPS)``).
"""
from __future__ import annotations

import glob
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..registration.preprocess import Grid, coordinates, sample, voxel_map
from .augment import rotation_matrix
from .synth import synthesize_image
from .synthetic import DataError, item_generator

__all__ = ["AffineLabelPairs", "ASEG_GROUPS", "BRAIN_LABEL_LIMIT", "centred_grid", "random_world_affine"]

#: aseg labels below this are brain structures; SynthSeg's extra-cerebral labels are above
BRAIN_LABEL_LIMIT = 100
#: scanner field of view (``field_of_view`` > 0): a box side lies up to this many mm beyond the tissue,
FOV_MARGIN = 30.0
#: or cuts the tissue no closer than this many mm to the brain,
FOV_BRAIN_MARGIN = 10.0
#: and the background inside the box has a mean intensity up to this (tissue means are U(0, 1))
FOV_BACKGROUND = 0.3
#: the loss's label groups (group id = position + 1); other brain labels → "other brain",
#: labels >= BRAIN_LABEL_LIMIT → "extra-cerebral"
ASEG_GROUPS: dict[str, tuple[int, ...]] = {
    "left white matter": (2,), "right white matter": (41,), "left cortex": (3,), "right cortex": (42,),
    "left cerebellum": (7, 8), "right cerebellum": (46, 47), "brainstem": (16,),
    "left deep grey matter": (10, 11, 12, 13, 17, 18, 26, 28), "right deep grey matter": (49, 50, 51, 52, 53, 54, 58, 60),
    "ventricles": (4, 5, 14, 15, 24, 43, 44), "other brain": (), "extra-cerebral": (),
}


def centred_grid(centre: np.ndarray, spacing: float, size: Sequence[int]) -> Grid:
    """An RAS grid of ``size`` voxels of ``spacing`` mm whose centre is the world point ``centre`` (mm)."""
    affine = np.diag([spacing] * len(size) + [1.0])
    affine[:-1, -1] = np.asarray(centre, dtype=np.float64) - spacing * (np.asarray(size) - 1) / 2
    return Grid(tuple(int(s) for s in size), affine)


def _uniform(gen: torch.Generator, n: int, half_range: float) -> np.ndarray:
    return ((torch.rand(n, generator=gen, dtype=torch.float64) * 2 - 1) * half_range).numpy()


def random_world_affine(centre: np.ndarray, gen: torch.Generator, degrees: float, scale: float,
                        shift: float) -> np.ndarray:
    """A 4×4 world map ``x ↦ R S (x − c) + c + t`` (``c`` = ``centre`` mm): rotations
    ``U(±degrees)`` about each axis, scales ``U(1 ± scale)``, translation ``U(±shift)`` mm."""
    ndim = len(centre)
    n_angles = 1 if ndim == 2 else 3
    angles = torch.as_tensor(_uniform(gen, n_angles, math.radians(degrees)), dtype=torch.float32)
    linear = rotation_matrix(angles, ndim).double().numpy() @ np.diag(1 + _uniform(gen, ndim, scale))
    out = np.eye(ndim + 1)
    out[:ndim, :ndim] = linear
    out[:ndim, ndim] = centre - linear @ centre + _uniform(gen, ndim, shift)
    return out


def _random_means(num_labels: int, gen: torch.Generator) -> Tensor:
    """Per-label mean intensities ``U(0, 1)``, the background (label 0) dark: ``U(0, 0.1)``, as in scans."""
    means = torch.rand(num_labels, generator=gen)
    means[0] = 0.1 * float(torch.rand((), generator=gen))
    return means


def _group_table(values: np.ndarray) -> np.ndarray:
    """Group id (0 background, 1.. :data:`ASEG_GROUPS`) of each consecutive label."""
    names = list(ASEG_GROUPS)
    of_label = {label: names.index(name) + 1 for name, labels in ASEG_GROUPS.items() for label in labels}
    other, extra = names.index("other brain") + 1, names.index("extra-cerebral") + 1
    return np.array([0 if v == 0 else of_label.get(int(v), other if v < BRAIN_LABEL_LIMIT else extra)
                     for v in values], dtype=np.int64)


class AffineLabelPairs(Dataset):
    """Random-affine, random-contrast pairs of real label maps (module docstring).

    ``pattern``: a glob of NIfTI label maps (e.g. ``../shared/data/synthseg_labelmaps/
    training_seg_0[1-7].nii.gz``), read once and kept at every ``subsample``-th voxel.
    ``degrees``/``scale``/``shift`` (mm): the moving image's affine ranges.
    """

    def __init__(self, pattern: str, size: Sequence[int], spacing: float, length: int = 10_000, seed: int = 0,
                 degrees: float = 30.0, scale: float = 0.15, shift: float = 30.0, jitter: float = 10.0,
                 subsample: int = 2, field_of_view: float = 0.0):
        import nibabel as nib

        files = sorted(glob.glob(pattern))
        if len(files) < 2:
            raise DataError(f"label maps {pattern!r}: {len(files)} file(s) match, pairs need at least 2")
        self.size, self.spacing, self.ndim = tuple(int(s) for s in size), float(spacing), len(size)
        if self.ndim != 3:
            raise DataError(f"synthetic:affine pairs are 3-D: data.size needs 3 sizes, got {list(size)}")
        self.length, self.seed = length, seed
        self.ranges = {"degrees": degrees, "scale": scale, "shift": shift}
        self.jitter = jitter
        if not 0.0 <= field_of_view <= 1.0:
            raise DataError(f"synthetic:affine option field_of_view is a probability in [0, 1], got {field_of_view}")
        self.field_of_view = float(field_of_view)
        self.files = [Path(f) for f in files]
        volumes, self.grids = [], []
        for path in self.files:
            try:
                image = nib.load(str(path))
                data = np.rint(np.asarray(image.dataobj, dtype=np.float32)).astype(np.int64)
            except Exception as err:  # nibabel raises many types for broken files
                raise DataError(f"cannot read label map {str(path)!r}: {err}") from None
            if data.ndim != 3:
                raise DataError(f"label map {str(path)!r} must be a 3-D volume, got shape {data.shape}")
            step = (slice(None, None, subsample),) * 3
            volumes.append(data[step])
            self.grids.append(Grid(volumes[-1].shape, image.affine @ np.diag([subsample] * 3 + [1.0])))
        self.label_values = np.unique(np.concatenate([np.unique(v) for v in volumes]))
        if self.label_values[0] != 0:
            self.label_values = np.concatenate([[0], self.label_values])
        self.num_original = len(self.label_values)  # synthesis: one random intensity per original label
        lut = np.zeros(int(self.label_values.max()) + 1, dtype=np.int64)
        lut[self.label_values] = np.arange(self.num_original)
        self.brain_limit = int(np.searchsorted(self.label_values, BRAIN_LABEL_LIMIT))  # first extra-cerebral id
        self.maps = [torch.from_numpy(lut[v]).float()[None, None] for v in volumes]
        self.group_of = torch.as_tensor(_group_table(self.label_values))
        self.label_values = list(range(len(ASEG_GROUPS) + 1))  # what the loss sees: background + groups
        self.num_labels = len(self.label_values)
        self.centres = {(i, brain): self._centre(i, brain) for i in range(len(self.maps)) for brain in (False, True)}

    def _centre(self, index: int, brain: bool) -> np.ndarray:
        """World centre of mass (mm) of the head (or brain) mask of subject ``index``."""
        labels = self.maps[index][0, 0]
        mask = (labels > 0) & (labels < self.brain_limit) if brain else labels > 0
        voxels = torch.nonzero(mask).double().mean(0).numpy()
        affine = self.grids[index].affine
        return affine[:3, :3] @ voxels + affine[:3, 3]

    def __len__(self) -> int:
        return self.length

    def _labels_on(self, index: int, brain: bool, moved: np.ndarray, grid: Grid) -> Tensor:
        """Subject ``index`` (skull-stripped when ``brain``) moved by the world map ``moved``, sampled on ``grid``."""
        coords = coordinates(voxel_map(grid, self.grids[index], np.linalg.inv(moved)), grid.shape)
        labels = sample(self.maps[index], coords, mode="nearest").long()
        if brain:
            labels[labels >= self.brain_limit] = 0
        return labels

    def _scanner_box(self, labels: Tensor, grid: Grid, gen: torch.Generator) -> tuple[np.ndarray, np.ndarray]:
        """A scan's field of view, world box ``(low, high)`` (RAS mm, ``(3,)`` each) around the
        tissue of ``labels`` on ``grid``: each side either ``U(0, FOV_MARGIN)`` mm beyond the
        tissue or (probability 1/2) cutting it between its edge and ``FOV_BRAIN_MARGIN`` mm
        outside the brain (heads: neck or scalp cut off; brains: a tight box), each with one
        voxel of slack."""
        world = [grid.affine[a, 3] + grid.affine[a, a] * np.arange(n) for a, n in enumerate(grid.shape)]

        def extent(mask: Tensor) -> tuple[np.ndarray, np.ndarray]:
            voxels = torch.nonzero(mask[0, 0]).numpy()
            ends = [world[a][voxels[:, a]] for a in range(3)]
            return np.array([e.min() for e in ends]), np.array([e.max() for e in ends])

        # extents measured on a grid of ``spacing`` mm: one voxel of slack keeps them on every other grid
        tissue_low, tissue_high = extent(labels > 0)
        brain_low, brain_high = extent((labels > 0) & (labels < self.brain_limit))
        cut = torch.rand(2, 3, generator=gen).numpy() < 0.5
        beyond = self.spacing + torch.rand(2, 3, generator=gen).numpy() * FOV_MARGIN
        where = torch.rand(2, 3, generator=gen).numpy()
        brain_low, brain_high = brain_low - FOV_BRAIN_MARGIN - self.spacing, brain_high + FOV_BRAIN_MARGIN + self.spacing
        cut_low = np.minimum(tissue_low + where[0] * np.maximum(brain_low - tissue_low, 0.0), brain_low)
        cut_high = np.maximum(tissue_high - where[1] * np.maximum(tissue_high - brain_high, 0.0), brain_high)
        return (np.where(cut[0], cut_low, tissue_low - beyond[0]), np.where(cut[1], cut_high, tissue_high + beyond[1]))

    @staticmethod
    def _inside(box: tuple[np.ndarray, np.ndarray] | None, grid: Grid) -> Tensor:
        """``(1, 1, *S)`` float mask of ``grid``'s voxels inside the world box (all ones without a box)."""
        mask = torch.ones((1, 1, *grid.shape))
        if box is None:
            return mask
        for a, n in enumerate(grid.shape):
            world = grid.affine[a, 3] + grid.affine[a, a] * np.arange(n)
            keep = torch.as_tensor((world >= box[0][a]) & (world <= box[1][a]), dtype=torch.float32)
            mask = mask * keep.view([n if b == a else 1 for b in range(-2, 3)])
        return mask

    def _centre_of_intensity(self, labels: Tensor, means: Tensor, inside: Tensor, grid: Grid) -> np.ndarray:
        """World centre of mass (mm) of the noiseless image ``means[labels]`` within ``inside``."""
        weights = (means[labels] * inside)[0, 0].double()
        voxels = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in grid.shape],
                                            indexing="ij"), dim=-1)
        centre = (voxels * weights[..., None]).sum((0, 1, 2)) / weights.sum().clamp_min(1e-12)
        return grid.affine[:3, :3] @ centre.numpy() + grid.affine[:3, 3]

    def _scan_grid(self, index: int, brain: bool, moved: np.ndarray, head_centre: np.ndarray,
                   gen: torch.Generator) -> tuple[Grid, Tensor, tuple[np.ndarray, np.ndarray] | None]:
        """``(grid, label means, field-of-view box or None)`` of one image with ``field_of_view``:
        the box with probability ``field_of_view``, the grid centred on the image's intensity
        centre of mass ± ``jitter``, as the learned stage centres its inputs at inference."""
        head_grid = centred_grid(head_centre, self.spacing, self.size)
        labels = self._labels_on(index, brain, moved, head_grid)
        means = _random_means(self.num_original, gen)
        box = None
        if float(torch.rand((), generator=gen)) < self.field_of_view:
            box = self._scanner_box(labels, head_grid, gen)
            means[0] = FOV_BACKGROUND * float(torch.rand((), generator=gen))
        centre = self._centre_of_intensity(labels, means, self._inside(box, head_grid), head_grid)
        return centred_grid(centre + _uniform(gen, 3, self.jitter), self.spacing, self.size), means, box

    def _image(self, index: int, brain: bool, fraction: float, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        """One subject moved by a random affine (``fraction`` of the ranges), on its grid:
        centred on the moved head (or brain) ± ``jitter`` or, with ``field_of_view``, as
        :meth:`_scan_grid` places it, inside a scanner box of background (mean
        ``U(0, FOV_BACKGROUND)``, zero outside) in a share ``field_of_view`` of the images."""
        centre = self.centres[(index, brain)]
        ranges = {k: v * fraction for k, v in self.ranges.items()}
        moved = random_world_affine(centre, gen, **ranges)
        head_centre = moved[:3, :3] @ centre + moved[:3, 3]
        if self.field_of_view:
            grid, means, box = self._scan_grid(index, brain, moved, head_centre, gen)
        else:
            grid, box = centred_grid(head_centre + _uniform(gen, 3, self.jitter), self.spacing, self.size), None
            means = _random_means(self.num_original, gen)
        labels = self._labels_on(index, brain, moved, grid)
        image = synthesize_image(labels, self.num_original, gen, means=means) * self._inside(box, grid)
        return image[0], self.group_of[labels[0]]

    def __getitem__(self, key: int) -> dict[str, Tensor]:
        gen = item_generator(self.seed, int(key))
        n = len(self.maps)
        i = int(torch.randint(n, (), generator=gen))
        j = (i + 1 + int(torch.randint(n - 1, (), generator=gen))) % n
        brain = bool(torch.rand((), generator=gen) < 0.5)
        moving, moving_labels = self._image(i, brain, 1.0, gen)
        fixed, fixed_labels = self._image(j, brain, 1.0 / 3.0, gen)
        return {"moving": moving, "fixed": fixed, "moving_labels": moving_labels, "fixed_labels": fixed_labels}
