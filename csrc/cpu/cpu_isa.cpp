// The CPU kernel's ISA level from Python (ATen glue; comhe/cpu_isa.h):
// comhe::_cpu_isa() reports it as JSON (comhe_kernels.build_info()),
// comhe::_set_cpu_isa(level) changes it for the next calls (the tests run
// every level this CPU can). Internal ops: no tensors, nothing to trace.
#include <torch/library.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "comhe/cpu_isa.h"

namespace {

std::string quoted(const std::string& s) {
  std::string q = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') q += '\\';
    q += c;
  }
  return q + "\"";
}

std::string list(const std::vector<std::string>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + quoted(v[i]);
  return s + "]";
}

std::string cpu_isa() {
  const comhe::cpu::IsaReport r = comhe::cpu::isa_report();
  return "{\"level\": " + quoted(r.level) + ", \"levels\": " + list(r.levels) + ", \"runnable\": " +
         list(r.runnable) + ", \"cpu\": " + list(r.cpu) + ", \"requested\": " + quoted(r.requested) +
         ", \"error\": " + quoted(r.error) + "}";
}

std::string set_cpu_isa(std::string level) {
  try {
    return comhe::cpu::set_isa(level);
  } catch (const std::invalid_argument& e) {
    TORCH_CHECK_VALUE(false, "comhe::_set_cpu_isa: ", e.what());
  }
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(comhe, m) {
  m.def("_cpu_isa() -> str", &cpu_isa);
  m.def("_set_cpu_isa(str level) -> str", &set_cpu_isa);
}
