"""The run folder's logs: metrics.jsonl, validation.jsonl, TensorBoard and the progress line (rank 0)."""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["RunLog"]


class RunLog:
    """metrics.jsonl / validation.jsonl (+ TensorBoard when installed) and the progress
    line, written by rank 0 only. Every record carries ``cpu_hours``: the CPU time of the
    training process (all its threads; rank 0's process under DDP) since the run began,
    continued across resumes, the x axis of learning curves against compute."""

    def __init__(self, run_dir: Path, active: bool, total: int, resume_step: int):
        self.active = active
        self.total = total
        self.writer = None
        if not active:
            return
        self.metrics = run_dir / "metrics.jsonl"
        self.validation = run_dir / "validation.jsonl"
        for path in (self.metrics, self.validation):
            _truncate_jsonl(path, resume_step)
        self._cpu_before = _last_value(self.metrics, "cpu_hours")
        self._cpu_start = time.process_time()
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir / "tensorboard"))
        except ImportError:
            self.writer = None

    def cpu_hours(self) -> float:
        """CPU hours of the run so far (this session's process time plus the earlier sessions')."""
        return self._cpu_before + (time.process_time() - self._cpu_start) / 3600.0

    def _append(self, path: Path, record: dict[str, Any]) -> None:
        record = {**record, "cpu_hours": round(self.cpu_hours(), 6)}
        with path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, record["step"])

    def step(self, record: dict[str, Any]) -> None:
        if self.active:
            self._append(self.metrics, record)

    def val(self, record: dict[str, Any]) -> None:
        if self.active:
            self._append(self.validation, record)

    def progress(self, step: int, loss: float, lr: float, steps_per_s: float, val_dice: float | None) -> None:
        if not self.active:
            return
        eta = (self.total - step) / steps_per_s if steps_per_s > 0 else float("inf")
        eta_text = time.strftime("%H:%M:%S", time.gmtime(eta)) if math.isfinite(eta) else "--:--:--"
        width = len(str(self.total))
        line = (f"step {step:>{width}}/{self.total}  loss {loss:.4f}  lr {lr:.2e}  "
                f"{steps_per_s:.2f} steps/s  ETA {eta_text}")
        if val_dice is not None:
            line += f"  val dice {val_dice:.3f}"
        print(line, file=sys.stderr, flush=True)

    def message(self, text: str) -> None:
        if self.active:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _truncate_jsonl(path: Path, keep_until: int) -> None:
    """Drop records after step ``keep_until`` (a resumed run rewrites them)."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= keep_until]
    path.write_text("".join(line + "\n" for line in kept))


def _last_value(path: Path, key: str) -> float:
    """``key`` of the last record of a JSONL file holding it (0 when none does)."""
    if not path.exists():
        return 0.0
    for line in reversed(path.read_text().splitlines()):
        if line.strip():
            value = json.loads(line).get(key)
            if isinstance(value, (int, float)):
                return float(value)
    return 0.0
