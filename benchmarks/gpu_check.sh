#!/usr/bin/env bash
# One prepared GPU check, at most 8 minutes, needing only this repository (no network, no real
# weights: every model is random, built from a config). Correctness first, then speed:
#   1. CUDA vs CPU on a tiny random Llama (fp32): alphas to 1e-6 relative, TopK PPL to 1e-3 (~1 min)
#   2. the Triton kernel tests (tests/unit/test_kernels.py -k cuda) (~1 min)
#   3. a random Llama with LLaMA-2-7B shapes in bf16: ESD of all projections on the GPU, TopK
#      perplexity tokens/s dense vs 50%, Triton GEMV fraction of the ideal speed-up, decode
#      tokens/s dense vs 50% (~5 min)
#
#   bash benchmarks/gpu_check.sh              # on a GPU machine
#   bash benchmarks/gpu_check.sh --dry-run    # anywhere: the same Python on the CPU, tiny shapes
#
# Results: gpu_check_*.{json,md,txt} in $GPU_CHECK_OUT, else $OUT (the device runner's folder),
# else benchmarks/results/. Without a CUDA device (and no --dry-run) it says so in one line and
# exits 2. Exit status: 0 when every part passed, 1 when one failed or ran out of time.
# Needs torch (with CUDA and triton for the real run), transformers, numpy and scipy installed.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && PY=.venv/bin/python
DEST=${GPU_CHECK_OUT:-${OUT:-benchmarks/results}}
DRY=()
PREFIX=gpu_check
SLACK=1  # time limits below are the GPU run's (8 minutes in all); a dry run on a shared CPU gets 10x
if [ "${1:-}" = "--dry-run" ]; then
  DRY=(--dry-run)
  PREFIX=gpu_check_dryrun
  SLACK=10
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
if ! "$PY" -c "import torch, transformers" 2>/dev/null; then
  echo "gpu_check: $PY cannot import torch and transformers; set PYTHON to an interpreter that has them"
  exit 2
fi
if [ ${#DRY[@]} -eq 0 ] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check: no CUDA device on this machine (torch.cuda.is_available() is False); use --dry-run for the CPU check"
  exit 2
fi
mkdir -p "$DEST"
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.memory --format=csv 2>/dev/null || echo "no nvidia-smi"
  "$PY" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')"
  "$PY" -c "import triton; print('triton', triton.__version__)" 2>/dev/null || echo "triton not importable"
} 2>&1 | tee "$DEST/${PREFIX}_env.txt"

status=0
run() {  # run LIMIT_S LABEL CMD...: a part that fails or times out is reported, the rest still runs
  local limit=$(($1 * SLACK)) label=$2
  shift 2
  echo "== $label (limit ${limit}s)"
  timeout "$limit" "$@"
  local rc=$?
  if [ $rc -ne 0 ]; then
    echo "== $label: FAILED (exit $rc$([ $rc -eq 124 ] && echo ', timed out'))"
    status=1
  fi
}
run 90 correctness "$PY" benchmarks/gpu_check.py correctness "${DRY[@]}" --out "$DEST"
if [ ${#DRY[@]} -eq 0 ]; then
  run 80 "kernel tests" bash -c "$PY -m pytest -q -p no:cacheprovider tests/unit/test_kernels.py -k cuda 2>&1 | tail -5 | tee '$DEST/${PREFIX}_tests.txt'; exit \${PIPESTATUS[0]}"
fi
run 300 speed "$PY" benchmarks/gpu_check.py speed "${DRY[@]}" --out "$DEST"
echo "gpu_check: $([ $status -eq 0 ] && echo passed || echo 'FAILED (see above)'); results in $DEST"
exit $status
