#!/usr/bin/env bash
# The GPU checks of the performance issue in one run (about 6 minutes on one H100/H200):
# CUDA outputs against the CPU's, `transreg register` and `transreg train` on CUDA
# (bf16, gradient checkpointing), and bench_speed's tables at 160×192×224 with CUDA events.
#
#   bash evaluate/gpu_checks.sh OUT_DIR        # results and logs go to OUT_DIR
#
# Each step has its own time limit so that one slow step leaves the others' results.
set -uo pipefail
out=${1:?usage: gpu_checks.sh OUT_DIR}
py=${PYTHON:-python3}
mkdir -p "$out"
models="transmorph transmorph_large transmorph_small transmorph_tiny vitvnet voxelmorph2"
step() {  # step NAME SECONDS COMMAND...: run with a limit, log to OUT_DIR/log.txt
    local name=$1 limit=$2; shift 2
    echo "== $name: $*"
    timeout "$limit" "$@" 2>&1 | tee -a "$out/log.txt"
    echo "== $name: exit ${PIPESTATUS[0]}"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
$py -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
bench="$py evaluate/bench_speed.py --device cuda --sizes 160,192,224 --models $models --warmup 2 --repeats 5"
step speed_inference 180 $bench --modes inference --precisions fp32 bf16 --out "$out/speed_cuda_inference.md"
step speed_train_ckpt_bf16 120 $bench --cudnn-benchmark --modes train-ckpt --precisions bf16 --out "$out/speed_cuda_train_ckpt_bf16.md"
step speed_train_fp32 120 $bench --cudnn-benchmark --modes train --precisions fp32 --out "$out/speed_cuda_train_fp32.md"
step equivalence 150 $py evaluate/check_device.py --device cuda --size 160,192,224
for precision in fp32 bf16; do
    step "register_$precision" 60 $py -m transreg register --sample --device cuda --precision "$precision" \
        -o "/tmp/register_$precision"
    $py -c "import json,sys; r=json.load(open(sys.argv[1])); print('$precision', 'Dice', r['dice']['mean'],
        'affine', r['dice_affine'], 'folding %', r['folding_percent'], 'deformable s', r['runtime_s']['deformable'])" \
        "/tmp/register_$precision/report.json"
done
step train_bf16_ckpt 90 $py -m transreg train train/configs/transmorph_tiny_shapes3d.yaml --device cuda \
    --size 64 64 64 --precision bf16-mixed --steps 60 --set model.grad_checkpointing=true \
    --set run.val_every=30 --set run.log_every=10 --out /tmp/train_bf16_ckpt
