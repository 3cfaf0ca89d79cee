#!/usr/bin/env bash
# The GPU figures in one run, for a machine with a CUDA GPU: CUDA training
# throughput with and without --amp and channels_last, evaluation throughput with and without
# --amp, inference (PyTorch on the GPU; ONNX Runtime CUDA and TensorRT where installed), then
# the GPU test suite.
# Tables on stdout, JSON in bench/results/gpu/.   Usage: bash bench/gpu.sh  (or make bench-gpu)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
OUT=${OUT:-bench/results/gpu}
WORKERS=${WORKERS:-8}   # loader processes: a GPU step is short, so decoding needs many
PAIRS=${PAIRS:-3200}    # pairs per timed training measurement
mkdir -p "$OUT"
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'bench/gpu.sh needs a CUDA GPU; none is visible')"
"$PY" -c "import torch; print('GPU:', torch.cuda.get_device_name(), '| torch', torch.__version__)"
BASELINE=40  # pairs timed for the original toolkit's way of evaluating, which needs matplotlib
if ! "$PY" -c "import matplotlib" 2>/dev/null; then
    BASELINE=0
    echo "(matplotlib is not installed: the evaluation tables leave out the original toolkit's way)"
fi
for flags in "" "--amp" "--channels-last" "--amp --channels-last"; do
    name=$(echo "train ${flags:-fp32}" | tr -d '-' | tr ' ' '_')
    "$PY" bench/train_throughput.py --device cuda --workers "$WORKERS" --pairs "$PAIRS" $flags --out "$OUT/$name.json"
done
"$PY" bench/eval_throughput.py --device cuda --workers "$WORKERS" --baseline-pairs "$BASELINE" --out "$OUT/eval.json"
"$PY" bench/eval_throughput.py --device cuda --workers "$WORKERS" --baseline-pairs "$BASELINE" --amp --out "$OUT/eval_amp.json"
"$PY" bench/eval_throughput.py --device cuda --workers "$WORKERS" --baseline-pairs "$BASELINE" --amp --pairs-per-image 9 \
    --out "$OUT/eval_amp_9.json"
"$PY" bench/inference.py --out "$OUT/inference.json"
"$PY" -m pytest -q tests/test_gpu.py  # last, so that the figures come even if a test fails
