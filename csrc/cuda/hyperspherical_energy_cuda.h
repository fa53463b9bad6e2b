// The torch-free interface of the CUDA kernels (csrc/cuda/hyperspherical_energy_kernel.cu).
//
// DRAFT: compiled for sm_80 and sm_90a in CI (no GPU there); no GPU has run
// it yet. benchmarks/gpu_check.sh runs the standalone test
// (csrc/tests/test_cuda_kernels.cu), the pytest CUDA tests and
// compute-sanitizer on it on the first GPU lent (docs/cuda.md).
//
// Both ops enqueue their kernels on `stream` and return at once. The caller
// allocates a device workspace of *_workspace_bytes() and, after the call,
// reads the NaN/Inf status with read_status() (one 16-byte device-to-host
// copy and a stream synchronization: the op's contract is an error naming the
// first bad row, and only the device knows it).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "comhe/hyperspherical_energy.h"

namespace comhe {
namespace cuda {

// How float32 products of the gram path (k > 8) are formed; float64 and the
// few-coordinates path (k <= 8) always compute in the input's precision.
enum class Precision : int {
  IEEE = 0,    // float32 FMAs on the CUDA cores
  TF32X3 = 1,  // tensor cores, each operand split into two TF32 numbers, three products (about float32)
  TF32 = 2,    // tensor cores, TF32 operands (10-bit mantissa), near pairs refined in float64
  BF16 = 3,    // tensor cores, BF16 operands (7-bit mantissa), near pairs refined in float64
};

// Parses the schema's precision string for a float32 input on a device of
// compute capability cc_major ("auto": TF32X3 where the tensor cores have
// TF32, i.e. from sm_80, else IEEE). Returns false for an unknown string or a
// tensor-core mode the device lacks; *why then says which.
bool parse_precision(const char* text, bool is_double, int cc_major, Precision* out, const char** why);

// The few-coordinates path (difference form, each unordered pair once) is
// taken for k <= 8; above, the ordered gram path.
constexpr int64_t kSmallKMax = 8;

struct Status {
  int64_t bad_x = -1, bad_y = -1;  // flat index b * N + i of the first row with NaN/Inf, or -1
};

template <class T>
size_t energy_workspace_bytes(const PointsLayout& x, const EnergyParams& p, Precision prec, bool grad);
template <class T>
size_t cross_workspace_bytes(const PointsLayout& x, const PointsLayout& y, const EnergyParams& p, Precision prec,
                             bool grad);

// energy: B doubles on the device (the per-set sums); grad: (B, N, k)
// contiguous on the device, or nullptr. workspace: energy_workspace_bytes()
// bytes on the device, 256-byte aligned.
template <class T>
cudaError_t hyperspherical_energy_cuda(const T* x, const PointsLayout& layout, const EnergyParams& params,
                                       Precision prec, double* energy, T* grad, void* workspace,
                                       cudaStream_t stream);
// The cross sums of B set pairs x (B, N, k), y (B, M, k); grad_x, grad_y
// contiguous, or both nullptr.
template <class T>
cudaError_t cross_energy_cuda(const T* x, const PointsLayout& lx, const T* y, const PointsLayout& ly,
                              const EnergyParams& params, Precision prec, double* energy, T* grad_x, T* grad_y,
                              void* workspace, cudaStream_t stream);

// The NaN/Inf status of the last call on that workspace (synchronizes the stream).
cudaError_t read_status(const void* workspace, cudaStream_t stream, Status* status);

}  // namespace cuda
}  // namespace comhe
