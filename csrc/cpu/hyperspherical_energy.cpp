// The CPU kernel of the op comhe::hyperspherical_energy (ATen glue): argument
// checks, then the torch-free kernel comhe::cpu::hyperspherical_energy (core/).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <string>

#include "comhe/hyperspherical_energy.h"

namespace {

comhe::EnergyParams check_params(const at::Tensor& x, c10::string_view kind, double s, bool half_space, double eps,
                                 double delta) {
  TORCH_CHECK_VALUE(x.dim() == 3, "comhe::hyperspherical_energy: x must have shape (B, N, k), got ", x.sizes());
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
                   "comhe::hyperspherical_energy: x must be float32 or float64, got ", x.scalar_type());
  TORCH_CHECK_VALUE(x.size(2) >= 1, "comhe::hyperspherical_energy: x must have k >= 1 coordinates, got ",
                    x.sizes());
  comhe::EnergyParams p;
  if (kind == "chordal") {
    p.kind = comhe::Kind::Chordal;
  } else if (kind == "angular") {
    p.kind = comhe::Kind::Angular;
  } else if (kind == "gaussian") {
    p.kind = comhe::Kind::Gaussian;
  } else {
    TORCH_CHECK_VALUE(false, "comhe::hyperspherical_energy: kind must be 'chordal', 'angular' or 'gaussian', got '",
                      std::string(kind), "'");
  }
  TORCH_CHECK_VALUE(std::isfinite(s) && s >= 0, "comhe::hyperspherical_energy: s must be finite and >= 0, got ", s);
  TORCH_CHECK_VALUE(p.kind != comhe::Kind::Gaussian || s > 0,
                    "comhe::hyperspherical_energy: the Gaussian kind needs s = t > 0, got ", s);
  TORCH_CHECK_VALUE(std::isfinite(eps) && eps >= 0, "comhe::hyperspherical_energy: eps must be finite and >= 0, got ",
                    eps);
  TORCH_CHECK_VALUE(std::isfinite(delta) && delta >= 0,
                    "comhe::hyperspherical_energy: delta must be finite and >= 0, got ", delta);
  p.s = s;
  p.half_space = half_space;
  p.eps = eps;
  p.delta = delta;
  return p;
}

std::tuple<at::Tensor, at::Tensor> hyperspherical_energy_cpu(const at::Tensor& x, c10::string_view kind, double s,
                                                             bool half_space, double eps, double delta,
                                                             bool compute_grad, c10::string_view precision) {
  const comhe::EnergyParams params = check_params(x, kind, s, half_space, eps, delta);
  TORCH_CHECK_VALUE(precision == "auto" || precision == "ieee",
                    "comhe::hyperspherical_energy (CPU): precision must be 'auto' or 'ieee' (IEEE float32/float64 "
                    "arithmetic); '", std::string(precision), "' is a GPU tensor-core mode");
  TORCH_CHECK_VALUE(x.device().is_cpu(), "comhe::hyperspherical_energy (CPU): x must be on the CPU, got ",
                    x.device());
  // The float32 Gaussian with t > 4 is computed from x in float64: each pair's
  // f = exp(-t d2) is off by t times d2's rounding, ~2.4e-7 absolute in the
  // float32 gram form, and at large t a few closest pairs carry the energy,
  // so the errors do not average out (N = 2000, k = 40: 2.7e-8 relative at
  // t = 8, 1.1e-5 at t = 50, against the contract's 1e-6).
  if (x.scalar_type() == at::kFloat && params.kind == comhe::Kind::Gaussian && s > 4) {
    auto [energy, grad] = hyperspherical_energy_cpu(x.to(at::kDouble), kind, s, half_space, eps, delta, compute_grad,
                                                    precision);
    return {energy, grad.to(at::kFloat)};
  }
  const int64_t B = x.size(0), N = x.size(1), k = x.size(2);
  at::Tensor energy = at::zeros({B}, x.options().dtype(at::kDouble));
  at::Tensor grad = compute_grad ? at::zeros({B, N, k}, x.options()) : at::empty({0}, x.options());
  const comhe::PointsLayout layout{B, N, k, x.stride(0), x.stride(1), x.stride(2)};
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "hyperspherical_energy_cpu", [&] {
    const comhe::KernelStatus status = comhe::cpu::hyperspherical_energy<scalar_t>(
        x.const_data_ptr<scalar_t>(), layout, params, energy.data_ptr<double>(),
        compute_grad ? grad.data_ptr<scalar_t>() : nullptr, at::get_num_threads());
    // the message of every backend (_spec.non_finite_message)
    TORCH_CHECK_VALUE(status.ok, "x contains NaN or Inf (set ", status.bad_set, ", row ", status.bad_row,
                      "); the energy is undefined");
  });
  return {energy, grad};
}

}  // namespace

TORCH_LIBRARY_IMPL(comhe, CPU, m) { m.impl("hyperspherical_energy", &hyperspherical_energy_cpu); }
