// Close pairs, recomputed in float64 from x in the difference form
// (torch-free). Both paths of the pair loop leave them out: in float32 the
// gram form loses ~2.4e-7 absolute to cancellation, which is 6e-5 relative
// at tau = 1/256 but everything for coincident points, and the difference
// form of float32 u loses ~6e-8 absolute (see tiles.h, refine_threshold).
#pragma once

#include <limits>
#include <type_traits>

#include "tiles.h"

namespace comhe {
namespace cpu {
namespace detail {
inline namespace COMHE_CPU_ISA {

// The pair (row i of tile ta of A, row j of tile tb of Bp) of set b: its
// energy, and with grad its terms alpha (u_i - u_j) + beta (u_i + u_j) into
// the float64 tiles Vref and alpha + beta into Aref of both points.
template <class T, class E>
double refine_pair(const Points<T>& A, int64_t ta, int i, const Points<T>& Bp, int64_t tb, int jj, int64_t b,
                   bool grad) {
  const int64_t gi = ta * TS + i, gj = tb * TS + jj, k = A.L.k;
  const double aij = A.a[b * A.L.N + gi] + Bp.a[b * Bp.L.N + gj];
  // u from the float64 tiles: the same divisions, once per point, not per pair
  // (four per coordinate had been most of a pair's time: N = 8192, k = 32, 64
  // interleaved clusters, one close pair per row and tile)
  const double* ut_i = A.udouble_tile(b, ta) + i;
  const double* ut_j = Bp.udouble_tile(b, tb) + jj;
  double d2 = aij, d2p = aij;
  for (int64_t c = 0; c < k; ++c) {
    const double ui = ut_i[c * TS], uj = ut_j[c * TS];
    d2 += (ui - uj) * (ui - uj);
    d2p += (ui + uj) * (ui + uj);
  }
  double F, al, be;
  E::eval(d2, d2p, A.P.s, A.P.delta, F, al, be);
  simd::compute_always(al);  // the same F with and without the gradient (simd.h)
  simd::compute_always(be);
  if (grad) {
    double* va = A.vref_tile(b, ta);
    double* vb = Bp.vref_tile(b, tb);
    for (int64_t c = 0; c < k; ++c) {
      const double ui = ut_i[c * TS], uj = ut_j[c * TS];
      va[c * TS + i] += al * (ui - uj) + be * (ui + uj);
      vb[c * TS + jj] += al * (uj - ui) + be * (ui + uj);
    }
    A.aref[b * A.Npad + gi] += al + be;
    Bp.aref[b * Bp.Npad + gj] += al + be;
  }
  return F;
}

// The mask of the float64 lanes v*W.. of a 64-bit set of points.
template <class M = simd::Mask<double>::M>  // a template: the branch not taken is not compiled
M double_lanes(uint64_t bits, int v) {
  constexpr int W = simd::Traits<double>::W;
  const uint64_t m = (bits >> (v * W)) & ((uint64_t(1) << W) - 1);
  if constexpr (std::is_integral_v<M>) {
    return M(m);
  } else {
    M out;
    for (int l = 0; l < W; ++l) out[l] = (m >> l) & 1 ? -1 : 0;
    return out;
  }
}

// refine_pair for row i of tile ta of A against every point j of tile tb of
// Bp with bit j set in near, in float64 vectors over j: the same difference
// form, from the float64 unit tiles (udouble_tile). For clustered or
// collapsed rows, where every pair is close.
template <class T, class E>
double refine_row(const Points<T>& A, int64_t ta, int i, const Points<T>& Bp, int64_t tb, uint64_t near, int64_t b,
                  bool grad) {
  using D = simd::vdouble;
  using Md = simd::Mask<double>;
  constexpr int W = simd::Traits<double>::W, ND = TS / W;
  const int64_t k = A.L.k;
  const double* ua = A.udouble_tile(b, ta);
  const double* ub = Bp.udouble_tile(b, tb);
  D d2[ND], d2p[ND];
  for (int v = 0; v < ND; ++v) d2[v] = d2p[v] = ua[k * TS + i] + load<D>(ub + k * TS + v * W);
  for (int64_t c = 0; c < k; ++c) {
    const double uic = ua[c * TS + i];
    for (int v = 0; v < ND; ++v) {
      const D uj = load<D>(ub + c * TS + v * W);
      d2[v] += (uj - uic) * (uj - uic);
      if constexpr (E::uses_d2p) d2p[v] += (uj + uic) * (uj + uic);
    }
  }
  // d2 or d2p = 0 (coincident or antipodal points with eps = 0): the vector
  // 1/sqrt and log are not made for 0 (NaN), so those go to refine_pair
  constexpr double tiny = std::numeric_limits<double>::min();
  uint64_t zero = 0;
  for (int v = 0; v < ND; ++v)
    for (int l = 0; l < W; ++l)
      if (d2[v][l] < tiny || (E::uses_d2p && d2p[v][l] < tiny)) zero |= uint64_t(1) << (v * W + l);
  zero &= near;
  near &= ~zero;
  double energy = 0;
  for (; zero != 0; zero &= zero - 1) energy += refine_pair<T, E>(A, ta, i, Bp, tb, __builtin_ctzll(zero), b, grad);
  D fsum = {}, wa[ND], wb[ND];
  for (int v = 0; v < ND; ++v) {
    const auto m = double_lanes(near, v);
    wa[v] = wb[v] = D{};
    if (!Md::any(m)) continue;
    D F, al, be;
    E::eval(d2[v], d2p[v], A.P.s, A.P.delta, F, al, be);
    simd::compute_always(al);  // the same F with and without the gradient (simd.h)
    simd::compute_always(be);
    fsum = Md::add(fsum, m, F);
    wa[v] = Md::keep(m, al);
    wb[v] = Md::keep(m, be);
  }
  if (grad) {  // as refine_pair's, summed over j for row i
    double* va = A.vref_tile(b, ta);
    double* vb = Bp.vref_tile(b, tb);
    for (int64_t c = 0; c < k; ++c) {
      const double uic = ua[c * TS + i];
      D row = {};
      for (int v = 0; v < ND; ++v) {
        const D uj = load<D>(ub + c * TS + v * W);
        const D t = wb[v] * (uj + uic);
        store(vb + c * TS + v * W, load<D>(vb + c * TS + v * W) + (wa[v] * (uj - uic) + t));
        row += t - wa[v] * (uj - uic);
      }
      va[c * TS + i] += simd::hsum(row);
    }
    D z = {};
    double* zb = Bp.aref.get() + b * Bp.Npad + tb * TS;
    for (int v = 0; v < ND; ++v) {
      store(zb + v * W, load<D>(zb + v * W) + (wa[v] + wb[v]));
      z += wa[v] + wb[v];
    }
    A.aref[b * A.Npad + ta * TS + i] += simd::hsum(z);
  }
  return energy + simd::hsum(fsum);
}

// ---- compact tile pairs -----------------------------------------------------
// Clustered or collapsed rows (the benchmark's: within 1e-3 of a direction)
// put tile pairs of points all within a small radius R of one centre c. In
// float32 the differences of u lose ~6e-8 absolute, so every pair closer than
// tau (2^-8) went to the float64 refinement: N = 8192, collapsed, float32
// fwd+bwd 7.7x the random rows' time at k = 3 and 6.8x at k = 32. The
// differences of delta = u - c, rounded to T from float64, lose ~6e-8 R: the
// same relative error at a distance of tau R, so such a tile pair goes
// through the pair loop on delta, and only its pairs closer than tau R are
// refined. Up to R = 1/4 (every pair within 1/2: one cluster); beyond, the
// differences of u are as good.
constexpr double kCompactRadius = 0.25;

// centre and radius of every tile of every set (tiles.h), in float64 from x.
template <class T>
void tile_bounds(Points<T>& p, int nthreads) {
  const int64_t k = p.L.k, nt = p.L.B * p.nT;
  p.centre = allocate<double>(nt * k);
  p.radius = allocate<double>(nt);
#pragma omp parallel for num_threads(nthreads) schedule(static) if (p.L.N * k > 65536)
  for (int64_t t = 0; t < nt; ++t) {
    const int64_t b = t / p.nT, tt = t % p.nT;
    const int n = p.rows_in(tt);
    double* c = p.centre.get() + t * k;
    for (int j = 0; j < n; ++j) {
      const T* xj = p.row(b, tt * TS + j);
      const double rj = p.r[b * p.L.N + tt * TS + j];
      for (int64_t d = 0; d < k; ++d) c[d] += Points<T>::unit(xj[d * p.L.stride_k], rj);
    }
    for (int64_t d = 0; d < k; ++d) c[d] /= n;
    double rad2 = 0;
    for (int j = 0; j < n; ++j) {
      const T* xj = p.row(b, tt * TS + j);
      const double rj = p.r[b * p.L.N + tt * TS + j];
      double e = 0;
      for (int64_t d = 0; d < k; ++d) {
        const double q = Points<T>::unit(xj[d * p.L.stride_k], rj) - c[d];
        e += q * q;
      }
      rad2 = std::max(rad2, e);
    }
    p.radius[t] = std::sqrt(rad2);
  }
}

// R of tile ta of A and tile tb of Bp about ta's centre: the largest
// |u - c_ta| over both tiles can be.
template <class T>
double compact_radius(const Points<T>& A, int64_t ta, const Points<T>& Bp, int64_t tb, int64_t b) {
  const int64_t k = A.L.k;
  const double* ca = A.centre.get() + (b * A.nT + ta) * k;
  const double* cb = Bp.centre.get() + (b * Bp.nT + tb) * k;
  double o2 = 0;
  for (int64_t d = 0; d < k; ++d) o2 += (ca[d] - cb[d]) * (ca[d] - cb[d]);
  return std::max(A.radius[b * A.nT + ta], std::sqrt(o2) + Bp.radius[b * Bp.nT + tb]);
}

// The refinement radius of a compact tile pair of radius R: tau R^2, at
// least the smallest normal T, so that coincident points (R = 0 at k = 1) are
// refined. A general power keeps tau: its float32 exp(-s log t) is off by
// ~s |log t| eps relative however accurate t is (chord 1e-6, s = 3.5: 1.45e-6
// of the energy with tau R^2, test_pair_math_contract).
template <class T, class E>
T compact_tau(T tau, double R) {
  if constexpr (E::general_power) return tau;
  return std::max(T(double(tau) * R * R), std::numeric_limits<T>::min());
}

// Tile t of set b of P as delta = u - c, coordinate-major (rows x TS, zero
// for padding points and coordinates), from the float64 u of udouble_tile.
template <class T>
void centred_tile(const Points<T>& P, int64_t b, int64_t t, const double* c, int64_t rows, T* d) {
  const double* u = P.udouble_tile(b, t);
  const int n = P.rows_in(t);
  for (int64_t q = 0; q < rows; ++q) {
    int j = 0;
    if (q < P.L.k)
      for (; j < n; ++j) d[q * TS + j] = T(u[q * TS + j] - c[q]);
    for (; j < TS; ++j) d[q * TS + j] = T(0);
  }
}

// A centred tile for the gram path: delta (kp x TS, centred_tile), h =
// ||delta||^2 + a -+ 2 xi as the prologue's hd, hp (1 for padding points) but
// with hp = 2 - hd, so that d2p = hp_i + hp_j + 2 g' is 4 - d2
// (||u||^2 + a = 1), and with kWinograd xu and umax as Points::tile_sums'.
template <class T>
struct CentredTile {
  std::vector<T> d, hd, hp, xu;
  T umax = 0;
  void make(const Points<T>& P, int64_t b, int64_t t, const double* c) {
    const int64_t kp = P.kp;
    d.resize(size_t(kp * TS));
    hd.assign(TS, T(1));
    hp.assign(TS, T(1));
    xu.assign(size_t(kp), T(0));
    centred_tile(P, b, t, c, kp, d.data());
    double hh[TS];
    const double* a = P.udouble_tile(b, t) + P.L.k * TS;
    const int n = P.rows_in(t);
    for (int j = 0; j < TS; ++j) hh[j] = j < n ? a[j] : 0.0;
    for (int64_t q = 0; q < kp; ++q)
      for (int j = 0; j < TS; ++j) {
        const double x = d[q * TS + j];
        // the pairs (4m, 4m + 1) of gram_block: 2 xi
        hh[j] += Points<T>::kWinograd && q % 4 == 1 ? x * (x + 2 * double(d[(q - 1) * TS + j])) : x * x;
      }
    for (int j = 0; j < n; ++j) {
      hd[j] = T(hh[j]);
      hp[j] = T(2 - hh[j]);
    }
    if constexpr (Points<T>::kWinograd) {
      T m = 0;
      for (int64_t q = 0; q < kp; ++q) {
        double x = 0;
        for (int i = 0; i < TS; i += 4) x += double(d[q * TS + i]) * double(d[q * TS + i + 1]);
        xu[q] = T(x);
        for (int i = 0; i < TS; ++i) m = std::max(m, std::fabs(d[q * TS + i]));
      }
      umax = m;
    }
  }
};

// Per call of super_pair: the row tile's CentredTile, made once for the
// column tiles it meets (row_tile: which), and the column tile's.
template <class T>
struct CompactScratch {
  CentredTile<T> rows, cols;
  int64_t row_tile = -1;
};

// The pairs of row i with the points of tile tb in near (bit j: point j):
// from kRowRefine of them on the row, the whole row in refine_row. Not
// inlined: one compiled body computes F for the calls with and without the
// gradient (inlined into the small-k path's loops, the forward-only energy
// at k = 5, s = 0 differed from the one with the gradient by 2.5e-7).
constexpr int kRowRefine = 8;
template <class T, class E>
__attribute__((noinline)) double refine_near(const Points<T>& A, int64_t ta, int i, const Points<T>& Bp, int64_t tb,
                                             uint64_t near, int64_t b, bool grad) {
  if (__builtin_popcountll(near) >= kRowRefine) return refine_row<T, E>(A, ta, i, Bp, tb, near, b, grad);
  double e = 0;
  for (; near != 0; near &= near - 1) e += refine_pair<T, E>(A, ta, i, Bp, tb, __builtin_ctzll(near), b, grad);
  return e;
}

}  // namespace COMHE_CPU_ISA
}  // namespace detail
}  // namespace cpu
}  // namespace comhe
