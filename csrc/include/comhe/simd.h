// Portable SIMD for the CPU kernels: GCC/Clang vector extensions plus the few
// elementary functions the energies need (twice_rsqrt, log, exp, atan2 of
// non-negative arguments), branch-free so that one code path serves all lanes.
//
// The vector width is the translation unit's, from its -march (one per ISA
// level of the core: comhe/cpu_isa.h): 64 bytes with AVX-512, 32 with
// AVX/AVX2, 16 otherwise (SSE4.2, NEON). Host only: CUDA code uses the scalar
// overloads in pair_energy.h.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#if defined(__AVX512F__) || defined(__AVX__)
#include <immintrin.h>
#endif

#if defined(__AVX512F__)
#define COMHE_VBYTES 64
#elif defined(__AVX__)
#define COMHE_VBYTES 32
#else
#define COMHE_VBYTES 16
#endif

// Each level's copy of these functions is its own: the same C++ names with
// other widths and instructions (Mask<float>::all() returns a 16-bit mask
// with AVX-512, a vector of 8 lanes with AVX2), in an inline namespace named
// after the level; `host` outside the core (the ATen glue, which uses none).
#if defined(COMHE_CPU_ISA)
#define COMHE_SIMD_LEVEL COMHE_CPU_ISA
#else
#define COMHE_SIMD_LEVEL host
#endif

namespace comhe {
namespace simd {
inline namespace COMHE_SIMD_LEVEL {

typedef float vfloat __attribute__((vector_size(COMHE_VBYTES)));
typedef double vdouble __attribute__((vector_size(COMHE_VBYTES)));
typedef int32_t vint32 __attribute__((vector_size(COMHE_VBYTES)));
typedef int64_t vint64 __attribute__((vector_size(COMHE_VBYTES)));

// The level's vector registers, which the micro-kernels' register blocks
// are sized for (tiles.h): 32 with AVX-512 (zmm0-31) and on aarch64
// (v0-v31), 16 with AVX/AVX2 (ymm0-15) and SSE (xmm0-15).
#if defined(__AVX512F__) || defined(__aarch64__)
constexpr int kVectorRegisters = 32;
#else
constexpr int kVectorRegisters = 16;
#endif

template <class T>
struct Traits;
template <>
struct Traits<float> {
  using V = vfloat;
  using I = vint32;  // lane masks and bit patterns
  static constexpr int W = COMHE_VBYTES / 4;
};
template <>
struct Traits<double> {
  using V = vdouble;
  using I = vint64;
  static constexpr int W = COMHE_VBYTES / 8;
};

template <class V>
inline V load(const void* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}
template <class V>
inline void store(void* p, V v) {
  std::memcpy(p, &v, sizeof(V));
}
// An operand of several FMAs, loaded once into a register. Without the empty
// asm GCC folds the load into every FMA that uses it ("vfmadd231ps (mem)");
// in a 4 x 4-vector GEMM block that is 16 zmm loads per 16 FMAs, and Zen 4
// loads 64 bytes per cycle, so the loads, not the FMAs, set the pace (the
// k = 256 kernel ran at 66% of the FMA peak).
template <class V>
inline V load_reg(const void* p) {
  V v = load<V>(p);
#if defined(__x86_64__)
  asm("" : "+v"(v));
#endif
  return v;
}

// Keeps v computed where nothing reads it: the pair loops' derivatives in a
// call without the gradient. -ffp-contract=fast fuses a product into an add
// only where the product has no other use, so without this the energy of a
// forward-only call took other FMAs than the energy computed with the
// gradient (last bits of half-space s = 1 and angular energies, every ISA).
template <class V>
inline void compute_always(const V& v) {
#if defined(__x86_64__)
  asm volatile("" : : "v"(v));
#elif defined(__aarch64__)
  asm volatile("" : : "w"(v));
#else
  asm volatile("" : : "m"(v));
#endif
}

template <class V>
inline constexpr int lanes() {
  return int(sizeof(V) / sizeof(V{}[0]));
}

// Lane loops below compile to single instructions (vsqrtps, vmaxps, ...).
inline vfloat sqrt(vfloat x) {
  vfloat r;
  for (int l = 0; l < lanes<vfloat>(); ++l) r[l] = __builtin_sqrtf(x[l]);
  return r;
}
inline vdouble sqrt(vdouble x) {
  vdouble r;
  for (int l = 0; l < lanes<vdouble>(); ++l) r[l] = __builtin_sqrt(x[l]);
  return r;
}
template <class V>
inline V vmax(V a, V b) {
  return a > b ? a : b;
}
template <class V>
inline V vmin(V a, V b) {
  return a < b ? a : b;
}
template <class M>
inline bool any(M m) {
#if defined(__AVX512F__)
  if constexpr (sizeof(M) == 64) return _mm512_test_epi32_mask((__m512i)m, (__m512i)m) != 0;
#endif
#if defined(__AVX__)
  if constexpr (sizeof(M) == 32) return !_mm256_testz_si256((__m256i)m, (__m256i)m);
#endif
  for (int l = 0; l < lanes<M>(); ++l)
    if (m[l]) return true;
  return false;
}
template <class V>
inline double hsum(V v) {  // lanes summed in double
  double s = 0;
  for (int l = 0; l < lanes<V>(); ++l) s += double(v[l]);
  return s;
}
template <class V>
inline auto hsum_same(V v) {  // lanes summed in the lane type (gradient partial sums)
  auto s = v[0];
  for (int l = 1; l < lanes<V>(); ++l) s += v[l];
  return s;
}
// Energy partial sums go to double lane-wise: a float vector's two halves
// converted and added (2 instructions), so float accumulation chains stay short.
typedef float vfloat_half __attribute__((vector_size(COMHE_VBYTES / 2)));
inline vdouble widen_sum(vfloat f) {
#if defined(__AVX512F__)
  return (vdouble)_mm512_cvtps_pd(_mm512_castps512_ps256((__m512)f)) +
         (vdouble)_mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd((__m512)f), 1)));
#endif
  vfloat_half lo, hi;
  std::memcpy(&lo, &f, sizeof lo);
  std::memcpy(&hi, reinterpret_cast<const char*>(&f) + sizeof lo, sizeof hi);
  return __builtin_convertvector(lo, vdouble) + __builtin_convertvector(hi, vdouble);
}
inline vdouble widen_sum(vdouble f) { return f; }

