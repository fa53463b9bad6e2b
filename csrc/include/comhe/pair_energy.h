// The energy of one pair of points and its two partial derivatives, shared by
// every backend (CPU vectors and scalars here; CUDA compiles the scalar path).
//
// A pair is described by two numbers computed without cancellation:
//   d2  = ||u_i - u_j||^2 + a_i + a_j  = 2 - 2 c_ij   (squared chordal distance)
//   d2p = ||u_i + u_j||^2 + a_i + a_j  = 2 + 2 c_ij   (the same to the mirror -u_j)
// with u = x / sqrt(||x||^2 + eps), a = eps / (||x||^2 + eps) (so ||u||^2 + a = 1).
// eval() returns lambda F(d2, d2p) and kappa alpha, kappa beta, where
// alpha = dF/dd2, beta = dF/dd2p and lambda, kappa are powers of two fixed per
// energy (PairEnergy::lambda, ::kappa); the kernels turn these into gradients,
// dd2/du_i = 2(u_i - u_j), dd2p/du_i = 2(u_i + u_j), divide by kappa once per
// row at the end and the energy by lambda once per set.
// Why: the scales are exact and each saves a multiply per vector of pairs in
// a loop of ~28 vector operations per vector (k = 3). For s = 1 the Newton
// step of 1/sqrt gives r2 = 2/d in 3 operations, 1/d in 4, so F = r2
// (lambda = 2), and dF/dd2 = -1/(2 d^3) = -r2^3 / 16 (kappa = 16).
// N = 65536, k = 3: 0.49 s -> 0.47 s for kappa, ~3% more for lambda.
//
// The angle is theta = arccos(c)/pi = (2/pi) atan2(sqrt(d2), sqrt(d2p)): exact
// where arccos is, never NaN, and with derivatives that stay finite at both
// ends (arccos' infinite slope at c = +-1 is split between the two terms).
#pragma once

#include <cmath>

#if !defined(__CUDACC__) && !defined(__HIPCC__)
#include "comhe/simd.h"
#endif

#if defined(__CUDACC__) || defined(__HIPCC__)
#define COMHE_HD __host__ __device__ __forceinline__
#else
#define COMHE_HD inline
#endif

