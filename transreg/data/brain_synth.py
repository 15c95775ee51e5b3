"""Contrast-agnostic brain pairs drawn on the fly (SynthMorph-style), and fixed T1-mean pairs.

Data specs (``data.train`` / ``data.val``):

- ``synthbrain:CSV`` — :class:`SynthBrainPairs`: unlimited training pairs from the label
  maps of the subjects in ``CSV`` (``image,labels,group``, e.g.
  ``data/bench_2mm/train_aligned.csv``: affinely aligned maps, pairs within a group);
- ``synthbrain-t1mean:CSV`` — :class:`T1MeanPairs`: every ordered within-group pair of
  the subjects in ``CSV``, images at the T1 prior means with no randomisation (a
  synthesis :class:`SynthBrainPairs` never draws from: validation of generalisation).

The generation tables (:mod:`transreg.data.generation`) are read from the CSV's folder.
Items are ``{"moving", "fixed": (1, *S) float32 in [0, 1], "moving_labels",
"fixed_labels": (1, *S) int64 consecutive labels}``; item ``k`` is a pure function of
``(seed, k)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..spatial import compose, warp
from .augment import random_affine
from .brain_maps import BrainMaps, dice_labels, load_brain_maps
from .generation import GenerationTable, load_generation_table
from .synth import gaussian_blur, random_deformation, synthesize_image
from .synthetic import DataError, item_generator

__all__ = ["SynthSettings", "SynthBrainPairs", "T1MeanPairs", "t1_mean_image", "class_lut"]


@dataclass(frozen=True)
class SynthSettings:
    """Ranges of the random synthesis (voxels, fractions of the [0, 1] intensity range).

    ``max_velocity``: std of the coarse stationary velocity ``~ U(0, max_velocity)`` voxels
    (grid ``velocity_scale`` times coarser), one independent warp per image;
    ``affine_degrees`` / ``affine_scale`` / ``affine_shift`` (voxels): the residual affine
    applied to the moving map only (what the affine stage leaves); ``p_independent``: the
    share of pairs whose moving and fixed images get independent class intensities (the
    others share them: same contrast, own noise, blur, bias and gamma); ``p_t1``: the share
    of pairs whose images instead take T1-like intensities, each image its own draw of the
    T1 class means from SynthSeg's priors (``N(prior mean, prior std)``, as zoo v1's data);
    ``std_range``: the
    per-class noise std; ``max_blur`` (voxels), ``max_bias`` (std of the log bias field),
    ``gamma_std`` (std of the log gamma exponent).
    """

    max_velocity: float = 2.0
    velocity_scale: int = 8
    affine_degrees: float = 2.0
    affine_scale: float = 0.02
    affine_shift: float = 1.0
    p_independent: float = 0.5
    p_t1: float = 0.0
    std_range: tuple[float, float] = (0.0, 0.08)
    max_blur: float = 1.0
    max_bias: float = 0.3
    gamma_std: float = 0.25


def class_lut(table: GenerationTable, maps: BrainMaps, kind: str) -> tuple[Tensor, int]:
    """``(lut, num_classes)`` over generation-map values ``[0, num_labels]``: consecutive
    labels through the table, the mask id to the in-mask class (or background)."""
    lut, n = table.lut(maps.label_values, kind)
    mask_class = table.mask_class(kind)
    return torch.cat([lut, torch.tensor([lut[0] if mask_class is None else mask_class])]), n


def _pairs_within_groups(groups: Sequence[str | None]) -> list[tuple[int, int]]:
    """Every ordered pair ``(i, j)``, ``i != j``, of subjects in the same group."""
    return [(i, j) for i in range(len(groups)) for j in range(len(groups)) if i != j and groups[i] == groups[j]]


class SynthBrainPairs(Dataset):
    """Unlimited random pairs (module docstring) from ``csv`` (``image,labels,group``).

    Per item: a moving and a fixed subject of one group (uniform over the ordered
    within-group pairs); each map warped by its own random smooth deformation, the moving
    one also by a random residual affine (nearest, labels and mask together); images
    with random intensities per fine generation class (:class:`SynthSettings`).
    ``size`` must be the maps' shape.
    """

    def __init__(self, csv: str | Path, size: Sequence[int], length: int = 10_000, seed: int = 0,
                 settings: SynthSettings | None = None, label_values: Sequence[int] | None = None):
        self.size = tuple(int(s) for s in size)
        self.ndim = len(self.size)
        self.length, self.seed = length, seed
        self.settings = settings or SynthSettings()
        table = load_generation_table(Path(csv).parent)
        self.maps = load_brain_maps(csv, table.mask_groups, size=self.size, label_values=label_values)
        self.pairs = _pairs_within_groups(self.maps.groups)
        if not self.pairs:
            raise DataError(f"{csv}: no two subjects share a group: nothing to pair")
        self.lut, self.num_classes = class_lut(table, self.maps, "fine")
        self.t1_lut, self.num_t1 = class_lut(table, self.maps, "t1")
        self.t1_prior = torch.as_tensor(table.t1_means / 255.0, dtype=torch.float32)  # (2, T1 classes)
        self.label_values = self.maps.label_values
        self.num_labels = self.maps.num_labels

    def __len__(self) -> int:
        return self.length

    def _warp_map(self, index: int, gen: torch.Generator, residual_affine: bool) -> Tensor:
        s = self.settings
        flow = random_deformation(self.size, gen, max_std=s.max_velocity, scale=s.velocity_scale)
        if residual_affine:
            flow = compose(random_affine(self.size, gen, s.affine_degrees, s.affine_scale, s.affine_shift), flow)
        return warp(self.maps.maps[index].float(), flow, mode="nearest").long()

    def _image(self, gen_map: Tensor, gen: torch.Generator, means: Tensor, t1: bool) -> Tensor:
        s = self.settings
        lut = self.t1_lut if t1 else self.lut
        return synthesize_image(lut[gen_map], len(means), gen, std_range=s.std_range, max_blur=s.max_blur,
                                max_bias=s.max_bias, gamma_std=s.gamma_std, means=means)

    def _t1_means(self, gen: torch.Generator) -> Tensor:
        """One draw of the T1 class means in [0, 1] (classes beyond the priors: their mean)."""
        mu, sd = self.t1_prior
        means = (mu + sd * torch.randn(len(mu), generator=gen)).clamp(0.0, 1.0)
        return torch.cat([means, means.mean().repeat(self.num_t1 - len(mu))])

    def __getitem__(self, key: int) -> dict[str, Tensor]:
        gen = item_generator(self.seed, int(key))
        i, j = self.pairs[int(torch.randint(len(self.pairs), (), generator=gen))]
        independent = float(torch.rand((), generator=gen)) < self.settings.p_independent
        t1 = self.settings.p_t1 > 0 and float(torch.rand((), generator=gen)) < self.settings.p_t1
        shared = torch.rand(self.num_classes, generator=gen)
        out = {}
        for role, index in (("moving", i), ("fixed", j)):
            gen_map = self._warp_map(index, gen, residual_affine=role == "moving")
            if t1:
                means = self._t1_means(gen)
            else:
                means = torch.rand(self.num_classes, generator=gen) if independent else shared
            out[role] = self._image(gen_map, gen, means, t1)[0]
            out[f"{role}_labels"] = dice_labels(gen_map, self.maps.mask_id)[0]
        return out


def t1_mean_image(gen_map: Tensor, lut: Tensor, class_means: Tensor, noise: float, blur: float,
                  gen: torch.Generator) -> Tensor:
    """The T1-mean synthesis of one generation map ``(1, 1, *S)`` → ``(1, 1, *S)`` float32 in
    [0, 1]: every class at its prior mean (``class_means`` in [0, 1], indexed by ``lut``),
    Gaussian noise of std ``noise``, Gaussian blur ``blur`` voxels; no bias, no gamma."""
    image = class_means[lut[gen_map]].float()
    image = image + noise * torch.randn(image.shape, generator=gen)
    return gaussian_blur(image, blur).clamp(0.0, 1.0)


def t1_class_means(table: GenerationTable, num_classes: int) -> Tensor:
    """Prior mean of each T1 class in [0, 1]; classes beyond the table (labels with no
    T1 class) take the mean of the table's class means."""
    means = torch.as_tensor(table.t1_means[0] / 255.0, dtype=torch.float32)
    extra = means.mean().repeat(num_classes - len(means))
    return torch.cat([means, extra])


