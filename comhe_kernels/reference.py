"""The hyperspherical energy in plain PyTorch: the definition, written for clarity.

This module is the single source of truth. The tests compare every kernel with
it (in float64) and the benchmarks use it as the naive baseline. It
materializes (2)N x (2)N matrices, so it is for small and moderate N only.

Definition (the original MHE code, ../shared/ANCHORS.md, made numerically
stable without changing its value):

    u_i = x_i / sqrt(||x_i||^2 + eps)          a_i = eps / (||x_i||^2 + eps)
    c_ij = u_i . u_j
    d2_ij  = 2 - 2 c_ij = ||u_i - u_j||^2 + a_i + a_j      (squared chordal distance)
    d2p_ij = 2 + 2 c_ij = ||u_i + u_j||^2 + a_i + a_j      (the same for -u_j)
    theta_ij = arccos(c_ij) / pi = (2/pi) atan2(sqrt(d2_ij), sqrt(d2p_ij))

The right-hand forms are exact rewrites (||u||^2 + a = 1 for every row); they
keep full precision for close and for antipodal pairs, where 2 - 2c and arccos
lose it. With eps = 0 a zero row has u = 0 and a = 1 (cosine 0 with every row).

    E = sum over pairs i < j of f_ij (pair_energy), with
    chordal s > 0:  f = d^-s = d2^(-s/2)        chordal s = 0:  f = -log d
    angular s > 0:  f = (theta + delta)^-s      angular s = 0:  f = -log(theta + delta)
    gaussian t > 0: f = exp(-t d2)

Half-space: the same sum over all pairs of the 2N points [u; -u].
Cross-set (cross_energy): the sum over all i of X and j of Y of f(u_i, v_j),
with half_space also f(u_i, -v_j) (Y's mirrored points).
"""

from __future__ import annotations

import math

import torch

from ._spec import (
    EnergySpec,
    check_cross,
    check_finite,
    check_points,
    check_reduction,
    make_spec,
    reduce_cross,
    reduce_sets,
    upcast,
)


def _sqrt0(v: torch.Tensor) -> torch.Tensor:
    """sqrt with gradient 0 at 0 (the subgradient the kernels use for theta at
    exactly coincident or antipodal points, where arccos has no derivative)."""
    pos = v > 0
    return torch.where(pos, torch.sqrt(torch.where(pos, v, torch.ones_like(v))), torch.zeros_like(v))


def pair_energy(d2, d2p, spec: EnergySpec, sqrt=lambda v: v.sqrt()):
    """f of one pair (u_i, u_j) from d2 = |u_i - u_j|^2 + a_i + a_j and
    d2p = |u_i + u_j|^2 + a_i + a_j; the energy of the pair (u_i, -u_j) is
    pair_energy(d2p, d2). Without ``spec.scale`` (reduce_sets applies it).

    Written with tensor methods only, so that it also takes pykeops
    LazyTensors (the benchmark's keops provider). ``sqrt`` for the angle:
    the reference passes one with the subgradient 0 at 0.
    """
    if spec.kind == "chordal":
        if spec.s == 0:
            return d2.log() * -0.5
        if spec.s == 1:
            return d2.rsqrt()
        if spec.s == 2:
            return d2**-1
        return d2 ** (-0.5 * spec.s)
    if spec.kind == "gaussian":
        return (d2 * -spec.s).exp()
    theta = sqrt(d2).atan2(sqrt(d2p)) * (2 / math.pi)
    t = theta + spec.delta
    return -t.log() if spec.s == 0 else t ** (-spec.s)


