"""ITK transform files → world maps in RAS millimetres, for ``transreg apply``.

Two kinds of file, as ANTs, ITK and SimpleITK write them:

- a displacement field (:func:`read_displacement_itk`): 5-D NIfTI ``(X, Y, Z, 1, 3)``
  (``(X, Y, 1, 1, 2)`` in 2-D), vectors ``d(p)`` in LPS mm; the point ``p`` maps to
  ``p + d(p)`` (``displacement_itk.nii.gz``, ANTs ``*Warp.nii.gz``);
- a linear transform (:func:`read_itk_linear`): ANTs' ``0GenericAffine.mat`` (MATLAB
  binary, one variable ``<Type>_<double|float>_<n>_<n>`` with the parameters and one
  ``fixed`` with the fixed parameters) or an ITK text file (``.txt`` / ``.tfm``: lines
  ``Transform:``, ``Parameters:``, ``FixedParameters:``). ITK's map is, in LPS mm,
  ``x → A (x - c) + c + t`` with the matrix ``A``, the centre ``c`` (the fixed
  parameters) and the translation ``t``; the supported types and their parameters are in
  ``LINEAR_TYPES``. A text file holding a ``CompositeTransform`` of linear transforms is
  their product, the last listed applied first (ITK's composite order).

Both become maps of RAS points (the LPS ↔ RAS flip ``diag(-1, -1, 1)`` on either side):
:class:`AffineMap` (an ``(n + 1)²`` matrix) and :class:`DisplacementField`. Every problem
(missing file, unreadable file, unsupported type, wrong parameter count) raises
``FileNotFoundError`` or :class:`ImageError` with one line naming the file.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
import torch
from torch import Tensor

from .io import RAS_TO_LPS, ImageError
from .preprocess import Grid, spatial_affine

__all__ = ["LINEAR_TYPES", "AffineMap", "DisplacementField", "read_displacement_itk", "read_itk_linear",
           "read_transform"]


@dataclass(frozen=True, eq=False)
class AffineMap:
    """``matrix`` ``(n + 1)²``: RAS point (output side) → RAS point (moving side)."""

    matrix: np.ndarray = field(repr=False)
    source: str = "affine"

    @property
    def ndim(self) -> int:
        return self.matrix.shape[0] - 1


@dataclass(frozen=True, eq=False)
class DisplacementField:
    """``displacement`` ``(n, *S)`` RAS mm on the file's grid (``affine``: its 4×4 voxel → RAS)."""

    displacement: Tensor = field(repr=False)
    affine: np.ndarray = field(repr=False)
    source: str = "displacement field"

    @property
    def ndim(self) -> int:
        return self.displacement.shape[0]

    @property
    def grid(self) -> Grid:
        return Grid(tuple(self.displacement.shape[1:]), spatial_affine(self.affine, self.ndim))


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


# ---------------------------------------------------------------------------------------
# displacement fields


def read_displacement_itk(path: str | os.PathLike[str]) -> tuple[Tensor, np.ndarray]:
    """An ITK displacement field → ``(ndim, *S)`` float64 displacement in RAS mm, and the
    file's 4×4 voxel → RAS affine. A folder is read as ``transreg register``'s output (its ``displacement_itk.nii.gz``)."""
    path = Path(path)
    if path.is_dir():
        path = path / "displacement_itk.nii.gz"
    if not path.is_file():
        raise FileNotFoundError(f"transform file not found: {path}")
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj, dtype=np.float64)
    except Exception as err:  # nibabel raises several types for unreadable files
        raise ImageError(f"transform {path} is not a readable NIfTI file: {_one_line(err)}") from None
    shape = data.shape
    if len(shape) != 5 or shape[3] != 1 or shape[4] not in (2, 3) or (shape[4] == 2 and shape[2] != 1):
        hint = " (displacement_voxel.nii.gz holds voxel units: use displacement_itk.nii.gz)" if len(shape) == 4 else ""
        raise ImageError(f"transform {path} has shape {shape}; an ITK displacement field is 5-D (X, Y, Z, 1, 3) "
                         f"or (X, Y, 1, 1, 2){hint}")
    ndim = shape[4]
    vectors = data[:, :, :, 0, :] if ndim == 3 else data[:, :, 0, 0, :]
    if not np.all(np.isfinite(vectors)):
        raise ImageError(f"transform {path} contains NaN or infinite displacements")
    ras = np.moveaxis(vectors, -1, 0) * RAS_TO_LPS[:ndim].reshape(ndim, *([1] * ndim))
    return torch.from_numpy(ras), np.asarray(img.affine, dtype=np.float64)


# ---------------------------------------------------------------------------------------
# linear transforms: parameters → (A, t, c) in LPS


def _rotation_2d(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s], [s, c]])


