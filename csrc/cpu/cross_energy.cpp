// The CPU kernel of the op comhe::cross_energy (ATen glue): argument checks,
// then the torch-free kernel comhe::cpu::cross_energy (core/).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "checks.h"
#include "python_interrupt.h"
#include "comhe/cross_energy.h"

namespace {

constexpr const char* kOp = "comhe::cross_energy";

std::tuple<at::Tensor, at::Tensor, at::Tensor> cross_energy_cpu(const at::Tensor& x, const at::Tensor& y,
                                                                c10::string_view kind, double s, bool half_space,
                                                                double eps, double delta, bool compute_grad,
                                                                c10::string_view precision) {
  comhe::check_cross_pair(x, y, kOp);
  const comhe::EnergyParams params = comhe::check_energy_params(kind, s, half_space, eps, delta, kOp);
  comhe::cpu_glue::check_precision(precision, kOp);
  comhe::cpu_glue::check_cpu(x, kOp, "x");
  if (comhe::cpu_glue::in_float64(x, params)) {
    auto [energy, grad_x, grad_y] = cross_energy_cpu(x.to(at::kDouble), y.to(at::kDouble), kind, s, half_space, eps,
                                                     delta, compute_grad, precision);
    return {energy, grad_x.to(at::kFloat), grad_y.to(at::kFloat)};
  }
  at::Tensor energy = at::zeros({x.size(0)}, x.options().dtype(at::kDouble));
  at::Tensor grad_x = compute_grad ? at::zeros(x.sizes(), x.options()) : at::empty({0}, x.options());
  at::Tensor grad_y = compute_grad ? at::zeros(y.sizes(), y.options()) : at::empty({0}, y.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "cross_energy_cpu", [&] {
    const comhe::KernelStatus status = comhe::cpu::cross_energy<scalar_t>(
        x.const_data_ptr<scalar_t>(), comhe::points_layout(x), y.const_data_ptr<scalar_t>(),
        comhe::points_layout(y), params, energy.data_ptr<double>(),
        compute_grad ? grad_x.data_ptr<scalar_t>() : nullptr, compute_grad ? grad_y.data_ptr<scalar_t>() : nullptr,
        at::get_num_threads(), comhe::cpu_glue::python_interrupt());
    comhe::cpu_glue::raise_if_interrupted(status);
    comhe::cpu_glue::check_finite(status);
  });
  return {energy, grad_x, grad_y};
}

}  // namespace

TORCH_LIBRARY_IMPL(comhe, CPU, m) { m.impl("cross_energy", &cross_energy_cpu); }
