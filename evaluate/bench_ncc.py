"""Benchmark: transreg's separable NCC vs the original dense 9³ box-filter convolution.

Times NCC forward + backward (gradient w.r.t. the warped image) at 160×192×224 and writes
a Markdown table with the speed ratio::

    python evaluate/bench_ncc.py                       # CUDA if available, else CPU
    python evaluate/bench_ncc.py --device cpu --repeats 3 --note "shared machine"

The reference reproduces the VoxelMorph/TransMorph implementation: five single-channel
``conv3d`` calls with a ``window³`` kernel of ones and ``padding=window // 2``.
"""
from __future__ import annotations

import argparse
import datetime as dt
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from transreg.losses import ncc



def dense_conv_ncc(a: torch.Tensor, b: torch.Tensor, window: int = 9, eps: float = 1e-5) -> torch.Tensor:
    """Reference: the original implementations' NCC with a dense ``window³`` convolution."""
    kernel = torch.ones(1, 1, window, window, window, device=a.device, dtype=a.dtype)
    pad = window // 2
    sums = [F.conv3d(x, kernel, padding=pad) for x in (a, b, a * a, b * b, a * b)]
    sum_a, sum_b, sum_aa, sum_bb, sum_ab = sums
    n = float(window**3)
    mean_a, mean_b = sum_a / n, sum_b / n
    cross = sum_ab - mean_b * sum_a - mean_a * sum_b + mean_a * mean_b * n
    var_a = sum_aa - 2 * mean_a * sum_a + mean_a * mean_a * n
    var_b = sum_bb - 2 * mean_b * sum_b + mean_b * mean_b * n
    return -(cross * cross / (var_a * var_b + eps)).mean()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_forward_backward(
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    a: torch.Tensor,
    b: torch.Tensor,
    repeats: int,
    warmup: int,
) -> tuple[list[float], float]:
    """Seconds per forward+backward call (after ``warmup`` calls) and the loss value."""
    times, value = [], float("nan")
    for i in range(warmup + repeats):
        a.grad = None
        _sync(a.device)
        start = time.perf_counter()
        loss = fn(a, b)
        loss.backward()
        _sync(a.device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
        value = loss.item()
    return times, value


def machine_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads"


def render(
    rows: list[tuple[str, list[float], float]], args: argparse.Namespace, device: torch.device, command: str
) -> str:
    fast, dense = rows[0][1], rows[1][1]
    ratio = statistics.median(dense) / statistics.median(fast)
    lines = [
        "# NCC benchmark: separable box filter vs dense conv3d",
        "",
        f"- date (UTC): {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M')}",
        f"- machine: {machine_description(device)}; {platform.system()} {platform.release()}; "
        f"Python {platform.python_version()}; torch {torch.__version__}",
        f"- command: `{command}`",
        f"- input: (1, 1, {', '.join(map(str, args.size))}) float32, window {args.window}, "
        f"forward + backward (gradient w.r.t. the warped image), {args.warmup} warm-up + "
        f"{args.repeats} timed calls, median",
    ]
    if args.note:
        lines.append(f"- note: {args.note}")
    lines += [
        "",
        "| implementation | median (ms) | min (ms) | max (ms) | loss value |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, times, value in rows:
        ms = [1000 * t for t in times]
        lines.append(f"| {name} | {statistics.median(ms):.1f} | {min(ms):.1f} | {max(ms):.1f} | {value:.7f} |")
    lines += ["", f"**Speed-up of transreg NCC over the dense conv3d: {ratio:.1f}×** (goal ≥ 10×)", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, nargs=3, default=[160, 192, 224], metavar=("X", "Y", "Z"))
    parser.add_argument("--window", type=int, default=9)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--note", default="", help="free text added to the report (e.g. machine load)")
    parser.add_argument("--output", type=Path, default=None, help="also write the report to this Markdown file")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    gen = torch.Generator().manual_seed(0)
    fixed = torch.rand(1, 1, *args.size, generator=gen).to(device)
    warped = (0.6 * fixed.cpu() + 0.4 * torch.rand(1, 1, *args.size, generator=gen)).to(device).requires_grad_()

    rows = []
    for name, fn in (
        ("transreg `ncc` (separable)", lambda a, b: ncc(a, b, args.window)),
        (f"dense conv3d {args.window}³ (original)", lambda a, b: dense_conv_ncc(a, b, args.window)),
    ):
        times, value = time_forward_backward(fn, warped, fixed, args.repeats, args.warmup)
        rows.append((name, times, value))
        print(f"{name}: median {1000 * statistics.median(times):.1f} ms", flush=True)
    if abs(rows[0][2] - rows[1][2]) > 1e-4:
        print(f"error: the two implementations disagree: {rows[0][2]} vs {rows[1][2]}", file=sys.stderr)
        return 1

    command = "python evaluate/bench_ncc.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    report = render(rows, args, device, command.strip())
    print(report)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.output.with_suffix(".tmp")
        tmp.write_text(report)
        tmp.replace(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