class T1MeanPairs(Dataset):
    """Every ordered within-group pair of the subjects in ``csv``, no deformation; each
    subject's image made once by :func:`t1_mean_image` (noise 0.02, blur 0.5 voxel, a
    fixed per-subject seed). ``label_values`` fixes the numbering (the training one)."""

    NOISE, BLUR = 0.02, 0.5

    def __init__(self, csv: str | Path, size: Sequence[int] | None = None, seed: int = 0,
                 label_values: Sequence[int] | None = None):
        table = load_generation_table(Path(csv).parent)
        self.maps = load_brain_maps(csv, table.mask_groups, size=size, label_values=label_values)
        self.pairs = _pairs_within_groups(self.maps.groups)
        if not self.pairs:
            raise DataError(f"{csv}: no two subjects share a group: nothing to pair")
        lut, n = class_lut(table, self.maps, "t1")
        means = t1_class_means(table, n)
        self.images = [t1_mean_image(m, lut, means, self.NOISE, self.BLUR, item_generator(seed, k))
                       for k, m in enumerate(self.maps.maps)]
        self.ndim = self.maps.maps[0].dim() - 2
        self.label_values = self.maps.label_values
        self.num_labels = self.maps.num_labels

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        i, j = self.pairs[index]
        mask_id = self.maps.mask_id
        return {"moving": self.images[i][0], "fixed": self.images[j][0],
                "moving_labels": dice_labels(self.maps.maps[i], mask_id)[0],
                "fixed_labels": dice_labels(self.maps.maps[j], mask_id)[0]}
