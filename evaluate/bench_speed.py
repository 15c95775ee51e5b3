"""Speed and memory of every registry architecture: inference and one training step.

Each measurement runs in a fresh subprocess so that its peak resident memory (which
includes ~0.5 GiB for importing torch, as in the issue's reference table) is its own.
The machine's limit is measured by the same script (a large conv3d and a matmul), and
every row reports the achieved GFLOP/s and its fraction of that limit.

    python evaluate/bench_speed.py                       # all architectures at 96×112×96
    python evaluate/bench_speed.py --sizes 96,112,96 160,192,224 --models transmorph voxelmorph2
    python evaluate/bench_speed.py [--out FILE.md]
    python evaluate/bench_speed.py --modes train train-ckpt --precisions fp32 bf16   # memory-lean training
    python evaluate/bench_speed.py --compile                                         # torch.compile the model

Modes: ``inference`` (``transreg.registration.inference.predict``: inference mode, bf16 autocast for
``bf16``), ``train`` (one optimiser step), ``train-ckpt`` (the same with gradient
checkpointing in the encoder and decoder).

Run it on an idle machine: timings of a busy machine are meaningless.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn, device: str, warmup: int, repeats: int) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn`` after ``warmup`` calls: CUDA events
    on a GPU (the device's own clock), the wall clock on CPU."""
    import torch

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        if device.startswith("cuda"):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        else:
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return times


def measure_limit(device: str, precision: str) -> float:
    """Achieved GFLOP/s of a large 3-D convolution (either memory format) and a large matmul (the best)."""
    import torch
    import torch.nn.functional as F

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    # large enough to fill the device: 2 CPU cores, or a GPU's ~100 SMs
    channels, side, n = (64, 128, 8192) if device.startswith("cuda") else (32, 64, 2048)
    x = torch.randn(1, channels, side, side, side, device=device, dtype=dtype)
    w = torch.randn(channels, channels, 3, 3, 3, device=device, dtype=dtype)
    conv_flops = 2 * channels**2 * 27 * side**3
    a = torch.randn(n, n, device=device, dtype=dtype)
    mm_flops = 2 * n**3
    with torch.inference_mode():
        t_conv = min(statistics.median(_timed(lambda: F.conv3d(y, w, padding=1), device, 2, 5))
                     for y in (x, x.contiguous(memory_format=torch.channels_last_3d)))
        t_mm = statistics.median(_timed(lambda: a @ a, device, 2, 5))
    return max(conv_flops / t_conv, mm_flops / t_mm) / 1e9


