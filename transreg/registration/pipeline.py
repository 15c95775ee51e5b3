"""Register two scans: ``transreg.register(moving, fixed, model=...)``.

Stages: load → model → preprocess (fixed field of view on the model's grid, intensities
to [0, 1]) → affine pre-alignment (world coordinates) → deformable network → optional
instance optimisation → the full transform on the *original* fixed grid → resampling
of the original moving image (and labels) → QC (folding, Dice).

The full transform is kept as a coordinate map: for every voxel ``x`` of the original
fixed image, the moving-image voxel ``y(x) = A_m⁻¹ · W · A_g · (g + u(g))`` with
``g = A_g⁻¹ · A_f · x`` (``A_f``, ``A_m``, ``A_g`` voxel → world affines of the fixed,
moving and model grids; ``W`` the affine stage's world map; ``u`` the network's
displacement on the model grid in voxels).
"""
from __future__ import annotations

import math
import os
import time
from typing import Any, Callable, Mapping, Union

import numpy as np
import torch
from torch import Tensor, nn

from ..spatial import warp
from .affine_stage import affine_mode, affine_model_name, run_affine_stage
from .defaults import INSTANCE_OPT_WEIGHT, default_model
from .inference import Precision, predict_flow
from .io import Image, ImageError, load_image
from .preprocess import (Grid, Preprocessing, coordinates, normalize_intensity, resample_image, sample_affine,
                         voxel_map)
from .result import RegistrationResult
from .transform import AffineResampling, Transform

__all__ = ["register", "network_for", "ImageSource"]

ImageSource = Union[str, "os.PathLike[str]", Image]  # a NIfTI path or a loaded image
#: how far (mm, per affine entry) a label map's grid may be from its image's (float32 header rounding)
GRID_TOLERANCE_MM = 1e-3


# --------------------------------------------------------------------------- inputs


def _load(value: ImageSource, name: str, labels: bool = False) -> Image:
    if isinstance(value, Image):
        return value
    return load_image(value, labels=labels, name=name)


def _check_pair(moving: Image, fixed: Image, labels: Mapping[str, Image | None]) -> None:
    if moving.ndim != fixed.ndim:
        raise ImageError(
            f"moving image is {moving.ndim}-D {moving.shape} but fixed image is {fixed.ndim}-D {fixed.shape}; "
            "both must be 2-D or both 3-D"
        )
    for role, image in (("moving", moving), ("fixed", fixed)):
        if image.data.size == 0 or np.ptp(image.data) == 0:
            value = float(image.data.flat[0]) if image.data.size else 0.0
            raise ImageError(f"{role} image {image.name} has one value everywhere ({value:g}): nothing to register")
        label_map = labels.get(role)
        if label_map is not None and label_map.shape != image.shape:
            raise ImageError(
                f"{role} labels {label_map.name} have shape {label_map.shape} but the {role} image has shape "
                f"{image.shape}; a label map must be on its image's grid"
            )
        if label_map is not None and not np.allclose(label_map.affine, image.affine, rtol=0, atol=GRID_TOLERANCE_MM):
            worst = float(np.abs(label_map.affine - image.affine).max())
            raise ImageError(
                f"{role} labels {label_map.name} have the shape of the {role} image but another affine (entries "
                f"differ by up to {worst:.3g} mm: a shifted or rotated grid); a label map must be on its image's grid"
            )


def network_for(model: str | os.PathLike[str] | nn.Module, ndim: int) -> nn.Module:
    """The network (in eval mode) for an architecture name (random init), a checkpoint
    name/source or folder, or a module; :class:`ImageError` if it is not ``ndim``-D."""
    from ..zoo.factory import model_for

    net = model if isinstance(model, nn.Module) else model_for(model, ndim=ndim)
    if isinstance(model, str):
        net.model_name = model  # reports name it as given, also when the module is passed on (batch mode)
    if getattr(net, "ndim", ndim) != ndim:
        raise ImageError(f"model {_model_name(model, net)!r} is {net.ndim}-D but the images are {ndim}-D")
    return net.eval()


