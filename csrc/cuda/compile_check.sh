#!/usr/bin/env bash
# The CUDA compile check of CI (.ci/run), on a machine with nvcc and no GPU:
#  1. the torch-free kernels, the host side and the standalone test for sm_80
#     and sm_90a, failing on any local memory (register spills) in the pair
#     kernels (CMakeLists.txt, COMHE_CUDA). Of the 18 pairs_*.cu files (one
#     per pair energy, 13 kernels each) one: they differ only in the pair
#     energy, and chordal s = 1 in half space takes every code path of the
#     kernels (uses_d2p; the full-space kernels are the same code with the
#     d2p terms left out). All 18 compile in benchmarks/gpu_check.sh;
#  2. the ATen glue (hyperspherical_energy.cu) to an sm_90a object against a
#     CUDA build's headers: the CPU wheel's c10/cuda lacks
#     cuda_cmake_macros.h, so torch==2.14.1's wheel (a CUDA build, on this
#     machine's package index) is fetched and only its include/ unpacked.
# Usage: csrc/cuda/compile_check.sh BUILD_DIR   (prints each step's seconds)
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-build/cuda-check}
mkdir -p "$out"
if ! command -v nvcc > /dev/null; then
  echo "compile_check: nvcc not found; CUDA compile check skipped"
  exit 0
fi
t0=$(date +%s)
# the glue's headers first, so that its compile runs beside the kernels' (2 cores)
whl_dir="$out/torch-wheel"
if [ ! -d "$whl_dir/torch/include/c10/cuda" ]; then
  python3 -m pip download -q --no-deps torch==2.14.1 -d "$whl_dir" 2> /dev/null > /dev/null
  unzip -q -o "$whl_dir"/torch-2.14.1-*.whl 'torch/include/*' -d "$whl_dir"
  rm -f "$whl_dir"/torch-2.14.1-*.whl
fi
inc="$whl_dir/torch/include"
nvcc -std=c++20 -O0 --expt-relaxed-constexpr -D_GLIBCXX_USE_CXX11_ABI=1 -DTORCH_EXTENSION_NAME=_C \
  -I"$inc" -I"$inc/torch/csrc/api/include" -Icsrc/include -gencode=arch=compute_90a,code=sm_90a \
  -diag-suppress 20013,20015 -c csrc/cuda/hyperspherical_energy.cu -o "$out/hyperspherical_energy_glue.o" \
  > "$out/glue.log" 2>&1 &
glue=$!

cmake -S . -B "$out/cmake" -DCMAKE_BUILD_TYPE=Release -DCOMHE_CUDA=ON -DCOMHE_CUDA_PAIRS=chordal_one_half \
  -DCMAKE_CUDA_ARCHITECTURES="80;90a" > "$out/cmake-configure.log"
if ! cmake --build "$out/cmake" -j 2 --target comhe_cuda_check > "$out/cmake-build.log" 2>&1; then
  grep -E "error|Error|spill|stack frame" "$out/cmake-build.log" | head -40
  echo "compile_check: the CUDA kernels failed to compile (or spilled registers); log: $out/cmake-build.log"
  kill "$glue" 2> /dev/null || true
  exit 1
fi
t1=$(date +%s)
echo "compile_check: CUDA kernels for sm_80 and sm_90a, no local memory in the pair kernels ($((t1 - t0)) s)"
if ! wait "$glue"; then
  cat "$out/glue.log"
  echo "compile_check: the ATen glue failed to compile against torch 2.14.1's CUDA headers"
  exit 1
fi
t2=$(date +%s)
echo "compile_check: ATen glue against torch 2.14.1 CUDA headers (done $((t2 - t0)) s after the start)"