namespace comhe {

// Chordal: f of d = sqrt(d2) (Riesz d^-s, -log d); Angular: f of the angle;
// Gaussian: f = exp(-t d2), t > 0 carried in the exponent's place (s).
enum class Kind : int { Chordal = 0, Angular = 1, Gaussian = 2 };
// Exponents with their own code path; everything else goes through exp/log.
enum class Power : int { Log = 0, One = 1, Two = 2, General = 3 };

inline Power power_case(double s) {
  return s == 0 ? Power::Log : s == 1 ? Power::One : s == 2 ? Power::Two : Power::General;
}

// Scalar elementary functions (host and device); vector overloads live in simd.h.
#if defined(__CUDA_ARCH__)
// MUFU.RSQ (2 ulp): 2 / sqrtf is an IEEE square root and division, ~20 instructions per pair.
COMHE_HD float twice_rsqrt(float x) { return 2.0f * ::rsqrtf(x); }
#else
COMHE_HD float twice_rsqrt(float x) { return 2.0f / ::sqrtf(x); }
#endif
COMHE_HD double twice_rsqrt(double x) { return 2.0 / ::sqrt(x); }
COMHE_HD float sqrt(float x) { return ::sqrtf(x); }
COMHE_HD double sqrt(double x) { return ::sqrt(x); }
COMHE_HD float log(float x) { return ::logf(x); }
COMHE_HD double log(double x) { return ::log(x); }
COMHE_HD float exp(float x) { return ::expf(x); }
COMHE_HD double exp(double x) { return ::exp(x); }
// atan2(p, q) for p, q >= 0 and its complement atan2(q, p), each to its own
// relative precision (see simd.h): atan of min / max, in [0, pi/4], is one of them.
COMHE_HD float atan2_nonneg(float p, float q, float& complement) {
  const float a = ::atan2f(p < q ? p : q, p < q ? q : p), b = 1.57079632679489662f - a;
  complement = p > q ? a : b;
  return p > q ? b : a;
}
COMHE_HD double atan2_nonneg(double p, double q, double& complement) {
  const double a = ::atan2(p < q ? p : q, p < q ? q : p), b = 1.5707963267948966 - a;
  complement = p > q ? a : b;
  return p > q ? b : a;
}
#if !defined(__CUDACC__) && !defined(__HIPCC__)
// Builtin vector types have no namespace for argument-dependent lookup, so the
// vector overloads are brought in here, before the templates that call them.
using simd::atan2_nonneg;
using simd::exp;
using simd::log;
using simd::twice_rsqrt;
using simd::sqrt;
#endif

// Radial profile in d2: lf = chordal_lambda<P> f, f = d^-s = d2^(-s/2), or
// -log d for s = 0, and kdf = chordal_kappa<P> df/dd2: the scales at which
// they cost least. Negative products are written 0 - x y, which contracts
// into one fnmadd; -(x y) costs a separate sign flip (N = 65536, k = 3, s = 1:
// 0.46 -> 0.44 s).
template <Power P>
constexpr double chordal_lambda = P == Power::One ? 2.0 : 1.0;
template <Power P>
constexpr double chordal_kappa = P == Power::One ? 16.0 : P == Power::Two ? 1.0 : 2.0;

template <Power P, class V, class S>
COMHE_HD void chordal_profile(V d2, S s, V& f, V& kdf) {
  if constexpr (P == Power::One) {
    V r2 = twice_rsqrt(d2);
    f = r2;
    kdf = V{} - r2 * r2 * r2;
  } else if constexpr (P == Power::Two) {
    V q = S(1) / d2;
    f = q;
    kdf = V{} - q * q;
  } else if constexpr (P == Power::Log) {
    f = S(-0.5) * log(d2);
    kdf = S(-1) / d2;
  } else {
    f = exp(S(-0.5) * s * log(d2));
    kdf = -s * f / d2;
  }
}

// The Gaussian kernel in d2, f = exp(-t d2), df/dd2 = -t f (lambda = kappa =
// 1). No singularity, so nothing is gained by special exponents: one code path.
template <class V, class S>
COMHE_HD void gaussian_profile(V d2, S t, V& f, V& df) {
  f = exp(d2 * (S(0) - t));
  df = (S(0) - t) * f;
}

// Angular profile in t = theta + delta: g = t^-s, or -log t for s = 0; dg = dg/dt.
template <Power P, class V, class S>
COMHE_HD void angular_profile(V t, S s, V& g, V& dg) {
  V q = S(1) / t;
  if constexpr (P == Power::One) {
    g = q;
    dg = V{} - q * q;
  } else if constexpr (P == Power::Two) {
    g = q * q;
    dg = S(-2) * g * q;
  } else if constexpr (P == Power::Log) {
    g = -log(t);
    dg = -q;
  } else {
    g = exp(-s * log(t));
    dg = -s * g * q;
  }
}

template <Kind K, Power P, bool Half>
struct PairEnergy {
  // Whether F depends on d2p, so that near-antipodal pairs need care too.
  static constexpr bool uses_d2p = Half || K == Kind::Angular;
  // Whether F is exp(-s log t) (a general power s), whose float32 rounding
  // grows with |log t|, beyond what an accurate d2 can fix: the CPU kernel's
  // compact tile pairs (close_pairs.h) keep the full refinement radius then.
  static constexpr bool general_power = P == Power::General && K != Kind::Gaussian;
  // The scales of the energy and the derivatives eval() returns (see the top of this file).
  static constexpr double radial_kappa = K == Kind::Chordal ? chordal_kappa<P> : 1.0;
  static constexpr double lambda = K == Kind::Chordal ? chordal_lambda<P> : 1.0;
  static constexpr double kappa = K == Kind::Angular ? 1.0 : Half ? radial_kappa / 2 : radial_kappa;

  // One unordered pair i < j of the N points. Half-space counts the four
  // pairs (i, j), (-i, -j), (i, -j), (-i, j) of the 2N-point set:
  // F = 2 f(d2) + 2 f(d2p) (so alpha = 2 df, which kappa absorbs); the N
  // pairs (i, -i) are added separately.
  template <class V, class S>
  static COMHE_HD void radial(V d2, S s, V& f, V& kdf) {
    if constexpr (K == Kind::Gaussian)
      gaussian_profile(d2, s, f, kdf);
    else
      chordal_profile<P>(d2, s, f, kdf);
  }

  template <class V, class S>
  static COMHE_HD void eval(V d2, V d2p, S s, S delta, V& F, V& alpha, V& beta) {
    if constexpr (K != Kind::Angular) {
      radial(d2, s, F, alpha);
      if constexpr (Half) {
        V fp, dfp;
        radial(d2p, s, fp, dfp);
        F = S(2) * (F + fp);
        beta = dfp;
      } else {
        beta = V{};
      }
    } else {
      const S inv_pi = S(0.31830988618379067);
      V p = sqrt(d2), q = sqrt(d2p), comp;
      V theta = S(2) * inv_pi * atan2_nonneg(p, q, comp);
      V g, dg;
      angular_profile<P>(theta + delta, s, g, dg);
      if constexpr (Half) {  // the mirrored pair has angle pi - theta: 1 - theta, without its cancellation
        V g2, dg2;
        angular_profile<P>(S(2) * inv_pi * comp + delta, s, g2, dg2);
        g = S(2) * (g + g2);
        dg = S(2) * (dg - dg2);
      }
      F = g;
      // dtheta/dd2 = q / (pi p (d2 + d2p)), dtheta/dd2p = -p / (pi q (d2 + d2p));
      // at p = 0 or q = 0 (coincident or antipodal with eps = 0) theta has no
      // derivative and the pair contributes the subgradient 0.
      V w = dg * inv_pi / (d2 + d2p);
      alpha = p > S(0) ? w * q / p : V{};
      beta = q > S(0) ? -w * p / q : V{};
    }
  }
};

}  // namespace comhe
