#!/usr/bin/env bash
# The ONE script for a lent GPU machine (torch 2.11+, nvcc 13, no internet), run from the repo
# root: builds fluid_rt._C for sm_90a in place, runs the CUDA tests against the CPU / float64
# references, runs the microbenchmarks and a decode benchmark on a Pangu-shaped random model, and
# prints a short table last. Everything it prints also lands in $OUT (or ./gpu_check_out), in at
# most 8 files (what the device tool brings back): summary.txt, build.log, tests.log, bench_err.txt
# and the four bench_*.json (the compute-sanitizer logs are appended to tests.log).
# The whole script stays inside GPU_CHECK_BUDGET seconds (default 560: the device tool stops a
# command at 600 s): each step after the build gets what is left of it, so the table always prints.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_check_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 FLUID_RT_GPU_CHECK=1
PY=${PYTHON:-python3}
# cmake and ninja may be pip packages living next to the interpreter.
PATH="$(dirname "$(command -v "$PY")"):$PATH"
BUDGET=${GPU_CHECK_BUDGET:-560}
log() { echo "== $*" | tee -a "$OUT/summary.txt"; }
start=$(date +%s)
elapsed() { echo $(( $(date +%s) - start )); }
# bounded LIMIT CMD...: CMD under `timeout`, cut to what the budget leaves (20 s kept for the table).
bounded() {
  local lim=$1 left=$(( BUDGET - $(elapsed) - 20 ))
  shift
  [ "$left" -lt "$lim" ] && lim=$left
  if [ "$lim" -lt 10 ]; then echo "skipped: the time budget is spent" >&2; return 124; fi
  timeout "$lim" "$@"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$OUT/summary.txt"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/summary.txt"

# 1. Build (in place), for the Hopper card in hand. The toolkit: $CUDA_HOME, else a standard
# folder, else torch's guess, else the one above the nvcc on PATH.
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
if [ ! -x "$CUDA_HOME/bin/nvcc" ]; then
  for c in /usr/local/cuda-13.0 /usr/local/cuda-13 $(ls -d /usr/local/cuda-* 2> /dev/null) \
      "$($PY -c 'from torch.utils.cpp_extension import CUDA_HOME as c; print(c or "")' 2> /dev/null)" \
      "$(dirname "$(dirname "$(command -v nvcc || echo /none/bin/nvcc)")")"; do
    if [ -n "$c" ] && [ -x "$c/bin/nvcc" ]; then CUDA_HOME=$c; break; fi
  done
fi
NVCC="$CUDA_HOME/bin/nvcc"
"$NVCC" --version 2>&1 | tail -n 1 | tee -a "$OUT/summary.txt"
GEN=Ninja
command -v ninja > /dev/null || GEN="Unix Makefiles"
export CUDA_HOME TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0a}
build() {  # build DIR: configure and build into DIR, writing fluid_rt/_C*.so in place
  cmake -S . -B "$1" -G "$GEN" -DFLUID_RT_CUDA=1 -DPython3_EXECUTABLE="$(command -v "$PY")" \
    -DCMAKE_CUDA_COMPILER="$NVCC" >> "$OUT/build.log" 2>&1 \
    && cmake --build "$1" --parallel "$(nproc)" >> "$OUT/build.log" 2>&1
}
> "$OUT/build.log"
build build/gpu
rc=$?
if [ $rc -ne 0 ] && [ "$TORCH_CUDA_ARCH_LIST" = "9.0a" ]; then
  # An older CMake rejects the arch-specific "90a": sm_90 code runs on the same card.
  log "build rc=$rc for 9.0a; retrying for 9.0"
  TORCH_CUDA_ARCH_LIST=9.0 build build/gpu-sm90
  rc=$?
fi
log "build rc=$rc ($(elapsed) s)"
if [ $rc -ne 0 ]; then tail -n 60 "$OUT/build.log"; exit 1; fi
$PY -c "import fluid_rt; print(fluid_rt.build_info())" | tee -a "$OUT/summary.txt"

# 2. CUDA tests (the CPU suite runs in CI; here only what needs the GPU).
bounded 240 $PY -m pytest -q -m cuda tests -p no:cacheprovider 2>&1 | tee "$OUT/tests.log" | tail -n 40
log "cuda tests: $(tail -n 1 "$OUT/tests.log") ($(elapsed) s)"

# 2b. compute-sanitizer, when the toolkit has it: memcheck (out-of-bounds / misaligned global and
# shared accesses; torch's caching allocator off, so each tensor is its own allocation) on the op
# tests, and racecheck (shared-memory hazards: a missing __syncthreads) on the kernels that use
# shared memory. Small shapes only: the tools slow kernels down 10-100x.
SANITIZER="$CUDA_HOME/bin/compute-sanitizer"
if [ -x "$SANITIZER" ]; then
  sanitize() {  # sanitize TOOL LIMIT PYTEST-ARGS...
    local tool=$1 lim=$2
    shift 2
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 bounded "$lim" "$SANITIZER" --tool "$tool" --target-processes all \
      --error-exitcode 97 --print-limit 20 $PY -m pytest -q -x -m cuda -p no:cacheprovider "$@" \
      > "$OUT/sanitizer_$tool.log" 2>&1
    local rc=$?
    log "compute-sanitizer $tool rc=$rc: $(grep -E 'ERROR SUMMARY|passed|failed' "$OUT/sanitizer_$tool.log" | tail -n 2 | tr '\n' ' ') ($(elapsed) s)"
    [ $rc -ne 0 ] && tail -n 30 "$OUT/sanitizer_$tool.log"
    cat "$OUT/sanitizer_$tool.log" >> "$OUT/tests.log"
    rm -f "$OUT/sanitizer_$tool.log"
  }
  sanitize memcheck 70 tests/test_commit.py tests/test_norm.py tests/test_entropy.py tests/test_attention.py \
    -k "split_kv or out_of_range or bitwise or masked or bad_values or commit_matches or prefill or (test_matches_reference and shape3) or (test_matches_reference_cuda and dtype0 and (case1 or case4)) or (test_random_rows and 4099 and avx512) or (single_long_row_split and avx512)"
  sanitize racecheck 50 tests/test_norm.py tests/test_attention.py tests/test_entropy.py \
    -k "split_kv or bitwise or (test_matches_reference and shape3 and dtype0) or (test_random_rows and 4099 and avx512)"
else
  log "compute-sanitizer: not in $CUDA_HOME/bin, skipped"
fi

# 3. Microbenchmarks and the decode benchmark, each bounded in time; their stderr goes to one file,
# and a failing one's last lines to the output too.
bench() {  # bench NAME LIMIT
  echo "== bench_$1" >> "$OUT/bench_err.txt"
  bounded "$2" $PY "benchmarks/bench_$1.py" --device cuda --json > "$OUT/bench_$1.json" 2> "$OUT/bench_$1.err.tmp"
  local rc=$?
  cat "$OUT/bench_$1.err.tmp" >> "$OUT/bench_err.txt"
  log "bench_$1 rc=$rc ($(elapsed) s)"
  [ $rc -ne 0 ] && tail -n 8 "$OUT/bench_$1.err.tmp"
  rm -f "$OUT/bench_$1.err.tmp"
}
for b in entropy attention commit; do bench $b 60; done
bench decode 150

# 4. The short table, last.
$PY benchmarks/summarize.py "$OUT"/bench_*.json | tee -a "$OUT/summary.txt"
log "total $(elapsed) s"
