// Close pairs, recomputed in float64 from x in the difference form
// (torch-free). Both paths of the pair loop leave them out: in float32 the
// gram form loses ~2.4e-7 absolute to cancellation, which is 6e-5 relative
// at tau = 1/256 but everything for coincident points, and the difference
// form of float32 u loses ~6e-8 absolute (see tiles.h, refine_threshold).
#pragma once

#include "tiles.h"

namespace comhe {
namespace cpu {
namespace detail {

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

}  // namespace detail
}  // namespace cpu
}  // namespace comhe
