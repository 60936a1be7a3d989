#!/usr/bin/env bash
# The GPU run for a lent machine (the `device` tool), about five minutes: training overhead
# on CUDA (LeNet, ResNet-18), ResNet-50 at 224x224 in bf16 and channels-last on synthetic data,
# and the service itself on the GPU (time to accuracy, GPU telemetry of a ResNet-18 job,
# classify latency). Writes one JSON file: $OUT/gpu.json (or ./gpu.json).
#
# The machine has PyTorch but not the service's web stack: carry its wheels in .whl/
# (see docs/benchmarks.md) and they are installed into /tmp/site first.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT_DIR=${OUT:-$PWD}
mkdir -p "$OUT_DIR"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
timeout 380 python3 -m bench.gpu_bench --out "$OUT_DIR/gpu.json" 2>&1 | tee "$OUT_DIR/gpu.log"
