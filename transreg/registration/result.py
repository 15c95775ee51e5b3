"""What :func:`transreg.register` returns, and how it writes its output folder."""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .io import Image, save_displacement_itk, save_displacement_voxel, save_image
from .outputs import write_atomically
from .transform import Transform

__all__ = ["OUTPUT_FILES", "RegistrationResult"]

OUTPUT_FILES = ("warped.nii.gz", "warped_labels.nii.gz", "displacement_itk.nii.gz",
                "displacement_voxel.nii.gz", "overlay.png", "report.json")



@dataclass
class RegistrationResult:
    """What :func:`register` returns: ``warped`` (moving on the fixed grid, original
    intensities), ``warped_labels`` (or ``None``), ``transform`` (:class:`Transform`),
    ``report`` (JSON-ready dict); ``fixed`` and ``moving_before`` (moving on the fixed
    grid without registration) for the overlay."""

    warped: Image
    warped_labels: Image | None
    transform: Transform
    report: dict[str, Any]
    fixed: Image
    moving_before: np.ndarray = field(repr=False)

    def save(self, out_dir: str | os.PathLike[str]) -> dict[str, Path]:
        """Write every output into ``out_dir`` (created if needed) → ``{name: path}``.

        All files are written first and moved into place together: a failure leaves no
        partial output behind (:func:`transreg.registration.outputs.write_atomically`).
        """
        def write(folder: Path) -> list[str]:
            start = time.perf_counter()
            names = self._write(folder)
            self.report["runtime_s"]["write"] = round(time.perf_counter() - start, 3)
            self.report["outputs"] = sorted(names)
            (folder / "report.json").write_text(json.dumps(self.report, indent=2, default=_json_default) + "\n")
            return names + ["report.json"]

        return write_atomically(out_dir, write)

    def _write(self, folder: Path) -> list[str]:
        from .overlay import save_overlay  # matplotlib only when writing

        affine = self.fixed.affine
        save_image(folder / "warped.nii.gz", self.warped.data, affine)
        names = ["warped.nii.gz"]
        if self.warped_labels is not None:
            save_image(folder / "warped_labels.nii.gz", self.warped_labels.data, affine)
            names.append("warped_labels.nii.gz")
        save_displacement_itk(folder / "displacement_itk.nii.gz", self.transform.displacement_world(), affine)
        save_displacement_voxel(folder / "displacement_voxel.nii.gz", self.transform.displacement_voxel(), affine)
        model = (self.report.get("model") or {}).get("name", "affine only")
        save_overlay(folder / "overlay.png", self.fixed.data, self.moving_before, self.warped.data, affine,
                     title=f"transreg register — {model}")
        return names + ["displacement_itk.nii.gz", "displacement_voxel.nii.gz", "overlay.png"]


def _json_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return str(value)