def _model_name(model: str | nn.Module, net: nn.Module) -> str:
    if isinstance(model, str):
        return model
    return getattr(net, "model_name", None) or getattr(net, "architecture", type(net).__name__)


def _model_info(model: str | nn.Module, net: nn.Module) -> dict[str, Any]:
    source = getattr(net, "pretrained_source", None)
    info: dict[str, Any] = {
        "name": _model_name(model, net),
        "architecture": getattr(net, "architecture", type(net).__name__),
        "parameters": sum(p.numel() for p in net.parameters()),
        "trained": source is not None,
    }
    if source is None:
        info["version"] = "untrained (random initialisation)"
    else:
        tag = source.source.tag
        info.update(version=tag.version if tag is not None else source.source.revision,
                    source=source.source.kind, commit=source.commit, sha256=source.sha256)
    return info


# --------------------------------------------------------------------------- stages


class _Stages:
    """Times each stage and prints one progress line per stage."""

    def __init__(self, progress: Callable[[str], None] | None):
        self.progress = progress
        self.runtime: dict[str, float] = {}
        self._start = time.perf_counter()

    def done(self, stage: str, message: str) -> None:
        now = time.perf_counter()
        self.runtime[stage] = round(now - self._start, 3)
        self._start = now
        if self.progress is not None:
            self.progress(f"[{stage}] {message} ({self.runtime[stage]:.1f} s)")


def _instance_optimise(net_flow: Tensor, moving: Tensor, fixed: Tensor, steps: int, weight: float,
                       lr: float) -> Tensor:
    """Refine a displacement ``(1, ndim, *S)`` on this pair: Adam on the field,
    NCC(9) + ``weight`` × diffusion."""
    from ..losses import NCC, Diffusion

    similarity, regulariser = NCC(window=9), Diffusion()
    flow = net_flow.detach().clone().requires_grad_(True)
    optimiser = torch.optim.Adam([flow], lr=lr)
    for _ in range(steps):
        optimiser.zero_grad()
        loss = similarity(warp(moving, flow), fixed) + weight * regulariser(flow)
        loss.backward()
        optimiser.step()
    return flow.detach()


def _dice_report(warped: np.ndarray, fixed: np.ndarray) -> dict[str, Any]:
    from ..metrics import dice, structure_mean

    scores = dice(warped, fixed)
    return {"per_label": {str(k): (None if math.isnan(v) else round(v, 4)) for k, v in scores.items()},
            "mean": round(structure_mean(scores), 4)}


