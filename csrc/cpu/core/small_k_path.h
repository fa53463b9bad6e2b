// The few-coordinates path of the pair loop, k <= K <= 8 (torch-free): the
// three phases of tile_pair fused into one pass over every tile of the
// opposite super-tile, kSmallRows rows at a time. The rows' distances, weights
// and gradient partial sums stay in registers (on the stack with 16 registers;
// reduced once per super-tile, not once per tile), the rows share the loads of
// the opposite points and one read-modify-write of their gradient
// accumulators, and no W buffer is written. At k = 3 the elementwise math
// dominates, so every instruction saved around it counts.
//
// Here d2 = ||u_j - u_i||^2 + a_i + a_j and d2p = ||u_j + u_i||^2 + a_i + a_j
// are computed in that form, from the differences and sums of coordinates:
// their error comes from the rounding of u alone, ~2e-7 d relative to
// d2 = d^2 in float32 instead of the gram form's 2.4e-7 absolute, so only
// pairs with ||u_j -+ u_i||^2 < tau^2 (2^-16 for s <= 1: 2^-18 of the pairs
// at k = 3, against 2^-10) go to the float64 refinement, with the same
// worst-case error per pair; against the gram form the float32 gradient
// error is 10x (s = 1) to 100x (s = 2, half-space, angular) smaller.
// The gradient uses the same differences and sums: V_i += alpha (u_i - u_j)
// + beta (u_i + u_j), V_j += alpha (u_j - u_i) + beta (u_i + u_j),
// Aref_i, Aref_j += alpha + beta, as for refined pairs (prologue_epilogue.h).
// The gram form's V_i += (beta - alpha) u_j would add a close pair's
// large alpha along u_j, whose float32 rounding (alpha 6e-8) swamps the
// pair's force alpha |u_i - u_j|: 0.5 of max |g| off at k = 8 with
// eps = 1e-4 and planted near-duplicates.
#pragma once

#include "close_pairs.h"

