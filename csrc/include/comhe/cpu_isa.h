// The ISA levels of the CPU kernel (torch-free). The core (csrc/cpu/core) is
// compiled once per level, each copy with its level's -march and in its own
// namespace comhe::cpu::detail::<level> (comhe_kernels/_build_flags.py), and
// the entry points of comhe/hyperspherical_energy.h and comhe/cross_energy.h
// call the copy chosen at the first call (csrc/cpu/dispatch.cpp): the
// environment's COMHE_CPU_ISA if set, else the highest level this CPU runs.
#pragma once

#include <string>
#include <vector>

#include "comhe/cross_energy.h"

namespace comhe {
namespace cpu {

// One level's copy of the core: plain data (names and function pointers), so
// that reading it runs none of the level's instructions.
struct IsaLevel {
  const char* name;      // COMHE_CPU_ISA's value: "sse42", "avx2", "avx512", "neon", ...
  const char* features;  // what its compiler was allowed to use (its -march), e.g. " avx avx2 bmi bmi2 fma ..."
  KernelStatus (*energy_float)(const float*, const PointsLayout&, const EnergyParams&, double*, float*, int,
                               const Interrupt&);
  KernelStatus (*energy_double)(const double*, const PointsLayout&, const EnergyParams&, double*, double*, int,
                                const Interrupt&);
  KernelStatus (*cross_float)(const float*, const PointsLayout&, const float*, const PointsLayout&,
                              const EnergyParams&, double*, float*, float*, int, const Interrupt&);
  KernelStatus (*cross_double)(const double*, const PointsLayout&, const double*, const PointsLayout&,
                               const EnergyParams&, double*, double*, double*, int, const Interrupt&);
};

struct IsaReport {
  std::string level;                  // the level the kernels run now; empty if none (error says why)
  std::vector<std::string> levels;    // the levels of this build, lowest first
  std::vector<std::string> runnable;  // those this CPU can run
  std::vector<std::string> cpu;       // this CPU's features, of those the levels may need
  std::string requested;              // COMHE_CPU_ISA, as read at the first call
  std::string error;                  // why no level is chosen (a bad COMHE_CPU_ISA, an old CPU)
};

IsaReport isa_report();

// The kernels run `level` from the next call on ("": the highest this CPU
// runs). Throws std::invalid_argument, naming the levels, if this build has
// no such level or this CPU cannot run it. Returns the previous level.
std::string set_isa(const std::string& level);

}  // namespace cpu
}  // namespace comhe
