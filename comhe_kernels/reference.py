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

    E = sum over pairs i < j of f_ij, with
    chordal s > 0:  f = d^-s = d2^(-s/2)        chordal s = 0:  f = -log d
    angular s > 0:  f = (theta + delta)^-s      angular s = 0:  f = -log(theta + delta)

Half-space: the same sum over all pairs of the 2N points [u; -u].
"""

from __future__ import annotations

import math

import torch

from ._spec import EnergySpec, check_finite, check_points, check_reduction, make_spec, reduce_sets


def _sqrt0(v: torch.Tensor) -> torch.Tensor:
    """sqrt with gradient 0 at 0 (the subgradient the kernels use for theta at
    exactly coincident or antipodal points, where arccos has no derivative)."""
    pos = v > 0
    return torch.where(pos, torch.sqrt(torch.where(pos, v, torch.ones_like(v))), torch.zeros_like(v))


def normalize(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """u = x / sqrt(||x||^2 + eps) and a = eps / (||x||^2 + eps), row-wise."""
    n = x.square().sum(-1, keepdim=True)
    ne = n + eps
    pos = ne > 0
    safe = torch.where(pos, ne, torch.ones_like(ne))
    u = torch.where(pos, x / torch.sqrt(safe), torch.zeros_like(x))
    a = torch.where(pos, eps / safe, torch.ones_like(ne))
    return u, a.squeeze(-1)


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
    if exact:
        # cdist without the matmul shortcut: ||u_i - u_j|| from the differences.
        d = torch.cdist(u, u, compute_mode="donot_use_mm_for_euclid_dist")
        dp = torch.cdist(u, -u, compute_mode="donot_use_mm_for_euclid_dist")
        aa = a[:, :, None] + a[:, None, :]
        d2, d2p = d.square() + aa, dp.square() + aa
    else:
        c = u @ u.transpose(-1, -2)
        d2, d2p = 2 - 2 * c, 2 + 2 * c
    upper = torch.ones(m, m, dtype=torch.bool, device=x.device).triu(1)
    one = torch.ones((), dtype=d2.dtype, device=x.device)
    # Masked entries get a harmless value before f, so that neither the
    # energy nor its gradient sees f(0) of the diagonal.
    d2 = torch.where(upper, d2, one)
    d2p = torch.where(upper, d2p, one)
    if spec.kind == "chordal":
        f = -0.5 * torch.log(d2) if spec.s == 0 else d2.pow(-0.5 * spec.s)
    else:
        if not exact:  # arccos clamped, as the gram form can leave [-1, 1]
            d2, d2p = d2.clamp_min(0), d2p.clamp_min(0)
        theta = (2 / math.pi) * torch.atan2(_sqrt0(d2), _sqrt0(d2p))
        t = theta + spec.delta
        f = -torch.log(t) if spec.s == 0 else t.pow(-spec.s)
    return torch.where(upper, f, torch.zeros_like(f)).sum((-1, -2))


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
    check_finite(x)
    batched = x.dim() == 3
    x3 = x if batched else x.unsqueeze(0)
    if x3.dtype in (torch.float16, torch.bfloat16):
        x3 = x3.float()
    return reduce_sets(per_set_energy(x3, spec, exact), x3.shape[1], spec, reduction, batched)
