"""What :func:`transreg.register` returns, and how it writes its output folder."""
from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Collection

import numpy as np

from .io import Image, save_displacement_itk, save_displacement_voxel, save_image
from .outputs import OUTPUT_FILES, output_names, write_atomically
from .transform import Transform

__all__ = ["OUTPUT_FILES", "RegistrationResult"]


#: threads that write (and gzip: zlib releases the GIL) the output files concurrently
WRITE_THREADS = 2


@dataclass
class RegistrationResult:
    """What :func:`register` returns: ``warped`` (moving on the fixed grid, original
    intensities), ``warped_labels`` (or ``None``), ``transform`` (:class:`Transform`),
    ``report`` (JSON-ready dict); ``fixed`` and ``moving_before`` (moving on the fixed
    grid without registration, for the overlay; or a function computing it, called on
    first use by :meth:`before`)."""

    warped: Image
    warped_labels: Image | None
    transform: Transform
    report: dict[str, Any]
    fixed: Image
    moving_before: np.ndarray | Callable[[], np.ndarray] = field(repr=False)

    def before(self) -> np.ndarray:
        """The moving image on the fixed grid without registration."""
        if callable(self.moving_before):
            self.moving_before = self.moving_before()
        return self.moving_before

    def save(self, out_dir: str | os.PathLike[str], outputs: Collection[str] | None = None,
             compressed: bool = True) -> dict[str, Path]:
        """Write ``outputs`` (names of :data:`OUTPUTS`; ``None``: all; ``labels`` only if
        there are warped labels) into ``out_dir`` (created if needed) → ``{file name: path}``.
        ``compressed=False`` writes ``.nii`` instead of ``.nii.gz``.

        All files are written first and moved into place together: a failure leaves no
        partial output behind (:func:`transreg.registration.outputs.write_atomically`).
        """
        files = output_names(outputs, compressed)
        if self.warped_labels is None:
            files.pop("labels", None)

        def write(folder: Path) -> list[str]:
            start = time.perf_counter()
            writers = [self._writer(name, folder / file) for name, file in files.items() if name != "report"]
            with ThreadPoolExecutor(WRITE_THREADS) as pool:
                for done in [pool.submit(w) for w in writers]:
                    done.result()
            self.report["runtime_s"]["write"] = round(time.perf_counter() - start, 3)
            self.report["outputs"] = sorted(files.values())
            if "report" in files:
                (folder / files["report"]).write_text(json.dumps(self.report, indent=2, default=_json_default) + "\n")
            return list(files.values())

        return write_atomically(out_dir, write)

    def _writer(self, name: str, path: Path) -> Callable[[], None]:
        """The function that writes output ``name`` to ``path``."""
        affine = self.fixed.affine
        if name == "warped":
            return lambda: save_image(path, self.warped.data, affine)
        if name == "labels":
            return lambda: save_image(path, self.warped_labels.data, affine)
        if name == "itk":
            return lambda: save_displacement_itk(path, self.transform.displacement_world(), affine)
        if name == "voxel":
            return lambda: save_displacement_voxel(path, self.transform.displacement_voxel(), affine)
        model = (self.report.get("model") or {}).get("name", "affine only")

        def overlay() -> None:
            from .overlay import save_overlay  # matplotlib only when writing the overlay

            save_overlay(path, self.fixed.data, self.before(), self.warped.data, affine,
                         title=f"transreg register: {model}")
        return overlay


def _json_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return str(value)
