"""The energy of one pair and its two partial derivatives, in Triton.

A transcription of csrc/include/comhe/pair_energy.h (Triton cannot include
it); tests/test_triton.py puts pairs at chosen distances through both and
the reference. A pair is described by

    d2  = ||u_i - u_j||^2 + a_i + a_j  = 2 - 2 c_ij   (squared chordal distance)
    d2p = ||u_i + u_j||^2 + a_i + a_j  = 2 + 2 c_ij   (the same to the mirror -u_j)

``pair`` returns F, KAPPA dF/dd2 and KAPPA dF/dd2p, where KAPPA (``kappa``)
is a constant per energy that saves a multiply per pair (s = 1:
dF/dd2 = -d2^(-3/2) / 2, so 2 dF/dd2 = -r^3 with r = 1/sqrt(d2)); the
kernels divide it out once per row. With HALF, F is the cross-set form
f(d2) + f(d2p) (the pair and its mirror); the one-set half-space energy
2 f(d2) + 2 f(d2p) per pair is twice that, which the kernels apply per set.

IS64 selects float64 arithmetic (the input is float64, or the float64
refinement of close pairs): IEEE square roots and divisions, and a longer
arctangent polynomial. Float32 uses the fast rsqrt, sqrt and division of
the GPU (about 2 ulp), well inside the float32 contract.
"""

import triton.language as tl

from ._jit import helper

# The kinds and exponent cases of pair_energy.h (comhe::Kind, comhe::Power).
CHORDAL = tl.constexpr(0)
ANGULAR = tl.constexpr(1)
GAUSSIAN = tl.constexpr(2)
LOG = tl.constexpr(0)
ONE = tl.constexpr(1)
TWO = tl.constexpr(2)
GENERAL = tl.constexpr(3)

_INV_PI = tl.constexpr(0.31830988618379067)
_HALF_PI = tl.constexpr(1.5707963267948966)
_SIXTH_PI = tl.constexpr(0.5235987755982989)
_SQRT3 = tl.constexpr(1.7320508075688772)
_TAN_PI_12 = tl.constexpr(0.2679491924311227)  # 2 - sqrt(3)


def kind_code(kind: str) -> int:
    return {"chordal": 0, "angular": 1, "gaussian": 2}[kind]


def power_code(kind: str, s: float) -> int:
    """pair_energy.h's power_case; the Gaussian has one code path (GENERAL)."""
    if kind == "gaussian":
        return 3
    return 0 if s == 0 else 1 if s == 1 else 2 if s == 2 else 3


def kappa(kind: int, power: int) -> float:
    """The derivative scale of ``pair`` (pair_energy.h's radial_kappa; 1 for the angle)."""
    if kind == 0:
        return 1.0 if power == 2 else 2.0
    return 1.0


@helper
def _recip_sqrt(d2, IS64: tl.constexpr):
    if IS64:
        return 1.0 / tl.sqrt(d2)
    else:
        return tl.math.rsqrt(d2)


@helper
def _radial(d2, s, KIND: tl.constexpr, POW: tl.constexpr, IS64: tl.constexpr):
    """f(d2) and kappa df/dd2 of the chordal and Gaussian kinds."""
    if KIND == GAUSSIAN:  # f = exp(-t d2), kappa 1
        f = tl.exp(d2 * (0.0 - s))
        kdf = (0.0 - s) * f
    elif POW == ONE:  # f = d2^-1/2, kappa 2: 2 df = -r^3
        r = _recip_sqrt(d2, IS64)
        f = r
        kdf = (0.0 - r) * (r * r)
    elif POW == TWO:  # f = 1/d2, kappa 1
        q = 1.0 / d2
        f = q
        kdf = (0.0 - q) * q
    elif POW == LOG:  # f = -log d = -log(d2) / 2, kappa 2
        f = -0.5 * tl.log(d2)
        kdf = -1.0 / d2
    else:  # f = d2^(-s/2), kappa 2
        f = tl.exp((-0.5 * s) * tl.log(d2))
        kdf = (0.0 - s) * f / d2
    return f, kdf


@helper
def _angular_profile(t, s, POW: tl.constexpr):
    """g(t) = t^-s (-log t for s = 0) of t = theta + delta, and dg/dt."""
    q = 1.0 / t
    if POW == ONE:
        g = q
        dg = (0.0 - q) * q
    elif POW == TWO:
        g = q * q
        dg = -2.0 * g * q
    elif POW == LOG:
        g = 0.0 - tl.log(t)
        dg = 0.0 - q
    else:
        g = tl.exp((0.0 - s) * tl.log(t))
        dg = (0.0 - s) * g * q
    return g, dg


