// The choice of the CPU kernel's ISA level (torch-free; comhe/cpu_isa.h) and
// the entry points of comhe/hyperspherical_energy.h and comhe/cross_energy.h,
// which call the chosen level's copy of the core. Compiled once, without a
// level's -march: this file runs on any CPU of the architecture, and the
// levels' code only after the check that this CPU has what it needs.
#include "comhe/cpu_isa.h"

#include <atomic>
#include <cstdlib>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <type_traits>

#if defined(__aarch64__) && defined(__linux__)
#include <asm/hwcap.h>
#include <sys/auxv.h>
#endif

// The levels of this build, lowest first: as comhe_kernels/_build_flags.py
// (PORTABLE_LEVELS) and CMakeLists.txt compile them.
#if defined(COMHE_CPU_SINGLE_LEVEL)  // COMHE_CPU_ARCH: one copy, for one -march
#define COMHE_CPU_LEVELS(X) X(COMHE_CPU_SINGLE_LEVEL)
#elif defined(__x86_64__)
#define COMHE_CPU_LEVELS(X) X(sse42) X(avx2) X(avx512)
#elif defined(__aarch64__)
#define COMHE_CPU_LEVELS(X) X(neon)
#else
#define COMHE_CPU_LEVELS(X) X(generic)
#endif