namespace comhe {
namespace cpu {
namespace detail {
inline namespace COMHE_CPU_ISA {

// Rows per pass: 2 with 32 vector registers; 4 with 16 (AVX2) at K = 3,
// although their accumulators (racc, zacc: 16 vectors) then live on the
// stack: the pair math of a vector is one long dependent chain (the
// differences, 1/sqrt and its refinement, the gradient), and more independent
// rows per pass let the core overlap more of them. AMD EPYC Zen 4, one
// thread, N = 8192, k = 3 fwd+bwd, medians of 10 alternating runs: 25.7 ms
// with 2 rows, 23.5 with 4, 23.2 with 6, 27.8 with 8. K = 4 and 8 were 14%
// and 17% faster with 4 rows too, but then the energy of a call without the
// gradient differed from the one with it in the last bits at K = 8 (k = 5,
// s = 0, float; csrc/tests), for a reason not found: they keep 2.
template <int K>
constexpr int kSmallRows = simd::kVectorRegisters < 32 && K == 3 ? 4 : 2;

// One vector of W points v*W.. of tile J against the rows. Masked: partial
// vectors (the diagonal tile's j <= i, the last tile's padding, rows past
// the tile's last) get lane masks, and pairs closer than tau are left to the
// caller (near_out). Unmasked (full vectors, ~all the work; valid and
// near_out unused): returns false, having changed nothing, if any pair is that
// close, and the caller redoes the vector masked. The masks and their moves
// through scalar registers had been ~20 of the loop's ~90 instructions
// (N = 65536, k = 3 fwd+bwd 6% faster without them).
// us, uis: the operands of the sums u_j + u_i, ub and ui themselves but in a
// compact tile pair, where ub and ui are delta (super_pair_small).
template <class T, class E, int K, bool Grad, bool Masked>
__attribute__((always_inline)) inline bool small_vector(
    const T (&ui)[kSmallRows<K>][K], const T (&uis)[kSmallRows<K>][K], const T (&ai)[kSmallRows<K>],
    const typename simd::Mask<T>::M (&valid)[kSmallRows<K>], const T* ub, const T* us, const T* ab, T* vb, T* zb, int v,
    T s, T delta, T tau_diff,
    typename Points<T>::V (&racc)[kSmallRows<K>][K], typename Points<T>::V (&zacc)[kSmallRows<K>],
    typename Points<T>::V& fsum, typename simd::Mask<T>::M (&near_out)[kSmallRows<K>]) {
  using V = typename Points<T>::V;
  using Mk = simd::Mask<T>;
  constexpr int W = Points<T>::W;
  V ubv[K];
  for (int c = 0; c < K; ++c) ubv[c] = load<V>(ub + c * TS + v * W);
  V diff[kSmallRows<K>][K], sum[kSmallRows<K>][K], dd[kSmallRows<K>], ddp[kSmallRows<K>];
  typename Mk::M near[kSmallRows<K>];
  for (int r = 0; r < kSmallRows<K>; ++r) {
    dd[r] = V{};
    ddp[r] = V{};
    for (int c = 0; c < K; ++c) {
      diff[r][c] = ubv[c] - ui[r][c];
      dd[r] += diff[r][c] * diff[r][c];
      if constexpr (E::uses_d2p) {
        sum[r][c] = load<V>(us + c * TS + v * W) + uis[r][c];
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
    for (int r = 1; r < kSmallRows<K>; ++r) {
      m = simd::vmin(m, dd[r]);
      if constexpr (E::uses_d2p) m = simd::vmin(m, ddp[r]);
    }
    if (Mk::any(Mk::lt(m, tau_diff))) return false;
  }
  const V abv = load<V>(ab + v * W);
  V wa[kSmallRows<K>], wb[kSmallRows<K>];
  for (int r = 0; r < kSmallRows<K>; ++r) {
    const V aij = ai[r] + abv;
    V F, al, be;
    E::eval(dd[r] + aij, ddp[r] + aij, s, delta, F, al, be);
    if constexpr (!Grad) {  // the same F as with the gradient (simd.h)
      simd::compute_always(al);
      simd::compute_always(be);
    }
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
      for (int r = 0; r < kSmallRows<K>; ++r) {
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
    for (int r = 0; r < kSmallRows<K>; ++r) {
      const V z = E::uses_d2p ? wa[r] + wb[r] : wa[r];
      zacc[r] += z;
      zcol += z;
    }
    store(zb + v * W, zcol);
  }
  return true;
}

// All pairs of the rows of super-tile S of A with the points of super-tile
// Sb of Bp, set b; diag: the same super-tile of the same set (pairs i < j).
// Grad is a template argument: as a run-time flag it cost the forward-only
// call 10% (N = 65536, k = 3), its loop then carrying the gradient's
// pointers and a branch per vector.
template <class T, class E, int K, bool Grad>
double super_pair_small(const Points<T>& A, int64_t S, const Points<T>& Bp, int64_t Sb, int64_t b, bool diag) {
  using V = typename Points<T>::V;
  using Mk = simd::Mask<T>;
  constexpr int W = Points<T>::W, R = kSmallRows<K>;
  static_assert(TS % R == 0, "a pass's rows lie in one tile (padding rows read the tile's zeros)");
  const int64_t t0 = S * A.q, t1 = std::min(A.nT, t0 + A.q);
  const int64_t u0 = Sb * Bp.q, u1 = std::min(Bp.nT, u0 + Bp.q);
  // locals: stores through vb could alias the members as far as the compiler knows
  const T s = T(A.P.s), delta = T(A.P.delta), tau = A.tau_diff;
  // The compact tile pairs of row tile ta (close_pairs.h): their column tiles
  // as delta about ta's centre, and their refinement radius tau_diff R^2 (also
  // for ||u_j + u_i||^2: near 4 but where a ~ 1, and then beta is bounded).
  std::vector<T> dcol;
  bool compact[kMaxTilesPerSuper];
  T tau_compact[kMaxTilesPerSuper];
  double energy = 0;
  for (int64_t ta = t0; ta < t1; ++ta) {
    const T* ua = A.ut(b, ta);
    const T* aa = A.at.get() + b * A.Npad + ta * TS;
    const int nA = A.rows_in(ta);
    const double* ca = A.centre.get() + (b * A.nT + ta) * A.L.k;
    bool any_compact = false;
    for (int64_t tb = (diag ? ta : u0); tb < u1; ++tb) {
      const double Rc = compact_radius(A, ta, Bp, tb, b);
      compact[tb - u0] = Rc < kCompactRadius;
      if (!compact[tb - u0]) continue;
      any_compact = true;
      tau_compact[tb - u0] = compact_tau<T, E>(tau, Rc);
      dcol.resize(size_t((Bp.q + 1) * K * TS));
      centred_tile(Bp, b, tb, ca, K, dcol.data() + (tb - u0) * K * TS);
    }
    const T* drow = nullptr;  // the rows of ta as delta
    if (any_compact) {
      centred_tile(A, b, ta, ca, K, dcol.data() + Bp.q * K * TS);
      drow = dcol.data() + Bp.q * K * TS;
    }
    for (int i0 = 0; i0 < nA; i0 += R) {
      T ui[R][K], ai[R], di[R][K];
      for (int r = 0; r < R; ++r) {  // padding rows read zeros; their lanes are masked below
        for (int c = 0; c < K; ++c) {
          ui[r][c] = ua[c * TS + i0 + r];
          di[r][c] = any_compact ? drow[c * TS + i0 + r] : T(0);
        }
        ai[r] = aa[i0 + r];
      }
      V racc[R][K] = {}, zacc[R] = {};  // the rows' gradient partial sums, lane-wise, over the whole super-tile
      simd::vdouble esum = {};
      for (int64_t tb = (diag ? ta : u0); tb < u1; ++tb) {
        const T* ub = Bp.ut(b, tb);
        const T* ab = Bp.at.get() + b * Bp.Npad + tb * TS;
        T* vb = Grad ? Bp.vt(b, tb) : nullptr;
        T* zb = Grad ? Bp.zt.get() + b * Bp.Npad + tb * TS : nullptr;
        const int nB = Bp.rows_in(tb);
        int jlo[R];
        for (int r = 0; r < R; ++r) jlo[r] = i0 + r >= nA ? TS : diag && tb == ta ? i0 + r + 1 : 0;
        int jmax = 0;  // vectors before jlo[0] hold no pairs; full ones need no masks
        for (int r = 0; r < R; ++r) jmax = std::max(jmax, jlo[r]);
        const int vfirst = jlo[0] / W, vlast = (nB + W - 1) / W;
        const int ffirst = (jmax + W - 1) / W, flast = nB / W;
        V fsum = {};
        uint64_t near_rows[R] = {};  // per row, the points of tile tb left to the float64 refinement
        // the vectors of tile tb, from the differences of uu and uc; two
        // copies, so that the plain path keeps its registers (one loop with
        // the operands chosen per tile took random rows at k = 3 12% longer)
        auto vectors = [&](const T (&uu)[R][K], const T* uc, T tv) __attribute__((always_inline)) {
          for (int v = vfirst; v < vlast; ++v) {
            typename Mk::M valid[R], near[R];
            if (v >= ffirst && v < flast &&
                small_vector<T, E, K, Grad, false>(uu, ui, ai, valid, uc, ub, ab, vb, zb, v, s, delta, tv, racc, zacc,
                                                   fsum, near))
              continue;
            for (int r = 0; r < R; ++r)
              valid[r] = v >= ffirst && v < flast ? Mk::all() : Mk::lanes(jlo[r] - v * W, nB - v * W);
            small_vector<T, E, K, Grad, true>(uu, ui, ai, valid, uc, ub, ab, vb, zb, v, s, delta, tv, racc, zacc, fsum,
                                              near);
            typename Mk::M near_any = near[0];
            for (int r = 1; r < R; ++r) near_any |= near[r];
            if (Mk::any(near_any))  // rare but for clustered rows: pairs left out above
              for (int r = 0; r < R; ++r)
                for (int l = 0; l < W; ++l)
                  if (Mk::test(near[r], l)) near_rows[r] |= uint64_t(1) << (v * W + l);
          }
        };
        if (any_compact && compact[tb - u0])  // the same loop on delta (the same differences, rounded less)
          vectors(di, dcol.data() + (tb - u0) * K * TS, tau_compact[tb - u0]);
        else
          vectors(ui, ub, tau);
        for (int r = 0; r < R; ++r)  // recomputed in float64
          if (near_rows[r] != 0) energy += refine_near<T, E>(A, ta, i0 + r, Bp, tb, near_rows[r], b, Grad);
        esum += simd::widen_sum(fsum);
      }
      energy += simd::hsum(esum);
      if constexpr (Grad) {
        T* va = A.vt(b, ta);
        for (int r = 0; r < R; ++r)
          for (int c = 0; c < K; ++c)  // constant indices keep racc in registers
            if (c < A.L.k && i0 + r < nA) va[c * TS + i0 + r] += simd::hsum_same(racc[r][c]);
        for (int r = 0; r < R; ++r)
          if (i0 + r < nA) A.aref[b * A.Npad + ta * TS + i0 + r] += simd::hsum(zacc[r]);
      }
    }
  }
  return energy;
}

}  // namespace COMHE_CPU_ISA
}  // namespace detail
}  // namespace cpu
}  // namespace comhe
