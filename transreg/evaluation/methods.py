"""The methods a comparison runs, each as a full registration of one native-position pair.

- ``identity``: no registration; the moving image is resampled onto the fixed grid
  through world coordinates (the two NIfTI affines).
- ``affine``: transreg's affine stage only (:func:`transreg.register` with ``affine_only``).
- a network (architecture name, checkpoint name or folder): the full
  :func:`transreg.register` pipeline — affine stage, deformable network, mapping back to
  the fixed grid.
- ``ants``: transreg's affine stage, then ANTs SyN (``antspyx``) on the affinely
  resampled moving image.

Every method returns an :class:`Alignment`: the full map from fixed voxels to moving
voxels, the affine stage's world map and the warped moving labels.
"""
from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..registration.io import Image
from ..registration.preprocess import Grid, coordinates, sample, voxel_map
from ..registration.pipeline import network_for, register
from ..registration.transform import Transform

__all__ = ["Alignment", "PairImages", "Method", "IdentityMethod", "AffineMethod", "NetworkMethod", "AntsSyNMethod",
           "ants_available", "make_method", "BASELINES"]

BASELINES = ("identity", "affine")


@dataclass
class PairImages:
    """One pair, loaded: images and label maps (:class:`transreg.registration.io.Image`)."""

    moving: Image
    fixed: Image
    moving_labels: Image
    fixed_labels: Image


@dataclass
class Alignment:
    """``coords`` ``(ndim, *fixed_shape)``: moving voxel of every fixed voxel; ``world``
    ``(ndim + 1)²``: the affine stage's world map fixed → moving (identity if none);
    ``warped_labels``: moving labels on the fixed grid (nearest neighbour)."""

    coords: Tensor
    world: np.ndarray
    warped_labels: np.ndarray


@dataclass
class Method:
    """A named method; subclasses implement :meth:`align`. ``cost`` holds parameters,
    MACs and peak memory once :meth:`measure_cost` ran (networks only)."""

    name: str
    device: torch.device
    cost: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def align(self, pair: PairImages) -> Alignment:
        raise NotImplementedError

    def measure_cost(self, shape: tuple[int, ...]) -> None:
        """Parameters, MACs and peak memory at the evaluated size (nothing for baselines)."""

    @property
    def trained(self) -> bool | None:
        """Whether the method has trained weights (``None``: not a network)."""
        return None


AFFINE_KEYS = ("world_matrix_fixed_to_moving_ras_mm", "matrix")  # report.json key, newest first


def affine_world_matrix(ndim: int, report: dict[str, Any]) -> np.ndarray:
    """The affine stage's world map (fixed → moving, RAS mm) from :func:`transreg.register`'s
    report; identity when the stage was off. A report without it is an error, never identity."""
    stage = report.get("affine") or {}
    if not stage.get("enabled", False):
        return np.eye(ndim + 1)
    for key in AFFINE_KEYS:
        if stage.get(key) is not None:
            return np.asarray(stage[key], dtype=np.float64)
    raise RuntimeError(f"transreg.register's report has no affine matrix (looked for {', '.join(AFFINE_KEYS)}); "
                       f"its affine section has {sorted(stage)}")


class IdentityMethod(Method):
    """No registration: resampling through the two images' affines."""

    def align(self, pair: PairImages) -> Alignment:
        fixed_grid, moving_grid = Grid.of(pair.fixed), Grid.of(pair.moving)
        coords = coordinates(voxel_map(fixed_grid, moving_grid), pair.fixed.shape, self.device)
        transform = Transform(coords, pair.fixed.affine, pair.moving.affine)
        return Alignment(coords, np.eye(pair.fixed.ndim + 1), transform.apply(pair.moving_labels.data, labels=True))


class AffineMethod(Method):
    """transreg's affine stage only."""

    def align(self, pair: PairImages) -> Alignment:
        result = register(pair.moving, pair.fixed, affine_only=True, moving_labels=pair.moving_labels,
                          device=self.device)
        return Alignment(result.transform.coords, affine_world_matrix(pair.fixed.ndim, result.report), result.warped_labels.data)


