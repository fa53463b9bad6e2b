// One point set of the CPU kernel, normalized and packed in tiles of TS
// points, with its gradient accumulators (torch-free; see docs/cpu_kernel.md).
//
// Tiles are coordinates-major (u[c][j], c < kp, j < TS), so that a vector
// of W lanes holds one coordinate of W consecutive points. The tiles are
// grouped into super-tiles of q tiles, the units of the schedule (schedule.h).
#pragma once

#include <omp.h>
#if defined(__linux__)
#include <sys/mman.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <vector>

#include "comhe/hyperspherical_energy.h"
#include "isa_level.h"

namespace comhe {
namespace cpu {
namespace detail {
inline namespace COMHE_CPU_ISA {  // this ISA level's copy of the core (isa_level.h)

using simd::load;
using simd::store;

constexpr int TS = 64;              // points per tile
constexpr int RC = 4;               // coordinates per block in the column update; k is padded to it
constexpr double kTau = 1.0 / 256;  // refine pairs with d2 (or d2p) below this (see refine_threshold)
// Super-tiles of up to 16 tiles (N = 65536, k = 3: 4% faster than 8; the
// k <= 8 path reduces its rows' partial sums once per super-tile).
constexpr int64_t kMaxTilesPerSuper = 16;

// Tiles per super-tile for nT tiles: as many as make max(16, 4 x cores)
// super-tiles, so that a round (half of them) has two tasks per core.
// Fewer, larger super-tiles are faster (locality: 16 rather than 64 took
// N = 16384, k = 256 2% and k = 3 9% less time on 2 cores). The count
// follows the machine's cores, not the threads asked for: the grouping, and
// so every sum, stays the same for any thread count.
inline int64_t tiles_per_super(int64_t nT) {
  static const int64_t target = std::max<int64_t>(16, 4 * int64_t(omp_get_num_procs()));
  return std::min<int64_t>(kMaxTilesPerSuper, std::max<int64_t>(1, (nT + target - 1) / target));
}

struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};
template <class U>
using Buffer = std::unique_ptr<U[], FreeDeleter>;

// Zeroed, 64-byte aligned. Buffers of 2 MiB and more start on a 2 MiB
// boundary and ask for transparent huge pages: the first touch of a fresh
// 16 MiB buffer otherwise takes 4096 page faults (N = 16384, k = 256: 8 ms,
// a third of the work outside the pair loops).
template <class U>
Buffer<U> allocate(int64_t n) {
  constexpr size_t kHuge = size_t(2) << 20;
  const size_t bytes = std::max<size_t>(64, (size_t(n) * sizeof(U) + 63) / 64 * 64);
  const size_t align = bytes >= kHuge ? kHuge : 64;
  void* p = std::aligned_alloc(align, (bytes + align - 1) / align * align);  // a multiple of align, as required
  if (p == nullptr) throw std::bad_alloc();
#if defined(MADV_HUGEPAGE)
  // a hint, ignored where huge pages are off; the tail stays in small pages,
  // so the resident size remains what is used
  if (align == kHuge) madvise(p, bytes / kHuge * kHuge, MADV_HUGEPAGE);
#endif
  std::memset(p, 0, bytes);
  return Buffer<U>(static_cast<U*>(p));
}

// Pairs with d2 (or d2p) below this are recomputed in float64 from x. In
// float32 the gram form's d2 is off by up to ~2.4e-7 absolute (rounding of
// u, h and the dot product), (s/2) 2.4e-7 / d2 relative in F. That is
// harmless where the energy comes from the bulk of pairs (s <= 1: within
// 3e-7 of float64 in every test at tau = 2^-8), but from s ~ 1.5 on the
// energy is dominated by the closest pairs (in 3-D the pair density is
// uniform in d2, and the integral of d2^(-s/2) diverges at 0 for s >= 2):
// there even PyTorch's float32 difference form is 1.5e-6 off at s = 2. So
// the float32 radius grows with s: tau = 2^-8 * 32^(s - 1), 0.125 at s = 2,
// everything (4) from s = 2.6 on. The angular energies behave like the
// chordal ones with the same s (theta ~ d / pi for close pairs). In k >= 20
// dimensions random points essentially never come that close, so this costs
// the CoMHE defaults nothing; at k = 3 and s = 2 it refines ~3% of pairs.
// Float64 rounds 2e-9 times less and keeps 2^-8.
// The Gaussian kind has no singularity (|df/dd2| <= t): 2^-8 throughout.
template <class T>
double refine_threshold(const EnergyParams& P) {
  if (sizeof(T) == 8 || P.kind == Kind::Gaussian || P.s <= 1) return kTau;
  return std::min(4.0, kTau * std::pow(32.0, P.s - 1));
}

template <class T>
struct Points {
  using V = typename simd::Traits<T>::V;
  using I = typename simd::Traits<T>::I;
  static constexpr int W = simd::Traits<T>::W;
  static constexpr int NV = TS / W;  // vectors per tile row
  // The gram path's register blocks (gram_block, accumulate_gradient): R
  // rows (RC coordinates) by CB vectors of a tile row, half the level's
  // vector registers as accumulators, 16 of 32 (AVX-512, NEON: 4 x 4
  // vectors) or 8 of 16 (AVX2, SSE: 4 x 2), the other half for the CB
  // loaded vectors, a Winograd pair's second ones, the broadcasts and the
  // pair's sums. With whole tile rows AVX2 had 2 x 8 (gram) and 4 x 8
  // accumulators, more than its 16 ymm registers, and spilled them.
  static constexpr int CB = std::min(NV, simd::kVectorRegisters / 8);
  static constexpr int R = simd::kVectorRegisters / 2 / CB;
  static_assert(NV % CB == 0 && TS % R == 0 && RC * CB == simd::kVectorRegisters / 2, "register blocks tile a tile");
  // gram_block's and accumulate_gradient's Winograd pairs: float32 with 32
  // vector registers only. In float64 (AVX-512, then with R = 2 rows of
  // NV = 8 vectors) the pair's second vectors left no free registers: 3%
  // slower at N = 8192, k = 256. With 16 (AVX2) they and the pair's sums
  // fill the file beside the 8 accumulators: N = 16384 fwd+bwd 5-14%
  // slower at k = 32, 3-13% at k = 256 than the plain form.
  static constexpr bool kWinograd = sizeof(T) == 4 && simd::kVectorRegisters >= 32;

