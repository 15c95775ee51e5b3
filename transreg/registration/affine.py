"""The coarse stage: affine pre-alignment of two images in world coordinates (2-D or 3-D).

Initialisation from intensity moments (centre of mass; optionally principal axes), then
a multi-resolution intensity-based optimisation (NCC or mutual information) with Adam in
torch; mutual information compares at most :data:`MI_POINTS` voxels per level, and a
level stops once its loss settles (:data:`TOLERANCE`). The
transform is a world map ``q = M p`` from a fixed-image point ``p`` (RAS mm) to the
moving-image point ``q``, parametrised about the fixed centre of mass ``c`` as
``M = M₀ · [L, c − L c + t]`` with ``L = exp(K) · diag(exp(s)) · (I + U)`` (rotation
``K`` skew-symmetric, log-scales ``s``, shears ``U`` strictly upper triangular,
translation ``t`` in mm) and ``M₀`` the initialisation.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..spatial import voxel_grid
from .preprocess import Grid, sample

__all__ = ["AffineResult", "MI_POINTS", "TOLERANCE", "center_of_mass", "initial_transform", "affine_align"]

#: the most voxels per pyramid level that mutual information samples (a seeded random subset).
#: Measured with evaluate/affine_modes.py's pairs (SynthSeg 10-12 at 2 mm, native and rotated
#: 30°): every voxel 4.9 s per pair, Dice after the stage 0.598 (brains) / 0.464 (heads);
#: 16384 points 1.6 s, 0.596 / 0.452 (32768: 2.2 s, 0.598 / 0.455; 8192: 1.1 s, 0.594 / 0.450)
MI_POINTS = 16384
#: a level stops early once its loss has improved by less than this over the last 10 steps:
#: on the same pairs 1.58 → 0.96 s per pair, Dice after the stage 0.596 → 0.597 (brains),
#: 0.452 → 0.454 (heads); 3e-4: 0.86 s, 0.596 / 0.452; 1e-3: 0.78 s, 0.596 / 0.453
TOLERANCE = 1e-4


@dataclass
class AffineResult:
    """``matrix`` ``(ndim + 1)²``: fixed world point → moving world point (RAS mm);
    ``losses``: the similarity loss at the end of each resolution level."""

    matrix: np.ndarray
    losses: list[float] = field(default_factory=list)


def _moments(image: Tensor, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """Centre of mass (ndim,) and covariance (ndim, ndim) in world mm of ``max(image, 0)``."""
    weights = image.detach().clamp(min=0).double().flatten().cpu()
    if float(weights.sum()) <= 0:
        raise ValueError("the image is zero everywhere: nothing to align")
    voxels = voxel_grid(grid.shape, torch.float64).reshape(grid.ndim, -1)
    world = torch.as_tensor(grid.affine[:-1, :-1]) @ voxels + torch.as_tensor(grid.affine[:-1, -1:])
    weights = weights / weights.sum()
    centre = world @ weights
    centred = world - centre[:, None]
    return centre.numpy(), ((centred * weights) @ centred.T).numpy()


def center_of_mass(image: Tensor, grid: Grid) -> np.ndarray:
    """World position (RAS mm) ``(ndim,)`` of the intensity-weighted centre of ``image``."""
    return _moments(image, grid)[0]


def _homogeneous(linear: np.ndarray, translation: np.ndarray) -> np.ndarray:
    n = len(translation)
    out = np.eye(n + 1)
    out[:n, :n], out[:n, n] = linear, translation
    return out


def initial_transform(
    moving: Tensor, moving_grid: Grid, fixed: Tensor, fixed_grid: Grid, init: str | np.ndarray = "com",
    score: Callable[[np.ndarray], float] | None = None,
) -> np.ndarray:
    """Initial world map fixed → moving ``(ndim + 1)²``.

    ``init``: ``"none"`` (identity), ``"com"`` (translate the centres of mass onto each
    other), ``"moments"`` (also rotate/scale the principal axes onto each other; the
    axis signs are chosen by ``score`` — lower is better — among the proper rotations),
    or a world map ``(ndim + 1)²`` to start from (e.g. the learned affine stage's).
    """
    ndim = fixed_grid.ndim
    if isinstance(init, np.ndarray):
        if init.shape != (ndim + 1, ndim + 1):
            raise ValueError(f"an initial affine for {ndim}-D images must be {ndim + 1}x{ndim + 1}, got {init.shape}")
        return init
    if init == "none":
        return np.eye(ndim + 1)
    c_m, cov_m = _moments(moving, moving_grid)
    c_f, cov_f = _moments(fixed, fixed_grid)
    if init == "com":
        return _homogeneous(np.eye(ndim), c_m - c_f)
    if init != "moments":
        raise ValueError(f"unknown affine initialisation {init!r}; use none, com or moments")
    if score is None:
        raise ValueError("init='moments' needs a score function to choose the axis signs")
    val_m, vec_m = np.linalg.eigh(cov_m)
    val_f, vec_f = np.linalg.eigh(cov_f)
    scale = np.sqrt(np.maximum(val_m, 1e-12) / np.maximum(val_f, 1e-12))
    candidates = []
    for signs in itertools.product((1.0, -1.0), repeat=ndim):
        linear = vec_m @ np.diag(np.asarray(signs) * scale) @ vec_f.T
        if np.linalg.det(linear) > 0:
            candidates.append(_homogeneous(linear, c_m - linear @ c_f))
    return min(candidates, key=score)


class _AffineParameters(nn.Module):
    """Rotation, log-scale, shear and translation (mm) about ``centre``, after ``init``."""

    def __init__(self, ndim: int, init: np.ndarray, centre: np.ndarray, device: torch.device):
        super().__init__()
        n_pairs = ndim * (ndim - 1) // 2
        self.rotation = nn.Parameter(torch.zeros(n_pairs, device=device, dtype=torch.float64))
        self.log_scale = nn.Parameter(torch.zeros(ndim, device=device, dtype=torch.float64))
        self.shear = nn.Parameter(torch.zeros(n_pairs, device=device, dtype=torch.float64))
        self.translation = nn.Parameter(torch.zeros(ndim, device=device, dtype=torch.float64))
        self.register_buffer("init", torch.as_tensor(init, dtype=torch.float64, device=device))
        self.register_buffer("centre", torch.as_tensor(centre, dtype=torch.float64, device=device))
        self.pairs = torch.triu_indices(ndim, ndim, offset=1, device=device)
        self.ndim = ndim

    def forward(self) -> Tensor:
        n = self.ndim
        eye = torch.eye(n, dtype=torch.float64, device=self.centre.device)
        skew = torch.zeros(n, n, dtype=torch.float64, device=eye.device).index_put((self.pairs[0], self.pairs[1]), self.rotation)
        upper = torch.zeros_like(skew).index_put((self.pairs[0], self.pairs[1]), self.shear)
        linear = torch.matrix_exp(skew - skew.T) @ torch.diag(self.log_scale.exp()) @ (eye + upper)
        shift = self.centre - linear @ self.centre + self.translation
        bottom = torch.zeros(1, n + 1, dtype=torch.float64, device=eye.device)
        bottom[0, n] = 1.0
        return self.init @ torch.cat([torch.cat([linear, shift[:, None]], 1), bottom], 0)


def _pool(image: Tensor, factor: int) -> Tensor:
    if factor == 1:
        return image
    pool = F.avg_pool2d if image.dim() == 4 else F.avg_pool3d
    return pool(image, factor)


class _LevelLoss:
    """The similarity loss of one pyramid level as a function of the world map
    ``(ndim + 1)²`` (float64 tensor): ``moving`` resampled at fixed-grid points.

    NCC compares local windows, so it uses every voxel of the level. Mutual information is
    a global histogram statistic: it uses at most ``max_points`` voxels (a seeded random
    subset when the level has more), and the fixed image's Parzen weights are computed
    once here rather than at every step.
    """

    def __init__(self, fixed: Tensor, fixed_grid: Grid, moving: Tensor, moving_grid: Grid, similarity: str,
                 max_points: int, seed: int = 0) -> None:
        from ..losses import NCC, mutual_information_of_weights, parzen_weights

        device = fixed.device
        voxels = voxel_grid(fixed_grid.shape, torch.float64, device).reshape(fixed_grid.ndim, -1)
        self.moving, self.shape = moving, fixed_grid.shape
        self.to_moving = torch.as_tensor(np.linalg.inv(moving_grid.affine), device=device)
        self.compare: Callable[[Tensor], Tensor]
        if similarity == "ncc":
            ncc = NCC(window=9)
            self.compare = lambda warped: ncc(warped, fixed)
        elif similarity == "mi":
            if voxels.shape[1] > max_points:
                chosen = torch.randperm(voxels.shape[1], generator=torch.Generator().manual_seed(seed))[:max_points]
                voxels = voxels[:, chosen.to(device)]
            self.shape = (voxels.shape[1],) + (1,) * (fixed_grid.ndim - 1)
            fixed_weights = parzen_weights(sample(fixed, voxels.reshape(-1, *self.shape)).reshape(1, -1))
            self.compare = lambda warped: mutual_information_of_weights(parzen_weights(warped.reshape(1, -1)),
                                                                        fixed_weights)
        else:
            raise ValueError(f"unknown affine similarity {similarity!r}; use ncc or mi")
        self.world = torch.as_tensor(fixed_grid.affine, device=device) @ torch.cat([voxels, torch.ones_like(voxels[:1])])

    def __call__(self, matrix: Tensor) -> Tensor:
        coords = (self.to_moving @ matrix @ self.world)[:-1].reshape(-1, *self.shape).float()
        return self.compare(sample(self.moving, coords))


def _schedule(ndim: int, levels: Sequence[int] | None, iterations: Sequence[int] | None
              ) -> tuple[Sequence[int], Sequence[int]]:
    default_levels, default_iterations = ((4, 2), (100, 50)) if ndim == 3 else ((4, 2, 1), (100, 50, 50))
    levels = default_levels if levels is None else levels
    if iterations is None:
        iterations = default_iterations if tuple(levels) == default_levels else (100,) + (50,) * (len(levels) - 1)
    return levels, iterations


def _optimise_level(params: _AffineParameters, loss_of: _LevelLoss, steps: int, lr: float,
                    tolerance: float = 0.0, patience: int = 10) -> float:
    """Up to ``steps`` Adam steps (cosine-decayed from ``lr`` for rotation, log-scale and
    shear, ``lr × 100`` mm for translation) on ``params``, stopping early once the loss has
    improved by less than ``tolerance`` over the last ``patience`` steps (0: never) → the
    level's loss at the end."""
    optimiser = torch.optim.Adam([
        {"params": [params.rotation, params.log_scale, params.shear], "lr": lr},
        {"params": [params.translation], "lr": lr * 100},
    ])
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, max(steps, 1), eta_min=0.0)
    history: list[float] = []
    for _ in range(steps):
        optimiser.zero_grad()
        loss = loss_of(params())
        loss.backward()
        optimiser.step()
        schedule.step()
        history.append(float(loss.detach()))
        if tolerance > 0 and len(history) > patience and history[-patience - 1] - min(history[-patience:]) < tolerance:
            break
    with torch.no_grad():
        return float(loss_of(params()))