class NetworkMethod(Method):
    """The full :func:`transreg.register` pipeline with one deformable network.

    ``spec``: an architecture name (random initialisation), a checkpoint name, an
    ``hf-hub:``/``local-dir:`` source, a checkpoint folder, or a built model.
    """

    def __init__(self, name: str, device: torch.device, spec: str | nn.Module):
        super().__init__(name, device)
        self.spec = spec
        self.net: nn.Module | None = None

    def _network(self, ndim: int) -> nn.Module:
        if self.net is None:
            self.net = network_for(self.spec, ndim).to(self.device)
        return self.net

    @property
    def trained(self) -> bool | None:
        return None if self.net is None else getattr(self.net, "pretrained_source", None) is not None

    def align(self, pair: PairImages) -> Alignment:
        net = self._network(pair.fixed.ndim)
        result = register(pair.moving, pair.fixed, model=net, moving_labels=pair.moving_labels, device=self.device)
        self.cost.setdefault("eval_size", tuple(result.report["preprocessing"]["model_grid_shape"]))
        return Alignment(result.transform.coords, affine_world_matrix(pair.fixed.ndim, result.report), result.warped_labels.data)

    def measure_cost(self, shape: tuple[int, ...]) -> None:
        from ..registration.inference import count_flops

        net = self._network(len(shape))
        moving = torch.rand(1, 1, *shape, device=self.device)
        fixed = torch.rand(1, 1, *shape, device=self.device)
        with torch.inference_mode():
            flops = count_flops(lambda: net(moving, fixed))
        self.cost.update(parameters=sum(p.numel() for p in net.parameters()), macs=flops / 2, eval_size=tuple(shape))
        self.cost["peak_memory_mib"] = self._peak_memory(net, moving, fixed, shape)

    def _peak_memory(self, net: nn.Module, moving: Tensor, fixed: Tensor, shape: tuple[int, ...]) -> float:
        """Peak memory of one forward pass (batch 1, fp32) in MiB: CUDA peak allocated, or on
        CPU the peak resident memory of a fresh process above its size after importing torch."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            base = torch.cuda.memory_allocated(self.device)
            with torch.inference_mode():
                net(moving, fixed)
            torch.cuda.synchronize(self.device)
            return (torch.cuda.max_memory_allocated(self.device) - base
                    + sum(p.numel() * p.element_size() for p in net.parameters())) / 2**20
        if not isinstance(self.spec, str) or self.device.type != "cpu":
            self.notes.append("peak memory not measured (a model object, or a device other than cpu/cuda)")
            return math.nan
        proc = subprocess.run([sys.executable, "-m", "transreg.evaluation.memory", self.spec,
                               ",".join(map(str, shape))], capture_output=True, text=True)
        if proc.returncode != 0:
            self.notes.append(f"peak memory not measured: {proc.stderr.strip().splitlines()[-1:]}")
            return math.nan
        return float(json.loads(proc.stdout.strip().splitlines()[-1])["peak_mib"])


def ants_available() -> bool:
    """Whether ``antspyx`` (module ``ants``) can be imported."""
    return importlib.util.find_spec("ants") is not None


class AntsSyNMethod(Method):
    """transreg's affine stage, then ANTs SyN (``SyNOnly``) from the affinely resampled
    moving image to the fixed image; the two maps are composed on the fixed grid."""

    def align(self, pair: PairImages) -> Alignment:
        import ants

        affine = register(pair.moving, pair.fixed, affine_only=True, moving_labels=pair.moving_labels,
                          device=self.device)
        ndim = pair.fixed.ndim
        spacing = tuple(float(s) for s in pair.fixed.spacing)
        fixed = ants.from_numpy(np.ascontiguousarray(pair.fixed.data, dtype=np.float32), spacing=spacing)
        moving = ants.from_numpy(np.ascontiguousarray(affine.warped.data, dtype=np.float32), spacing=spacing)
        out = ants.registration(fixed, moving, type_of_transform="SyNOnly", random_seed=1)
        warp_file = next(f for f in out["fwdtransforms"] if f.endswith((".nii.gz", ".nii")))
        field_mm = ants.image_read(warp_file).numpy()  # (*S, ndim) physical displacement, identity direction
        disp = torch.as_tensor(np.moveaxis(field_mm / np.asarray(spacing), -1, 0), dtype=torch.float32,
                               device=self.device)  # fixed voxels, since the images share the fixed grid
        identity = coordinates(np.eye(ndim + 1), pair.fixed.shape, self.device)
        coords = sample(affine.transform.coords[None], identity + disp, padding="border")[0]
        transform = Transform(coords, pair.fixed.affine, pair.moving.affine)
        return Alignment(coords, affine_world_matrix(ndim, affine.report), transform.apply(pair.moving_labels.data, labels=True))


def make_method(name: str, device: torch.device) -> Method:
    """The method a command-line name stands for: ``identity``, ``affine``, ``ants`` or a
    network (anything else, resolved by :func:`transreg.register`'s model loading)."""
    if name == "identity":
        return IdentityMethod(name, device)
    if name == "affine":
        return AffineMethod(name, device)
    if name == "ants":
        if not ants_available():
            raise ValueError("method 'ants' needs antspyx: pip install 'transreg[ants]'")
        return AntsSyNMethod(name, device)
    _check_model_name(name)
    return NetworkMethod(name, device, name)


def _check_model_name(name: str) -> None:
    """Fail before any work for a name that is no architecture, checkpoint tag, source or folder."""
    from ..zoo.factory import resolve_source

    resolve_source(name)
