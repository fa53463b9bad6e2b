// The CPU's float32 FMA peak, measured: the ceiling the fused kernel's
// GFLOP/s are compared with (comhe-bench compares with torch's sgemm, which
// runs below it). Every thread runs 16 independent chains of vector FMAs:
// more than FMA latency x FMAs per cycle (4 x 2 at most on current x86), so
// the FMA units, not the dependency chains, set the pace (chains: below).
//   cmake --build build/cmake --target fma_peak && build/cmake/fma_peak
#include <omp.h>

#include <chrono>
#include <cstdio>

#include "comhe/simd.h"

int main() {
  using V = comhe::simd::vfloat;
  // 12 chains where there are 16 vector registers (AVX2): 16 chains, the
  // multiplier and the addend spilled there (54 GFLOP/s on Zen 4 against 214
  // for AVX-512; 12 still exceed 4 cycles x 2 FMAs per cycle)
  constexpr int kChains = comhe::simd::kVectorRegisters >= 32 ? 16 : 12, kLanes = sizeof(V) / sizeof(float);
  const long iters = 200000000L / kChains;
  double best = 0;
  int threads = 1;
  for (int rep = 0; rep < 5; ++rep) {
    float sink = 0;
    const auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel reduction(+ : sink)
    {
#pragma omp master
      threads = omp_get_num_threads();  // one writer: no race on threads
      V acc[kChains], m, a;
      for (int c = 0; c < kChains; ++c) acc[c] = V{} + 1e-3f * float(c + omp_get_thread_num());
      m = V{} + 0.999999f;
      a = V{} + 1e-7f;
      for (long it = 0; it < iters; ++it)
        for (int c = 0; c < kChains; ++c) acc[c] = acc[c] * m + a;
      for (int c = 0; c < kChains; ++c) sink += acc[c][0];
    }
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const double gflops = 2.0 * kLanes * kChains * double(iters) * threads / s / 1e9;
    if (gflops > best) best = gflops;
    if (sink == 42) std::puts("");  // keeps the chains alive
  }
  std::printf("float32 FMA peak: %.0f GFLOP/s (%d threads, %d-lane vectors, best of 5)\n", best, threads, kLanes);
}