def normalize(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """u = x / sqrt(||x||^2 + eps) and a = eps / (||x||^2 + eps), row-wise.

    A row whose largest entry exceeds 1 is first divided by the largest power
    of two m below that entry (exact, and u does not change; m itself never
    overflows): ||x||^2 overflows from |x| ~ 1.8e19 in float32 and 1e154 in
    float64. m is a constant for autograd, as u does not depend on it.
    """
    exponent = (torch.frexp(x.detach().abs().amax(-1, keepdim=True)).exponent - 1).clamp_min(0)
    m = torch.ldexp(torch.ones_like(x[..., :1]), exponent)
    xs = x / m
    e = eps / m.square()
    q = xs.square().sum(-1, keepdim=True) + e
    pos = q > 0
    safe = torch.where(pos, q, torch.ones_like(q))
    u = torch.where(pos, xs / torch.sqrt(safe), torch.zeros_like(xs))
    a = torch.where(pos, e / safe, torch.ones_like(q))
    return u, a.squeeze(-1)


def _distances(u, a, v, b, exact: bool):
    """d2 and d2p of every pair (u_i, v_j): (..., N, M) each."""
    if exact:
        # cdist without the matmul shortcut: ||u_i - v_j|| from the differences.
        d = torch.cdist(u, v, compute_mode="donot_use_mm_for_euclid_dist")
        dp = torch.cdist(u, -v, compute_mode="donot_use_mm_for_euclid_dist")
        ab = a[..., :, None] + b[..., None, :]
        return d.square() + ab, dp.square() + ab
    c = u @ v.transpose(-1, -2)
    return 2 - 2 * c, 2 + 2 * c


def _pair_values(d2, d2p, spec: EnergySpec, exact: bool):
    if not exact and spec.kind == "angular":  # arccos clamped, as the gram form can leave [-1, 1]
        d2, d2p = d2.clamp_min(0), d2p.clamp_min(0)
    return pair_energy(d2, d2p, spec, sqrt=_sqrt0)


def per_set_energy(x: torch.Tensor, spec: EnergySpec, exact: bool = True) -> torch.Tensor:
    """Energy sums of B sets, x of shape (B, N, k) -> (B,), differentiable.

    exact=True computes the distances in the difference form (the oracle);
    exact=False uses the gram form 2 - 2 W W^T of the original code and its
    ports (the naive baseline: fast matmul, but it cancels for close pairs).
    """
    u, a = normalize(x, spec.eps)
    if spec.half_space:
        u = torch.cat([u, -u], dim=1)
        a = torch.cat([a, a], dim=1)
    m = u.shape[1]
    d2, d2p = _distances(u, a, u, a, exact)
    upper = torch.ones(m, m, dtype=torch.bool, device=x.device).triu(1)
    one = torch.ones((), dtype=d2.dtype, device=x.device)
    # Masked entries get a harmless value before f, so that neither the
    # energy nor its gradient sees f(0) of the diagonal.
    d2 = torch.where(upper, d2, one)
    d2p = torch.where(upper, d2p, one)
    f = _pair_values(d2, d2p, spec, exact)
    return torch.where(upper, f, torch.zeros_like(f)).sum((-1, -2))


def cross_per_set_energy(x: torch.Tensor, y: torch.Tensor, spec: EnergySpec, exact: bool = True) -> torch.Tensor:
    """Cross sums of B set pairs, x (B, N, k) and y (B, M, k) -> (B,), differentiable:
    the sum over all (i, j) of f(u_i, v_j), with half_space plus f(u_i, -v_j)."""
    u, a = normalize(x, spec.eps)
    v, b = normalize(y, spec.eps)
    d2, d2p = _distances(u, a, v, b, exact)
    f = _pair_values(d2, d2p, spec, exact)
    if spec.half_space:
        f = f + _pair_values(d2p, d2, spec, exact)
    return f.sum((-1, -2))


def hyperspherical_energy(
    x: torch.Tensor,
    power=1,
    *,
    half_space: bool = False,
    reduction: str = "mean",
    eps: float = 1e-4,
    delta: float = 1e-4,
    squared_log: bool = False,
    exact: bool = True,
) -> torch.Tensor:
    """Reference implementation of :func:`comhe_kernels.hyperspherical_energy`.

    Same arguments and results (computed in x's dtype, float32 for 16-bit
    input); ``exact=False`` switches to the gram-form distances of the
    original code (see :func:`per_set_energy`).
    """
    check_points(x)
    check_reduction(reduction)
    spec = make_spec(power, half_space, eps, delta, squared_log)
    batched = x.dim() == 3
    x3 = upcast(x if batched else x.unsqueeze(0))
    per_set = per_set_energy(x3, spec, exact) + check_finite(x3).to(x3.dtype)
    return reduce_sets(per_set, x3.shape[1], spec, reduction, batched)


def cross_energy(
    x: torch.Tensor,
    y: torch.Tensor,
    power=1,
    *,
    half_space: bool = False,
    reduction: str = "mean",
    eps: float = 1e-4,
    delta: float = 1e-4,
    squared_log: bool = False,
    exact: bool = True,
) -> torch.Tensor:
    """Reference implementation of :func:`comhe_kernels.cross_energy`."""
    check_cross(x, y)
    check_reduction(reduction)
    spec = make_spec(power, half_space, eps, delta, squared_log)
    batched = x.dim() == 3
    x3 = upcast(x if batched else x.unsqueeze(0))
    y3 = upcast(y if batched else y.unsqueeze(0))
    guard = (check_finite(x3, "x") + check_finite(y3, "y")).to(x3.dtype)
    per_set = cross_per_set_energy(x3, y3, spec, exact) + guard
    return reduce_cross(per_set, x3.shape[1], y3.shape[1], spec, reduction, batched)
