#!/usr/bin/env bash
# The CUDA backend's own steps of the prepared GPU call (benchmarks/gpu_check.sh
# runs them; its pytest and benchmark steps cover the op on CUDA tensors):
#  1. the torch-free kernels and the standalone test built with CMake for
#     sm_90a only (all 18 pair files, -j of the machine's cores), with the
#     ptxas figures of every kernel (registers, spills);
#  2. the standalone test (ctest): every path against the CPU core, and each
#     precision mode's worst errors;
#  3. compute-sanitizer memcheck and racecheck on its quick cases.
# Usage: csrc/cuda/gpu_check_steps.sh LOG [--dry-run]. Everything goes to the
# one file LOG (the GPU call brings back few files); a summary is printed
# last. Exits non-zero if a step failed.
set -uo pipefail
cd "$(dirname "$0")/../.."
log=${1:?usage: gpu_check_steps.sh LOG [--dry-run]}
dry=${2:-}
: > "$log"
summary=()
failed=0
step() {  # step NAME SECONDS COMMAND... (the dry run configures only: no GPU, and the build takes minutes)
  local name=$1 limit=$2
  shift 2
  if [ "$dry" = "--dry-run" ] && [ "$name" != configure ]; then
    summary+=("cuda $name: skipped (--dry-run: $*)")
    return 0
  fi
  echo "==== cuda $name: $*" >> "$log"
  local t0=$SECONDS
  timeout --kill-after=10 "$limit" "$@" >> "$log" 2>&1
  local rc=$?
  summary+=("cuda $name: $([ $rc -eq 0 ] && echo ok || echo "FAILED (exit $rc)") in $((SECONDS - t0)) s")
  [ $rc -eq 0 ] || failed=1
}
jobs=$(nproc 2> /dev/null || echo 4)
build=build/cuda$([ "$dry" = "--dry-run" ] && echo -dry)
step configure 60 cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DCOMHE_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90a
step build 300 cmake --build "$build" -j "$jobs" --target test_cuda_kernels
step ctest 240 ctest --test-dir "$build" --output-on-failure -V -R cuda_kernels
step memcheck 180 compute-sanitizer --tool memcheck --error-exitcode 1 "$build"/test_cuda_kernels quick
step racecheck 240 compute-sanitizer --tool racecheck --error-exitcode 1 "$build"/test_cuda_kernels quick
if [ "$dry" != "--dry-run" ]; then
  echo "==== cuda ptxas figures (registers, spills) of every kernel" >> "$log"
  grep -E "Compiling entry|registers|spill" "$log" | sed -E 's/ptxas info *: //' | paste - - - |
    awk -F'\t' '{print $1 " | " $2 " | " $3}' > "$log.ptxas" && cat "$log.ptxas" >> "$log" && rm -f "$log.ptxas"
  summary+=("$(grep -A12 'worst errors' "$log" | head -13)")
fi
printf '%s\n' "${summary[@]}"
exit $failed
