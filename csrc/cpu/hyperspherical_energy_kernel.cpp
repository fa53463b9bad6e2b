// Fused hyperspherical energy and gradient on the CPU (torch-free core).
//
// Phases, for each set of N points:
//  1. prologue (per row, O(Nk)): u = x / sqrt(||x||^2 + eps), a = eps / (...),
//     packed into 64-point tiles, coordinates-major (u[c][j]), plus
//     h = ||u||^2 + a (= 1 up to rounding) and xi (see gram_block); NaN/Inf
//     rows are reported.
//  2. pairs, tile pair by tile pair, each unordered pair once. Per 64 x 64
//     tile pair: gram block g = u_I u_J^T in registers, then per pair
//     d2 = h_i + h_j - 2g, d2p = h_i + h_j + 2g, the energy F and the weight
//     w = dF/dd2p - dF/dd2 into a 64 x 64 buffer W (L1-resident), then two
//     small GEMMs add W u_J to the rows of I and W^T u_I to the rows of J.
//     Pairs with d2 < tau (or d2p < tau where F depends on it) are masked out
//     of that path and recomputed in float64 from x in the difference form:
//     the gram form loses ~2.4e-7 absolute to cancellation in float32, which
//     is 6e-5 relative at tau = 1/256 but everything for coincident points.
//     For k <= 8 one fused pass computes d2 and d2p from coordinate
//     differences and sums instead (see small_vector), refining below tau^2.
//  3. epilogue (per row, O(Nk)): the chain rule through the normalization.
//
// Gradient algebra. With alpha = dF/dd2, beta = dF/dd2p of a pair,
// dF/du_i = 2(alpha + beta) u_i + 2(beta - alpha) u_j. Accumulate per row,
// all scaled by E::kappa (pair_energy.h),
//   V_i = sum over gram pairs (beta - alpha) u_j
//       + sum over other pairs alpha (u_i - u_j) + beta (u_i + u_j),
//   Aref_i = sum over other pairs (alpha + beta),
// the other pairs being the refined ones and all pairs of the k <= 8 path;
// then, because ||u||^2 + a = 1, the (alpha + beta) u_i terms of gram pairs
// cancel exactly in the chain rule and
//   dE/dx_i = (2 / (kappa r_i)) [V_i - (u_i . V_i) u_i - a_i (Aref_i + D_i) u_i],
// D_i being the derivative of the half-space self pair (u_i, -u_i) in a_i.
//
// Scheduling without races: the tiles are grouped into super-tiles and the
// super-tile pairs are played as a round-robin tournament (the circle
// method). Within a round no super-tile appears twice, so a task may update
// the accumulators of both its tiles, and a task starts as soon as its two
// super-tiles are done with their previous rounds (no barrier per round).
// The grouping depends on N and the machine's core count only, so the order
// of every floating-point sum, and the result, does not depend on the
// number of threads.
#include "comhe/hyperspherical_energy.h"

#include <omp.h>
#if defined(__linux__)
#include <sys/mman.h>
#endif

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <thread>
#include <vector>

