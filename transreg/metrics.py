"""Evaluation metrics: Dice, HD95, folding, SDlogJ, non-diffeomorphic volume, TRE.

All functions evaluate **one pair** and accept numpy arrays or torch tensors.

- Label maps: ``(*spatial)`` or with leading singleton batch/channel dims
  (``(1, 1, *spatial)``), integer values (float maps holding integers are accepted).
- Flows: a displacement ``(ndim, *spatial)`` or ``(1, ndim, *spatial)`` in voxels on the
  fixed grid (the transreg convention, see :mod:`transreg.spatial`).
- Spacing: millimetres per voxel, one number or one per spatial axis.

Aggregation over pairs: :func:`summarize` (mean, std, DSC30 = mean of the worst 30 %).
"""
from __future__ import annotations

import math
from itertools import product
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from transreg.spatial import jacobian_determinant

__all__ = [
    "ASEG_EVAL_LABELS",
    "aseg_eval_labels",
    "aseg_lr_groups",
    "dice",
    "hd95",
    "structure_mean",
    "folding_percent",
    "sdlogj",
    "non_diffeomorphic_volume",
    "tre",
    "summarize",
]

# The 30 FreeSurfer aseg labels brain-registration papers report Dice on (VoxelMorph's
# data/labels.npz, copied to ../shared/data/eval_labels/aseg_eval_labels.npz).
ASEG_EVAL_LABELS: tuple[int, ...] = (
    2, 3, 4, 7, 8, 10, 11, 12, 13, 14, 15, 16, 17, 18, 24, 28, 31,
    41, 42, 43, 46, 47, 49, 50, 51, 52, 53, 54, 60, 63,
)  # fmt: skip

_DEFAULT_ASEG_FILE = Path(__file__).resolve().parents[2] / "shared" / "data" / "eval_labels" / "aseg_eval_labels.npz"

# FreeSurfer colour-table names of the structures (left label, right label or None).
_ASEG_STRUCTURES: dict[str, tuple[int, ...]] = {
    "cerebral-white-matter": (2, 41),
    "cerebral-cortex": (3, 42),
    "lateral-ventricle": (4, 43),
    "inf-lat-ventricle": (5, 44),
    "cerebellum-white-matter": (7, 46),
    "cerebellum-cortex": (8, 47),
    "thalamus": (10, 49),
    "caudate": (11, 50),
    "putamen": (12, 51),
    "pallidum": (13, 52),
    "3rd-ventricle": (14,),
    "4th-ventricle": (15,),
    "brain-stem": (16,),
    "hippocampus": (17, 53),
    "amygdala": (18, 54),
    "csf": (24,),
    "accumbens-area": (26, 58),
    "ventral-dc": (28, 60),
    "vessel": (30, 62),
    "choroid-plexus": (31, 63),
}


def aseg_eval_labels(path: str | Path | None = None) -> tuple[int, ...]:
    """The 30 aseg evaluation labels, read from ``path`` (an ``.npz`` with ``labels``).

    Without ``path`` the development copy ``../shared/data/eval_labels/aseg_eval_labels.npz``
    is read when it exists, else the built-in :data:`ASEG_EVAL_LABELS` is returned.
    """
    if path is None:
        if not _DEFAULT_ASEG_FILE.is_file():
            return ASEG_EVAL_LABELS
        path = _DEFAULT_ASEG_FILE
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label file not found: {path}")
    with np.load(path) as data:
        if "labels" not in data.files:
            raise ValueError(f"{path} has no 'labels' array (found {data.files})")
        return tuple(int(v) for v in np.asarray(data["labels"]).ravel())


def aseg_lr_groups(labels: Sequence[int] | None = None) -> dict[str, tuple[int, ...]]:
    """Left/right-merged aseg structures restricted to ``labels`` (default: the 30).

    Returns ``{name: labels}``, e.g. ``{"thalamus": (10, 49), "brain-stem": (16,), ...}``
    (17 structures for the 30 evaluation labels), for ``dice(..., groups=...)``.
    """
    wanted = set(aseg_eval_labels() if labels is None else (int(v) for v in labels))
    groups = {}
    for name, members in _ASEG_STRUCTURES.items():
        kept = tuple(v for v in members if v in wanted)
        if kept:
            groups[name] = kept
    return groups