def measure_one(arch: str, size: tuple[int, ...], mode: str, precision: str, device: str,
                warmup: int, repeats: int, compile_model: bool = False) -> dict:
    """Median time, FLOPs and peak memory of one (architecture, size, mode, precision)."""
    import torch

    import transreg
    from transreg.registration.inference import autocast as precision_autocast
    from transreg.registration.inference import count_flops
    from transreg.registration.inference import predict
    from transreg.losses import NCC, Diffusion

    torch.manual_seed(0)
    model = transreg.create_model(arch, ndim=len(size)).to(device)
    moving = torch.rand(1, 1, *size, device=device)
    fixed = torch.rand(1, 1, *size, device=device)
    params = sum(p.numel() for p in model.parameters())
    if compile_model:
        model = torch.compile(model)
    if mode == "inference":
        model.eval()

        def step():
            return predict(model, moving, fixed, precision).flow
    else:
        model.train()
        if mode == "train-ckpt":
            getattr(model, "_orig_mod", model).set_grad_checkpointing(True)
            if device == "cpu":  # as the trainer does in memory-lean training on CPU
                from transreg.cpu_tuning import return_freed_memory

                return_freed_memory()
        similarity, regulariser = NCC(window=9), Diffusion()
        optimiser = torch.optim.Adam(model.parameters(), lr=1e-4)

        def step():
            optimiser.zero_grad(set_to_none=True)
            with precision_autocast(device, precision):
                out = model(moving, fixed)
                loss = similarity(out.warped, fixed) + regulariser(out.flow)
            loss.backward()
            optimiser.step()

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    # before the first step: imports, the model and the inputs (CPU: the resident high-water mark)
    start = torch.cuda.memory_allocated() if device.startswith("cuda") else resource.getrusage(
        resource.RUSAGE_SELF).ru_maxrss * 1024
    times = _timed(step, device, warmup, repeats)
    # read the peak before counting FLOPs: the counter's dispatch hooks keep more alive
    peak = (torch.cuda.max_memory_allocated() if device.startswith("cuda")
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    flops = count_flops(step)
    return {
        "arch": arch, "size": "×".join(map(str, size)), "mode": mode, "precision": precision,
        "params": params, "gflop": flops / 1e9,
        "seconds": statistics.median(times), "peak_gib": peak / 2**30, "step_gib": (peak - start) / 2**30,
    }


def _run_child(args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", help="architectures (default: all registered)")
    parser.add_argument("--sizes", nargs="*", default=["96,112,96"], help="spatial sizes, comma-separated")
    parser.add_argument("--modes", nargs="*", default=["inference", "train"], choices=["inference", "train", "train-ckpt"])
    parser.add_argument("--precisions", nargs="*", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (time after warm-up)")
    parser.add_argument("--cudnn-benchmark", action="store_true",
                        help="torch.backends.cudnn.benchmark: cuDNN picks its fastest kernels per shape (GPU)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--retain-memory", action="store_true",
                        help="transreg.cpu_tuning.retain_freed_memory(): no page faults, higher resident peak")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="also write the table to this Markdown file")
    parser.add_argument("--child", nargs=4, metavar=("ARCH", "SIZE", "MODE", "PRECISION"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    if args.retain_memory:
        from transreg.cpu_tuning import retain_freed_memory

        retain_freed_memory()
    if args.child:
        arch, size, mode, precision = args.child
        result = measure_one(arch, tuple(int(s) for s in size.split(",")), mode, precision,
                             args.device, args.warmup, args.repeats, args.compile)
        print(json.dumps(result))
        return

    import transreg

    models = args.models or transreg.list_models()
    common = ["--device", args.device, "--warmup", str(args.warmup), "--repeats", str(args.repeats)]
    if args.threads:
        common += ["--threads", str(args.threads)]
    if args.compile:
        common.append("--compile")
    if args.cudnn_benchmark:
        common.append("--cudnn-benchmark")
    if args.retain_memory:
        common.append("--retain-memory")
    limits = {p: measure_limit(args.device, p) for p in args.precisions}
    # measured: on the 2-core machine the first process after heavy memory use (a training run) ran
    # 20-35 % slow and the next ones did not, so one untimed child goes first
    _run_child([*common, "--child", models[0], args.sizes[0], args.modes[0], args.precisions[0]])
    rows = []
    for arch in models:
        for size in args.sizes:
            for mode in args.modes:
                for precision in args.precisions:
                    result = _run_child([*common, "--child", arch, size, mode, precision])
                    result.update(arch=arch, size=size.replace(",", "×"), mode=mode, precision=precision)
                    rows.append(result)
                    print(json.dumps(result), flush=True)

    header = ("| architecture | size | mode | precision | params | GFLOP | time (s) | peak mem (GiB) "
              "| of it the steps (GiB) | GFLOP/s | of limit |\n|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    lines = []
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['arch']} | {r['size']} | {r['mode']} | {r['precision']} | error: {r['error']} ||||||||")
            continue
        rate = r["gflop"] / r["seconds"]
        lines.append(
            f"| {r['arch']} | {r['size']} | {r['mode']} | {r['precision']} | {r['params']:,} | {r['gflop']:.1f} "
            f"| {r['seconds']:.3f} | {r['peak_gib']:.2f} | {r['step_gib']:.2f} | {rate:.1f} "
            f"| {rate / limits[r['precision']]:.0%} |"
        )
    device = args.device + (f" ({torch.cuda.get_device_name(args.device)})" if args.device.startswith("cuda") else "")
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, device {device}"
    text = "\n".join([
        "# Speed and memory of the registry architectures", "",
        f"- command: `python evaluate/bench_speed.py {' '.join(sys.argv[1:])}`",
        f"- machine: {machine}; threads {args.threads or torch.get_num_threads()}",
        f"- date: {datetime.date.today().isoformat()}",
        "- limit (measured here, large conv3d / matmul): "
        + ", ".join(f"{p} {v:.0f} GFLOP/s" for p, v in limits.items()),
        "- time: median of the repeats after warm-up (and after one untimed warm-up process), batch 1;"
        " train = forward + NCC(9) + diffusion + backward + Adam step"
        " (train-ckpt: with gradient checkpointing in encoder and decoder, on CPU with"
        " transreg.cpu_tuning.return_freed_memory as the trainer)" + ("; torch.compile" if args.compile else "")
        + ("; cudnn.benchmark" if args.cudnn_benchmark else "")
        + ("; freed memory retained (transreg.cpu_tuning.retain_freed_memory)" if args.retain_memory else "") + ";"
        " peak memory: peak resident set of the measuring process (includes importing torch) on CPU,"
        " peak allocated on CUDA (timed with CUDA events); of it the steps: the peak minus the same measure"
        " before the first step (imports, model, inputs; CPU: the resident high-water mark); GFLOP counted by torch.utils.flop_counter (untrained weights).", "",
        header, *lines, "",
    ])
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