def _euler_3d(angles: np.ndarray, zyx: bool) -> np.ndarray:
    """ITK's Euler3DTransform: ``Rz Rx Ry`` (default) or ``Rz Ry Rx`` (ComputeZYX)."""
    (cx, cy, cz), (sx, sy, sz) = np.cos(angles), np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx if zyx else rz @ rx @ ry


def _versor(v: np.ndarray) -> np.ndarray:
    """The rotation of the unit quaternion with vector part ``v`` (ITK's versor parameters)."""
    norm2 = float(v @ v)
    if norm2 > 1 + 1e-12:
        raise ValueError(f"versor parameters {v.tolist()} have norm > 1")
    w = np.sqrt(max(0.0, 1.0 - norm2))
    x, y, z = v
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def _matrix_offset(p: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    return p[: n * n].reshape(n, n), p[n * n:]


# name → (dimensions, number of parameters(n), number of fixed parameters(n), (params, fixed, n) → (A, t))
_Spec = tuple[tuple[int, ...], Callable[[int], int], Callable[[int], tuple[int, ...]],
              Callable[[np.ndarray, np.ndarray, int], tuple[np.ndarray, np.ndarray]]]
LINEAR_TYPES: dict[str, _Spec] = {
    "AffineTransform": ((2, 3), lambda n: n * n + n, lambda n: (n,), lambda p, f, n: _matrix_offset(p, n)),
    "MatrixOffsetTransformBase": ((2, 3), lambda n: n * n + n, lambda n: (n,), lambda p, f, n: _matrix_offset(p, n)),
    "TranslationTransform": ((2, 3), lambda n: n, lambda n: (0,), lambda p, f, n: (np.eye(n), p)),
    "Euler2DTransform": ((2,), lambda n: 3, lambda n: (2,), lambda p, f, n: (_rotation_2d(p[0]), p[1:])),
    "Rigid2DTransform": ((2,), lambda n: 3, lambda n: (2,), lambda p, f, n: (_rotation_2d(p[0]), p[1:])),
    "Similarity2DTransform": ((2,), lambda n: 4, lambda n: (2,), lambda p, f, n: (p[0] * _rotation_2d(p[1]), p[2:])),
    "Euler3DTransform": ((3,), lambda n: 6, lambda n: (3, 4),
                         lambda p, f, n: (_euler_3d(p[:3], len(f) == 4 and bool(f[3])), p[3:])),
    "VersorRigid3DTransform": ((3,), lambda n: 6, lambda n: (3,), lambda p, f, n: (_versor(p[:3]), p[3:])),
    "Similarity3DTransform": ((3,), lambda n: 7, lambda n: (3,), lambda p, f, n: (p[6] * _versor(p[:3]), p[3:6])),
}
_NAME = re.compile(r"^(\w+?)_(double|float)_(\d+)_(\d+)$")


def _lps_matrix(name: str, params: np.ndarray, fixed: np.ndarray, path: Path) -> np.ndarray:
    """One ITK linear transform → its ``(n + 1)²`` LPS matrix ``x → A (x - c) + c + t``."""
    match = _NAME.match(name)
    if not match:
        raise ImageError(f"transform {path}: {name!r} is not an ITK transform name (like AffineTransform_double_3_3)")
    kind, _, n_in, n_out = match.group(1), match.group(2), int(match.group(3)), int(match.group(4))
    if kind not in LINEAR_TYPES:
        raise ImageError(f"transform {path} is an ITK {kind}, which transreg apply does not read "
                         f"(linear types: {', '.join(LINEAR_TYPES)}; or a displacement field .nii.gz)")
    dims, n_params, n_fixed, to_matrix = LINEAR_TYPES[kind]
    n = n_in
    if n_in != n_out or n not in dims:
        raise ImageError(f"transform {path} is {name}: {n_in}-D → {n_out}-D; transreg reads {kind} in "
                         f"{' or '.join(f'{d}-D' for d in dims)}")
    params = np.asarray(params, dtype=np.float64).ravel()
    fixed = np.asarray(fixed, dtype=np.float64).ravel()
    if params.size != n_params(n) or fixed.size not in n_fixed(n):
        raise ImageError(f"transform {path} ({name}) has {params.size} parameters and {fixed.size} fixed parameters; "
                         f"expected {n_params(n)} and {' or '.join(map(str, n_fixed(n)))}")
    if not (np.all(np.isfinite(params)) and np.all(np.isfinite(fixed))):
        raise ImageError(f"transform {path} ({name}) has NaN or infinite parameters")
    try:
        a, t = to_matrix(params, fixed, n)
    except ValueError as err:
        raise ImageError(f"transform {path} ({name}): {err}") from None
    c = fixed[:n] if fixed.size else np.zeros(n)
    out = np.eye(n + 1)
    out[:n, :n] = a
    out[:n, n] = c + t - a @ c
    return out


def _read_mat(path: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    from scipy.io import loadmat

    try:
        content = loadmat(str(path))
    except Exception as err:  # scipy raises several types for files it cannot parse
        raise ImageError(f"transform {path} is not a readable ITK .mat transform file: {_one_line(err)}") from None
    names = [k for k in content if not k.startswith("__") and k != "fixed"]
    if len(names) != 1 or "fixed" not in content or not _NAME.match(names[0]):
        found = ", ".join(k for k in content if not k.startswith("__")) or "nothing"
        raise ImageError(f"transform {path} holds no ITK transform (a variable like AffineTransform_double_3_3 "
                         f"and one named fixed); found {found}")
    return [(names[0], content[names[0]], content["fixed"])]


def _read_text(path: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ImageError(f"transform {path} is not a readable ITK text transform file: {_one_line(err)}") from None
    entries: list[dict[str, str]] = []
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition(":")
        if not sep or key.strip() not in ("Transform", "Parameters", "FixedParameters"):
            raise ImageError(f"transform {path} line {number} is not an ITK transform file line: {line[:60]!r}")
        key = key.strip()
        if key == "Transform":
            entries.append({"Transform": value.strip()})
        elif not entries or key in entries[-1]:
            raise ImageError(f"transform {path} line {number}: unexpected {key} line (not after a Transform line)")
        else:
            entries[-1][key] = value
    if entries and entries[0]["Transform"].startswith("CompositeTransform_") and len(entries[0]) == 1:
        entries = entries[1:]  # its members follow, first added first
    if not entries:
        raise ImageError(f"transform {path} holds no ITK transform (no 'Transform:' line)")
    out = []
    for entry in entries:
        if "Parameters" not in entry or "FixedParameters" not in entry:
            raise ImageError(f"transform {path}: {entry['Transform']} lacks its Parameters or FixedParameters line")
        try:
            params, fixed = (np.array([float(v) for v in entry[k].split()]) for k in ("Parameters", "FixedParameters"))
        except ValueError as err:
            raise ImageError(f"transform {path} ({entry['Transform']}) has a non-numeric parameter: {err}") from None
        out.append((entry["Transform"], params, fixed))
    return out


def read_itk_linear(path: str | os.PathLike[str], inverse: bool = False) -> np.ndarray:
    """An ITK linear transform file (``.mat``, ``.txt``, ``.tfm``) → its ``(n + 1)²`` map of
    RAS points (with ``inverse``: the inverse map, as antsApplyTransforms' ``[file,1]``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"transform file not found: {path}")
    items = _read_mat(path) if path.suffix.lower() == ".mat" else _read_text(path)
    matrices = [_lps_matrix(name, params, fixed, path) for name, params, fixed in items]
    if len({m.shape for m in matrices}) > 1:
        raise ImageError(f"transform {path} mixes 2-D and 3-D transforms")
    lps = matrices[0]
    for m in matrices[1:]:  # a composite applies its last transform first
        lps = lps @ m
    n = lps.shape[0] - 1
    flip = np.diag([*RAS_TO_LPS[:n], 1.0])
    ras = flip @ lps @ flip
    if inverse:
        if abs(np.linalg.det(ras[:n, :n])) < 1e-12:
            raise ImageError(f"transform {path} is singular and has no inverse")
        ras = np.linalg.inv(ras)
    return ras


def read_transform(path: str | os.PathLike[str], inverse: bool = False) -> AffineMap | DisplacementField:
    """One transform file: a displacement field (``.nii`` / ``.nii.gz`` or a ``transreg
    register`` output folder) or an ITK linear transform (``.mat``, ``.txt``, ``.tfm``)."""
    path = Path(path)
    name = path.name.lower()
    if path.is_dir() or name.endswith((".nii", ".nii.gz")):
        if inverse:
            raise ImageError(f"transform {path}: a displacement field cannot be inverted here; use the inverse "
                             "field (ANTs writes *InverseWarp.nii.gz)")
        displacement, affine = read_displacement_itk(path)
        return DisplacementField(displacement, affine, str(path))
    if name.endswith((".mat", ".txt", ".tfm")):
        return AffineMap(read_itk_linear(path, inverse), f"[{path},1]" if inverse else str(path))
    if not path.exists():
        raise FileNotFoundError(f"transform file not found: {path}")
    hint = " (HDF5 transform files are not read: write .mat or .txt)" if name.endswith((".h5", ".hdf5")) else ""
    raise ImageError(f"transform {path}: unknown kind{hint}; expected a displacement field (.nii, .nii.gz) or an "
                     "ITK linear transform (.mat, .txt, .tfm)")