namespace comhe {
namespace {

using simd::load;
using simd::store;

constexpr int TS = 64;                // points per tile
constexpr int RC = 4;                 // coordinates per block in the column update; k is padded to it
constexpr double kTau = 1.0 / 256;    // refine pairs with d2 (or d2p) below this (see refine_threshold)
// Super-tiles of up to 16 tiles (N = 65536, k = 3: 4% faster than 8; the
// k <= 8 path reduces its rows' partial sums once per super-tile).
constexpr int64_t kMaxTilesPerSuper = 16;

// Tiles per super-tile for nT tiles: as many as make max(16, 4 x cores)
// super-tiles, so that a round (half of them) has two tasks per core.
// Fewer, larger super-tiles are faster: on the 2-core machine 16 of them
// rather than 64 took N = 16384, k = 256 from 0.967 to 0.945 s and k = 3
// from 34 to 31 ms (k = 32 and smaller N unchanged; the threads' waits for
// each other's tasks were under 1 ms in both, so it is locality, not the
// schedule). The count follows the machine's cores, not the threads asked
// for: the grouping, and so every sum, stays the same for any thread count.
int64_t tiles_per_super(int64_t nT) {
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
// 16 MiB buffer otherwise takes 4096 page faults (N = 16384, k = 256: the
// work outside the pair loops fell from 22 to 14 ms).
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
struct Problem {
  using V = typename simd::Traits<T>::V;
  using I = typename simd::Traits<T>::I;
  static constexpr int W = simd::Traits<T>::W;
  static constexpr int NV = TS / W;                   // vectors per tile row
  static constexpr int R = NV >= 8 ? 2 : NV >= 4 ? 4 : 8;  // rows per register block: R*NV ~ 16 accumulators
  // gram_block's Winograd pairs: float32 only. In float64 (R = 2 rows of
  // NV = 8 vectors) the pair's second vectors leave no free registers: 3%
  // slower at N = 8192, k = 256.
  static constexpr bool kWinograd = sizeof(T) == 4;

  const T* x;
  PointsLayout L;
  EnergyParams P;
  int64_t nT, Npad, kp, q, nS;
  T tau;       // refine_threshold, for d2 and d2p from the gram
  T tau_diff;  // the same for ||u_j -+ u_i||^2 in the few-coordinates path: tau^2 (see small_vector)
  int small_k;  // 3, 4 or 8 when k <= 8: the fused one-pass path (super_pair_small), else 0

  Buffer<T> Ut, Vt;  // (B, nT, kp, TS): u and the gradient accumulators, coordinate-major tiles
  // (B, Npad) each, for the gram path (k > 8): ||u||^2 + a -+ 2 xi, so that
  // d2 = hd_i + hd_j - 2 g' and d2p = hp_i + hp_j + 2 g' (gram_block's g')
  Buffer<T> hd, hp;
  Buffer<T> at;      // (B, Npad): a, for the difference form (k <= 8)
  Buffer<T> zt;      // (B, Npad): the column-side Aref terms of the few-coordinates path
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

  Problem(const T* x_, const PointsLayout& L_, const EnergyParams& P_) : x(x_), L(L_), P(P_) {
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

  // A task owns its two tiles (see solve), so the first touch needs no lock.
  double* vref_tile(int64_t b, int64_t t) const {
    Buffer<double>& v = Vref[b * nT + t];
    if (!v) v = allocate<double>(L.k * TS);
    return v.get();
  }
  T* ut(int64_t b, int64_t t) const { return Ut.get() + (b * nT + t) * kp * TS; }
  T* vt(int64_t b, int64_t t) const { return Vt.get() + (b * nT + t) * kp * TS; }
  const T* row(int64_t b, int64_t i) const { return x + b * L.stride_b + i * L.stride_n; }
  // u in float64, by division: x / |x| is then exactly +-1 for k = 1 and
  // identical rows give identical u, so coincident stays coincident.
  static double unit(T xc, double r) { return r > 0 ? double(xc) / r : 0.0; }
  int rows_in(int64_t t) const { return int(std::min<int64_t>(TS, L.N - t * TS)); }

  // Normalize row i of set b; false if it holds NaN or Inf.
  bool prologue_row(int64_t b, int64_t i) {
    const T* xr = row(b, i);
    const int64_t sk = L.stride_k, k = L.k;
    const double eps = P.eps;
    double n = 0;
    for (int64_t c = 0; c < k; ++c) n += double(xr[c * sk]) * double(xr[c * sk]);
    double rr, ai;
    if (!std::isfinite(n)) {
      double m = 0;
      for (int64_t c = 0; c < k; ++c) {
        double v = double(xr[c * sk]);
        if (!std::isfinite(v)) return false;
        m = std::max(m, std::fabs(v));
      }
      // finite, but ||x||^2 overflows (float64 entries beyond ~1e154): scale by the largest entry
      double sig = 0;
      for (int64_t c = 0; c < k; ++c) sig += (double(xr[c * sk]) / m) * (double(xr[c * sk]) / m);
      rr = m * std::sqrt(sig + eps / m / m);
      ai = eps / rr / rr;
    } else if (n + eps > 0) {
      rr = std::sqrt(n + eps);
      ai = eps / (n + eps);
    } else {  // eps = 0 and a zero row: the centre of the sphere, cosine 0 with everything
      rr = 0;
      ai = 1;
    }
    const int64_t flat = b * L.N + i, t = i / TS, ii = i % TS;
    r[flat] = rr;
    a[flat] = ai;
    T* ut_ = ut(b, t);
    double hh = ai, xi = 0, prev = 0;
    for (int64_t c = 0; c < k; ++c) {
      T u = T(unit(xr[c * sk], rr));
      ut_[c * TS + ii] = u;
      hh += double(u) * double(u);  // h from the rounded u: identical rows give d2 = a_i + a_j exactly
      if (kWinograd && c % 4 == 1) xi += prev * double(u);  // the pairs (4m, 4m + 1) of gram_block
      prev = double(u);
    }
    if (small_k) {  // the difference form needs a alone
      at[b * Npad + i] = T(ai);
    } else {
      hd[b * Npad + i] = T(hh + 2 * xi);
      hp[b * Npad + i] = T(hh - 2 * xi);
    }
    return true;
  }
};

// Float64 recomputation of one pair from x in the difference form.
template <class T, class E>
double refine_pair(const Problem<T>& pr, int64_t b, int64_t ta, int64_t tb, int i, int jj, bool grad) {
  const int64_t gi = ta * TS + i, gj = tb * TS + jj, k = pr.L.k, sk = pr.L.stride_k;
  const double ri = pr.r[b * pr.L.N + gi], rj = pr.r[b * pr.L.N + gj];
  const double aij = pr.a[b * pr.L.N + gi] + pr.a[b * pr.L.N + gj];
  const T* xi = pr.row(b, gi);
  const T* xj = pr.row(b, gj);
  double d2 = aij, d2p = aij;
  for (int64_t c = 0; c < k; ++c) {
    const double ui = Problem<T>::unit(xi[c * sk], ri), uj = Problem<T>::unit(xj[c * sk], rj);
    d2 += (ui - uj) * (ui - uj);
    d2p += (ui + uj) * (ui + uj);
  }
  double F, al, be;
  E::eval(d2, d2p, pr.P.s, pr.P.delta, F, al, be);
  if (grad) {
    double* va = pr.vref_tile(b, ta);
    double* vb = pr.vref_tile(b, tb);
    for (int64_t c = 0; c < k; ++c) {
      const double ui = Problem<T>::unit(xi[c * sk], ri), uj = Problem<T>::unit(xj[c * sk], rj);
      va[c * TS + i] += al * (ui - uj) + be * (ui + uj);
      vb[c * TS + jj] += al * (uj - ui) + be * (ui + uj);
    }
    pr.aref[b * pr.Npad + gi] += al + be;
    pr.aref[b * pr.Npad + gj] += al + be;
  }
  return F;
}

// One side of a tile pair's gradient: v[c][j] += sum_{i < n} u[c][i] M[i][j]
// for all coordinates c and the TS points j, with M = W (the column side,
// v = V_J, u = u_I) or M = W^T (the row side, v = V_I, u = u_J). RC x NV
// accumulators (16 with AVX-512) per block of coordinates; each step loads
// NV vectors of M and broadcasts RC coordinates: ~90% of the FMA peak.
//
// In float32 the rows i = 4m, 4m + 1 go in Winograd pairs, as in gram_block:
//   u_4m w_4m + u_4m+1 w_4m+1 = (u_4m + w_4m+1)(u_4m+1 + w_4m) - u_4m u_4m+1 - w_4m w_4m+1,
// the last two summed over m once per tile (xu, from the prologue's u) and
// once per call (eta). Unlike the gram's, one factor here is a weight, of
// any size: the products round at the scale of w w', so a column with two
// weights of ~2000 (a near triple at d2 = 2^-8, s = 1) would get ~eps w^2 =
// 0.25 of error on forces of ~250. So M comes scaled by a power of two,
// sigma = 2^e with max |sigma w| ~ max |u| (exact: only the exponent
// changes), and the sums are scaled back by 1 / sigma here; the error is
// then ~2x the plain form's bound (eps 2n max|u| max|w| against eps n
// max|u| max|w|); unscaled, clusters of 8 points at d2 = 1.05 2^-8 gave
// 2e-2 of max |g| (test_float32_accuracy_near_clusters), scaled 5e-5 as
// before. N = 16384 fwd+bwd: k = 256 0.908 -> 0.844 s, k = 128 0.465 ->
// 0.437 s, k = 32 0.133 -> 0.131 s. M's rows from n up to the next
// multiple of 4 must be zero.
template <class T>
void accumulate_gradient(const Problem<T>& pr, T* v, const T* u, const T* M, int n, const T* xu, T inv_sigma) {
  using V = typename Problem<T>::V;
  constexpr int W = Problem<T>::W, NV = Problem<T>::NV;
  const int n4 = (n + 3) / 4 * 4;
  V eta[NV] = {};
  if constexpr (Problem<T>::kWinograd)
    for (int i = 0; i < n4; i += 4)
      for (int l = 0; l < NV; ++l) eta[l] += load<V>(M + i * TS + l * W) * load<V>(M + (i + 1) * TS + l * W);
  auto plain = [&](int i, V (&acc)[RC][NV], int64_t c0) {
    V m[NV];
    for (int l = 0; l < NV; ++l) m[l] = simd::load_reg<V>(M + i * TS + l * W);
    for (int rc = 0; rc < RC; ++rc) {
      const T uc = u[(c0 + rc) * TS + i];
      for (int l = 0; l < NV; ++l) acc[rc][l] += uc * m[l];
    }
  };
  for (int64_t c0 = 0; c0 < pr.kp; c0 += RC) {
    // The next block's accumulators, 1 KB: v (k x TS, 64 KB at k = 256) does
    // not stay in L1, and their misses stalled the block's first FMAs
    // (N = 16384, k = 256: 1.018 -> 0.990 s; k <= 64 unchanged).
    if (c0 + RC < pr.kp)
      for (int rc = 0; rc < RC; ++rc)
        for (int l = 0; l < TS; l += 64 / int(sizeof(T))) __builtin_prefetch(v + (c0 + RC + rc) * TS + l, 1);
    V acc[RC][NV];
    if constexpr (!Problem<T>::kWinograd) {
      for (int rc = 0; rc < RC; ++rc)
        for (int l = 0; l < NV; ++l) acc[rc][l] = load<V>(v + (c0 + rc) * TS + l * W);
      for (int i = 0; i < n; ++i) plain(i, acc, c0);
      for (int rc = 0; rc < RC; ++rc)
        for (int l = 0; l < NV; ++l) store(v + (c0 + rc) * TS + l * W, acc[rc][l]);
    } else {
      for (int rc = 0; rc < RC; ++rc)
        for (int l = 0; l < NV; ++l) acc[rc][l] = V{};
      for (int i = 0; i < n4; i += 4) {
        V m0[NV], m1[NV];
        for (int l = 0; l < NV; ++l) {
          m0[l] = simd::load_reg<V>(M + i * TS + l * W);
          m1[l] = simd::load_reg<V>(M + (i + 1) * TS + l * W);
        }
        for (int rc = 0; rc < RC; ++rc) {
          const T u0 = u[(c0 + rc) * TS + i], u1 = u[(c0 + rc) * TS + i + 1];
          for (int l = 0; l < NV; ++l) acc[rc][l] += (u0 + m1[l]) * (u1 + m0[l]);
        }
        plain(i + 2, acc, c0);
        plain(i + 3, acc, c0);
      }
      for (int rc = 0; rc < RC; ++rc)
        for (int l = 0; l < NV; ++l) {
          T* p = v + (c0 + rc) * TS + l * W;
          store(p, load<V>(p) + ((acc[rc][l] - xu[c0 + rc]) - eta[l]) * inv_sigma);
        }
    }
  }
}

// The gram block of R rows of tile I (from i0) against the TS points of
// tile J, in registers: acc[r][v] = g' = g + xi_i + xi_j, g = u_i . u_j.
//
// In float32 one coordinate pair in four uses Winograd's inner-product
// identity (1968): with xi = sum over the pairs (4m, 4m + 1) of u_4m u_4m+1
// (from the prologue, in float64),
//   g + xi_i + xi_j = sum over those pairs (u_i,4m + u_j,4m+1)(u_i,4m+1 + u_j,4m)
//                   + sum over the other coordinates u_i,c u_j,c,
// one FMA and two adds per such pair instead of two FMAs. It pays because
// Zen 4 runs a 512-bit add beside a 512-bit FMA in the same cycle (separate
// pipes), but at most two 512-bit operations of any kind per cycle, loads
// and broadcasts included: a Winograd pair is 16 FMAs, 32 adds and 16 loads
// per 4 x 4-vector block, a plain coordinate 16 FMAs and 8 loads, so one
// Winograd pair per four coordinates takes 56 cycles where four plain ones
// take 64 (the loop alone: 1.14x, as counted; one pair per six: 1.19x
// alone, no faster in the kernel). N = 16384, k = 256: forward 0.323 ->
// 0.285 s, fwd+bwd 0.940 -> 0.903 s; k = 12 to 128 fwd+bwd 3-4% faster.
// Accuracy: the factors are sums of two coordinates of unit vectors (at
// most 2 in size), so d2's rounding error grows little: its maximum over
// 200000 random and near pairs of float32 unit vectors went from 4.5e-7 to
// 7.8e-7 at k = 12 and from 2.0e-6 to 2.1e-6 at k = 256. The float32
// contract cases at k = 12 to 256 (eight powers / half-space / eps mixes)
// kept their energy errors (<= 3.9e-8) and moved their gradient errors by
// under 30% either way (worst 1.02e-5 -> 9.2e-6 of max |g|).
template <class T>
__attribute__((always_inline)) inline void gram_block(
    const Problem<T>& pr, const T* ua, const T* ub, int i0,
    typename Problem<T>::V (&acc)[Problem<T>::R][Problem<T>::NV]) {
  using V = typename Problem<T>::V;
  constexpr int W = Problem<T>::W, NV = Problem<T>::NV, R = Problem<T>::R;
  auto plain = [&](int64_t c) {
    V bv[NV];
    for (int v = 0; v < NV; ++v) bv[v] = simd::load_reg<V>(ub + c * TS + v * W);
    for (int r = 0; r < R; ++r) {
      const T av = ua[c * TS + i0 + r];
      for (int v = 0; v < NV; ++v) acc[r][v] += av * bv[v];
    }
  };
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = V{};
  if constexpr (!Problem<T>::kWinograd) {
    for (int64_t c = 0; c < pr.L.k; ++c) plain(c);
  } else {
    for (int64_t c = 0; c < pr.kp; c += 4) {  // kp is a multiple of 4; padding coordinates are 0
      V b0[NV], b1[NV];
      for (int v = 0; v < NV; ++v) {
        b0[v] = simd::load_reg<V>(ub + c * TS + v * W);
        b1[v] = simd::load_reg<V>(ub + (c + 1) * TS + v * W);
      }
      for (int r = 0; r < R; ++r) {
        const T a0 = ua[c * TS + i0 + r], a1 = ua[(c + 1) * TS + i0 + r];
        for (int v = 0; v < NV; ++v) acc[r][v] += (a0 + b1[v]) * (a1 + b0[v]);
      }
      plain(c + 2);
      plain(c + 3);
    }
  }
}

// One 64 x 64 tile pair (ta, tb); diag: ta == tb, pairs i < j only. Returns the energy.
template <class T, class E>
double tile_pair(const Problem<T>& pr, int64_t b, int64_t ta, int64_t tb, bool diag, bool grad, T* Wb, T* WTb) {
  using V = typename Problem<T>::V;
  using Mk = simd::Mask<T>;
  constexpr int W = Problem<T>::W, NV = Problem<T>::NV, R = Problem<T>::R;
  const T* ua = pr.ut(b, ta);
  const T* ub = pr.ut(b, tb);
  const int64_t oa = b * pr.Npad + ta * TS, ob = b * pr.Npad + tb * TS;
  const int nA = pr.rows_in(ta), nB = pr.rows_in(tb);
  const T s = T(pr.P.s), delta = T(pr.P.delta), tau = pr.tau;

  double energy = 0;
  V wmax = {};  // of |W|, for accumulate_gradient's scaling
  for (int i0 = 0; i0 < nA; i0 += R) {
    V acc[R][NV];
    gram_block(pr, ua, ub, i0, acc);
    // loaded here, not once per tile pair: the Winograd pairs need the registers
    V hdb[NV], hpb[NV];
    for (int v = 0; v < NV; ++v) {
      hdb[v] = load<V>(pr.hd.get() + ob + v * W);
      if constexpr (E::uses_d2p) hpb[v] = load<V>(pr.hp.get() + ob + v * W);
    }
    // energy and gradient weights of each pair
    for (int r = 0; r < R; ++r) {
      const int i = i0 + r;
      T* wrow = Wb + i * TS;
      if (i >= nA) {  // padding rows of the last tile: zero weights for the GEMMs below
        std::memset(wrow, 0, sizeof(T) * TS);
        continue;
      }
      const T hdi = pr.hd[oa + i], hpi = pr.hp[oa + i];
      const int jlo = diag ? i + 1 : 0;
      V fsum = {};
      typename Mk::M near_mask[NV], near_any = {};
      for (int v = 0; v < NV; ++v) {
        const auto valid = v * W >= jlo && (v + 1) * W <= nB ? Mk::all() : Mk::lanes(jlo - v * W, nB - v * W);
        const V d2 = (hdi + hdb[v]) - T(2) * acc[r][v];
        V d2p = d2;  // unused where F does not depend on it
        if constexpr (E::uses_d2p) d2p = (hpi + hpb[v]) + T(2) * acc[r][v];
        auto near = Mk::lt(d2, tau);
        if constexpr (E::uses_d2p) near |= Mk::lt(d2p, tau);
        V F, al, be;
        E::eval(d2, d2p, s, delta, F, al, be);
        const auto ok = valid & ~near;
        fsum = Mk::add(fsum, ok, F);
        if (grad) {  // W serves the gradient only (forward alone 1% faster at k = 256)
          const V w = Mk::keep(ok, be - al);
          store(wrow + v * W, w);
          wmax = simd::vmax(wmax, simd::vmax(w, -w));
        }
        near_mask[v] = valid & near;
        near_any |= near_mask[v];
      }
      energy += simd::hsum(simd::widen_sum(fsum));
      if (Mk::any(near_any))
        for (int v = 0; v < NV; ++v)
          for (int l = 0; l < W; ++l)
            if (Mk::test(near_mask[v], l)) energy += refine_pair<T, E>(pr, b, ta, tb, i, v * W + l, grad);
    }
  }
  if (!grad) return energy;

  // W is zero outside the pairs computed here (lanes masked, padding rows
  // cleared), so both sides may run over whole rows of it.
  const T* xua = nullptr;
  const T* xub = nullptr;
  T inv_sigma = 1;
  if constexpr (Problem<T>::kWinograd) {
    const int64_t fa = b * pr.nT + ta, fb = b * pr.nT + tb;
    xua = pr.xu.get() + fa * pr.kp;
    xub = pr.xu.get() + fb * pr.kp;
    T wm = 0;
    for (int l = 0; l < W; ++l) wm = std::max(wm, wmax[l]);
    int ew = 0, eu = 0;
    std::frexp(wm, &ew);
    std::frexp(std::max(pr.umax[fa], pr.umax[fb]), &eu);
    const int e = wm > 0 ? std::clamp(eu - ew, -100, 100) : 0;  // 2^+-100: no overflow, no subnormal sigma
    const T sigma = std::ldexp(T(1), e);
    inv_sigma = std::ldexp(T(1), -e);
    for (int i = 0; i < nA; ++i)
      for (int v = 0; v < NV; ++v) store(Wb + i * TS + v * W, load<V>(Wb + i * TS + v * W) * sigma);
    // the Winograd pairs read rows up to the next multiple of 4, beyond the
    // multiple of R cleared above where R = 2 (AVX2, SSE, NEON)
    for (int i = nA; i < (nA + 3) / 4 * 4; ++i) std::memset(Wb + i * TS, 0, sizeof(T) * TS);
  }
  accumulate_gradient(pr, pr.vt(b, tb), ua, Wb, nA, xua, inv_sigma);  // V_J += W^T u_I
  // V_I += W u_J in the same form, on W^T: the row-major GEMM on W itself
  // would need point-major copies of u and V (2 N k more memory) and ran at
  // 76% of the FMA peak against 94% (its u_J tile, 64 KB at k = 256, does not
  // stay in L1). The transpose costs ~1% of the two GEMMs.
  simd::transpose_tile<T, TS>(Wb, WTb);
  accumulate_gradient(pr, pr.vt(b, ta), ub, WTb, nB, xub, inv_sigma);
  return energy;
}

// Few coordinates (k <= K <= 8): the three phases of tile_pair fused into one
// pass over every tile of the opposite super-tile, two rows at a time. The
// rows' distances, weights and gradient partial sums stay in registers
// (reduced once per super-tile, not once per tile), the two rows share the
// loads of the opposite points and one read-modify-write of their gradient
// accumulators, and no W buffer is written. At k = 3 the elementwise math
// dominates, so every instruction saved around it counts.
//
// Here d2 = ||u_j - u_i||^2 + a_i + a_j and d2p = ||u_j + u_i||^2 + a_i + a_j
// are computed in that form, from the differences and sums of coordinates:
// their error comes from the rounding of u alone, ~2e-7 d relative to
// d2 = d^2 in float32 instead of the gram form's 2.4e-7 absolute, so only
// pairs with ||u_j -+ u_i||^2 < tau^2 (2^-16 for s <= 1: 2^-18 of the pairs
// at k = 3, against 2^-10) go to the float64 refinement, with the same
// worst-case error per pair. The refinement had been 12% of the time at
// N = 65536, k = 3; the differences, sums and the Aref terms cost about as
// much, so fwd+bwd went only from 0.47 s to 0.46 s, but the float32
// gradient error fell 10x (s = 1) to 100x (s = 2, half-space, angular).
// The gradient uses the same differences and sums: V_i += alpha (u_i - u_j)
// + beta (u_i + u_j), V_j += alpha (u_j - u_i) + beta (u_i + u_j),
// Aref_i, Aref_j += alpha + beta, as for refined pairs (see the top of the
// file). The gram form's V_i += (beta - alpha) u_j would add a close pair's
// large alpha along u_j, whose float32 rounding (alpha 6e-8) swamps the
// pair's force alpha |u_i - u_j|: 0.5 of max |g| off at k = 8 with
// eps = 1e-4 and planted near-duplicates.
constexpr int kSmallRows = 2;

// One vector of W points v*W.. of tile J against the rows. Masked: partial
// vectors (the diagonal tile's j <= i, the last tile's padding, a missing
// second row) get lane masks, and pairs closer than tau are left to the
// caller (near_out). Unmasked (full vectors, ~all the work; valid and
// near_out unused): returns false, having changed nothing, if any pair is that
// close, and the caller redoes the vector masked. The masks and their moves
// through scalar registers had been ~20 of the loop's ~90 instructions:
// N = 65536, k = 3 forward 0.213 -> 0.195 s, fwd+bwd 0.437 -> 0.413 s.
template <class T, class E, int K, bool Grad, bool Masked>
__attribute__((always_inline)) inline bool small_vector(
    const T (&ui)[kSmallRows][K], const T (&ai)[kSmallRows], const typename simd::Mask<T>::M (&valid)[kSmallRows],
    const T* ub, const T* ab, T* vb, T* zb, int v, T s, T delta, T tau_diff,
    typename Problem<T>::V (&racc)[kSmallRows][K], typename Problem<T>::V (&zacc)[kSmallRows],
    typename Problem<T>::V& fsum, typename simd::Mask<T>::M (&near_out)[kSmallRows]) {
  using V = typename Problem<T>::V;
  using Mk = simd::Mask<T>;
  constexpr int W = Problem<T>::W;
  V ubv[K];
  for (int c = 0; c < K; ++c) ubv[c] = load<V>(ub + c * TS + v * W);
  V diff[kSmallRows][K], sum[kSmallRows][K], dd[kSmallRows], ddp[kSmallRows];
  typename Mk::M near[kSmallRows];
  for (int r = 0; r < kSmallRows; ++r) {
    dd[r] = V{};
    ddp[r] = V{};
    for (int c = 0; c < K; ++c) {
      diff[r][c] = ubv[c] - ui[r][c];
      dd[r] += diff[r][c] * diff[r][c];
      if constexpr (E::uses_d2p) {
        sum[r][c] = ubv[c] + ui[r][c];
        ddp[r] += sum[r][c] * sum[r][c];
      }
    }
    // ||u_j -+ u_i||^2, not d2: with eps > 0, d2 >= a_i + a_j keeps a near-duplicate
    // pair's alpha bounded but its direction u_j - u_i is lost to the rounding of u
    if constexpr (Masked) {
      near[r] = Mk::lt(dd[r], tau_diff);
      if constexpr (E::uses_d2p) near[r] |= Mk::lt(ddp[r], tau_diff);
    }
  }
  if constexpr (!Masked) {  // one compare of the smallest: ~1% faster than one per row
    V m = E::uses_d2p ? simd::vmin(dd[0], ddp[0]) : dd[0];
    for (int r = 1; r < kSmallRows; ++r) {
      m = simd::vmin(m, dd[r]);
      if constexpr (E::uses_d2p) m = simd::vmin(m, ddp[r]);
    }
    if (Mk::any(Mk::lt(m, tau_diff))) return false;
  }
  const V abv = load<V>(ab + v * W);
  V wa[kSmallRows], wb[kSmallRows];
  for (int r = 0; r < kSmallRows; ++r) {
    const V aij = ai[r] + abv;
    V F, al, be;
    E::eval(dd[r] + aij, ddp[r] + aij, s, delta, F, al, be);
    if constexpr (Masked) {
      const auto ok = valid[r] & ~near[r];
      near_out[r] = valid[r] & near[r];
      fsum = Mk::add(fsum, ok, F);
      wa[r] = Mk::keep(ok, al);
      if constexpr (E::uses_d2p) wb[r] = Mk::keep(ok, be);
    } else {
      // not fsum += F, which the compiler may contract with a product in F
      // where the gradient does not use it (s = 1 forward alone): the energy
      // would then depend on whether the gradient was asked for
      fsum = Mk::add(fsum, Mk::all(), F);
      wa[r] = al;
      wb[r] = be;
    }
  }
  if constexpr (Grad) {
    for (int c = 0; c < K; ++c) {
      V col = load<V>(vb + c * TS + v * W);
      for (int r = 0; r < kSmallRows; ++r) {
        racc[r][c] -= wa[r] * diff[r][c];
        col += wa[r] * diff[r][c];
        if constexpr (E::uses_d2p) {
          racc[r][c] += wb[r] * sum[r][c];
          col += wb[r] * sum[r][c];
        }
      }
      store(vb + c * TS + v * W, col);
    }
    V zcol = load<V>(zb + v * W);
    for (int r = 0; r < kSmallRows; ++r) {
      const V z = E::uses_d2p ? wa[r] + wb[r] : wa[r];
      zacc[r] += z;
      zcol += z;
    }
    store(zb + v * W, zcol);
  }
  return true;
}

// Grad is a template argument: as a run-time flag it cost the forward-only
// call 10% (0.238 -> 0.213 s at N = 65536, k = 3), its loop then carrying the
// gradient's pointers and a branch per vector.
template <class T, class E, int K, bool Grad>
double super_pair_small(const Problem<T>& pr, int64_t b, int64_t S, int64_t Sb) {
  using V = typename Problem<T>::V;
  using Mk = simd::Mask<T>;
  constexpr int W = Problem<T>::W, R = kSmallRows;
  const int64_t t0 = S * pr.q, t1 = std::min(pr.nT, t0 + pr.q);
  const int64_t u0 = Sb * pr.q, u1 = std::min(pr.nT, u0 + pr.q);
  // locals: stores through vb could alias the members as far as the compiler knows
  const T s = T(pr.P.s), delta = T(pr.P.delta), tau = pr.tau_diff;
  double energy = 0;
  for (int64_t ta = t0; ta < t1; ++ta) {
    const T* ua = pr.ut(b, ta);
    const T* aa = pr.at.get() + b * pr.Npad + ta * TS;
    const int nA = pr.rows_in(ta);
    for (int i0 = 0; i0 < nA; i0 += R) {
      T ui[R][K], ai[R];
      for (int r = 0; r < R; ++r) {  // padding rows read zeros; their lanes are masked below
        for (int c = 0; c < K; ++c) ui[r][c] = ua[c * TS + i0 + r];
        ai[r] = aa[i0 + r];
      }
      V racc[R][K] = {}, zacc[R] = {};  // the rows' gradient partial sums, lane-wise, over the whole super-tile
      simd::vdouble esum = {};
      for (int64_t tb = (S == Sb ? ta : u0); tb < u1; ++tb) {
        const T* ub = pr.ut(b, tb);
        const T* ab = pr.at.get() + b * pr.Npad + tb * TS;
        T* vb = Grad ? pr.vt(b, tb) : nullptr;
        T* zb = Grad ? pr.zt.get() + b * pr.Npad + tb * TS : nullptr;
        const int nB = pr.rows_in(tb);
        int jlo[R];
        for (int r = 0; r < R; ++r) jlo[r] = i0 + r >= nA ? TS : tb == ta ? i0 + r + 1 : 0;
        int jmax = 0;  // vectors before jlo[0] hold no pairs; full ones need no masks
        for (int r = 0; r < R; ++r) jmax = std::max(jmax, jlo[r]);
        const int vfirst = jlo[0] / W, vlast = (nB + W - 1) / W;
        const int ffirst = (jmax + W - 1) / W, flast = nB / W;
        V fsum = {};
        for (int v = vfirst; v < vlast; ++v) {
          typename Mk::M valid[R], near[R];
          if (v >= ffirst && v < flast &&
              small_vector<T, E, K, Grad, false>(ui, ai, valid, ub, ab, vb, zb, v, s, delta, tau, racc, zacc, fsum,
                                                 near))
            continue;
          for (int r = 0; r < R; ++r)
            valid[r] = v >= ffirst && v < flast ? Mk::all() : Mk::lanes(jlo[r] - v * W, nB - v * W);
          small_vector<T, E, K, Grad, true>(ui, ai, valid, ub, ab, vb, zb, v, s, delta, tau, racc, zacc, fsum, near);
          typename Mk::M near_any = near[0];
          for (int r = 1; r < R; ++r) near_any |= near[r];
          if (Mk::any(near_any))  // rare: pairs left out above, recomputed in float64
            for (int r = 0; r < R; ++r)
              for (int l = 0; l < W; ++l)
                if (Mk::test(near[r], l)) energy += refine_pair<T, E>(pr, b, ta, tb, i0 + r, v * W + l, Grad);
        }
        esum += simd::widen_sum(fsum);
      }
      energy += simd::hsum(esum);
      if constexpr (Grad) {
        T* va = pr.vt(b, ta);
        for (int r = 0; r < R; ++r)
          for (int c = 0; c < K; ++c)  // constant indices keep racc in registers
            if (c < pr.L.k && i0 + r < nA) va[c * TS + i0 + r] += simd::hsum_same(racc[r][c]);
        for (int r = 0; r < R; ++r)
          if (i0 + r < nA) pr.aref[b * pr.Npad + ta * TS + i0 + r] += simd::hsum(zacc[r]);
      }
    }
  }
  return energy;
}

// All tile pairs between super-tiles S and Sb (S == Sb: the pairs within S).
template <class T, class E>
double super_pair(const Problem<T>& pr, int64_t b, int64_t S, int64_t Sb, bool grad, T* Wb, T* WTb) {
  const int64_t t0 = S * pr.q, t1 = std::min(pr.nT, t0 + pr.q);
  const int64_t u0 = Sb * pr.q, u1 = std::min(pr.nT, u0 + pr.q);
  switch (pr.small_k) {
    case 3:
      return grad ? super_pair_small<T, E, 3, true>(pr, b, S, Sb) : super_pair_small<T, E, 3, false>(pr, b, S, Sb);
    case 4:
      return grad ? super_pair_small<T, E, 4, true>(pr, b, S, Sb) : super_pair_small<T, E, 4, false>(pr, b, S, Sb);
    case 8:
      return grad ? super_pair_small<T, E, 8, true>(pr, b, S, Sb) : super_pair_small<T, E, 8, false>(pr, b, S, Sb);
    default: break;
  }
  double e = 0;
  for (int64_t ta = t0; ta < t1; ++ta)
    for (int64_t tb = (S == Sb ? ta : u0); tb < u1; ++tb) e += tile_pair<T, E>(pr, b, ta, tb, ta == tb, grad, Wb, WTb);
  return e;
}

template <class T, Kind K, Power P, bool Half>
void solve(Problem<T>& pr, double* energy, T* grad, int nthreads) {
  using E = PairEnergy<K, P, Half>;
  using Self = PairEnergy<K, P, false>;  // the half-space pair (u_i, -u_i) is one plain pair
  const int64_t B = pr.L.B, N = pr.L.N, k = pr.L.k, nS = pr.nS;
  const int64_t M = nS + (nS & 1);  // tournament size (one bye when nS is odd)
  const bool want_grad = grad != nullptr;
  std::vector<double> super_energy(size_t(B * nS), 0.0);
  if (want_grad) {
    pr.allocate_gradient();
    if (pr.xu) {
#pragma omp parallel for num_threads(nthreads) schedule(static)
      for (int64_t t = 0; t < B * pr.nT; ++t) pr.tile_sums(t);
    }
  }
  if (Half) pr.self_energy = allocate<double>(B * N);
  std::vector<Buffer<T>> scratch;  // per thread: W and W^T of a tile pair
  for (int t = 0; t < nthreads; ++t) scratch.push_back(allocate<T>(2 * TS * TS));

  // Tasks in a fixed order: round 0 the super-tiles with themselves, round
  // r >= 1 the pairs of round r - 1 of the tournament. A task may start once
  // both its super-tiles have finished their previous rounds (done[] counts
  // them): each super-tile's accumulators still receive their terms in round
  // order, but a thread that runs out of work in a round goes on into the
  // next instead of waiting at a barrier for the slowest task: N = 16384,
  // k = 256 0.992 -> 0.977 s, N = 65536, k = 3 0.424 -> 0.411 s. No
  // deadlock: a task waits only for tasks earlier in the order, all of them
  // already taken by running threads.
  const int64_t per_round = std::max(nS, M / 2), n_tasks = B * per_round * M;
  std::vector<std::atomic<int64_t>> done(size_t(B * nS));
  for (auto& d : done) d.store(0, std::memory_order_relaxed);
  std::atomic<int64_t> next_task{0};
  auto wait_for = [&](int64_t st, int64_t round) {
    while (done[st].load(std::memory_order_acquire) < round) std::this_thread::yield();
  };

#pragma omp parallel num_threads(nthreads)
  {
    T* Wb = scratch[omp_get_thread_num()].get();
    T* WTb = Wb + TS * TS;
    for (int64_t t; (t = next_task.fetch_add(1, std::memory_order_relaxed)) < n_tasks;) {
      const int64_t round = t / (B * per_round), b = t / per_round % B, m = t % per_round;
      int64_t S, Sb;
      if (round == 0) {
        if (m >= nS) continue;
        S = Sb = m;
      } else {
        if (m >= M / 2) continue;
        S = m == 0 ? round - 1 : (round - 1 + m) % (M - 1);
        Sb = m == 0 ? M - 1 : (round - 1 - m + (M - 1)) % (M - 1);
        if (S >= nS) std::swap(S, Sb);  // the bye: S alone, nothing to compute
      }
      const int64_t s0 = b * nS + S, s1 = b * nS + Sb;
      const bool bye = Sb >= nS;
      wait_for(s0, round);
      if (!bye) {
        wait_for(s1, round);
        super_energy[s0] += super_pair<T, E>(pr, b, S, Sb, want_grad, Wb, WTb);
      }
      done[s0].store(round + 1, std::memory_order_release);
      if (!bye && Sb != S) done[s1].store(round + 1, std::memory_order_release);
    }
#pragma omp barrier
    // epilogue: the half-space self pairs and the chain rule through the normalization
#pragma omp for schedule(static)
    for (int64_t flat = 0; flat < B * N; ++flat) {
      const int64_t b = flat / N, i = flat % N, t = i / TS, ii = i % TS;
      const double ai = pr.a[flat], ri = pr.r[flat];
      double dself = 0;
      if (Half) {  // (u_i, -u_i): d2 = 4 ||u||^2 + 2a = 4 - 2a, d2p = 2a, a function of a alone
        double F, al, be;
        Self::eval(4.0 - 2.0 * ai, 2.0 * ai, pr.P.s, pr.P.delta, F, al, be);
        pr.self_energy[flat] = F / Self::lambda;
        dself = 2.0 * (E::kappa / Self::kappa) * (be - al);  // at E's derivative scale
      }
      if (!want_grad) continue;
      const T* vt = pr.vt(b, t) + ii;
      const double* vref = pr.Vref[b * pr.nT + t] ? pr.Vref[b * pr.nT + t].get() + ii : nullptr;
      auto v = [&](int64_t c) {
        return double(vt[c * TS]) + (vref ? vref[c * TS] : 0.0);
      };
      const T* xr = pr.row(b, i);
      const int64_t sk = pr.L.stride_k;
      T* g = grad + flat * k;
      if (ri == 0) {  // a zero row with eps = 0: the centre of the sphere, no derivative
        std::fill(g, g + k, T(0));
        continue;
      }
      // u as x times 1/r here (an ulp of float64 from the prologue's x / r):
      // three divisions per coordinate had been half of the epilogue's time.
      const double inv_r = 1.0 / ri;
      double dot = 0;
      for (int64_t c = 0; c < k; ++c) dot += v(c) * (double(xr[c * sk]) * inv_r);
      const double aref = pr.aref[b * pr.Npad + i] + (pr.small_k ? double(pr.zt[b * pr.Npad + i]) : 0.0);
      const double radial = dot + ai * (aref + dself);
      const double scale = (2.0 / E::kappa) * inv_r;  // d u / d x = (I - u u^T) / r
      for (int64_t c = 0; c < k; ++c) g[c] = T(scale * (v(c) - radial * (double(xr[c * sk]) * inv_r)));
    }
  }
  for (int64_t b = 0; b < B; ++b) {  // fixed order: the same sum for any thread count
    double e = 0;
    for (int64_t S = 0; S < nS; ++S) e += super_energy[b * nS + S];
    e /= E::lambda;  // the pair sums are at eval()'s scale
    if (Half)
      for (int64_t i = 0; i < N; ++i) e += pr.self_energy[b * N + i];
    energy[b] = e;
  }
}

template <class T, Kind K, Power P>
void solve_half(Problem<T>& pr, double* energy, T* grad, int nt) {
  if (pr.P.half_space)
    solve<T, K, P, true>(pr, energy, grad, nt);
  else
    solve<T, K, P, false>(pr, energy, grad, nt);
}

template <class T, Kind K>
void solve_power(Problem<T>& pr, double* energy, T* grad, int nt) {
  switch (power_case(pr.P.s)) {
    case Power::Log: return solve_half<T, K, Power::Log>(pr, energy, grad, nt);
    case Power::One: return solve_half<T, K, Power::One>(pr, energy, grad, nt);
    case Power::Two: return solve_half<T, K, Power::Two>(pr, energy, grad, nt);
    default: return solve_half<T, K, Power::General>(pr, energy, grad, nt);
  }
}

}  // namespace

template <class T>
KernelStatus hyperspherical_energy_cpu(const T* x, const PointsLayout& layout, const EnergyParams& params,
                                       double* energy, T* grad, int num_threads) {
  KernelStatus status;
  const int64_t B = layout.B, N = layout.N;
  if (B == 0) return status;
  if (N == 0) {
    std::fill(energy, energy + B, 0.0);
    return status;
  }
  Problem<T> pr(x, layout, params);
  // Threads beyond the number of independent tasks only add wake-up latency.
  const int nt = int(std::max<int64_t>(1, std::min<int64_t>(num_threads, B * pr.nS)));
  int64_t first_bad = B * N;
  if (pr.hd) {  // padding points: harmless values, masked anyway
    std::fill(pr.hd.get(), pr.hd.get() + B * pr.Npad, T(1));
    std::fill(pr.hp.get(), pr.hp.get() + B * pr.Npad, T(1));
  }
#pragma omp parallel for num_threads(nt) schedule(static) reduction(min : first_bad) if (B * N * layout.k > 65536)
  for (int64_t flat = 0; flat < B * N; ++flat)
    if (!pr.prologue_row(flat / N, flat % N)) first_bad = std::min(first_bad, flat);
  if (first_bad < B * N) {
    status.ok = false;
    status.bad_set = first_bad / N;
    status.bad_row = first_bad % N;
    return status;
  }
  if (params.kind == Kind::Chordal)
    solve_power<T, Kind::Chordal>(pr, energy, grad, nt);
  else if (params.kind == Kind::Angular)
    solve_power<T, Kind::Angular>(pr, energy, grad, nt);
  else  // the exponent cases mean nothing to the Gaussian: one instantiation
    solve_half<T, Kind::Gaussian, Power::General>(pr, energy, grad, nt);
  return status;
}

template KernelStatus hyperspherical_energy_cpu<float>(const float*, const PointsLayout&, const EnergyParams&,
                                                       double*, float*, int);
template KernelStatus hyperspherical_energy_cpu<double>(const double*, const PointsLayout&, const EnergyParams&,
                                                        double*, double*, int);

}  // namespace comhe