def register(
    moving: ImageSource,
    fixed: ImageSource,
    model: str | nn.Module | None = None,
    *,
    moving_labels: ImageSource | None = None,
    fixed_labels: ImageSource | None = None,
    affine: bool | str = True,
    affine_only: bool = False,
    affine_model: str | nn.Module | None = None,
    instance_opt: int = 0,
    instance_opt_weight: float = INSTANCE_OPT_WEIGHT,
    instance_opt_lr: float = 0.1,
    device: str | torch.device | None = None,
    spacing: float | None = None,
    similarity: str = "mi",
    precision: Precision = "fp32",
    qc: bool = True,
    progress: Callable[[str], None] | None = None,
) -> RegistrationResult:
    """Register ``moving`` onto ``fixed`` (paths to NIfTI files or :class:`Image` s).

    ``model``: an architecture name (random initialisation), a checkpoint (``arch.tag``,
    ``hf-hub:...``, ``local-dir:...`` or a folder), a model, or ``None`` for
    :func:`default_model`. The model's
    ``preprocessing`` (spacing, orientation, intensity, size) sets the model grid;
    ``spacing`` (mm) overrides it. ``affine``: the affine stage's mode, ``"learned"``,
    ``"classic"``, ``"learned+classic"`` or ``"none"`` (``True``: the default mode,
    ``False``: ``"none"``; :mod:`transreg.registration.affine_stage`); ``affine_model``: the
    learned modes' affine network (default: the one the deformable checkpoint names, else
    the zoo's); ``affine_only`` stops after the affine stage; ``instance_opt`` Adam steps refine the network's
    displacement on this pair. ``similarity`` (``"mi"``, the default: robust to contrast
    differences between subjects and scanners, or ``"ncc"``) drives the affine stage. ``precision`` (``"fp32"`` or ``"bf16"``) is the network's inference precision
    (:func:`transreg.registration.inference.predict`). ``qc=False`` skips the QC stage (folding, Dice:
    the report then has neither). ``progress`` receives one line per stage. Raises ``FileNotFoundError`` /
    :class:`~transreg.registration.io.ImageError` (a ``ValueError``) for unusable inputs.
    """
    mode = affine_mode(affine)
    if affine_only and mode == "none":
        raise ValueError("affine_only and affine=False exclude each other")
    if affine_only and instance_opt:
        raise ValueError("instance optimisation refines the deformable stage; it cannot run with affine_only")
    if instance_opt < 0:
        raise ValueError(f"instance_opt must be >= 0 steps, got {instance_opt}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device} requested but no CUDA GPU is available; use --device cpu")
    stages = _Stages(progress)
    model = default_model() if model is None else model

    moving_img, fixed_img = _load(moving, "moving image"), _load(fixed, "fixed image")
    label_imgs = {"moving": None if moving_labels is None else _load(moving_labels, "moving labels", True),
                  "fixed": None if fixed_labels is None else _load(fixed_labels, "fixed labels", True)}
    _check_pair(moving_img, fixed_img, label_imgs)
    ndim = fixed_img.ndim
    mode = affine_mode(affine, ndim)
    stages.done("load", f"moving {moving_img.shape}, fixed {fixed_img.shape} ({ndim}-D)")

    net = None if affine_only else network_for(model, ndim).to(device)
    pre = Preprocessing.from_dict(getattr(net, "preprocessing", None), spacing=spacing)
    model_info = None if net is None else _model_info(model, net)
    stages.done("model", "none (affine only)" if net is None else
                f"{model_info['name']} ({model_info['parameters']:,} parameters, {model_info['version']})")

    fixed_grid, moving_grid = Grid.of(fixed_img), Grid.of(moving_img)
    model_grid = pre.grid(fixed_grid)
    fixed_norm, fixed_rec = normalize_intensity(fixed_img.data, pre.normalization)
    moving_norm, moving_rec = normalize_intensity(moving_img.data, pre.normalization)
    fixed_model = resample_image(fixed_norm, fixed_grid, model_grid, device=device)
    stages.done("preprocess", f"model grid {model_grid.shape} at {np.round(model_grid.spacing, 2).tolist()} mm")

    world = np.eye(ndim + 1)
    classic = mode in ("classic", "learned+classic")
    affine_report: dict[str, Any] = {"enabled": mode != "none", "mode": mode,
                                     "similarity": similarity if classic else None}
    if mode != "none":
        affine_net = None
        if mode.startswith("learned"):
            affine_name = affine_model_name(affine_model, net)
            affine_net = network_for(affine_name, ndim).to(device)
            affine_report["model"] = _model_info(affine_name, affine_net)
        moving_own = pre.grid(moving_grid)
        moving_model = resample_image(moving_norm, moving_grid, moving_own, device=device)
        result = run_affine_stage(mode, moving_model, moving_own, fixed_model, model_grid, similarity, affine_net)
        world = result.matrix
        affine_report.update(world_matrix_fixed_to_moving_ras_mm=world, losses=[round(v, 5) for v in result.losses])
        stages.done("affine", mode + (f", {similarity} loss {result.losses[-1]:.4f}" if classic else ""))
    moving_model = resample_image(moving_norm, moving_grid, model_grid, world, device=device)

    flow = torch.zeros(1, ndim, *model_grid.shape, device=device)
    if net is not None:
        flow = predict_flow(net, moving_model, fixed_model, precision=precision).clone()
        stages.done("deformable", f"max displacement {flow.abs().max().item():.2f} voxels")
        if instance_opt:
            flow = _instance_optimise(flow, moving_model, fixed_model, instance_opt, instance_opt_weight,
                                      instance_opt_lr)
            stages.done("instance_opt", f"{instance_opt} steps")

    transform = _full_transform(flow, model_grid, world, fixed_img, moving_img, device)
    warped = Image(transform.apply(moving_img.data), fixed_img.affine, "warped")
    unregistered = voxel_map(fixed_grid, moving_grid)  # fixed voxel → moving voxel, no registration
    warped_labels = None
    if label_imgs["moving"] is not None:
        warped_labels = Image(transform.apply(label_imgs["moving"].data, labels=True), fixed_img.affine)
    stages.done("resample", f"warped onto the fixed grid {fixed_img.shape}")

    report: dict[str, Any] = {
        "transreg_version": _version(),
        "model": model_info,
        "device": str(device),
        "inputs": {"moving": moving_img.name, "fixed": fixed_img.name,
                   **{f"{k}_labels": v.name for k, v in label_imgs.items() if v is not None}},
        "preprocessing": {**pre.as_dict(), "model_grid_shape": list(model_grid.shape),
                          "model_grid_affine": model_grid.affine, "moving_intensity": moving_rec,
                          "fixed_intensity": fixed_rec},
        "affine": affine_report,
        "precision": precision if net is not None else None,
        "instance_opt_steps": instance_opt,
    }
    if qc:
        report["folding_percent"] = _folding(flow)
        if warped_labels is not None and label_imgs["fixed"] is not None:
            moving_labels_data, fixed_labels_data = label_imgs["moving"].data, label_imgs["fixed"].data
            report["dice"] = _dice_report(warped_labels.data, fixed_labels_data)
            before = AffineResampling(moving_labels_data, unregistered, fixed_img.shape, True, str(device))()
            report["dice_before"] = _dice_report(before, fixed_labels_data)["mean"]
            report["dice_affine"] = report["dice_before"]  # an identity affine stage: the same map
            if not np.array_equal(world, np.eye(ndim + 1)):
                affine_stage = _full_transform(None, model_grid, world, fixed_img, moving_img, device)
                report["dice_affine"] = _dice_report(affine_stage.apply(moving_labels_data, True),
                                                     fixed_labels_data)["mean"]
        stages.done("qc", f"folding {report['folding_percent']:.3f} %" +
                    (f", mean Dice {report['dice']['mean']:.3f}" if "dice" in report else ""))
    report["runtime_s"] = dict(stages.runtime)
    return RegistrationResult(warped, warped_labels, transform, report, fixed_img,
                              AffineResampling(moving_img.data, unregistered, fixed_img.shape, device=str(device)))