def affine_align(
    moving: Tensor,
    moving_grid: Grid,
    fixed: Tensor,
    fixed_grid: Grid,
    similarity: str = "ncc",
    init: str | np.ndarray | Sequence[str | np.ndarray] = "com",
    levels: Sequence[int] | None = None,
    iterations: Sequence[int] | None = None,
    lr: float = 0.01,
    max_points: int = MI_POINTS,
    tolerance: float = TOLERANCE,
) -> AffineResult:
    """Affine pre-alignment of ``moving`` ``(1, 1, *Sm)`` on ``moving_grid`` to ``fixed``
    ``(1, 1, *Sf)`` on ``fixed_grid`` (intensities comparable, e.g. both in [0, 1]).

    ``levels``: pooling factors, coarse to fine, with ``iterations`` Adam steps each
    (cosine-decayed); default ``(4, 2)`` × ``(100, 50)`` in 3-D (the full resolution adds
    time, not accuracy, for an affine map) and ``(4, 2, 1)`` × ``(100, 50, 50)`` in 2-D.
    ``lr`` is the first step for rotation (rad), log-scale and shear at the coarsest level,
    ``lr × 100`` mm for translation; finer levels scale it by ``factor / levels[0]``. ``init``: a start of :func:`initial_transform`, or several:
    each is optimised through the first level and the one of lowest loss continues (e.g.
    ``[learned_matrix, "com"]``: a wrong network estimate is dropped when the
    centre-of-mass start fits better). ``max_points``: the most voxels per level that
    mutual information samples (:class:`_LevelLoss`); ``tolerance``: a level stops once its
    loss improved by less than this over its last 10 steps (0: every step runs). Returns
    the world map fixed → moving (see module docstring).
    """
    levels, iterations = _schedule(fixed_grid.ndim, levels, iterations)
    if len(levels) != len(iterations):
        raise ValueError(f"levels {tuple(levels)} and iterations {tuple(iterations)} differ in length")
    pyramid = [_LevelLoss(_pool(fixed, factor), fixed_grid.pooled(factor), _pool(moving, factor),
                          moving_grid.pooled(factor), similarity, max_points) for factor in levels]

    def score(matrix: np.ndarray) -> float:
        with torch.no_grad():
            return float(pyramid[0](torch.as_tensor(matrix, device=fixed.device)))

    starts = list(init) if isinstance(init, (list, tuple)) else [init]
    if not starts:
        raise ValueError("init: give at least one starting point")
    centre = _moments(fixed, fixed_grid)[0]
    candidates = []
    for start in starts:  # each start through the first level; the lowest loss goes on
        params = _AffineParameters(fixed_grid.ndim, initial_transform(moving, moving_grid, fixed, fixed_grid, start,
                                                                      score), centre, fixed.device)
        candidates.append((_optimise_level(params, pyramid[0], iterations[0], lr, tolerance), params))
    first_loss, params = min(candidates, key=lambda c: c[0])
    losses = [first_loss]
    for level in range(1, len(levels)):
        losses.append(_optimise_level(params, pyramid[level], iterations[level], lr * levels[level] / levels[0],
                                      tolerance))
    return AffineResult(matrix=params().detach().cpu().numpy(), losses=losses)
