// What one call computes and where its buffers live (torch-free, host side),
// shared by the launchers of the host file and the pair kernels' files.
// DRAFT: see hyperspherical_energy_cuda.h.
#pragma once

#include <algorithm>
#include <cmath>

#include "common.cuh"
#include "hyperspherical_energy_cuda.h"

namespace comhe {
namespace cuda {

inline int64_t ceil_div(int64_t p, int64_t q) { return (p + q - 1) / q; }
inline int64_t round_up(int64_t p, int64_t q) { return ceil_div(p, q) * q; }

// Pairs with d2 (or d2p) below this leave the gram form for float64 (the CPU
// kernel's refine_threshold for float32 and float64: tau = 2^-8, growing with
// s above 1 where the closest pairs carry the energy). The tensor-core
// operand rounding (2^-11 relative for TF32, 2^-8 for BF16) moves d2 by up to
// ~4 times that: the threshold keeps a refined pair's relative error in d2
// under ~1/16 (TF32: 2^-5, BF16: 2^-2). To be measured on the first GPU call
// (benchmarks/gpu_check.sh reports each mode's error).
inline double refine_threshold(bool is_double, const EnergyParams& P, Precision prec) {
  double tau = 1.0 / 256;
  if (!is_double && P.kind != Kind::Gaussian && P.s > 1) tau = std::min(4.0, tau * std::pow(32.0, P.s - 1));
  if (!is_double && prec == Precision::TF32) tau = std::max(tau, 1.0 / 32);
  if (!is_double && prec == Precision::BF16) tau = std::max(tau, 0.25);
  return tau;
}

template <class T>
struct Plan {
  bool cross = false, grad = false;
  int64_t B = 0;
  EnergyParams P;
  Precision prec = Precision::IEEE;
  int small_k = 0;  // 3 or 8: the few-coordinates path (k <= 3, k <= 8); 0: the gram path
  int KR = 0;       // record width of that path
  int64_t TS = 0, nTx = 0, nTy = 0, pairs = 0;
  int KV = 0;       // coordinates per pass of the gram path
  int64_t KP = 0, npass = 0;
  unsigned long long* status = nullptr;
  SetArgs<T> X, Y;  // Y == X for the one-set op
  T *part_x = nullptr, *part_y = nullptr;
  double *epart = nullptr, *epart_y = nullptr;
  double *self_e = nullptr, *dself = nullptr;  // the half-space self pairs (one-set op)
  size_t bytes = 0;
};

// The pair kernel(s) of one pair energy E: small_k_kernel, or gram_kernel
// (twice for the cross op). Defined in pairs.cuh, instantiated by the
// pairs_<kind>_<power>_<full|half>.cu files: one translation unit per pair
// energy (13 kernels, ~20 s of nvcc per architecture), so that builds run
// them in parallel and CI can compile one.
template <class T, class E>
cudaError_t launch_pairs(const Plan<T>& pl, cudaStream_t stream);

}  // namespace cuda
}  // namespace comhe