// Transpose of an n x n tile (row stride n, n a multiple of the lane count
// W): dst[j][i] = src[i][j]. Each W x W block goes through log2(W) rounds of
// the perfect shuffle, row 2i <- (row i, row i + W/2) interleaved from their
// first halves, row 2i+1 from their second halves, after which row j holds
// column j: W log2(W) two-source permutes per block (64 vpermt2ps for float
// with AVX-512), about 1% of the two GEMMs that use the tile at k = 256.
template <class V>
inline V interleave(V a, V b, int half) {
  using I = std::conditional_t<sizeof(V{}[0]) == 4, vint32, vint64>;
  constexpr int W = lanes<V>();
  I idx;
  for (int l = 0; l < W; ++l) idx[l] = (l % 2) * W + half * (W / 2) + l / 2;
#if defined(__clang__)
  V r;
  for (int l = 0; l < W; ++l) r[l] = idx[l] < W ? a[idx[l]] : b[idx[l] - W];
  return r;
#else
  return __builtin_shuffle(a, b, idx);
#endif
}
template <class T, int n>
inline void transpose_tile(const T* src, T* dst) {
  using V = typename Traits<T>::V;
  constexpr int W = Traits<T>::W;
  static_assert(n % W == 0, "tile size must be a multiple of the lane count");
  for (int bi = 0; bi < n; bi += W)
    for (int bj = 0; bj < n; bj += W) {
      V r[W], t[W];
      for (int i = 0; i < W; ++i) r[i] = load<V>(src + (bi + i) * n + bj);
      for (int round = 1; round < W; round *= 2) {
        for (int i = 0; i < W / 2; ++i) {
          t[2 * i] = interleave(r[i], r[i + W / 2], 0);
          t[2 * i + 1] = interleave(r[i], r[i + W / 2], 1);
        }
        for (int i = 0; i < W; ++i) r[i] = t[i];
      }
      for (int i = 0; i < W; ++i) store(dst + (bj + i) * n + bi, r[i]);
    }
}

