#!/usr/bin/env bash
# Throughput check on one GPU: the paper configuration (U-Net 256, width 64, 70x70 PatchGAN,
# 256 px, batch norm, dropout) trained for a fixed number of steps with the fastest settings,
# then images/s, peak memory and model FLOP utilisation against the GPU's dense bf16 peak.
# Budget: under 8 minutes on one H100 (synthetic data ~1 min, compile ~2 min, 300 steps and a
# loader-free run ~2 min); a 470 s timeout enforces it. Written for CUDA by reading: no GPU was
# available when it was made, only its CPU mode has been run.
#
# Usage: bench/gpu_check.sh [extra bench/train.py --check flags]
#   STEPS=300 BATCH=64 COMPILE=1 WORKERS=12 bench/gpu_check.sh
#   STEPS=2 BATCH=2 COMPILE=0 TINY=1 bench/gpu_check.sh    # runs on a CPU in seconds
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python}
[[ -x .venv/bin/python && -z ${PYTHON:-} ]] && python=.venv/bin/python

if "$python" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    device=cuda
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    defaults=(--batch "${BATCH:-64}" --steps "${STEPS:-300}" --warmup "${WARMUP:-20}"
              --workers "${WORKERS:-12}")
else
    device=cpu
    echo "no CUDA device: running the check on the CPU (a correctness run, not a GPU number)"
    defaults=(--batch "${BATCH:-4}" --steps "${STEPS:-3}" --warmup "${WARMUP:-1}"
              --workers "${WORKERS:-2}")
fi

compile_flag=--no-compile
[[ ${COMPILE:-$([[ $device == cuda ]] && echo 1 || echo 0)} == 1 ]] && compile_flag=--compile
tiny_flag=()
[[ ${TINY:-0} == 1 ]] && tiny_flag=(--tiny)

exec timeout "${TIMEOUT:-470}" "$python" bench/train.py --check --device "$device" \
    --check-precision bf16 --channels-last "$compile_flag" "${defaults[@]}" "${tiny_flag[@]}" "$@"