# --------------------------------------------------------------------------- inputs


def _to_numpy(x: Any, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        return x
    raise TypeError(f"{name} must be a numpy array or torch tensor, got {type(x).__name__}")


def _label_map(x: Any, name: str, ndim: int | None) -> np.ndarray:
    arr = _to_numpy(x, name)
    while arr.ndim > (ndim or 2) and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim not in (2, 3) or (ndim is not None and arr.ndim != ndim):
        want = f"{ndim}-D" if ndim else "2-D or 3-D"
        raise ValueError(f"{name} must be a {want} label map (leading singleton dims allowed), got shape {_to_numpy(x, name).shape}")
    if arr.dtype == bool:
        return arr.astype(np.int64)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.round(arr)):
            raise ValueError(f"{name} must hold integer labels, got non-integer values")
        return arr.astype(np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must hold integer labels, got dtype {arr.dtype}")
    return arr


def _label_pair(pred: Any, true: Any, ndim: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    p, t = _label_map(pred, "pred", ndim), _label_map(true, "true", ndim)
    if p.shape != t.shape:
        raise ValueError(f"pred and true label maps differ in shape: {p.shape} vs {t.shape}")
    return p, t


def _structures(
    pred: np.ndarray, true: np.ndarray, labels: Sequence[int] | None, groups: Mapping[Any, Sequence[int]] | None
) -> list[tuple[Any, tuple[int, ...]]]:
    """``[(key, member labels)]``: groups as given, else one entry per label."""
    if groups is not None:
        if labels is not None:
            raise ValueError("give labels or groups, not both")
        return [(key, tuple(int(v) for v in members)) for key, members in groups.items()]
    if labels is None:
        labels = [int(v) for v in np.union1d(np.unique(pred), np.unique(true)) if v != 0]
    return [(int(v), (int(v),)) for v in labels]


def _mask(labels_map: np.ndarray, members: tuple[int, ...]) -> np.ndarray:
    return labels_map == members[0] if len(members) == 1 else np.isin(labels_map, members)


def _spacing(spacing: float | Sequence[float], ndim: int) -> tuple[float, ...]:
    values = (float(spacing),) * ndim if np.isscalar(spacing) else tuple(float(s) for s in spacing)
    if len(values) != ndim or any(not s > 0 for s in values):
        raise ValueError(f"spacing must be {ndim} positive numbers (mm per voxel), got {spacing}")
    return values


# --------------------------------------------------------------------------- overlap


def dice(
    pred_labels: Any,
    true_labels: Any,
    labels: Sequence[int] | None = None,
    groups: Mapping[Any, Sequence[int]] | None = None,
) -> dict[Any, float]:
    """Dice ``2|P∩T| / (|P| + |T|)`` per label: ``{label: dice}``.

    ``labels`` default: every non-zero label present in either map. A structure absent
    from both maps gives NaN (left out by :func:`structure_mean`). ``groups``
    (``{name: [labels]}``, e.g. :func:`aseg_lr_groups`) merges labels into one structure
    (union of their masks) and keys the result by group name.
    """
    pred, true = _label_pair(pred_labels, true_labels)
    in_pred, in_true, in_both = (_histogram(x) for x in (pred, true, pred[pred == true]))
    if labels is None and groups is None:
        labels = sorted((in_pred.keys() | in_true.keys()) - {0})
    out = {}
    for key, members in _structures(pred, true, labels, groups):
        if len(members) == 1:  # one label: counted once for all labels above
            label = members[0]
            p, t, both = in_pred.get(label, 0), in_true.get(label, 0), in_both.get(label, 0)
        else:
            pm, tm = _mask(pred, members), _mask(true, members)
            p, t, both = int(pm.sum()), int(tm.sum()), int(np.logical_and(pm, tm).sum())
        out[key] = 2.0 * both / (p + t) if p + t else math.nan
    return out


def _histogram(values: np.ndarray) -> dict[int, int]:
    """``{label: voxel count}`` of an integer array (``np.bincount`` for small non-negative labels)."""
    if values.size and values.min() >= 0 and values.max() < 1 << 20:
        counts = np.bincount(values.ravel())
        keys = np.flatnonzero(counts)
        return dict(zip(keys.tolist(), counts[keys].tolist()))
    keys, counts = np.unique(values, return_counts=True)
    return dict(zip(keys.tolist(), counts.tolist()))


def structure_mean(scores: Mapping[Any, float]) -> float:
    """Mean over structures, NaN (absent) structures left out; NaN if none is left."""
    values = np.array([v for v in scores.values() if not math.isnan(v)], dtype=np.float64)
    return float(values.mean()) if values.size else math.nan


def _surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with a face neighbour outside it (the image edge counts as outside)."""
    from scipy import ndimage  # HD95 and TRE only: importing scipy.ndimage costs start-up time

    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def _hd95_masks(a: np.ndarray, b: np.ndarray, spacing: tuple[float, ...]) -> float:
    has_a, has_b = bool(a.any()), bool(b.any())
    if not (has_a or has_b):
        return math.nan
    if not (has_a and has_b):
        return math.inf
    # both surfaces lie in the bounding box of a | b; one voxel of margin keeps erosion exact
    coords = np.nonzero(a | b)
    box = tuple(slice(max(int(c.min()) - 1, 0), int(c.max()) + 2) for c in coords)
    sa, sb = _surface(a[box]), _surface(b[box])
    from scipy import ndimage

    to_b = ndimage.distance_transform_edt(~sb, sampling=spacing)[sa]
    to_a = ndimage.distance_transform_edt(~sa, sampling=spacing)[sb]
    return float(np.percentile(np.concatenate([to_b, to_a]), 95))


def hd95(
    pred: Any,
    true: Any,
    labels: Sequence[int] | None = None,
    spacing: float | Sequence[float] = 1.0,
    groups: Mapping[Any, Sequence[int]] | None = None,
) -> dict[Any, float]:
    """95th-percentile symmetric Hausdorff distance in mm per label: ``{label: hd95}``.

    Surface voxels are the voxels of a structure with a face neighbour outside it. The
    distances (Euclidean, with ``spacing`` in mm per voxel) from every surface voxel of
    ``pred`` to the surface of ``true`` and from every surface voxel of ``true`` to the
    surface of ``pred`` are pooled and their 95th percentile (linear interpolation) is
    returned — the MedPy ``hd95`` definition. NaN when the structure is absent from both
    maps, ``inf`` when it is absent from exactly one. ``labels``/``groups`` as in
    :func:`dice`.
    """
    ndim = None if np.isscalar(spacing) else len(spacing)
    pred_map, true_map = _label_pair(pred, true, ndim)
    sp = _spacing(spacing, pred_map.ndim)
    return {
        key: _hd95_masks(_mask(pred_map, members), _mask(true_map, members), sp)
        for key, members in _structures(pred_map, true_map, labels, groups)
    }


# --------------------------------------------------------------------------- flows


def _flow(flow: Any) -> torch.Tensor:
    """``(ndim, *S)`` or ``(1, ndim, *S)`` numpy/torch → float32 tensor ``(1, ndim, *S)``."""
    t = flow.detach().cpu() if isinstance(flow, torch.Tensor) else torch.as_tensor(_to_numpy(flow, "flow"))
    if t.dim() in (3, 4) and t.shape[0] == t.dim() - 1:
        t = t.unsqueeze(0)
    if t.dim() not in (4, 5) or t.shape[0] != 1 or t.shape[1] != t.dim() - 2:
        raise ValueError(
            f"flow must be one displacement (ndim, *spatial) or (1, ndim, *spatial) with ndim 2 or 3, "
            f"got shape {tuple(t.shape)}; evaluate a batch one field at a time"
        )
    if not torch.is_floating_point(t):
        raise ValueError(f"flow must be floating point, got {t.dtype}")
    return t.float()


def _flow_mask(mask: Any, shape: tuple[int, ...]) -> np.ndarray:
    m = _to_numpy(mask, "mask")
    while m.ndim > len(shape) and m.shape[0] == 1:
        m = m[0]
    if m.shape != shape:
        raise ValueError(f"mask shape {m.shape} does not match the flow's spatial shape {shape}")
    return m.astype(bool)


def folding_percent(flow: Any, mask: Any | None = None) -> float:
    """Percentage of voxels whose Jacobian determinant is ``<= 0`` (central differences).

    ``det J`` of ``x ↦ x + flow(x)`` from :func:`transreg.spatial.jacobian_determinant`
    (central differences inside, one-sided at the borders), over the whole grid or the
    voxels of ``mask``.
    """
    jac = jacobian_determinant(_flow(flow))[0].numpy()
    if mask is not None:
        jac = jac[_flow_mask(mask, jac.shape)]
    if jac.size == 0:
        raise ValueError("mask selects no voxel")
    return float(100.0 * np.count_nonzero(jac <= 0) / jac.size)


def sdlogj(flow: Any, mask: Any | None = None, offset: float = 3.0, crop: int = 2) -> float:
    """Standard deviation of the log Jacobian determinant, as the Learn2Reg evaluation.

    The Learn2Reg challenge script computes ``det J`` by central differences, drops
    ``crop = 2`` voxels at every border, adds ``offset = 3`` to the determinant, clips to
    ``[1e-9, 1e9]`` and returns ``std(log(.))`` (population std). Use ``offset=0`` for
    the plain ``std(log(clip(det J)))``. ``mask`` (spatial shape of the flow) restricts
    the voxels. Identity and affine fields give 0.
    """
    t = _flow(flow)
    if crop < 1 or any(n <= 2 * crop for n in t.shape[2:]):
        raise ValueError(f"crop must be >= 1 and leave voxels inside the grid {tuple(t.shape[2:])}, got {crop}")
    inner = tuple(slice(crop, -crop) for _ in t.shape[2:])
    jac = jacobian_determinant(t)[0].double().numpy()[inner]
    if mask is not None:
        jac = jac[_flow_mask(mask, tuple(t.shape[2:]))[inner]]
    if jac.size == 0:
        raise ValueError("mask selects no voxel")
    return float(np.log(np.clip(jac + offset, 1e-9, 1e9)).std())


def _simplices(ndim: int) -> list[tuple[tuple[int, ...], ...]]:
    """Vertex offsets of the simplices of two decompositions of the unit cell.

    2-D: the 4 corner triangles (each diagonal splits the square in two). 3-D: the 8
    corner tetrahedra and the 2 central ones (each parity gives a 5-tetrahedra split).
    """
    corners = list(product((0, 1), repeat=ndim))
    out = []
    for v in corners:
        nbrs = [tuple(c ^ (i == axis) for i, c in enumerate(v)) for axis in range(ndim)]
        out.append((v, *nbrs))
    if ndim == 3:
        for parity in (0, 1):
            out.append(tuple(v for v in corners if sum(v) % 2 == parity))
    return out


def non_diffeomorphic_volume(flow: Any) -> float:
    """Non-diffeomorphic volume (Liu et al., IJCV 2024), percent of the grid's volume.

    Each cell between voxel centres is split into simplices in both ways it can be
    (:func:`_simplices`); the mapped volume of every simplex whose orientation
    ``x ↦ x + flow(x)`` flips counts, averaged over the two splits. 0 for any
    fold-free piecewise-linear map; 100 for a volume-preserving reflection.
    """
    t = _flow(flow)[0].double().numpy()
    ndim, shape = t.shape[0], t.shape[1:]
    if any(n < 2 for n in shape):
        raise ValueError(f"flow needs at least 2 voxels along every axis, got {shape}")
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"))
    pos = grid + t

    def at(vertex: tuple[int, ...]) -> np.ndarray:
        return pos[(slice(None), *(slice(o, n - 1 + o) for o, n in zip(vertex, shape)))]

    inverted = np.zeros([n - 1 for n in shape])
    for simplex in _simplices(ndim):
        base = np.asarray(simplex[0])
        ref = np.linalg.det(np.stack([np.asarray(v) - base for v in simplex[1:]], axis=1).astype(float))
        edges = np.stack([at(v) - at(simplex[0]) for v in simplex[1:]], axis=-1)  # (ndim, *cells, ndim)
        signed = np.linalg.det(np.moveaxis(edges, 0, -2)) * np.sign(ref) / math.factorial(ndim)
        inverted += np.maximum(-signed, 0.0)
    return float(100.0 * 0.5 * inverted.sum() / inverted.size)


# --------------------------------------------------------------------------- landmarks


def tre(
    fixed_points: Any, moving_points: Any, flow: Any | None = None, spacing: float | Sequence[float] = 1.0
) -> np.ndarray:
    """Target registration error per landmark pair, in mm: ``(N,)``.

    ``fixed_points``/``moving_points`` ``(N, ndim)`` are voxel coordinates (fixed grid /
    moving grid, same axis order as the arrays). The fixed landmark ``x`` is mapped to
    ``x + flow(x)`` (flow sampled with linear interpolation, edge values outside), and
    the error is ``||(x + flow(x) - y) · spacing||`` with ``spacing`` that of the moving
    image (the Learn2Reg definition). Without ``flow``, the error before registration.
    """
    fixed = np.asarray(_to_numpy(fixed_points, "fixed_points"), dtype=np.float64)
    moving = np.asarray(_to_numpy(moving_points, "moving_points"), dtype=np.float64)
    if fixed.ndim != 2 or fixed.shape != moving.shape or fixed.shape[1] not in (2, 3):
        raise ValueError(
            f"fixed_points and moving_points must both be (N, 2) or (N, 3), got {fixed.shape} and {moving.shape}"
        )
    ndim = fixed.shape[1]
    mapped = fixed
    if flow is not None:
        field = _flow(flow)[0].double().numpy()
        if field.shape[0] != ndim:
            raise ValueError(f"landmarks are {ndim}-D but the flow is {field.shape[0]}-D")
        from scipy import ndimage

        disp = np.stack([ndimage.map_coordinates(c, fixed.T, order=1, mode="nearest") for c in field], axis=1)
        mapped = fixed + disp
    return np.linalg.norm((mapped - moving) * np.asarray(_spacing(spacing, ndim)), axis=1)


# --------------------------------------------------------------------------- aggregation


def summarize(values: Any, higher_is_better: bool = True, ddof: int = 0) -> dict[str, float]:
    """Aggregate one score per pair: ``{"mean", "std", "dsc30", "n"}``.

    ``dsc30`` is the mean of the worst 30 % of pairs (``ceil(0.3 n)`` pairs; lowest when
    ``higher_is_better``, e.g. Dice; highest otherwise, e.g. HD95 — the name follows the
    Dice protocol). NaN entries are dropped; ``std`` uses ``ddof`` (0: population).
    """
    arr = np.asarray(_to_numpy(values, "values") if isinstance(values, torch.Tensor) else values, dtype=np.float64).ravel()
    arr = arr[~np.isnan(arr)]
    if arr.size == 0:
        return {"mean": math.nan, "std": math.nan, "dsc30": math.nan, "n": 0}
    ordered = np.sort(arr) if higher_is_better else np.sort(arr)[::-1]
    worst = ordered[: math.ceil(0.3 * arr.size)]
    std = float(arr.std(ddof=ddof)) if arr.size > ddof else math.nan
    return {"mean": float(arr.mean()), "std": std, "dsc30": float(worst.mean()), "n": int(arr.size)}