// Lane masks. With AVX-512 they live in mask registers (k0-k7): a compare,
// a masked add or a zeroing move is one instruction, where vector masks cost a
// blend and a conversion each (about 3 of the ~25 instructions per vector of
// pairs at k = 3). Elsewhere they are integer vectors.
template <class T>
struct Mask {
  using V = typename Traits<T>::V;
  using I = typename Traits<T>::I;
  static constexpr int W = Traits<T>::W;
#if defined(__AVX512F__)
  using M = std::conditional_t<W == 16, __mmask16, __mmask8>;
  static M lt(V a, T b) {
    if constexpr (W == 16)
      return _mm512_cmp_ps_mask((__m512)a, _mm512_set1_ps(b), _CMP_LT_OQ);
    else
      return _mm512_cmp_pd_mask((__m512d)a, _mm512_set1_pd(b), _CMP_LT_OQ);
  }
  static M lanes(int lo, int hi) {  // lanes l with lo <= l < hi
    lo = lo < 0 ? 0 : lo > W ? W : lo;
    hi = hi < 0 ? 0 : hi > W ? W : hi;
    return M(((1u << hi) - 1u) & ~((1u << lo) - 1u));
  }
  static M all() { return M((1u << W) - 1u); }
  static V keep(M m, V x) {  // x where m, else 0
    if constexpr (W == 16)
      return (V)_mm512_maskz_mov_ps(m, (__m512)x);
    else
      return (V)_mm512_maskz_mov_pd(m, (__m512d)x);
  }
  static V add(V acc, M m, V x) {  // acc + x where m
    if constexpr (W == 16)
      return (V)_mm512_mask_add_ps((__m512)acc, m, (__m512)acc, (__m512)x);
    else
      return (V)_mm512_mask_add_pd((__m512d)acc, m, (__m512d)acc, (__m512d)x);
  }
  static bool any(M m) { return m != 0; }
  static bool test(M m, int l) { return (m >> l) & 1; }
#else
  using M = I;
  static M lt(V a, T b) { return a < b; }
  static M lanes(int lo, int hi) {
    I l;
    for (int j = 0; j < W; ++j) l[j] = j;
    return (l >= lo) & (l < hi);
  }
  static M all() { return lanes(0, W); }
  // m's lanes are all ones or all zeros, so a select of x or 0 is an and:
  // GCC's m ? x : 0 on an integer vector first tests m != 0 (2 more
  // instructions per use, ~4 of the gram path's ~30 per vector of pairs)
  static V keep(M m, V x) { return (V)((I)x & m); }
  static V add(V acc, M m, V x) { return acc + keep(m, x); }
  static bool any(M m) { return simd::any(m); }
  static bool test(M m, int l) { return m[l] != 0; }
#endif
};