@helper
def atan2_nonneg(p, q, IS64: tl.constexpr):
    """atan2(p, q) for p, q >= 0, in [0, pi/2], and its complement pi/2 - atan2(p, q)
    = atan2(q, p), both to full relative precision (0 at p = 0, resp. q = 0).

    Triton has no arctangent that also runs under its interpreter, so it is
    formed here: t = min/max in [0, 1], reduced below tan(pi/12) by
    atan(t) = pi/6 + atan((sqrt(3) t - 1) / (t + sqrt(3))), then the odd
    Taylor series, whose next term is below z^(n+1)/(2n+3) with
    z = t^2 <= 0.0718: 1e-8 relative after 6 terms (float32), 5e-17 after
    13 (float64). The complement matters for half-space's mirrored pair of a
    near-antipodal pair: 1 - theta in float32 keeps only 6e-8 / (1 - theta)
    of it (at 1 - theta = 9e-4 with delta = 1e-4, 7e-5 relative in that
    pair's energy of ~1000).
    """
    lo = tl.minimum(p, q)
    hi = tl.maximum(p, q)
    t = tl.where(hi > 0, lo / tl.where(hi > 0, hi, 1.0), 0.0)
    sqrt3 = tl.full((), _SQRT3, t.dtype)
    big = t > tl.full((), _TAN_PI_12, t.dtype)
    t = tl.where(big, (t * sqrt3 - 1.0) / (t + sqrt3), t)
    z = t * t
    # the coefficients as constants of t's dtype: a bare Python float would be float32
    if IS64:
        c = tl.full((), 1.0 / 27.0, t.dtype)
        c = c * z - tl.full((), 1.0 / 25.0, t.dtype)
        c = c * z + tl.full((), 1.0 / 23.0, t.dtype)
        c = c * z - tl.full((), 1.0 / 21.0, t.dtype)
        c = c * z + tl.full((), 1.0 / 19.0, t.dtype)
        c = c * z - tl.full((), 1.0 / 17.0, t.dtype)
        c = c * z + tl.full((), 1.0 / 15.0, t.dtype)
        c = c * z - tl.full((), 1.0 / 13.0, t.dtype)
        c = c * z + tl.full((), 1.0 / 11.0, t.dtype)
        c = c * z - tl.full((), 1.0 / 9.0, t.dtype)
        c = c * z + tl.full((), 1.0 / 7.0, t.dtype)
        c = c * z - tl.full((), 1.0 / 5.0, t.dtype)
        c = c * z + tl.full((), 1.0 / 3.0, t.dtype)
    else:
        c = tl.full((), -1.0 / 13.0, t.dtype)
        c = c * z + 1.0 / 11.0
        c = c * z - 1.0 / 9.0
        c = c * z + 1.0 / 7.0
        c = c * z - 1.0 / 5.0
        c = c * z + 1.0 / 3.0
    a = t - t * z * c
    a = tl.where(big, a + tl.full((), _SIXTH_PI, t.dtype), a)
    b = tl.full((), _HALF_PI, t.dtype) - a
    return tl.where(p > q, b, a), tl.where(p > q, a, b)


@helper
def pair(d2, d2p, s, delta, KIND: tl.constexpr, POW: tl.constexpr, HALF: tl.constexpr, IS64: tl.constexpr):
    """F, kappa dF/dd2, kappa dF/dd2p (see the module docstring); HALF adds the mirrored pair."""
    if KIND != ANGULAR:
        F, alpha = _radial(d2, s, KIND, POW, IS64)
        if HALF:
            fp, beta = _radial(d2p, s, KIND, POW, IS64)
            F = F + fp
        else:
            beta = tl.full(F.shape, 0.0, F.dtype)
    else:
        p = tl.sqrt(d2)
        q = tl.sqrt(d2p)
        inv_pi = tl.full((), _INV_PI, d2.dtype)
        ang, comp = atan2_nonneg(p, q, IS64)
        theta = (2.0 * inv_pi) * ang
        g, dg = _angular_profile(theta + delta, s, POW)
        if HALF:  # the mirrored pair has angle pi - theta: 1 - theta, formed without cancellation
            g2, dg2 = _angular_profile((2.0 * inv_pi) * comp + delta, s, POW)
            g = g + g2
            dg = dg - dg2
        F = g
        # dtheta/dd2 = q / (pi p (d2 + d2p)), dtheta/dd2p = -p / (pi q (d2 + d2p));
        # at p = 0 or q = 0 theta has no derivative: the subgradient 0
        w = dg * inv_pi / (d2 + d2p)
        alpha = tl.where(p > 0, w * q / tl.where(p > 0, p, 1.0), 0.0)
        beta = tl.where(q > 0, (0.0 - w) * p / tl.where(q > 0, q, 1.0), 0.0)
    return F, alpha, beta