def _full_transform(flow: Tensor | None, model_grid: Grid, world: np.ndarray, fixed: Image, moving: Image,
                    device: torch.device) -> Transform:
    """Compose (module docstring): original fixed voxel → model grid → + u → W → moving voxel
    (``flow`` ``None``: no deformable part).

    ``g ↦ M g`` (``M`` = model grid → moving voxels) is affine, so ``y = M (g + u) = (M g) +
    L u`` (``L`` the linear part of ``M``): the affine part is computed per axis in float64
    (:func:`coordinates`), the small displacement in float32."""
    to_model = voxel_map(Grid.of(fixed), model_grid)
    to_moving = voxel_map(model_grid, Grid.of(moving), world)
    y = coordinates(to_moving @ to_model, fixed.shape, device)
    if flow is not None and bool(flow.any()):
        n = model_grid.ndim
        u = sample_affine(flow, to_model, fixed.shape, padding="border")[0]
        linear = torch.as_tensor(to_moving[:n, :n], dtype=torch.float32, device=device)
        y += torch.einsum("ij,j...->i...", linear, u)
    return Transform(y, fixed.affine, moving.affine)


def _folding(flow: Tensor) -> float:
    from ..metrics import folding_percent

    return round(folding_percent(flow.cpu()), 4)


def _version() -> str:
    from .. import __version__

    return __version__