  const T* x;
  PointsLayout L;
  EnergyParams P;
  int64_t nT, Npad, kp, q, nS;
  T tau;        // refine_threshold, for d2 and d2p from the gram
  T tau_diff;   // the same for ||u_j -+ u_i||^2 in the few-coordinates path: tau^2 (see small_vector)
  int small_k;  // 3, 4 or 8 when k <= 8: the fused one-pass path (super_pair_small), else 0

  Buffer<T> Ut, Vt;  // (B, nT, kp, TS): u and the gradient accumulators, coordinate-major tiles
  // (B, Npad) each, for the gram path (k > 8): ||u||^2 + a -+ 2 xi, so that
  // d2 = hd_i + hd_j - 2 g' and d2p = hp_i + hp_j + 2 g' (gram_block's g')
  Buffer<T> hd, hp;
  Buffer<T> at;  // (B, Npad): a, for the difference form (k <= 8)
  Buffer<T> zt;  // (B, Npad): the column-side Aref terms of the few-coordinates path
  // (B, nT, kp) and (B, nT), gram path with kWinograd: per tile and coordinate
  // c the sum over m of u[c][4m] u[c][4m+1], and the tile's largest |u|
  // (accumulate_gradient)
  Buffer<T> xu, umax;
  Buffer<double> r, a, aref, self_energy;  // (B, N) or (B, Npad); r = sqrt(||x||^2 + eps), 0 for a zero row
  // (B, nT) tiles of (k, TS): the gradient terms of refined pairs, allocated on
  // a tile's first refined pair (few at k >= 20). Kept apart from Vt in float64:
  // a refined pair's force can be ~1e6 times a typical pair's, and in the same
  // float32 accumulator it would round away the thousands of small terms added
  // after it, while their radial parts live on in Aref (a_i Aref_i u_i): 7.6e-5
  // of max |g| off at N = 16384, k = 3, s = 2, half-space.
  mutable std::vector<Buffer<double>> Vref;
  // (B, nT) tiles of (k + 1, TS): u in float64 (unit) and, in the last row,
  // a, for the vectorized refinement of rows with many close pairs
  // (close_pairs.h, refine_row); made on a tile's first such row.
  mutable std::vector<Buffer<double>> Ud;
  // (B, nT, k) and (B, nT): per tile the mean of its u (float64) and the
  // largest |u_j - mean|, for the compact tile pairs (close_pairs.h, tile_bounds)
  Buffer<double> centre, radius;