// 2/sqrt(x), x > 0 (twice: the Newton step y <- y (3 - x y^2) of 1/sqrt
// that doubles saves its multiply by 1/2; pair_energy.h absorbs the 2). The
// hardware estimate (14 bits with AVX-512, 12 with AVX) refined by Newton
// steps, each of which squares the relative error: float needs one from 14
// bits (to ~1e-8 before rounding), double two; AVX's 12 bits take one
// second-order step instead (below). sqrt + div costs about 3x as many
// cycles on Zen 4 and is the fallback.
inline vfloat twice_rsqrt(vfloat x) {
#if defined(__AVX512F__)
  vfloat y = (vfloat)_mm512_rsqrt14_ps((__m512)x);
  return y * (3.0f - x * y * y);
#elif defined(__AVX__)
  // A 12-bit estimate, relative error e = 1 - x y^2 of at most 3.7e-4: one
  // step of the series 2/sqrt(x) = 2y (1 + e/2 + 3e^2/8 + ...), whose next
  // term (5e^3/16) is below 2e-11, instead of two Newton steps (one fewer
  // dependent multiply-add chain: N = 8192, k = 3 fwd+bwd at the AVX2 level
  // 27.9 -> 23.5 ms, one thread, Zen 4).
  vfloat y = (vfloat)_mm256_rsqrt_ps((__m256)x);
  vfloat e = 1.0f - x * y * y;
  return (y + y) + (y * e) * (1.0f + 0.75f * e);
#else
  return 2.0f / sqrt(x);
#endif
}
inline vdouble twice_rsqrt(vdouble x) {
#if defined(__AVX512F__)
  vdouble y = (vdouble)_mm512_rsqrt14_pd((__m512d)x);
  y = y * (1.5 - 0.5 * x * y * y);
  return y * (3.0 - x * y * y);
#else
  return 2.0 / sqrt(x);
#endif
}

// ---- log(x) for positive normal x ------------------------------------------
// x = 2^e m with m in [sqrt(1/2), sqrt(2)); log m = 2 atanh(t), t = (m-1)/(m+1),
// |t| <= 0.1716, so the odd series 2(t + t^3/3 + ...) converges by a factor
// t^2 <= 0.0295 per term: 6 terms reach float's 6e-8, 12 terms double's 1e-16.
// ln 2 is split in two parts so that e*ln2 adds no rounding of its own.
inline vfloat log(vfloat x) {
  using I = vint32;
  I xi = (I)x;
  I e = ((xi >> 23) & 0xff) - 127;
  vfloat m = (vfloat)((xi & 0x007fffff) | 0x3f800000);  // [1, 2)
  I big = m > 1.41421356f;
  m = big ? 0.5f * m : m;
  e = e - big;  // masks are -1 where true
  vfloat t = (m - 1.0f) / (m + 1.0f);
  vfloat t2 = t * t;
  vfloat p = vfloat{} + 2.0f / 11;
  p = p * t2 + 2.0f / 9;
  p = p * t2 + 2.0f / 7;
  p = p * t2 + 2.0f / 5;
  p = p * t2 + 2.0f / 3;
  p = p * t2 + 2.0f;
  vfloat ef = __builtin_convertvector(e, vfloat);
  return ef * 0.693145751953125f + (ef * 1.428606765330187e-06f + t * p);
}
inline vdouble log(vdouble x) {
  using I = vint64;
  I xi = (I)x;
  I e = ((xi >> 52) & 0x7ff) - 1023;
  vdouble m = (vdouble)((xi & 0x000fffffffffffffLL) | 0x3ff0000000000000LL);
  I big = m > 1.4142135623730951;
  m = big ? 0.5 * m : m;
  e = e - big;
  vdouble t = (m - 1.0) / (m + 1.0);
  vdouble t2 = t * t;
  vdouble p = vdouble{} + 2.0 / 23;
  p = p * t2 + 2.0 / 21;
  p = p * t2 + 2.0 / 19;
  p = p * t2 + 2.0 / 17;
  p = p * t2 + 2.0 / 15;
  p = p * t2 + 2.0 / 13;
  p = p * t2 + 2.0 / 11;
  p = p * t2 + 2.0 / 9;
  p = p * t2 + 2.0 / 7;
  p = p * t2 + 2.0 / 5;
  p = p * t2 + 2.0 / 3;
  p = p * t2 + 2.0;
  vdouble ef = __builtin_convertvector(e, vdouble);
  return ef * 0.6931471803691238 + (ef * 1.9082149292705877e-10 + t * p);
}

