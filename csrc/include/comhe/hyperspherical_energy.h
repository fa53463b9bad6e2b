// The torch-free interface of the fused hyperspherical-energy kernels.
//
// For B sets of N points x[b, i, :] in R^k (any strides) it computes each
// set's energy sum and, optionally, its gradient with respect to x, without
// materializing anything of size N x N. See pair_energy.h for the math.
#pragma once

#include <cstdint>

#include "comhe/pair_energy.h"

namespace comhe {

struct EnergyParams {
  Kind kind = Kind::Chordal;
  double s = 1.0;          // Riesz exponent; 0 = log energy
  bool half_space = false;  // the 2N points [u; -u]
  double eps = 1e-4;        // u = x / sqrt(||x||^2 + eps)
  double delta = 1e-4;      // angular offset
};

struct PointsLayout {
  int64_t B, N, k;                      // sets, points per set, coordinates
  int64_t stride_b, stride_n, stride_k;  // in elements
};

struct KernelStatus {
  bool ok = true;
  int64_t bad_set = -1, bad_row = -1;  // first row holding NaN or Inf
  int bad_input = 0;                   // in which input: 0 x, 1 y (the cross-set op's second set)
  bool interrupted = false;            // stopped early at the caller's request (Interrupt)
};

// Asked by the calling thread between the kernel's tasks, at most every
// period seconds: where requested returns true the call stops early, with
// KernelStatus::interrupted and its outputs unspecified (the ATen glue asks
// Python for Ctrl-C).
struct Interrupt {
  bool (*requested)(void* context) = nullptr;
  void* context = nullptr;
  double period = 0.1;
};

namespace cpu {

// The CPU kernel (csrc/cpu/core). energy: B doubles (the sums over pairs, in
// float64 accumulation). grad: B*N*k values, contiguous (B, N, k), or nullptr
// to skip the gradient. Non-finite input returns ok = false and leaves the
// outputs unspecified; so does a call stopped by interrupt.
template <class T>
KernelStatus hyperspherical_energy(const T* x, const PointsLayout& layout, const EnergyParams& params,
                                   double* energy, T* grad, int num_threads, const Interrupt& interrupt = {});

extern template KernelStatus hyperspherical_energy<float>(const float*, const PointsLayout&, const EnergyParams&,
                                                          double*, float*, int, const Interrupt&);
extern template KernelStatus hyperspherical_energy<double>(const double*, const PointsLayout&, const EnergyParams&,
                                                           double*, double*, int, const Interrupt&);

}  // namespace cpu

}  // namespace comhe
