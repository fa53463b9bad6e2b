#!/usr/bin/env bash
# The CUDA backend's steps of the prepared GPU call (benchmarks/gpu_check.sh
# runs them after installing the package; they need a GPU and nvcc):
#  1. the torch-free kernels and the standalone test built with CMake for
#     sm_90a only (all 18 pair files, -j of the machine's cores), their ptxas
#     figures (registers, spills) into OUT/cuda_ptxas.txt;
#  2. the standalone test (ctest): every path against the CPU core, with
#     each precision mode's worst errors;
#  3. compute-sanitizer memcheck and racecheck on its quick cases;
#  4. the pytest CUDA tests (tests/test_cuda.py and the op tests' cuda cases).
# Usage: csrc/cuda/gpu_check_steps.sh OUT [--dry-run]. Logs go to OUT/cuda_*.log;
# the last lines printed are a summary. Exits non-zero if a step failed.
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${1:?usage: gpu_check_steps.sh OUT [--dry-run]}
dry=${2:-}
mkdir -p "$out"
summary=()
step() {  # step NAME COMMAND...: runs it, logs to OUT/cuda_NAME.log, records pass/fail and seconds
  local name=$1
  shift
  local t0=$(date +%s)
  if [ "$dry" = "--dry-run" ]; then
    summary+=("cuda $name: skipped (--dry-run: $*)")
    return 0
  fi
  "$@" > "$out/cuda_$name.log" 2>&1
  local rc=$?
  summary+=("cuda $name: $([ $rc -eq 0 ] && echo ok || echo "FAILED (rc $rc)") in $(( $(date +%s) - t0 )) s")
  return $rc
}
failed=0
jobs=$(nproc 2> /dev/null || echo 4)
build() {
  cmake -S . -B build/cuda -DCMAKE_BUILD_TYPE=Release -DCOMHE_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90a &&
    cmake --build build/cuda -j "$jobs" --target test_cuda_kernels
}
step build build || failed=1
if [ -f "$out/cuda_build.log" ]; then
  grep -E "Compiling entry|registers|spill" "$out/cuda_build.log" | sed -E 's/ptxas info *: //' > "$out/cuda_ptxas.txt"
fi
if [ -x build/cuda/test_cuda_kernels ] || [ "$dry" = "--dry-run" ]; then
  step ctest ctest --test-dir build/cuda --output-on-failure -R cuda_kernels || failed=1
  step memcheck compute-sanitizer --tool memcheck --error-exitcode 1 build/cuda/test_cuda_kernels quick || failed=1
  step racecheck compute-sanitizer --tool racecheck --error-exitcode 1 build/cuda/test_cuda_kernels quick || failed=1
fi
step pytest python3 -m pytest -q -rf -m cuda tests/test_cuda.py tests/test_hyperspherical_energy.py \
  tests/test_cross_energy.py -k "cuda-cuda or test_cuda" || failed=1
if [ -f "$out/cuda_ctest.log" ]; then
  summary+=("$(grep -A12 'worst errors' "$out/cuda_ctest.log" | head -13)")
fi
printf '%s\n' "${summary[@]}"
exit $failed