// ---- exp(x) -----------------------------------------------------------------
// x = n ln2 + r, |r| <= ln2/2 (Cody-Waite, two-part ln2); e^r by its Taylor
// series (degree 7 for float: 0.35^8/8! = 5e-9; degree 13 for double:
// 0.35^14/14! = 4e-18). 2^n is applied as 2^(n/2) 2^(n - n/2), so both
// factors stay normal numbers and results overflow to inf / underflow
// gradually exactly where exp does.
inline vfloat exp(vfloat x) {
  using I = vint32;
  vfloat xc = vmin(vmax(x, vfloat{} - 104.0f), vfloat{} + 89.0f);
  const float shifter = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  vfloat n = (xc * 1.44269504f + shifter) - shifter;
  vfloat r = xc - n * 0.693145751953125f;
  r = r - n * 1.428606765330187e-06f;
  vfloat p = vfloat{} + 1.0f / 5040;
  p = p * r + 1.0f / 720;
  p = p * r + 1.0f / 120;
  p = p * r + 1.0f / 24;
  p = p * r + 1.0f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  I ni = __builtin_convertvector(n, I);
  I n1 = ni >> 1;
  I n2 = ni - n1;
  return p * (vfloat)((n1 + 127) << 23) * (vfloat)((n2 + 127) << 23);
}
inline vdouble exp(vdouble x) {
  using I = vint64;
  vdouble xc = vmin(vmax(x, vdouble{} - 746.0), vdouble{} + 710.0);
  const double shifter = 6755399441055744.0;  // 1.5 * 2^52
  vdouble n = (xc * 1.4426950408889634 + shifter) - shifter;
  vdouble r = xc - n * 0.6931471803691238;
  r = r - n * 1.9082149292705877e-10;
  vdouble p = vdouble{} + 1.0 / 6227020800.0;
  p = p * r + 1.0 / 479001600.0;
  p = p * r + 1.0 / 39916800.0;
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  p = p * r + 1.0;
  p = p * r + 1.0;
  I ni = __builtin_convertvector(n, I);
  I n1 = ni >> 1;
  I n2 = ni - n1;
  return p * (vdouble)((n1 + 1023) << 52) * (vdouble)((n2 + 1023) << 52);
}

// ---- atan2(p, q) for p, q >= 0, not both 0: a value in [0, pi/2] ------------
// z = min/max in [0, 1]; above tan(pi/8) use atan z = pi/4 + atan((z-1)/(z+1)),
// so the series argument has |w| <= 0.4142 and w^2 <= 0.1716: 9 terms reach
// float's 6e-8, 20 terms double's 1e-17 (an alternating series: the error is
// below the first omitted term). The complement pi/2 - atan2(p, q) =
// atan2(q, p) is written too, from the same atan z, so that each keeps its own
// relative precision: half space's mirrored angle of a near-antipodal pair,
// formed as pi/2 minus the angle, kept only ~6e-8 absolute of it (float32
// angular half-space energies of a cluster against its antipodes 2e-6
// relative off, test_float32_angular_mirror_angle).
template <class V, class S, int TERMS>
inline V atan2_nonneg(V p, V q, V& complement) {
  V mx = vmax(p, q), mn = vmin(p, q);
  auto red = mn > S(0.41421356237309503) * mx;
  V w = (red ? mn - mx : mn) / (red ? mn + mx : mx);
  V w2 = w * w;
  V poly = V{} + S((TERMS - 1) % 2 ? -1 : 1) / S(2 * TERMS - 1);
  for (int n = TERMS - 2; n >= 0; --n) poly = poly * w2 + S(n % 2 ? -1 : 1) / S(2 * n + 1);
  V a = (red ? V{} + S(0.78539816339744831) : V{}) + w * poly;  // atan z, in [0, pi/4]
  V b = S(1.5707963267948966) - a;
  complement = p > q ? a : b;
  return p > q ? b : a;
}
inline vfloat atan2_nonneg(vfloat p, vfloat q, vfloat& complement) {
  return atan2_nonneg<vfloat, float, 9>(p, q, complement);
}
inline vdouble atan2_nonneg(vdouble p, vdouble q, vdouble& complement) {
  return atan2_nonneg<vdouble, double, 20>(p, q, complement);
}

}  // namespace COMHE_SIMD_LEVEL
}  // namespace simd
}  // namespace comhe
