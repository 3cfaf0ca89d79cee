#!/usr/bin/env bash
# The GPU figures in one short run (about 3 minutes on one H200, the GPU tests included):
# bench/gpu_speed.py prints, side by side, the hardware ceiling of the same model (device
# tensors: training steps at batch 32 and 256 in float32/TF32 and bfloat16, compiled; embedding
# in bfloat16), the loaders alone (images/s), train.py's real throughput at the defaults and at
# the recommended GPU flags with each epoch's fixed cost, and embedding images/s, each as a
# fraction of its ceiling; then the GPU tests.
# Table on stdout, JSON in bench/results/gpu/.   Usage: bash bench/gpu.sh  (or make bench-gpu)
# Knobs (environment): DEVICE (cuda; cpu checks the script), DATA (orl_faces, under
# ../shared/data or BENCH_DATA), SIZE (224), SMALL/LARGE (training batches 32/256), EMBED_BATCH
# (256), STEPS (20 timed steps per ceiling), EPOCHS (4), IMAGES (20000 embedded), WORKERS (8),
# COMPILE (1), TESTS (1: run the GPU tests).
# On a CPU, end to end in a few minutes:
#   DEVICE=cpu SIZE=32 SMALL=4 LARGE=8 EMBED_BATCH=16 STEPS=2 EPOCHS=2 IMAGES=64 WORKERS=2 bash bench/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
export OUT=${OUT:-bench/results/gpu}
export DEVICE=${DEVICE:-cuda}
mkdir -p "$OUT"
if [ "$DEVICE" != cpu ]; then
    "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'bench/gpu.sh needs a CUDA GPU (DEVICE=cpu checks the script)')"
    "$PY" -c "import torch; print('GPU:', torch.cuda.get_device_name(), torch.cuda.get_device_capability(), '| torch', torch.__version__)"
fi
start=$(date +%s)
timeout "${LIMIT:-600}" "$PY" bench/gpu_speed.py
echo "(figures in $(( $(date +%s) - start )) s)"
if [ "${TESTS:-1}" = 1 ]; then  # last, so that the figures come even if a test fails
    "$PY" -m pytest -q -p no:cacheprovider -m "not slow" tests/test_gpu.py tests/test_gpu_speed.py
fi
