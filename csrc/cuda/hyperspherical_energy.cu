// CUDA implementation of both ops of csrc/ops.cpp: argument checks (the CPU
// glue's, comhe/op_arguments.h), then the torch-free kernels of
// hyperspherical_energy_kernel.cu on the current stream of x's device.
// DRAFT: compiled in CI against CUDA torch headers, not yet run on a GPU
// (benchmarks/gpu_check.sh is the first run; docs/cuda.md).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#include <torch/library.h>

#include <string>

#include "comhe/op_arguments.h"
#include "hyperspherical_energy_cuda.h"

namespace {

constexpr const char* kEnergyOp = "comhe::hyperspherical_energy";
constexpr const char* kCrossOp = "comhe::cross_energy";

void check_cuda(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, op, " (CUDA): ", cudaGetErrorString(err));
}

comhe::cuda::Precision parse_precision(c10::string_view precision, const at::Tensor& x, const char* op) {
  int major = 0;
  check_cuda(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, x.get_device()), op);
  comhe::cuda::Precision p;
  const char* why = nullptr;
  const std::string text(precision);
  TORCH_CHECK_VALUE(comhe::cuda::parse_precision(text.c_str(), x.scalar_type() == at::kDouble, major, &p, &why), op,
                    " (CUDA): ", why, ", got '", text, "'");
  return p;
}

// The float32 Gaussian with t > 4 is computed in float64, as on the CPU (its
// glue says why: at large t a few closest pairs carry the energy, and the
// float32 rounding of d2 times t no longer averages out).
bool gaussian_in_float64(const at::Tensor& x, const comhe::EnergyParams& p) {
  return x.scalar_type() == at::kFloat && p.kind == comhe::Kind::Gaussian && p.s > 4;
}

// The NaN/Inf error of every backend (_spec.non_finite_message). Skipped
// while the stream is being captured into a CUDA graph, where reading the
// status back would end the capture.
void check_status(const at::Tensor& workspace, cudaStream_t stream, const at::Tensor& x, const at::Tensor* y,
                  const char* op) {
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  check_cuda(cudaStreamIsCapturing(stream, &capture), op);
  if (capture != cudaStreamCaptureStatusNone) return;
  comhe::cuda::Status st;
  check_cuda(comhe::cuda::read_status(workspace.const_data_ptr(), stream, &st), op);
  TORCH_CHECK_VALUE(st.bad_x < 0, "x contains NaN or Inf (set ", st.bad_x / std::max<int64_t>(x.size(1), 1),
                    ", row ", st.bad_x % std::max<int64_t>(x.size(1), 1), "); the energy is undefined");
  if (y != nullptr)
    TORCH_CHECK_VALUE(st.bad_y < 0, "y contains NaN or Inf (set ", st.bad_y / std::max<int64_t>(y->size(1), 1),
                      ", row ", st.bad_y % std::max<int64_t>(y->size(1), 1), "); the energy is undefined");
}

std::tuple<at::Tensor, at::Tensor> energy_op_cuda(const at::Tensor& x, c10::string_view kind, double s,
                                                              bool half_space, double eps, double delta,
                                                              bool compute_grad, c10::string_view precision) {
  comhe::check_points_tensor(x, kEnergyOp, "x");
  const comhe::EnergyParams params = comhe::check_energy_params(kind, s, half_space, eps, delta, kEnergyOp);
  TORCH_CHECK_VALUE(x.is_cuda(), kEnergyOp, " (CUDA): x must be on a CUDA device, got ", x.device());
  const c10::cuda::CUDAGuard guard(x.device());
  const comhe::cuda::Precision prec = parse_precision(precision, x, kEnergyOp);
  if (gaussian_in_float64(x, params)) {
    auto [energy, grad] = energy_op_cuda(x.to(at::kDouble), kind, s, half_space, eps, delta,
                                                     compute_grad, "auto");
    return {energy, grad.to(at::kFloat)};
  }
  const comhe::PointsLayout layout = comhe::points_layout(x);
  at::Tensor energy = at::empty({layout.B}, x.options().dtype(at::kDouble));
  at::Tensor grad = compute_grad ? at::empty({layout.B, layout.N, layout.k}, x.options()) : at::empty({0}, x.options());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(x.get_device()).stream();
  at::Tensor workspace;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "hyperspherical_energy_cuda", [&] {
    const size_t bytes = comhe::cuda::energy_workspace_bytes<scalar_t>(layout, params, prec, compute_grad);
    workspace = at::empty({int64_t(bytes)}, x.options().dtype(at::kByte));
    check_cuda(comhe::cuda::hyperspherical_energy_cuda<scalar_t>(
                   x.const_data_ptr<scalar_t>(), layout, params, prec, energy.data_ptr<double>(),
                   compute_grad ? grad.data_ptr<scalar_t>() : nullptr, workspace.data_ptr(), stream),
               kEnergyOp);
  });
  if (layout.B > 0) check_status(workspace, stream, x, nullptr, kEnergyOp);
  return {energy, grad};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> cross_op_cuda(const at::Tensor& x, const at::Tensor& y,
                                                                 c10::string_view kind, double s, bool half_space,
                                                                 double eps, double delta, bool compute_grad,
                                                                 c10::string_view precision) {
  comhe::check_cross_pair(x, y, kCrossOp);
  const comhe::EnergyParams params = comhe::check_energy_params(kind, s, half_space, eps, delta, kCrossOp);
  TORCH_CHECK_VALUE(x.is_cuda(), kCrossOp, " (CUDA): x must be on a CUDA device, got ", x.device());
  const c10::cuda::CUDAGuard guard(x.device());
  const comhe::cuda::Precision prec = parse_precision(precision, x, kCrossOp);
  if (gaussian_in_float64(x, params)) {
    auto [energy, gx, gy] = cross_op_cuda(x.to(at::kDouble), y.to(at::kDouble), kind, s, half_space, eps, delta,
                                              compute_grad, "auto");
    return {energy, gx.to(at::kFloat), gy.to(at::kFloat)};
  }
  const comhe::PointsLayout lx = comhe::points_layout(x), ly = comhe::points_layout(y);
  at::Tensor energy = at::empty({lx.B}, x.options().dtype(at::kDouble));
  at::Tensor gx = compute_grad ? at::empty({lx.B, lx.N, lx.k}, x.options()) : at::empty({0}, x.options());
  at::Tensor gy = compute_grad ? at::empty({ly.B, ly.N, ly.k}, y.options()) : at::empty({0}, y.options());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(x.get_device()).stream();
  at::Tensor workspace;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "cross_energy_cuda", [&] {
    const size_t bytes = comhe::cuda::cross_workspace_bytes<scalar_t>(lx, ly, params, prec, compute_grad);
    workspace = at::empty({int64_t(bytes)}, x.options().dtype(at::kByte));
    check_cuda(comhe::cuda::cross_energy_cuda<scalar_t>(
                   x.const_data_ptr<scalar_t>(), lx, y.const_data_ptr<scalar_t>(), ly, params, prec,
                   energy.data_ptr<double>(), compute_grad ? gx.data_ptr<scalar_t>() : nullptr,
                   compute_grad ? gy.data_ptr<scalar_t>() : nullptr, workspace.data_ptr(), stream),
               kCrossOp);
  });
  if (lx.B > 0) check_status(workspace, stream, x, &y, kCrossOp);
  return {energy, gx, gy};
}

}  // namespace

TORCH_LIBRARY_IMPL(comhe, CUDA, m) {
  m.impl("hyperspherical_energy", &energy_op_cuda);
  m.impl("cross_energy", &cross_op_cuda);
}
