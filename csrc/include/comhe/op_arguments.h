// The argument checks of the two ops, shared by every backend's ATen glue
// (csrc/cpu, csrc/cuda), so that each rejects bad input with
// the same message. Not torch-free: the kernels' interfaces are
// hyperspherical_energy.h and csrc/cuda/hyperspherical_energy_cuda.h.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <string>

#include "comhe/hyperspherical_energy.h"

namespace comhe {

inline void check_points_tensor(const at::Tensor& x, const char* op, const char* name) {
  TORCH_CHECK_VALUE(x.dim() == 3, op, ": ", name, " must have shape (B, N, k), got ", x.sizes());
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op, ": ", name,
                   " must be float32 or float64, got ", x.scalar_type());
  TORCH_CHECK_VALUE(x.size(2) >= 1, op, ": ", name, " must have k >= 1 coordinates, got ", x.sizes());
}

inline EnergyParams check_energy_params(c10::string_view kind, double s, bool half_space, double eps, double delta,
                                        const char* op) {
  EnergyParams p;
  if (kind == "chordal") {
    p.kind = Kind::Chordal;
  } else if (kind == "angular") {
    p.kind = Kind::Angular;
  } else if (kind == "gaussian") {
    p.kind = Kind::Gaussian;
  } else {
    TORCH_CHECK_VALUE(false, op, ": kind must be 'chordal', 'angular' or 'gaussian', got '", std::string(kind), "'");
  }
  TORCH_CHECK_VALUE(std::isfinite(s) && s >= 0, op, ": s must be finite and >= 0, got ", s);
  TORCH_CHECK_VALUE(p.kind != Kind::Gaussian || s > 0, op, ": the Gaussian kind needs s = t > 0, got ", s);
  TORCH_CHECK_VALUE(std::isfinite(eps) && eps >= 0, op, ": eps must be finite and >= 0, got ", eps);
  TORCH_CHECK_VALUE(std::isfinite(delta) && delta >= 0, op, ": delta must be finite and >= 0, got ", delta);
  p.s = s;
  p.half_space = half_space;
  p.eps = eps;
  p.delta = delta;
  return p;
}

// The second set of the cross-set op against the first: the same number of
// sets B, k, dtype and device.
inline void check_cross_pair(const at::Tensor& x, const at::Tensor& y, const char* op) {
  check_points_tensor(x, op, "x");
  check_points_tensor(y, op, "y");
  TORCH_CHECK_VALUE(x.size(0) == y.size(0), op, ": x and y must hold the same number of sets B, got ", x.size(0),
                    " and ", y.size(0));
  TORCH_CHECK_VALUE(x.size(2) == y.size(2), op, ": x and y must have the same k, got ", x.size(2), " and ",
                    y.size(2));
  TORCH_CHECK_TYPE(x.scalar_type() == y.scalar_type(), op, ": x and y must have the same dtype, got ",
                   x.scalar_type(), " and ", y.scalar_type());
  TORCH_CHECK_VALUE(x.device() == y.device(), op, ": x and y must be on the same device, got ", x.device(), " and ",
                    y.device());
}

// The layout of a (B, N, k) tensor for the torch-free kernels.
inline PointsLayout points_layout(const at::Tensor& x) {
  return PointsLayout{x.size(0), x.size(1), x.size(2), x.stride(0), x.stride(1), x.stride(2)};
}

}  // namespace comhe
