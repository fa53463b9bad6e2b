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
  const int64_t gi = ta * TS + i, gj = tb * TS + jj, k = A.L.k, ski = A.L.stride_k, skj = Bp.L.stride_k;
  const double ri = A.r[b * A.L.N + gi], rj = Bp.r[b * Bp.L.N + gj];
  const double aij = A.a[b * A.L.N + gi] + Bp.a[b * Bp.L.N + gj];
  const T* xi = A.row(b, gi);
  const T* xj = Bp.row(b, gj);
  double d2 = aij, d2p = aij;
  for (int64_t c = 0; c < k; ++c) {
    const double ui = Points<T>::unit(xi[c * ski], ri), uj = Points<T>::unit(xj[c * skj], rj);
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
      const double ui = Points<T>::unit(xi[c * ski], ri), uj = Points<T>::unit(xj[c * skj], rj);
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
