// The per-row phases of the CPU kernel, O(N k) each (torch-free):
// the prologue normalizes and packs the rows, the epilogue applies the chain
// rule through the normalization to the accumulated pair terms.
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
#pragma once

#include "tiles.h"

namespace comhe {
namespace cpu {
namespace detail {

// Normalize row i of set b into its tile; false if it holds NaN or Inf.
template <class T>
bool prologue_row(Points<T>& p, int64_t b, int64_t i) {
  const T* xr = p.row(b, i);
  const int64_t sk = p.L.stride_k, k = p.L.k;
  const double eps = p.P.eps;
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
  const int64_t flat = b * p.L.N + i, t = i / TS, ii = i % TS;
  p.r[flat] = rr;
  p.a[flat] = ai;
  T* ut_ = p.ut(b, t);
  double hh = ai, xi = 0, prev = 0;
  for (int64_t c = 0; c < k; ++c) {
    T u = T(Points<T>::unit(xr[c * sk], rr));
    ut_[c * TS + ii] = u;
    hh += double(u) * double(u);  // h from the rounded u: identical rows give d2 = a_i + a_j exactly
    if (Points<T>::kWinograd && c % 4 == 1) xi += prev * double(u);  // the pairs (4m, 4m + 1) of gram_block
    prev = double(u);
  }
  if (p.small_k) {  // the difference form needs a alone
    p.at[b * p.Npad + i] = T(ai);
  } else {
    p.hd[b * p.Npad + i] = T(hh + 2 * xi);
    p.hp[b * p.Npad + i] = T(hh - 2 * xi);
  }
  return true;
}

// Every row of every set; returns the flat index (b N + i) of the first row
// holding NaN or Inf, or B N if there is none.
template <class T>
int64_t prologue(Points<T>& p, int nthreads) {
  const int64_t B = p.L.B, N = p.L.N;
  int64_t first_bad = B * N;
  if (p.hd) {  // padding points: harmless values, masked anyway
    std::fill(p.hd.get(), p.hd.get() + B * p.Npad, T(1));
    std::fill(p.hp.get(), p.hp.get() + B * p.Npad, T(1));
  }
#pragma omp parallel for num_threads(nthreads) schedule(static) reduction(min : first_bad) if (B * N * p.L.k > 65536)
  for (int64_t flat = 0; flat < B * N; ++flat)
    if (!prologue_row(p, flat / N, flat % N)) first_bad = std::min(first_bad, flat);
  return first_bad;
}

// The gradient of row flat = b N + i: the chain rule through the
// normalization, at E's derivative scale; dself: D_i above (0 without a self
// pair); times share (the cross-set op's half-space pairs are half of E's).
template <class T, class E>
void epilogue_row(const Points<T>& p, int64_t flat, double dself, double share, T* grad) {
  const int64_t N = p.L.N, k = p.L.k;
  const int64_t b = flat / N, i = flat % N, t = i / TS, ii = i % TS;
  const double ai = p.a[flat], ri = p.r[flat];
  const T* vt = p.vt(b, t) + ii;
  const double* vref = p.Vref[b * p.nT + t] ? p.Vref[b * p.nT + t].get() + ii : nullptr;
  auto v = [&](int64_t c) { return double(vt[c * TS]) + (vref ? vref[c * TS] : 0.0); };
  const T* xr = p.row(b, i);
  const int64_t sk = p.L.stride_k;
  T* g = grad + flat * k;
  if (ri == 0) {  // a zero row with eps = 0: the centre of the sphere, no derivative
    std::fill(g, g + k, T(0));
    return;
  }
  // u as x times 1/r here (an ulp of float64 from the prologue's x / r):
  // three divisions per coordinate had been half of the epilogue's time.
  const double inv_r = 1.0 / ri;
  double dot = 0;
  for (int64_t c = 0; c < k; ++c) dot += v(c) * (double(xr[c * sk]) * inv_r);
  const double aref = p.aref[b * p.Npad + i] + (p.small_k ? double(p.zt[b * p.Npad + i]) : 0.0);
  const double radial = dot + ai * (aref + dself);
  const double scale = (2.0 * share / E::kappa) * inv_r;  // d u / d x = (I - u u^T) / r
  for (int64_t c = 0; c < k; ++c) g[c] = T(scale * (v(c) - radial * (double(xr[c * sk]) * inv_r)));
}

}  // namespace detail
}  // namespace cpu
}  // namespace comhe
