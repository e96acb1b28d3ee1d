#!/usr/bin/env bash
# CI: the torch-free CPU kernels (csrc/) build for aarch64, where only the portable path exists
# (x86 intrinsics live in the avx2/avx512 copies alone), and, when qemu-user can be installed, the
# portable kernels pass tests/cpp/portable_check.cpp (each against a double-precision reference)
# under emulation. Installs Debian's g++-aarch64-linux-gnu (and qemu-user) with apt-get when missing.
#   bash .ci/cross_aarch64.sh        (about a minute once the packages are in)
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
CXX=aarch64-linux-gnu-g++
OUT=${FLUID_RT_CROSS_DIR:-build/cross-aarch64}

apt_install() {
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

if ! command -v "$CXX" >/dev/null; then
  echo "cross: installing g++-aarch64-linux-gnu"
  apt_install g++-aarch64-linux-gnu
fi
if ! command -v qemu-aarch64 >/dev/null; then
  echo "cross: installing qemu-user (optional: the check runs only with it)"
  apt_install qemu-user || echo "cross: qemu-user is not installable here: build only"
fi

# Every torch-free kernel source: the families' drivers (cpu.cpp) and their per-path kernels
# (*.isa.cpp, compiled once, as the portable copy: FLUID_RT_ISA=0), plus the check program. No
# OpenMP (its pragmas are ignored): the check runs single-threaded, which qemu emulates faster.
rm -rf "$OUT"
mkdir -p "$OUT"
FLAGS=(-std=gnu++20 -O2 -fno-math-errno -Wno-unknown-pragmas -Icsrc)
objs=()
for src in csrc/*/cpu.cpp csrc/*/*.isa.cpp; do
  obj="$OUT/$(echo "$src" | tr / _).o"
  extra=()
  case "$src" in csrc/rope/*) extra=(-ffp-contract=off) ;; esac  # as CMakeLists.txt
  "$CXX" "${FLAGS[@]}" "${extra[@]}" -DFLUID_RT_ISA=0 -c "$src" -o "$obj" &
  objs+=("$obj")
done
"$CXX" "${FLAGS[@]}" -ffp-contract=off -c tests/cpp/portable_check.cpp -o "$OUT/portable_check.o" &
fail=0
for job in $(jobs -p); do wait "$job" || fail=1; done
[ "$fail" -eq 0 ] || { echo "cross: aarch64 compile FAILED"; exit 1; }
"$CXX" -o "$OUT/portable_check" "$OUT/portable_check.o" "${objs[@]}"
echo "cross: aarch64 build OK in $(( $(date +%s) - start )) s"

if command -v qemu-aarch64 >/dev/null; then
  qemu-aarch64 -L /usr/aarch64-linux-gnu "$OUT/portable_check"
  echo "cross: aarch64 portable kernels checked under qemu in $(( $(date +%s) - start )) s"
else
  echo "cross: no qemu-aarch64: the check program was built, not run"
fi