  Points(const T* x_, const PointsLayout& L_, const EnergyParams& P_) : x(x_), L(L_), P(P_) {
    nT = (L.N + TS - 1) / TS;
    tau = T(refine_threshold<T>(P));
    tau_diff = tau * tau;
    Npad = nT * TS;
    kp = (L.k + RC - 1) / RC * RC;
    small_k = L.k <= 3 ? 3 : L.k == 4 ? 4 : L.k <= 8 ? 8 : 0;  // kp >= small_k: padding rows are zero
    q = tiles_per_super(nT);
    nS = (nT + q - 1) / q;
    Ut = allocate<T>(L.B * nT * kp * TS);
    if (small_k) {
      at = allocate<T>(L.B * Npad);  // padding points: a = 0, their lanes are masked
    } else {
      hd = allocate<T>(L.B * Npad);
      hp = allocate<T>(L.B * Npad);
    }
    r = allocate<double>(L.B * L.N);
    a = allocate<double>(L.B * L.N);
    Ud.resize(L.B * nT);
  }
  void allocate_gradient() {
    Vt = allocate<T>(L.B * nT * kp * TS);
    aref = allocate<double>(L.B * Npad);
    Vref.resize(L.B * nT);
    if (small_k) {
      zt = allocate<T>(L.B * Npad);
    } else if (kWinograd) {
      xu = allocate<T>(L.B * nT * kp);
      umax = allocate<T>(L.B * nT);
    }
  }
  // xu and umax of tile t (flat over the sets), in float64 from the packed u
  void tile_sums(int64_t t) {
    const T* u = Ut.get() + t * kp * TS;
    double m = 0;
    for (int64_t c = 0; c < kp; ++c) {
      double x = 0;
      for (int i = 0; i < TS; i += 4) x += double(u[c * TS + i]) * double(u[c * TS + i + 1]);
      xu[t * kp + c] = T(x);
      for (int i = 0; i < TS; ++i) m = std::max(m, std::fabs(double(u[c * TS + i])));
    }
    umax[t] = T(m);
  }

  // A task owns its two tiles (see schedule.h), so the first touch needs no lock.
  double* vref_tile(int64_t b, int64_t t) const {
    Buffer<double>& v = Vref[b * nT + t];
    if (!v) v = allocate<double>(L.k * TS);
    return v.get();
  }
  // After the prologue (r and a); padding points stay 0. The same ownership as vref_tile.
  const double* udouble_tile(int64_t b, int64_t t) const {
    Buffer<double>& u = Ud[b * nT + t];
    if (!u) {
      u = allocate<double>((L.k + 1) * TS);
      for (int j = 0; j < rows_in(t); ++j) {
        const int64_t g = b * L.N + t * TS + j;
        const T* xj = row(b, t * TS + j);
        for (int64_t c = 0; c < L.k; ++c) u[c * TS + j] = unit(xj[c * L.stride_k], r[g]);
        u[L.k * TS + j] = a[g];
      }
    }
    return u.get();
  }
  T* ut(int64_t b, int64_t t) const { return Ut.get() + (b * nT + t) * kp * TS; }
  T* vt(int64_t b, int64_t t) const { return Vt.get() + (b * nT + t) * kp * TS; }
  const T* row(int64_t b, int64_t i) const { return x + b * L.stride_b + i * L.stride_n; }
  // u in float64, by division: x / |x| is then exactly +-1 for k = 1 and
  // identical rows give identical u, so coincident stays coincident.
  static double unit(T xc, double r) { return r > 0 ? double(xc) / r : 0.0; }
  int rows_in(int64_t t) const { return int(std::min<int64_t>(TS, L.N - t * TS)); }
};

}  // namespace COMHE_CPU_ISA
}  // namespace detail
}  // namespace cpu
}  // namespace comhe
