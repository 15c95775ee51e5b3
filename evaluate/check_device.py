"""Every registry architecture gives the CPU's flow on an accelerator.

For each architecture (seeded random weights, the same on both devices) at one size:
the device's fp32 flow (TF32 off) against the CPU's fp32 flow, and the device's bf16
flow against its fp32 flow, as the largest difference relative to the largest |flow|
(random heads give small flows, so absolute differences would say little). At
160×192×224 the decoders' inference slabs and the custom norm/convolution paths all run.

    python evaluate/check_device.py --device cuda --size 160,192,224

Prints a markdown table; exits 1 when an fp32 difference exceeds ``--tolerance``.
"""
from __future__ import annotations

import argparse
import sys

import torch

import transreg
from transreg.registration.inference import predict


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| (float64 on the CPU)."""
    a, b = a.double().cpu(), b.double().cpu()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def check(arch: str, size: tuple[int, ...], device: str) -> dict:
    torch.manual_seed(0)
    model = transreg.create_model(arch, ndim=len(size))
    generator = torch.Generator().manual_seed(1)
    moving, fixed = (torch.rand(1, 1, *size, generator=generator) for _ in range(2))
    reference = predict(model, moving, fixed).flow
    model.to(device)
    moving, fixed = moving.to(device), fixed.to(device)
    fp32 = predict(model, moving, fixed).flow
    bf16 = predict(model, moving, fixed, precision="bf16").flow
    return {"arch": arch, "max_flow": reference.abs().max().item(),
            "fp32_vs_cpu": relative_difference(fp32, reference), "bf16_vs_fp32": relative_difference(bf16, fp32)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", default="160,192,224", help="spatial size, comma-separated")
    parser.add_argument("--models", nargs="*", help="architectures (default: all registered)")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="largest relative fp32 difference")
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    size = tuple(int(s) for s in args.size.split(","))
    print(f"device {args.device} ({torch.cuda.get_device_name() if args.device.startswith('cuda') else 'cpu'}), "
          f"torch {torch.__version__}, size {'×'.join(map(str, size))}, TF32 off\n")
    print("| architecture | max abs flow (voxels) | fp32 device vs CPU (relative) | bf16 vs fp32 on device (relative) |")
    print("|---|---:|---:|---:|")
    failed = []
    for arch in args.models or transreg.list_models():
        r = check(arch, size, args.device)
        print(f"| {arch} | {r['max_flow']:.3g} | {r['fp32_vs_cpu']:.2e} | {r['bf16_vs_fp32']:.2e} |", flush=True)
        if not r["fp32_vs_cpu"] <= args.tolerance:
            failed.append(arch)
    if failed:
        sys.exit(f"fp32 outputs differ from the CPU's by more than {args.tolerance}: {', '.join(failed)}")


if __name__ == "__main__":
    main()
