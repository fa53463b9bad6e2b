// The argument checks of the CPU kernels of both ops (ATen glue), with
// messages that name the op and the argument.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <string>

#include "comhe/hyperspherical_energy.h"

namespace comhe {
namespace aten {

// A point-set argument: (B, N, k), float32 or float64, k >= 1, on the CPU.
inline void check_points(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK_VALUE(t.dim() == 3, op, ": ", name, " must have shape (B, N, k), got ", t.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op, ": ", name,
                   " must be float32 or float64, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.size(2) >= 1, op, ": ", name, " must have k >= 1 coordinates, got ", t.sizes());
  TORCH_CHECK_VALUE(t.device().is_cpu(), op, " (CPU): ", name, " must be on the CPU, got ", t.device());
}

inline EnergyParams energy_params(const char* op, c10::string_view kind, double s, bool half_space, double eps,
                                  double delta, c10::string_view precision) {
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
  TORCH_CHECK_VALUE(precision == "auto" || precision == "ieee", op,
                    " (CPU): precision must be 'auto' or 'ieee' (IEEE float32/float64 arithmetic); '",
                    std::string(precision), "' is a GPU tensor-core mode");
  p.s = s;
  p.half_space = half_space;
  p.eps = eps;
  p.delta = delta;
  return p;
}

// The float32 Gaussian with t > 4 is computed from x in float64: each pair's
// f = exp(-t d2) is off by t times d2's rounding, ~2.4e-7 absolute in the
// float32 gram form, and at large t a few closest pairs carry the energy,
// so the errors do not average out (N = 2000, k = 40: 2.7e-8 relative at
// t = 8, 1.1e-5 at t = 50, against the contract's 1e-6).
inline bool computed_in_float64(const at::Tensor& x, const EnergyParams& p) {
  return x.scalar_type() == at::kFloat && p.kind == Kind::Gaussian && p.s > 4;
}

inline PointsLayout layout_of(const at::Tensor& t) {
  return PointsLayout{t.size(0), t.size(1), t.size(2), t.stride(0), t.stride(1), t.stride(2)};
}

// The message of every backend (_spec.non_finite_message).
inline void check_finite(const KernelStatus& status) {
  TORCH_CHECK_VALUE(status.ok, status.bad_input == 0 ? "x" : "y", " contains NaN or Inf (set ", status.bad_set,
                    ", row ", status.bad_row, "); the energy is undefined");
}

}  // namespace aten
}  // namespace comhe
