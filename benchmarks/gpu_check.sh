#!/usr/bin/env bash
# One prepared GPU check (< 10 minutes): CUDA kernel tests, then both speed benchmarks on CUDA.
#   bash benchmarks/gpu_check.sh            # results in $OUT if set (device runner), else benchmarks/results/
# Needs torch with CUDA and triton (bundled with CUDA torch wheels) already installed; no network.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && PY=.venv/bin/python
DEST=${OUT:-benchmarks/results}
mkdir -p "$DEST"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.memory --format=csv || true
  "$PY" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name(0))"
} 2>&1 | tee "$DEST/gpu_check_env.txt"

# 1. correctness of the Triton kernels against the dense masked product (~1 min)
timeout 180 "$PY" -m pytest -q tests/unit/test_kernels.py -k cuda 2>&1 | tail -5 | tee "$DEST/gpu_check_tests.txt"

# 2. GEMV speed per shape and sparsity, bf16 and fp32 (~2 min)
timeout 150 "$PY" benchmarks/gemv_speed.py --device cuda --dtype bfloat16 --samples 50 --out "$DEST/gemv_speed_gpu_bf16"
timeout 120 "$PY" benchmarks/gemv_speed.py --device cuda --dtype float32 --samples 30 --out "$DEST/gemv_speed_gpu_fp32"

# 3. end-to-end decode (SmolLM2-135M if its package is installed on the GPU machine; ~3 min)
timeout 240 "$PY" benchmarks/decode_speed.py --device cuda --dtype bfloat16 --new-tokens 64 --repeats 3 \
  --out "$DEST/decode_speed_gpu_bf16" || echo "decode benchmark did not run (model package missing?)"