namespace comhe {
namespace cpu {

namespace detail {
#define COMHE_DECLARE_LEVEL(name) \
  inline namespace name {         \
  extern const IsaLevel isa_level; \
  }
COMHE_CPU_LEVELS(COMHE_DECLARE_LEVEL)
#undef COMHE_DECLARE_LEVEL
}  // namespace detail

namespace {

#define COMHE_LEVEL_ADDRESS(name) &detail::name::isa_level,
const IsaLevel* const kLevels[] = {COMHE_CPU_LEVELS(COMHE_LEVEL_ADDRESS)};
#undef COMHE_LEVEL_ADDRESS

// This CPU's features, by the names the levels list (csrc/cpu/core/isa_level.h):
// those of __builtin_cpu_supports, which also checks that the OS saves the
// AVX and AVX-512 registers. Its names must be literals, hence the list.
std::vector<std::string> detect_cpu() {
  std::vector<std::string> has;
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
#define COMHE_X86(f) \
  if (__builtin_cpu_supports(f)) has.push_back(f);
  COMHE_X86("sse4.2") COMHE_X86("popcnt") COMHE_X86("avx") COMHE_X86("avx2") COMHE_X86("fma") COMHE_X86("bmi")
  COMHE_X86("bmi2") COMHE_X86("avx512f") COMHE_X86("avx512bw") COMHE_X86("avx512cd") COMHE_X86("avx512dq")
  COMHE_X86("avx512vl") COMHE_X86("avx512vnni") COMHE_X86("avx512bf16") COMHE_X86("avx512vbmi")
  COMHE_X86("avx512vbmi2") COMHE_X86("avx512ifma") COMHE_X86("avx512bitalg") COMHE_X86("avx512vpopcntdq")
  COMHE_X86("gfni") COMHE_X86("vpclmulqdq")
#undef COMHE_X86
#elif defined(__aarch64__)
  has.push_back("neon");  // part of armv8-a
#if defined(__linux__) && defined(HWCAP_SVE)
  if (getauxval(AT_HWCAP) & HWCAP_SVE) has.push_back("sve");
#endif
#endif
  return has;
}

// The features `level` needs that this CPU lacks ("" if none).
std::string missing(const IsaLevel& level, const std::vector<std::string>& cpu) {
  std::istringstream need(level.features);
  std::string f, out;
  while (need >> f) {
    bool found = false;
    for (const std::string& c : cpu) found = found || c == f;
    if (!found) out += (out.empty() ? "" : " ") + f;
  }
  return out;
}

std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (const std::string& x : v) s += (s.empty() ? "" : ", ") + x;
  return s;
}

struct State {
  std::mutex mutex;  // guards error and requested; chosen is read without it by every call
  std::atomic<const IsaLevel*> chosen{nullptr};
  std::vector<std::string> cpu;
  std::string requested, error;
};

// The level named `name` if this build has it and this CPU runs it ("": the
// highest it runs), else nullptr and why in `why`.
const IsaLevel* find(const State& st, const std::string& name, std::string& why) {
  std::vector<std::string> names, runnable;
  const IsaLevel* best = nullptr;
  for (const IsaLevel* l : kLevels) {
    names.push_back(l->name);
    if (missing(*l, st.cpu).empty()) {
      runnable.push_back(l->name);
      best = l;
    }
  }
  for (const IsaLevel* l : kLevels) {
    if (name != l->name) continue;
    const std::string lacks = missing(*l, st.cpu);
    if (lacks.empty()) return l;
    why = "the CPU kernel's ISA level " + name + " needs " + lacks + ", which this CPU lacks; it can run: " +
          (runnable.empty() ? std::string("none") : join(runnable));
    return nullptr;
  }
  if (name.empty()) {
    if (best == nullptr)
      why = "this CPU can run none of the CPU kernel's ISA levels (" + join(names) + "): the lowest needs " +
            std::string(kLevels[0]->features);
    return best;
  }
  why = "'" + name + "' is not an ISA level of this build of the CPU kernel; its levels are: " + join(names);
  return nullptr;
}

// Initialized at the first use (the first kernel call or report), not when
// the library loads: an error then is an exception of that call.
State& state() {
  static State* st = [] {
    State* s = new State;  // never destroyed: kernel calls may outlive static destructors
    s->cpu = detect_cpu();
    const char* env = std::getenv("COMHE_CPU_ISA");
    s->requested = env != nullptr ? env : "";
    std::string why;
    const IsaLevel* l = find(*s, s->requested, why);
    s->chosen.store(l);
    if (l == nullptr) s->error = s->requested.empty() ? why : "COMHE_CPU_ISA=" + s->requested + ": " + why;
    return s;
  }();
  return *st;
}

const IsaLevel& chosen() {
  State& st = state();
  const IsaLevel* l = st.chosen.load(std::memory_order_acquire);
  if (l == nullptr) {
    std::lock_guard<std::mutex> lock(st.mutex);
    throw std::runtime_error(st.error);
  }
  return *l;
}

}  // namespace

IsaReport isa_report() {
  State& st = state();
  IsaReport r;
  const IsaLevel* l = st.chosen.load(std::memory_order_acquire);
  r.level = l != nullptr ? l->name : "";
  for (const IsaLevel* x : kLevels) {
    r.levels.push_back(x->name);
    if (missing(*x, st.cpu).empty()) r.runnable.push_back(x->name);
  }
  r.cpu = st.cpu;
  std::lock_guard<std::mutex> lock(st.mutex);
  r.requested = st.requested;
  r.error = st.error;
  return r;
}

std::string set_isa(const std::string& level) {
  State& st = state();
  std::string why;
  const IsaLevel* l = find(st, level, why);
  if (l == nullptr) throw std::invalid_argument(why);
  std::lock_guard<std::mutex> lock(st.mutex);
  const IsaLevel* previous = st.chosen.exchange(l, std::memory_order_acq_rel);
  st.error.clear();
  return previous != nullptr ? previous->name : "";
}

template <class T>
KernelStatus hyperspherical_energy(const T* x, const PointsLayout& layout, const EnergyParams& params,
                                   double* energy, T* grad, int num_threads, const Interrupt& interrupt) {
  const IsaLevel& l = chosen();
  if constexpr (std::is_same_v<T, float>)
    return l.energy_float(x, layout, params, energy, grad, num_threads, interrupt);
  else
    return l.energy_double(x, layout, params, energy, grad, num_threads, interrupt);
}

template <class T>
KernelStatus cross_energy(const T* x, const PointsLayout& layout_x, const T* y, const PointsLayout& layout_y,
                          const EnergyParams& params, double* energy, T* grad_x, T* grad_y, int num_threads,
                          const Interrupt& interrupt) {
  const IsaLevel& l = chosen();
  if constexpr (std::is_same_v<T, float>)
    return l.cross_float(x, layout_x, y, layout_y, params, energy, grad_x, grad_y, num_threads, interrupt);
  else
    return l.cross_double(x, layout_x, y, layout_y, params, energy, grad_x, grad_y, num_threads, interrupt);
}

template KernelStatus hyperspherical_energy<float>(const float*, const PointsLayout&, const EnergyParams&, double*,
                                                   float*, int, const Interrupt&);
template KernelStatus hyperspherical_energy<double>(const double*, const PointsLayout&, const EnergyParams&,
                                                    double*, double*, int, const Interrupt&);
template KernelStatus cross_energy<float>(const float*, const PointsLayout&, const float*, const PointsLayout&,
                                          const EnergyParams&, double*, float*, float*, int, const Interrupt&);
template KernelStatus cross_energy<double>(const double*, const PointsLayout&, const double*, const PointsLayout&,
                                           const EnergyParams&, double*, double*, double*, int, const Interrupt&);

}  // namespace cpu
}  // namespace comhe
