#!/usr/bin/env bash
# The ONE script for a lent GPU machine (torch 2.11+, nvcc 13, no internet), run from the repo
# root: builds fluid_rt._C for sm_90a in place, runs the CUDA tests against the CPU / float64
# references, runs the microbenchmarks and a decode benchmark on a Pangu-shaped random model, and
# prints a short table last. Everything it prints also lands in $OUT (or ./gpu_check_out).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_check_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 FLUID_RT_GPU_CHECK=1
PY=${PYTHON:-python3}
log() { echo "== $*" | tee -a "$OUT/summary.txt"; }
start=$(date +%s)

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/gpu.txt"

# 1. Build (in place), for the Hopper card in hand.
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export CUDA_HOME TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0a}
cmake -S . -B build/gpu -G Ninja -DFLUID_RT_CUDA=1 -DPython3_EXECUTABLE="$(command -v $PY)" \
  -DCMAKE_CUDA_COMPILER="$CUDA_HOME/bin/nvcc" > "$OUT/build.log" 2>&1 \
  && ninja -C build/gpu >> "$OUT/build.log" 2>&1
rc=$?
log "build rc=$rc ($(( $(date +%s) - start )) s)"
if [ $rc -ne 0 ]; then tail -n 60 "$OUT/build.log"; exit 1; fi
$PY -c "import fluid_rt; print(fluid_rt.build_info())" | tee -a "$OUT/summary.txt"

# 2. CUDA tests (the CPU suite runs in CI; here only what needs the GPU).
timeout 240 $PY -m pytest -q -m cuda tests -p no:cacheprovider 2>&1 | tee "$OUT/tests.log" | tail -n 40
log "cuda tests: $(tail -n 1 "$OUT/tests.log") ($(( $(date +%s) - start )) s)"

# 3. Microbenchmarks and the decode benchmark, each bounded in time.
for b in entropy attention commit; do
  timeout 60 $PY benchmarks/bench_$b.py --device cuda --json > "$OUT/bench_$b.json" 2> "$OUT/bench_$b.err"
  log "bench_$b rc=$? ($(( $(date +%s) - start )) s)"
done
timeout 150 $PY benchmarks/bench_decode.py --device cuda --json > "$OUT/bench_decode.json" 2> "$OUT/bench_decode.err"
log "bench_decode rc=$? ($(( $(date +%s) - start )) s)"

# 4. The short table, last.
$PY benchmarks/summarize.py "$OUT"/bench_*.json | tee -a "$OUT/summary.txt"
log "total $(( $(date +%s) - start )) s"
