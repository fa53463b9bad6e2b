// The CPU glue's own checks, beside the argument checks every backend shares
// (comhe/op_arguments.h): the device, the precision, the non-finite report.
#pragma once

#include <ATen/ATen.h>

#include <string>

#include "comhe/op_arguments.h"

namespace comhe {
namespace cpu_glue {

inline void check_cpu(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK_VALUE(t.device().is_cpu(), op, " (CPU): ", name, " must be on the CPU, got ", t.device());
}

inline void check_precision(c10::string_view precision, const char* op) {
  TORCH_CHECK_VALUE(precision == "auto" || precision == "ieee", op,
                    " (CPU): precision must be 'auto' or 'ieee' (IEEE float32/float64 arithmetic); '",
                    std::string(precision), "' is a GPU tensor-core mode");
}

// The float32 Gaussian with t > 4 is computed from x in float64: each pair's
// f = exp(-t d2) is off by t times d2's rounding, ~2.4e-7 absolute in the
// float32 gram form, and at large t a few closest pairs carry the energy,
// so the errors do not average out (N = 2000, k = 40: 2.7e-8 relative at
// t = 8, 1.1e-5 at t = 50, against the contract's 1e-6).
inline bool in_float64(const at::Tensor& x, const EnergyParams& p) {
  return x.scalar_type() == at::kFloat && p.kind == Kind::Gaussian && p.s > 4;
}

// The message of every backend (_spec.non_finite_message).
inline void check_finite(const KernelStatus& status) {
  TORCH_CHECK_VALUE(status.ok, status.bad_input == 0 ? "x" : "y", " contains NaN or Inf (set ", status.bad_set,
                    ", row ", status.bad_row, "); the energy is undefined");
}

}  // namespace cpu_glue
}  // namespace comhe
