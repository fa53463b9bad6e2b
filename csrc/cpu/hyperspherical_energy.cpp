// The CPU kernel of the op comhe::hyperspherical_energy (ATen glue): argument
// checks, then the torch-free kernel comhe::cpu::hyperspherical_energy (core/).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "checks.h"
#include "python_interrupt.h"

namespace {

constexpr const char* kOp = "comhe::hyperspherical_energy";

std::tuple<at::Tensor, at::Tensor> hyperspherical_energy_cpu(const at::Tensor& x, c10::string_view kind, double s,
                                                             bool half_space, double eps, double delta,
                                                             bool compute_grad, c10::string_view precision) {
  comhe::check_points_tensor(x, kOp, "x");
  const comhe::EnergyParams params = comhe::check_energy_params(kind, s, half_space, eps, delta, kOp);
  comhe::cpu_glue::check_precision(precision, kOp);
  comhe::cpu_glue::check_cpu(x, kOp, "x");
  if (comhe::cpu_glue::in_float64(x, params)) {
    auto [energy, grad] = hyperspherical_energy_cpu(x.to(at::kDouble), kind, s, half_space, eps, delta, compute_grad,
                                                    precision);
    return {energy, grad.to(at::kFloat)};
  }
  const int64_t B = x.size(0), N = x.size(1), k = x.size(2);
  at::Tensor energy = at::zeros({B}, x.options().dtype(at::kDouble));
  at::Tensor grad = compute_grad ? at::zeros({B, N, k}, x.options()) : at::empty({0}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "hyperspherical_energy_cpu", [&] {
    const comhe::KernelStatus status = comhe::cpu::hyperspherical_energy<scalar_t>(
        x.const_data_ptr<scalar_t>(), comhe::points_layout(x), params, energy.data_ptr<double>(),
        compute_grad ? grad.data_ptr<scalar_t>() : nullptr, at::get_num_threads(), comhe::cpu_glue::python_interrupt());
    comhe::cpu_glue::raise_if_interrupted(status);
    comhe::cpu_glue::check_finite(status);
  });
  return {energy, grad};
}

}  // namespace

TORCH_LIBRARY_IMPL(comhe, CPU, m) { m.impl("hyperspherical_energy", &hyperspherical_energy_cpu); }
