// The gram path of the pair loop, k > 8 (torch-free): per 64 x 64 tile pair
// the gram block g = u_I u_J^T in registers, then per pair
// d2 = h_i + h_j - 2g, d2p = h_i + h_j + 2g, the energy F and the weight
// w = dF/dd2p - dF/dd2 into a 64 x 64 buffer W (L1-resident), then two
// small GEMMs add W u_J to the rows of I and W^T u_I to the rows of J.
// Pairs with d2 < tau (or d2p < tau where F depends on it) are masked out
// and recomputed in float64 (close_pairs.h).
#pragma once

#include "close_pairs.h"

namespace comhe {
namespace cpu {
namespace detail {
inline namespace COMHE_CPU_ISA {

// One side of a tile pair's gradient: v[c][j] += sum_{i < n} u[c][i] M[i][j]
// for all coordinates c and the TS points j, with M = W (the column side,
// v = V_J, u = u_I) or M = W^T (the row side, v = V_I, u = u_J). RC x CB
// accumulators (tiles.h: 16 with AVX-512, 8 with AVX2) per block of
// coordinates and of CB vectors of points; each step loads CB vectors of M
// and broadcasts RC coordinates: ~90% of the FMA peak.
//
// In float32 the rows i = 4m, 4m + 1 go in Winograd pairs, as in gram_block:
//   u_4m w_4m + u_4m+1 w_4m+1 = (u_4m + w_4m+1)(u_4m+1 + w_4m) - u_4m u_4m+1 - w_4m w_4m+1,
// the last two summed over m once per tile (xu, from the prologue's u) and
// once per call (eta): N = 16384, k = 256 fwd+bwd 7% faster. Unlike the
// gram's, one factor here is a weight, of any size: the products round at
// the scale of w w', so a column with two weights of ~2000 (a near triple
// at d2 = 2^-8, s = 1) would get ~eps w^2 = 0.25 of error on forces of ~250.
// So M comes scaled by a power of two, sigma = 2^e with max |sigma w| ~
// max |u| (exact: only the exponent changes), and the sums are scaled back
// by 1 / sigma here; the error is then ~2x the plain form's bound
// (eps 2n max|u| max|w| against eps n max|u| max|w|); unscaled, clusters of
// 8 points at d2 = 1.05 2^-8 gave 2e-2 of max |g|
// (test_float32_accuracy_near_clusters), scaled 5e-5 as the plain form.
// M's rows from n up to the next multiple of 4 must be zero.
template <class T>
void accumulate_gradient(const Points<T>& p, T* v, const T* u, const T* M, int n, const T* xu, T inv_sigma) {
  using V = typename Points<T>::V;
  constexpr int W = Points<T>::W, NV = Points<T>::NV, CB = Points<T>::CB;
  const int n4 = (n + 3) / 4 * 4;
  V eta[NV] = {};
  if constexpr (Points<T>::kWinograd)
    for (int i = 0; i < n4; i += 4)
      for (int l = 0; l < NV; ++l) eta[l] += load<V>(M + i * TS + l * W) * load<V>(M + (i + 1) * TS + l * W);
  auto plain = [&](int i, V (&acc)[RC][CB], int64_t c0, int l0) {
    V m[CB];
    for (int l = 0; l < CB; ++l) m[l] = simd::load_reg<V>(M + i * TS + (l0 + l) * W);
    for (int rc = 0; rc < RC; ++rc) {
      const T uc = u[(c0 + rc) * TS + i];
      for (int l = 0; l < CB; ++l) acc[rc][l] += uc * m[l];
    }
  };
  for (int64_t c0 = 0; c0 < p.kp; c0 += RC) {
    // The next block's accumulators, 1 KB: v (k x TS, 64 KB at k = 256) does
    // not stay in L1, and their misses stalled the block's first FMAs
    // (N = 16384, k = 256: 3% faster; k <= 64 unchanged).
    if (c0 + RC < p.kp)
      for (int rc = 0; rc < RC; ++rc)
        for (int l = 0; l < TS; l += 64 / int(sizeof(T))) __builtin_prefetch(v + (c0 + RC + rc) * TS + l, 1);
    for (int l0 = 0; l0 < NV; l0 += CB) {
      V acc[RC][CB];
      if constexpr (!Points<T>::kWinograd) {
        // the tile pair's sums from 0, added to v once, as in the Winograd
        // form: FMAs into v itself rounded each of the n terms at the scale of
        // v, the sum over all tiles (AVX2, N = 16384, k = 32: 2.1e-5 of
        // max |g| off against 3.0e-6)
        for (int rc = 0; rc < RC; ++rc)
          for (int l = 0; l < CB; ++l) acc[rc][l] = V{};
        for (int i = 0; i < n; ++i) plain(i, acc, c0, l0);
        for (int rc = 0; rc < RC; ++rc)
          for (int l = 0; l < CB; ++l) {
            T* q = v + (c0 + rc) * TS + (l0 + l) * W;
            store(q, load<V>(q) + acc[rc][l]);
          }
      } else {
        for (int rc = 0; rc < RC; ++rc)
          for (int l = 0; l < CB; ++l) acc[rc][l] = V{};
        for (int i = 0; i < n4; i += 4) {
          V m0[CB], m1[CB];
          for (int l = 0; l < CB; ++l) {
            m0[l] = simd::load_reg<V>(M + i * TS + (l0 + l) * W);
            m1[l] = simd::load_reg<V>(M + (i + 1) * TS + (l0 + l) * W);
          }
          for (int rc = 0; rc < RC; ++rc) {
            const T u0 = u[(c0 + rc) * TS + i], u1 = u[(c0 + rc) * TS + i + 1];
            for (int l = 0; l < CB; ++l) acc[rc][l] += (u0 + m1[l]) * (u1 + m0[l]);
          }
          plain(i + 2, acc, c0, l0);
          plain(i + 3, acc, c0, l0);
        }
        for (int rc = 0; rc < RC; ++rc)
          for (int l = 0; l < CB; ++l) {
            T* q = v + (c0 + rc) * TS + (l0 + l) * W;
            store(q, load<V>(q) + ((acc[rc][l] - xu[c0 + rc]) - eta[l0 + l]) * inv_sigma);
          }
      }
    }
  }
}

// The gram block of R rows of tile I (from i0) against the CB vectors of
// points of tile J from vector v0 (tiles.h), in registers:
// acc[r][v] = g' = g + xi_i + xi_j, g = u_i . u_j.
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
// alone, no faster in the kernel). N = 16384, k = 256: forward 12% faster.
// Accuracy: the factors are sums of two coordinates of unit vectors (at
// most 2 in size), so d2's rounding error grows little: its maximum over
// 200000 random and near pairs of float32 unit vectors went from 4.5e-7 to
// 7.8e-7 at k = 12 and from 2.0e-6 to 2.1e-6 at k = 256; the float32
// contract cases at k = 12 to 256 kept their energy errors (<= 3.9e-8) and
// their gradient errors within 30% (worst 9.2e-6 of max |g|).
template <class T>
__attribute__((always_inline)) inline void gram_block(const Points<T>& p, const T* ua, const T* ub, int i0, int v0,
                                                      typename Points<T>::V (&acc)[Points<T>::R][Points<T>::CB]) {
  using V = typename Points<T>::V;
  constexpr int W = Points<T>::W, CB = Points<T>::CB, R = Points<T>::R;
  ub += v0 * W;
  auto plain = [&](int64_t c) {
    V bv[CB];
    for (int v = 0; v < CB; ++v) bv[v] = simd::load_reg<V>(ub + c * TS + v * W);
    for (int r = 0; r < R; ++r) {
      const T av = ua[c * TS + i0 + r];
      for (int v = 0; v < CB; ++v) acc[r][v] += av * bv[v];
    }
  };
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < CB; ++v) acc[r][v] = V{};
  if constexpr (!Points<T>::kWinograd) {
    for (int64_t c = 0; c < p.L.k; ++c) plain(c);
  } else {
    for (int64_t c = 0; c < p.kp; c += 4) {  // kp is a multiple of 4; padding coordinates are 0
      V b0[CB], b1[CB];
      for (int v = 0; v < CB; ++v) {
        b0[v] = simd::load_reg<V>(ub + c * TS + v * W);
        b1[v] = simd::load_reg<V>(ub + (c + 1) * TS + v * W);
      }
      for (int r = 0; r < R; ++r) {
        const T a0 = ua[c * TS + i0 + r], a1 = ua[(c + 1) * TS + i0 + r];
        for (int v = 0; v < CB; ++v) acc[r][v] += (a0 + b1[v]) * (a1 + b0[v]);
      }
      plain(c + 2);
      plain(c + 3);
    }
  }
}

// One 64 x 64 tile pair: rows of tile ta of A against the points of tile tb
// of Bp, set b; diag: the same tile of the same set, pairs i < j only.
// Wb, WTb: the thread's two TS x TS buffers. Returns the energy.
template <class T, class E>
double tile_pair(const Points<T>& A, int64_t ta, const Points<T>& Bp, int64_t tb, int64_t b, bool diag, bool grad,
                 T* Wb, T* WTb, CompactScratch<T>& cs) {
  using V = typename Points<T>::V;
  using Mk = simd::Mask<T>;
  constexpr int W = Points<T>::W, NV = Points<T>::NV, CB = Points<T>::CB, R = Points<T>::R;
  const T* ua = A.ut(b, ta);
  const T* ub = Bp.ut(b, tb);
  const int64_t oa = b * A.Npad + ta * TS, ob = b * Bp.Npad + tb * TS;
  const int nA = A.rows_in(ta), nB = Bp.rows_in(tb);
  const T s = T(A.P.s), delta = T(A.P.delta);
  T tau = A.tau;
  const T *hda = A.hd.get() + oa, *hpa = A.hp.get() + oa, *hdb_ = Bp.hd.get() + ob, *hpb_ = Bp.hp.get() + ob;
  const int64_t fa = b * A.nT + ta, fb = b * Bp.nT + tb;
  const T* xua = nullptr;
  const T* xub = nullptr;
  T umax_ab = 0;
  if constexpr (Points<T>::kWinograd)
    if (grad) {
      xua = A.xu.get() + fa * A.kp;
      xub = Bp.xu.get() + fb * Bp.kp;
      umax_ab = std::max(A.umax[fa], Bp.umax[fb]);
    }
  // A compact tile pair (close_pairs.h): the same loop on delta about ta's
  // centre, refining below tau R^2. Its gram form drops W u_i, not
  // (alpha + beta) u_i: V_i += W (delta_j - delta_i), Aref_i -= W (equal
  // in the epilogue, ||u||^2 + a = 1), the terms in delta_i added below.
  const double Rc = compact_radius(A, ta, Bp, tb, b);
  const bool compact = Rc < kCompactRadius;
  const T *da = nullptr, *db = nullptr;
  if (compact) {
    const double* ca = A.centre.get() + fa * A.L.k;
    if (cs.row_tile != ta) {
      cs.rows.make(A, b, ta, ca);
      cs.row_tile = ta;
    }
    cs.cols.make(Bp, b, tb, ca);
    ua = da = cs.rows.d.data();
    ub = db = cs.cols.d.data();
    hda = cs.rows.hd.data();
    hpa = cs.rows.hp.data();
    hdb_ = cs.cols.hd.data();
    hpb_ = cs.cols.hp.data();
    tau = compact_tau<T, E>(tau, Rc);
    if (xua) {
      xua = cs.rows.xu.data();
      xub = cs.cols.xu.data();
      umax_ab = std::max(cs.rows.umax, cs.cols.umax);
    }
  }

  double energy = 0;
  V wmax = {};  // of |W|, for accumulate_gradient's scaling
  for (int i0 = 0; i0 < nA; i0 += R) {
    for (int r = 0; r < R; ++r)  // padding rows of the last tile: zero weights for the GEMMs below
      if (i0 + r >= nA) std::memset(Wb + (i0 + r) * TS, 0, sizeof(T) * TS);
    // per row, over its column blocks: the energy, in the order of a whole
    // row at a time, and the points left to the float64 refinement
    V fsum[R] = {};
    uint64_t near[R] = {};
    for (int v0 = 0; v0 < NV; v0 += CB) {
      V acc[R][CB];
      gram_block(A, ua, ub, i0, v0, acc);
      // loaded here, not once per tile pair: the Winograd pairs need the registers
      V hdb[CB], hpb[CB];
      for (int v = 0; v < CB; ++v) {
        hdb[v] = load<V>(hdb_ + (v0 + v) * W);
        if constexpr (E::uses_d2p) hpb[v] = load<V>(hpb_ + (v0 + v) * W);
      }
      // energy and gradient weights of each pair
      for (int r = 0; r < R; ++r) {
        const int i = i0 + r;
        if (i >= nA) continue;
        T* wrow = Wb + i * TS;
        const T hdi = hda[i], hpi = hpa[i];
        const int jlo = diag ? i + 1 : 0;
        typename Mk::M near_mask[CB], near_any = {};
        for (int v = 0; v < CB; ++v) {
          const int j0 = (v0 + v) * W;
          const auto valid = j0 >= jlo && j0 + W <= nB ? Mk::all() : Mk::lanes(jlo - j0, nB - j0);
          const V d2 = (hdi + hdb[v]) - T(2) * acc[r][v];
          V d2p = d2;  // unused where F does not depend on it
          if constexpr (E::uses_d2p) d2p = (hpi + hpb[v]) + T(2) * acc[r][v];
          auto nr = Mk::lt(d2, tau);
          if constexpr (E::uses_d2p) nr |= Mk::lt(d2p, tau);
          V F, al, be;
          E::eval(d2, d2p, s, delta, F, al, be);
          simd::compute_always(al);  // the same F with and without the gradient (simd.h)
          simd::compute_always(be);
          const auto ok = valid & ~nr;
          fsum[r] = Mk::add(fsum[r], ok, F);
          if (grad) {  // W serves the gradient only (forward alone 1% faster at k = 256)
            const V w = Mk::keep(ok, be - al);
            store(wrow + j0, w);
            wmax = simd::vmax(wmax, simd::vmax(w, -w));
          }
          near_mask[v] = valid & nr;
          near_any |= near_mask[v];
        }
        if (Mk::any(near_any))
          for (int v = 0; v < CB; ++v)
            for (int l = 0; l < W; ++l)
              if (Mk::test(near_mask[v], l)) near[r] |= uint64_t(1) << ((v0 + v) * W + l);
      }
    }
    for (int r = 0; r < R && i0 + r < nA; ++r) {
      energy += simd::hsum(simd::widen_sum(fsum[r]));
      if (near[r] != 0) energy += refine_near<T, E>(A, ta, i0 + r, Bp, tb, near[r], b, grad);
    }
  }
  if (!grad) return energy;

  // W is zero outside the pairs computed here (lanes masked, padding rows
  // cleared), so both sides may run over whole rows of it.
  double wrow[TS], wcol[TS];  // a compact tile pair's sums of W over j and over i (rows beyond nA: stale)
  if (compact) {
    for (int j = 0; j < TS; ++j) wcol[j] = 0;
    for (int i = 0; i < nA; ++i) {
      double r = 0;
      for (int j = 0; j < TS; ++j) {
        r += Wb[i * TS + j];
        wcol[j] += Wb[i * TS + j];
      }
      wrow[i] = r;
    }
  }
  T inv_sigma = 1;
  if constexpr (Points<T>::kWinograd) {
    T wm = 0;
    for (int l = 0; l < W; ++l) wm = std::max(wm, wmax[l]);
    int ew = 0, eu = 0;
    std::frexp(wm, &ew);
    std::frexp(umax_ab, &eu);
    const int e = wm > 0 ? std::clamp(eu - ew, -100, 100) : 0;  // 2^+-100: no overflow, no subnormal sigma
    const T sigma = std::ldexp(T(1), e);
    inv_sigma = std::ldexp(T(1), -e);
    for (int i = 0; i < nA; ++i)
      for (int v = 0; v < NV; ++v) store(Wb + i * TS + v * W, load<V>(Wb + i * TS + v * W) * sigma);
    // the Winograd pairs read rows up to the next multiple of 4: cleared above
    static_assert(R % 4 == 0, "accumulate_gradient reads W's rows up to a multiple of 4");
  }
  accumulate_gradient(A, Bp.vt(b, tb), ua, Wb, nA, xua, inv_sigma);  // V_J += W^T u_I
  // V_I += W u_J in the same form, on W^T: the row-major GEMM on W itself
  // would need point-major copies of u and V (2 N k more memory) and ran at
  // 76% of the FMA peak against 94% (its u_J tile, 64 KB at k = 256, does not
  // stay in L1). The transpose costs ~1% of the two GEMMs.
  simd::transpose_tile<T, TS>(Wb, WTb);
  accumulate_gradient(A, A.vt(b, ta), ub, WTb, nB, xub, inv_sigma);
  if (compact) {  // V_i -= (sum_j W_ij) delta_i, Aref_i -= sum_j W_ij; the same for the points j
    T* va = A.vt(b, ta);
    T* vb = Bp.vt(b, tb);
    for (int64_t c = 0; c < A.L.k; ++c) {
      for (int i = 0; i < nA; ++i) va[c * TS + i] -= T(wrow[i] * double(da[c * TS + i]));
      for (int j = 0; j < nB; ++j) vb[c * TS + j] -= T(wcol[j] * double(db[c * TS + j]));
    }
    for (int i = 0; i < nA; ++i) A.aref[oa + i] -= wrow[i];
    for (int j = 0; j < nB; ++j) Bp.aref[ob + j] -= wcol[j];
  }
  return energy;
}

}  // namespace COMHE_CPU_ISA
}  // namespace detail
}  // namespace cpu
}  // namespace comhe
