// The ISA level this copy of the core is compiled for (torch-free): its name
// (-DCOMHE_CPU_ISA=<level>, also the inline namespace of everything the core
// defines, so that the levels' copies, the same C++ names with other
// instructions, never meet at link time) and the instruction-set features
// its compiler may use, read from the compiler's own macros (so -march=native
// is described as exactly as -march=x86-64-v3). The dispatcher
// (csrc/cpu/dispatch.cpp, detect_cpu) runs a level only on a CPU that has
// them all, by the same names.
#pragma once

#if !defined(COMHE_CPU_ISA)
#error "the CPU core is compiled once per ISA level, with -DCOMHE_CPU_ISA=<level> (comhe_kernels/_build_flags.py)"
#endif

#define COMHE_ISA_STR2(x) #x
#define COMHE_ISA_STR(x) COMHE_ISA_STR2(x)

namespace comhe {
namespace cpu {
namespace detail {
inline namespace COMHE_CPU_ISA {

constexpr char kIsaName[] = COMHE_ISA_STR(COMHE_CPU_ISA);
constexpr char kIsaFeatures[] = ""
#if defined(__SSE4_2__)
                                " sse4.2"
#endif
#if defined(__POPCNT__)
                                " popcnt"
#endif
#if defined(__AVX__)
                                " avx"
#endif
#if defined(__AVX2__)
                                " avx2"
#endif
#if defined(__FMA__)
                                " fma"
#endif
#if defined(__BMI__)
                                " bmi"
#endif
#if defined(__BMI2__)
                                " bmi2"
#endif
#if defined(__AVX512F__)
                                " avx512f"
#endif
#if defined(__AVX512BW__)
                                " avx512bw"
#endif
#if defined(__AVX512CD__)
                                " avx512cd"
#endif
#if defined(__AVX512DQ__)
                                " avx512dq"
#endif
#if defined(__AVX512VL__)
                                " avx512vl"
#endif
#if defined(__AVX512VNNI__)
                                " avx512vnni"
#endif
#if defined(__AVX512BF16__)
                                " avx512bf16"
#endif
#if defined(__AVX512VBMI__)
                                " avx512vbmi"
#endif
#if defined(__AVX512VBMI2__)
                                " avx512vbmi2"
#endif
#if defined(__AVX512IFMA__)
                                " avx512ifma"
#endif
#if defined(__AVX512BITALG__)
                                " avx512bitalg"
#endif
#if defined(__AVX512VPOPCNTDQ__)
                                " avx512vpopcntdq"
#endif
#if defined(__GFNI__)
                                " gfni"
#endif
#if defined(__VPCLMULQDQ__)
                                " vpclmulqdq"
#endif
#if defined(__ARM_NEON)
                                " neon"
#endif
#if defined(__ARM_FEATURE_SVE)
                                " sve"
#endif
    ;

}  // namespace COMHE_CPU_ISA
}  // namespace detail
}  // namespace cpu
}  // namespace comhe
