// The torch-free interface of the fused cross-set energy kernels.
//
// For B pairs of sets, x[b] of N points and y[b] of M points in R^k (any
// strides), it computes the sum over all pairs (x_i, y_j) of f (with half
// space also f(x_i, -y_j): F = f(d2) + f(d2p)) and, optionally, its gradients
// with respect to x and y. Parameters as for hyperspherical_energy.h.
#pragma once

#include "comhe/hyperspherical_energy.h"

namespace comhe {
namespace cpu {

// The CPU kernel (csrc/cpu/core). layout_x and layout_y: the same B and k.
// energy: B doubles. grad_x, grad_y: (B, N, k) and (B, M, k) contiguous, or
// both nullptr to skip the gradients. N = 0 or M = 0: zero energies and
// gradients. Non-finite input returns ok = false, naming the first such row
// of x or, if x has none, of y (bad_input), and leaves the outputs
// unspecified. interrupt: as for hyperspherical_energy.
template <class T>
KernelStatus cross_energy(const T* x, const PointsLayout& layout_x, const T* y, const PointsLayout& layout_y,
                          const EnergyParams& params, double* energy, T* grad_x, T* grad_y, int num_threads,
                          const Interrupt& interrupt = {});

extern template KernelStatus cross_energy<float>(const float*, const PointsLayout&, const float*, const PointsLayout&,
                                                 const EnergyParams&, double*, float*, float*, int, const Interrupt&);
extern template KernelStatus cross_energy<double>(const double*, const PointsLayout&, const double*,
                                                  const PointsLayout&, const EnergyParams&, double*, double*, double*,
                                                  int, const Interrupt&);

}  // namespace cpu
}  // namespace comhe
