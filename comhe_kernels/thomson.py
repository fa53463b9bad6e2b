r"""comhe-thomson: the Thomson problem and its Riesz / log generalizations.

Find N unit vectors x_1..x_N on the sphere S^{dim-1} in R^dim minimizing

    E_s(x) = sum_{i<j} |x_i - x_j|^{-s}        (s > 0, Riesz; s = 1 is Thomson's Coulomb case)
    E_0(x) = sum_{i<j} -log |x_i - x_j|        (s = 0, the log energy)

with the energy and its gradient taken only from the package's fused op,
``hyperspherical_energy(x, s, eps=0, reduction="none")`` (exact unit
normalization; no N x N matrix is formed).

Method
------
1. Starts: the spherical Fibonacci lattice for dim = 3, Gaussian directions
   otherwise and for the other starts.
2. Local minimization: batched Riemannian L-BFGS on the product of spheres.
   The op's gradient with respect to x flows through x / |x|, so at |x_i| = 1
   it is already the tangential (Riemannian) gradient; the step is retracted
   by normalizing every row, x_i <- (x_i + t d_i) / |x_i + t d_i|. Step length
   by backtracking on the Armijo condition; where the energy change is below
   its rounding (float64 sums of N^2/2 terms round at about 6e-16 relative,
   measured) the approximate Wolfe test of Hager and Zhang decides instead, so
   the iteration keeps converging in the gradient instead of stalling on
   rounding. Stop when the RMS tangential gradient per point is at most
   ``gtol * max(|E|, 1) / N`` (|E| / N is the energy per point: the test is
   the same for any N, s and dim).
3. Global search, N <= 2000 (population basin hopping): ``restarts`` starts
   are relaxed together in one batched op call per step; then each
   generation makes as many children, half by cut-and-splice mating
   (Deaven-Ho, as used for the Thomson problem by Morris, Deaven and Ho,
   Phys. Rev. B 53, R1740 (1996): the upper part of one randomly rotated
   parent joined to the lower part of another), half by rotating a random cap
   of one member about its axis. A relaxed child replaces the worst member
   when it is lower and not a copy of one. The search ends when the best
   energy has not improved for ``patience`` generations or at the time limit.
4. Global search, N > 2000 (one start; each local minimization takes seconds
   to minutes): a multilevel start on S^2 (a configuration of (N + 6) // 4
   points, made the same way, with every edge of its Delaunay triangulation
   subdivided) is relaxed, then cooled slowly by Langevin dynamics with the
   remaining time (dislocations glide and annihilate, scars form) and relaxed
   again. Above 20,000 points these relaxations run in float32 (the op still
   sums the energy in float64) until they stop making progress.
5. Polish: the best configuration is minimized again in float64 to ``gtol``.

The best-known table shipped with the package (dim = 3, s = 1, N = 2..470) is
used only to report how far a result is from the best known value; the
solver never looks at it.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import numbers
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .ops import _registry
from .ops.hyperspherical_energy import hyperspherical_energy, hyperspherical_energy_and_grad

__all__ = ["ThomsonResult", "best_known_energy", "fibonacci_sphere", "main", "riesz_energy", "solve"]

TABLE_PATH = Path(__file__).resolve().parent / "data" / "thomson_best_known.tsv"

# More points than this: float32 relaxation first, then float64 (see module docstring).
# Below it float64 throughout is affordable (N = 10^4: about 40 ms per evaluation on the
# 2 cores) and float32 would stop about 1e-8 relative short of the minimum anyway;
# float32 took 11 ms per L-BFGS iteration at N = 5000, float64 19 ms.
_FLOAT32_ABOVE = 20_000
# L-BFGS memory: 10 pairs, within the 3-20 that Nocedal & Wright (section 7.2) recommend.
_MEMORY = 10
# Armijo constant and the Hager-Zhang approximate Wolfe constant delta.
_ARMIJO_C1 = 1e-4
_HZ_DELTA = 0.1
# Backtracking steps before a set restarts from steepest descent. Each cuts the step by the
# quadratic model's factor, clamped to [1/100, 1/2]: 30 of them reach 1e-60 of the first trial.
_MAX_BACKTRACKS = 30
# Relative size below which an energy change is rounding. float64 energies jitter by
# 6e-16 relative along a line (measured, N = 100..10^4); float32 points give float64
# sums of float32 pair terms whose rounding does not cancel: 3e-9 relative (N = 5000).
_ENERGY_NOISE = {torch.float64: 1e-13, torch.float32: 1e-8}
# The float32 phase ends when the energy fell by less than its noise over this many
# iterations: there its gradient is rounding (at N = 5000 the float32 RMS gradient
# levels off at 4e-3 while the float64 one at the same points is 1.4e-2).
_FLOAT32_WINDOW = 50
# Two local minima whose energies agree to this (relative) are taken to be one.
_SAME_MINIMUM = 1e-10
# Large N (more points than this, one start): multilevel start and annealing instead of
# the population search, whose local minimizations take seconds to minutes each there.
_LARGE_ABOVE = 2000
# Multilevel start: levels down to this many points; a coarse level gets this share of the
# time. At N = 10^4 the subdivided relaxed 2501-point Fibonacci start relaxed to 364 above
# N^2/2 - 0.5530513 N^1.5, the Fibonacci start to 445; annealing it then gave 306.
_COARSEST = 500
_COARSE_SHARE = 0.15
# Initial Langevin noise per step, in units of the mean spacing (see _anneal).
_ANNEAL_SIGMA = 0.05
# One thread where an op call has fewer pairs than this (about a millisecond of one core):
# there the fork/join of every small tensor operation costs more than it saves
# (N = 150, 16 restarts: 6.4 s with 1 thread, 10.0 s with 2, on the shared 2 cores).
_SERIAL_PAIRS = 2**21


# ---------------------------------------------------------------- arguments


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_positive(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be finite and > 0, got {value!r}")
    return float(value)


def _check_power(power) -> float:
    if isinstance(power, bool) or not isinstance(power, numbers.Real):
        raise TypeError(
            f"power must be a real number s >= 0 (Riesz s > 0, 0 for the log energy), got {type(power).__name__}"
        )
    if not math.isfinite(power) or power < 0:
        raise ValueError(
            f"power must be finite and >= 0 (Riesz s > 0, 0 for the log energy), got {power!r}; "
            "the fused op has no s < 0 (distance-maximizing) energies"
        )
    return float(power)


# ---------------------------------------------------------------- energy


def _rowdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise inner products, (B, N, k) x (B, N, k) -> (B, N, 1)."""
    return (a * b).sum(-1, keepdim=True)


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-set inner products, (B, N, k) x (B, N, k) -> (B,)."""
    return (a * b).sum((1, 2))


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


class _EnergyGrad:
    """E(x) per set (float64) and its tangential gradient, through the fused op.

    On the CPU the registered op returns both in one pass, with the energy
    accumulated in float64 also for float32 points (``fused`` is True). Other
    devices and backends (a GPU backend once one is built, or "reference") go
    through the public API with autograd, which returns the energy in the
    points' dtype: the solver then computes in float64 only. Counts the
    evaluations.
    """

    def __init__(self, power: float, device: torch.device, backend: str):
        _registry.check_name(backend)
        self.power = power
        self.backend = _registry.resolve(backend, "hyperspherical_energy", device.type)
        self.fused = self.backend != "reference"  # float64 sums of float32 points
        self.evaluations = 0

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.evaluations += 1
        energy, grad = hyperspherical_energy_and_grad(x, self.power, eps=0.0, reduction="none", backend=self.backend)
        # The op's gradient is tangent up to rounding; removing the radial rest keeps
        # L-BFGS's curvature pairs on the tangent spaces.
        return energy, grad - _rowdot(grad, x) * x


def riesz_energy(points, power=1.0) -> float:
    """E_s of one point set (rows normalized exactly), float64, through the fused op.

    Equivalent to ``hyperspherical_energy(torch.as_tensor(points, dtype=torch.float64),
    power, eps=0.0, reduction="sum")``.
    """
    x = torch.as_tensor(np.asarray(points) if not isinstance(points, torch.Tensor) else points)
    return float(hyperspherical_energy(x.double(), _check_power(power), eps=0.0, reduction="sum"))


# ---------------------------------------------------------------- starts


def fibonacci_sphere(n: int, dtype=torch.float64, device=None) -> torch.Tensor:
    """The spherical Fibonacci lattice: n points on S^2, shape (n, 3).

    z_i = 1 - (2i + 1) / n, phi_i = 2 pi i / golden^2 (the golden angle), i = 0..n-1:
    equal-area latitude bands with a quasi-uniform spiral in longitude.
    """
    n = _check_int("n", n, 1)
    i = torch.arange(n, dtype=torch.float64)
    z = 1.0 - (2.0 * i + 1.0) / n
    r = torch.sqrt((1.0 - z * z).clamp_min(0.0))
    golden_angle = math.pi * (3.0 - math.sqrt(5.0))
    phi = golden_angle * i
    x = torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], dim=1)
    return x.to(dtype=dtype, device=device)


def _random_points(count: int, n: int, dim: int, gen: torch.Generator) -> torch.Tensor:
    """count independent sets of n uniform points on S^{dim-1} (normalized Gaussians), float64, CPU."""
    return _normalize(torch.randn(count, n, dim, generator=gen, dtype=torch.float64))


def _random_orthogonal(k: int, gen: torch.Generator) -> torch.Tensor:
    """A Haar-random k x k orthogonal matrix (QR of a Gaussian with the signs fixed)."""
    q, r = torch.linalg.qr(torch.randn(k, k, generator=gen, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


def _mate(a: torch.Tensor, b: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Cut-and-splice child of two (N, k) parents: after independent random rotations,
    the top m points of a along the first axis and the bottom N - m of b, m uniform in 1..N-1."""
    n, k = a.shape
    a = a @ _random_orthogonal(k, gen).T
    b = b @ _random_orthogonal(k, gen).T
    m = int(torch.randint(1, n, (1,), generator=gen))
    top = torch.argsort(a[:, 0], descending=True)[:m]
    bottom = torch.argsort(b[:, 0])[: n - m]
    return torch.cat([a[top], b[bottom]])


def _rotate_cap(a: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Mutation: the points of a random cap holding 5-30% of a (N, k) set are turned
    by a random orthogonal map of the directions orthogonal to the cap's axis
    (a rotation about the axis on S^2; a reflection on the circle)."""
    n, k = a.shape
    axis = _normalize(torch.randn(k, generator=gen, dtype=torch.float64))
    share = 0.05 + 0.25 * float(torch.rand((), generator=gen, dtype=torch.float64))
    inside = torch.argsort(a @ axis, descending=True)[: max(1, round(share * n))]
    # Basis [axis, V] of R^k; map p -> axis (axis.p) + V O V^T p.
    basis = torch.linalg.qr(torch.cat([axis[:, None], torch.randn(k, k - 1, generator=gen, dtype=torch.float64)], 1))[0]
    v = basis[:, 1:]
    o = _random_orthogonal(k - 1, gen)
    p = a[inside]
    child = a.clone()
    child[inside] = (p @ axis)[:, None] * axis + (p @ v) @ o.T @ v.T
    return child


def _subdivide(x: torch.Tensor) -> torch.Tensor:
    """Edge-midpoint subdivision of m points on S^2: the m points and the normalized
    midpoints of the 3m - 6 edges of their spherical Delaunay triangulation (4m - 6 points).

    The edges are taken as the 3m - 6 shortest pairs among every point's 7
    nearest neighbours, which needs no triangulation code: on relaxed
    configurations this set equals the convex hull's edges (all 7497 edges at
    m = 2501, checked against scipy's ConvexHull). Neighbours are found in row
    blocks of 2^24 distances, so memory stays O(m) times a constant.
    """
    m = x.shape[0]
    k = min(7, m - 1)
    rows = max(1, 2**24 // m)
    neighbours = []
    for lo in range(0, m, rows):
        d = torch.cdist(x[lo : lo + rows], x)
        d[torch.arange(d.shape[0]), torch.arange(lo, lo + d.shape[0])] = math.inf
        neighbours.append(d.topk(k, largest=False).indices)
    j = torch.cat(neighbours)
    i = torch.arange(m, device=x.device)[:, None].expand_as(j)
    key = torch.unique(torch.minimum(i, j) * m + torch.maximum(i, j))
    a, b = key // m, key % m
    edges = (x[a] - x[b]).norm(dim=1).argsort()[: 3 * m - 6]
    return torch.cat([x, _normalize(x[a[edges]] + x[b[edges]])])


# ---------------------------------------------------------------- local minimization


RUNNING, CONVERGED, STALLED, MAX_ITER, TIME_LIMIT = "running", "converged", "stalled", "max_iter", "time_limit"


@dataclass
class _Minima:
    """Results of one batched minimization, per set."""

    x: torch.Tensor  # (B, N, k) unit rows
    energy: torch.Tensor  # (B,) float64
    grad_rms: torch.Tensor  # (B,) RMS tangential gradient per point
    iterations: torch.Tensor  # (B,) int64
    status: list[str]


def _grad_rms(g: torch.Tensor) -> torch.Tensor:
    return g.double().square().sum((1, 2)).div(g.shape[1]).sqrt()


def _threshold(energy: torch.Tensor, n: int, gtol: float) -> torch.Tensor:
    """The RMS gradient at which a set counts as converged: gtol * max(|E|, 1) / N."""
    return gtol * energy.abs().clamp_min(1.0) / n


def _rowmat(v: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """(B, L) vectors against (B, m, L) rows -> (B, m, 1) inner products.

    As a (1 x L) @ (L x m) product: torch's batched matrix-vector form
    (M @ v) took 6x longer at B = 16, L = 450 (measured, 1 thread).
    """
    return torch.bmm(v[:, None, :], M.transpose(1, 2)).transpose(1, 2)


class _History:
    """L-BFGS memory of a batch: the last ``_MEMORY`` pairs (s_i, y_i), oldest first.

    S, Y: (B, m, N*k); SY[i, j] = s_i . y_j, kept up to date with two batched
    products per step; rho_i = 1 / s_i . y_i, or 0 for a pair that is not used
    (s . y <= 0, a set that did not move, a set whose memory was reset), which
    makes that pair drop out of the recursion below exactly.
    """

    def __init__(self, b: int, size: int, like: torch.Tensor):
        self.S = like.new_zeros((b, 0, size))
        self.Y = like.new_zeros((b, 0, size))
        self.SY = like.new_zeros((b, 0, 0))
        self.rho = like.new_zeros((b, 0))

    def direction(self, g: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
        """-H g for the flattened gradients g (B, N*k), with H0 = h0 I.

        The two-loop recursion of Nocedal & Wright (Alg. 7.4) with its inner
        products taken from SY: the first loop's alpha solves the unit upper
        triangular system alpha_i + rho_i sum_{j>i} (s_i.y_j) alpha_j = rho_i s_i.g,
        the second loop's beta the unit lower triangular one
        beta_i + rho_i sum_{j<i} (y_i.s_j) beta_j = rho_i (y_i.r0 + sum_{j<i} (y_i.s_j) alpha_j).
        Six batched products instead of 4m vector operations: at small N the
        recursion's launch overhead, not its flops, was the cost.
        """
        m = self.S.shape[1]
        if m == 0:
            return -h0[:, None] * g
        eye = torch.eye(m, dtype=g.dtype, device=g.device)
        rho = self.rho[:, :, None]
        sg = _rowmat(g, self.S)
        upper = self.SY.triu(1)
        alpha = torch.linalg.solve_triangular(eye + rho * upper, rho * sg, upper=True, unitriangular=True)
        r = h0[:, None] * (g - torch.bmm(alpha.transpose(1, 2), self.Y).squeeze(1))
        lower = self.SY.transpose(1, 2).tril(-1)
        rhs = rho * (_rowmat(r, self.Y) + torch.bmm(lower, alpha))
        beta = torch.linalg.solve_triangular(eye + rho * lower, rhs, upper=False, unitriangular=True)
        return -(r + torch.bmm((alpha - beta).transpose(1, 2), self.S).squeeze(1))

    def push(self, s: torch.Tensor, y: torch.Tensor, rho: torch.Tensor) -> None:
        drop = 1 if self.S.shape[1] == _MEMORY else 0
        S = torch.cat([self.S[:, drop:], s[:, None]], 1)
        Y = torch.cat([self.Y[:, drop:], y[:, None]], 1)
        m = S.shape[1]
        SY = self.SY.new_zeros((S.shape[0], m, m))
        SY[:, : m - 1, : m - 1] = self.SY[:, drop:, drop:]
        SY[:, m - 1, :] = _rowmat(s, Y).squeeze(2)
        SY[:, :, m - 1] = _rowmat(y, S).squeeze(2)
        self.S, self.Y, self.SY = S, Y, SY
        self.rho = torch.cat([self.rho[:, drop:], rho[:, None]], 1)

    def forget(self, mask: torch.Tensor) -> None:
        """Drop every pair of the sets in mask."""
        self.rho = torch.where(mask[:, None], torch.zeros_like(self.rho), self.rho)

    def keep(self, mask: torch.Tensor) -> None:
        self.S, self.Y, self.SY, self.rho = self.S[mask], self.Y[mask], self.SY[mask], self.rho[mask]


def _minimize(
    x: torch.Tensor,
    fg: _EnergyGrad,
    *,
    gtol: float,
    max_iter: int,
    deadline: float,
    on_iter: Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], None] | None = None,
    window: int | None = None,
) -> _Minima:
    """Batched Riemannian L-BFGS from unit-row starts x (B, N, k).

    Sets that finish (converged, stalled, out of iterations or time) leave the
    batch, so the op only evaluates the ones still running. ``on_iter(it,
    index, energy, grad_rms)`` is called after every iteration with the
    running sets' original indices, energies and RMS gradients. With
    ``window``, a set also stops ("stalled") when its energy fell by less than
    the energy's rounding over the last ``window`` iterations.
    """
    b, n, k = x.shape
    # Largest move of a point in one step: a fifth of the typical spacing of n
    # points on S^{k-1} (3.5 / sqrt(n) on S^2, 2 pi / n on the circle); longer
    # steps from random starts let close points pass through each other.
    max_step = 0.2 * (2.0 * math.pi if k == 2 else 3.5) * n ** (-1.0 / (k - 1))
    noise = _ENERGY_NOISE[x.dtype]
    tiny = torch.finfo(x.dtype).tiny
    out = _Minima(x.clone(), torch.zeros(b, dtype=torch.float64), torch.zeros(b, dtype=torch.float64),
                  torch.zeros(b, dtype=torch.int64), [RUNNING] * b)
    index = torch.arange(b, device=x.device)
    e, g = fg(x)
    rms = _grad_rms(g)
    memory = _History(b, n * k, x)
    # 1 / curvature along the last accepted step (Nocedal & Wright's H0 scaling); NaN: none yet.
    gamma = torch.full((b,), float("nan"), dtype=x.dtype, device=x.device)
    # Energies of the last `window` iterations (ring buffer), for the progress test.
    past = torch.full((b, window or 1), math.inf, dtype=torch.float64, device=x.device)
    it = 0

    def finish(mask: torch.Tensor, why: str) -> None:
        nonlocal x, e, g, rms, gamma, index, past
        if not bool(mask.any()):
            return
        idx = index[mask]
        out.x[idx] = x[mask]
        out.energy[idx] = e[mask].to(out.energy.device)
        out.grad_rms[idx] = rms[mask].to(out.grad_rms.device)
        out.iterations[idx] = it
        for i in idx.tolist():
            out.status[i] = why
        keep = ~mask
        x, e, g, rms, gamma, index, past = x[keep], e[keep], g[keep], rms[keep], gamma[keep], index[keep], past[keep]
        memory.keep(keep)

    while True:
        finish(rms <= _threshold(e, n, gtol), CONVERGED)
        if index.numel() == 0:
            break
        if it >= max_iter or time.perf_counter() > deadline:
            finish(torch.ones_like(index, dtype=torch.bool), MAX_ITER if it >= max_iter else TIME_LIMIT)
            break
        bn = index.numel()
        # Without curvature information yet, the first step moves the fastest point by max_step.
        first_scale = max_step / g.norm(dim=-1).amax(1).clamp_min(tiny)
        h0 = torch.where(torch.isnan(gamma), first_scale, gamma)
        steepest = ~(memory.rho > 0).any(1)
        d = memory.direction(g.reshape(bn, -1), h0).view_as(g)
        d -= _rowdot(d, x) * x
        slope = _dot(g, d)
        # Not a descent direction (rounding near the floor, or bad curvature pairs): steepest descent.
        uphill = slope >= 0
        if bool(uphill.any()):
            d = torch.where(uphill[:, None, None], -g * h0[:, None, None], d)
            slope = _dot(g, d)
            steepest = steepest | uphill

        # Backtracking along the retraction; each round evaluates only the sets still searching.
        # Accept on Armijo, or, where the energy change is within rounding, on the approximate
        # Wolfe condition phi'(t) <= (2 delta - 1) phi'(0) (Hager & Zhang 2005).
        t = (max_step / d.norm(dim=-1).amax(1).clamp_min(tiny)).clamp(max=1.0)
        searching = torch.ones(bn, dtype=torch.bool, device=x.device)
        x_new, e_new, g_new = x.clone(), e.clone(), g.clone()
        for _ in range(_MAX_BACKTRACKS):
            sel = searching.nonzero().squeeze(1)
            xt = _normalize(x[sel] + t[sel, None, None] * d[sel])
            et, gt = fg(xt)
            e0, sl = e[sel], slope[sel]
            armijo = et <= e0 + _ARMIJO_C1 * (t[sel] * sl).double()
            flat = (et - e0).abs() <= noise * e0.abs().clamp_min(1.0)
            wolfe = _dot(gt, d[sel]) <= (2 * _HZ_DELTA - 1) * sl
            ok = armijo | (flat & wolfe)
            acc = sel[ok]
            x_new[acc], e_new[acc], g_new[acc] = xt[ok], et[ok], gt[ok]
            searching[acc] = False
            if not bool(searching.any()):
                break
            # Minimizer of the quadratic through e0, slope and et; halving where that has no minimum.
            tt, curv = t[sel], (et - e0 - (t[sel] * sl).double()).to(t.dtype)
            cut = torch.where(curv > 0, -sl * tt * tt / (2 * curv.clamp_min(tiny)), 0.5 * tt)
            t[sel] = torch.where(ok, tt, torch.minimum(torch.maximum(cut, 0.01 * tt), 0.5 * tt))
        # The curvature pair, with the old gradient carried to the new tangent space by projection.
        s_vec = x_new - x
        s_vec -= _rowdot(s_vec, x_new) * x_new
        y_vec = g_new - (g - _rowdot(g, x_new) * x_new)
        sy = _dot(s_vec, y_vec)
        good = ~searching & (sy > 0)
        memory.push(s_vec.reshape(bn, -1), y_vec.reshape(bn, -1),
                    torch.where(good, 1.0 / torch.where(good, sy, torch.ones_like(sy)), torch.zeros_like(sy)))
        gamma = torch.where(good, sy / _dot(y_vec, y_vec).clamp_min(tiny), gamma)
        # A failed search with curvature pairs restarts from steepest descent (scaled by the last
        # curvature); a failed steepest descent means that no step found lowers the energy beyond
        # rounding: the set is at its precision floor.
        reset = searching & ~steepest
        if bool(reset.any()):
            memory.forget(reset)
        x, e, g = x_new, e_new, g_new
        rms = _grad_rms(g)
        it += 1
        if on_iter is not None:
            on_iter(it, index, e, rms)
        stuck = searching & steepest
        if window is not None:
            before = past[:, it % window].clone()
            past[:, it % window] = e
            stuck |= before - e <= noise * e.abs().clamp_min(1.0)
        finish(stuck, STALLED)
    return out


# ---------------------------------------------------------------- the solver


@contextlib.contextmanager
def _torch_threads(count: int | None):
    """Run with ``count`` intra-op threads (the op follows torch's setting); None: unchanged."""
    before = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class _SearchStats:
    restarts: int
    generations: int
    distinct: int


def _search(n, dim, restarts, patience, gtol, gen, relax, deadline) -> tuple[_Minima, _SearchStats]:
    """Population basin hopping (module docstring, step 3); returns the final population."""
    starts = _random_points(restarts, n, dim, gen)
    if dim == 3:
        starts[0] = fibonacci_sphere(n)
    # The search only compares minima, to _SAME_MINIMUM: gradients 100x the final
    # tolerance leave energy errors of order 1e-4 of that (the error is quadratic).
    pop = relax(starts, torch.float64, 100 * gtol, "relax", deadline)
    stats = _SearchStats(restarts, 0, 0)
    # Distinct minima seen, keyed by the energy in units of _SAME_MINIMUM relative to the first best.
    unit = _SAME_MINIMUM * max(abs(pop.energy.min().item()), 1.0)
    seen = {round(e / unit) for e in pop.energy.tolist() if math.isfinite(e)}
    since_better = 0
    while restarts > 1 and since_better < patience and time.perf_counter() < deadline:
        children = []
        for c in range(restarts):
            if c % 2 == 0:
                i, j = torch.randperm(restarts, generator=gen)[:2].tolist()
                children.append(_mate(pop.x[i].double().cpu(), pop.x[j].double().cpu(), gen))
            else:
                i = int(torch.randint(restarts, (1,), generator=gen))
                children.append(_rotate_cap(pop.x[i].double().cpu(), gen))
        stats.generations += 1
        kids = relax(_normalize(torch.stack(children)), torch.float64, 100 * gtol, f"gen {stats.generations}", deadline)
        best_before = pop.energy.min().item()
        for c in range(restarts):
            ec = kids.energy[c].item()
            if kids.status[c] == TIME_LIMIT or not math.isfinite(ec):
                continue
            seen.add(round(ec / unit))
            tol = _SAME_MINIMUM * max(abs(ec), 1.0)
            if bool(((pop.energy - ec).abs() <= tol).any()):
                continue  # a copy of a member: keeps the population diverse
            worst = int(torch.argmax(pop.energy))
            if ec < pop.energy[worst].item():
                pop.x[worst], pop.energy[worst] = kids.x[c], ec
                pop.grad_rms[worst], pop.status[worst] = kids.grad_rms[c], kids.status[c]
        improved = pop.energy.min().item() < best_before - _SAME_MINIMUM * max(abs(best_before), 1.0)
        since_better = 0 if improved else since_better + 1
    stats.distinct = len(seen)
    return pop, stats


def _largest_curvature(x: torch.Tensor, fg: _EnergyGrad, gen: torch.Generator, step: float) -> float:
    """Largest Hessian eigenvalue at x (1, N, k) by 10 power iterations on finite
    differences of the gradient, with displacements of ``step`` (a hundredth of the
    spacing: large enough for float32 gradients, small enough to stay quadratic)."""
    _, g0 = fg(x)
    v = torch.randn(x.shape, generator=gen, dtype=torch.float64).to(x)
    lam = 0.0
    for _ in range(10):
        v = v - _rowdot(v, x) * x
        v = v / v.norm()
        _, g1 = fg(_normalize(x + step * v))
        hv = (g1 - g0) / step
        hv = hv - _rowdot(hv, x) * x
        lam = _dot(hv, v).item()
        v = hv
    return lam


def _anneal(x: torch.Tensor, fg: _EnergyGrad, gen: torch.Generator, until: float, spacing: float,
            report: Callable[[str], None]) -> torch.Tensor:
    """Cool x (1, N, k) by Langevin dynamics until ``until``, then return it (not relaxed).

        x <- normalize(x - g / lambda_max + sigma(t) a xi),   sigma(t) = sigma0 (1 - t / T),  xi ~ N(0, I)

    with a the mean spacing and lambda_max the stiffest curvature (so the
    gradient step is stable). Relaxed large configurations hold many more
    dislocations than the best known ones; slow cooling lets them glide and
    annihilate and lets scars form at the twelve disclinations. sigma0 = 0.05:
    at N = 2432, cooling from 0.05 over 8000 steps lowered the relaxed
    Fibonacci energy by 4.5 (7% of its excess over N^2/2 - 0.5530513 N^1.5),
    from 0.1 and 0.15 it raised it (the lattice melts and quenches into a glass).
    """
    step = 1.0 / _largest_curvature(x, fg, gen, 0.01 * spacing)
    start = time.perf_counter()
    length = max(until - start, 1e-9)
    steps = 0
    while (now := time.perf_counter()) < until:
        sigma = _ANNEAL_SIGMA * (1.0 - (now - start) / length)
        e, g = fg(x)
        noise = torch.randn(x.shape, generator=gen, dtype=torch.float64).to(x)
        x = _normalize(x - step * g + (sigma * spacing) * noise)
        steps += 1
        report(f"anneal step {steps}, sigma {sigma:.3f}, E = {e.item():.10g}")
    return x


def _mean_spacing(n: int, dim: int) -> float:
    """Spacing of n evenly spread points on S^{dim-1}: the side of a triangle of area
    4 pi / (2n) on S^2, (area / n)^(1 / (dim - 1)) in general."""
    if dim == 3:
        return math.sqrt(8.0 * math.pi / (math.sqrt(3.0) * n))
    area = 2.0 * math.pi ** (dim / 2) / math.gamma(dim / 2)
    return (area / n) ** (1.0 / (dim - 1))


def _multilevel(n, dim, gtol, gen, relax, fg, until, report) -> _Minima:
    """One well-relaxed configuration of n points for large n (module docstring, large N).

    dim 3: the start is the subdivision of a configuration of m = (n + 6) // 4
    points made the same way in _COARSE_SHARE of the time (down to fewer than
    _COARSEST points, relaxed from the Fibonacci lattice), plus n - (4m - 6)
    random points; other dims start at random. The start is relaxed, annealed
    while time remains beyond 1.2 x the relaxation's time (to relax again),
    relaxed again, and the lower of the two minima is kept.
    """
    with _torch_threads(1 if n * (n - 1) // 2 < _SERIAL_PAIRS else None):
        return _level(n, dim, gtol, gen, relax, fg, until, report)


def _level(n, dim, gtol, gen, relax, fg, until, report) -> _Minima:
    """The body of _multilevel, run with the thread count chosen for n."""
    begin = time.perf_counter()
    m = (n + 6) // 4
    if dim == 3 and m >= _COARSEST:
        coarse = _multilevel(m, dim, gtol, gen, relax, fg, begin + _COARSE_SHARE * (until - begin), report)
        x = _subdivide(coarse.x[0].double().cpu())
        x = torch.cat([x, _random_points(1, n - x.shape[0], 3, gen)[0]])[None]
    elif dim == 3:
        x = fibonacci_sphere(n)[None]
    else:
        x = _random_points(1, n, dim, gen)
    dtype = torch.float32 if n > _FLOAT32_ABOVE and fg.fused else torch.float64
    window = _FLOAT32_WINDOW if dtype == torch.float32 else None
    started = time.perf_counter()
    first = relax(x, dtype, 100 * gtol, f"N={n} relax", until, window)
    took = time.perf_counter() - started
    anneal_until = until - 1.2 * took
    if first.status[0] == TIME_LIMIT or anneal_until - time.perf_counter() < 0.5 * took:
        return first
    hot = _anneal(first.x.to(dtype), fg, gen, anneal_until, _mean_spacing(n, dim), report)
    second = relax(hot, dtype, 100 * gtol, f"N={n} relax after anneal", until, window)
    return second if second.energy[0] < first.energy[0] else first


@dataclass
class ThomsonResult:
    """What ``solve`` found.

    points: (n, dim) float64 unit vectors. energy: E_s of ``points`` (float64).
    grad_norm: Frobenius norm of the tangential gradient at ``points``;
    grad_rms = grad_norm / sqrt(n). best_known / difference: the shipped
    table's value and energy - best_known, for dim = 3, s = 1 and a tabulated
    n, else None. status: how the final minimization ended ("converged":
    gradient below the tolerance; "stalled": no step lowers the energy at
    float64 precision; "time_limit"; "max_iter").
    """

    n: int
    dim: int
    power: float
    points: torch.Tensor
    energy: float
    grad_norm: float
    grad_rms: float
    seconds: float
    status: str
    best_known: float | None
    difference: float | None
    restarts: int
    generations: int
    local_minimizations: int
    distinct_minima: int
    evaluations: int
    # (seconds, lowest energy so far) at every improvement; entries from float32 relaxations
    # (N > 20,000) carry the float32 rounding of the points, about 1e-8 relative.
    history: list[tuple[float, float]] = field(default_factory=list)

    def summary(self) -> str:
        lines = [
            f"N = {self.n}, dim = {self.dim}, s = {self.power:g}",
            f"energy        {self.energy:.10f}",
            f"grad norm     {self.grad_norm:.3e} (RMS per point {self.grad_rms:.3e}, {self.status})",
            (f"time          {self.seconds:.2f} s ({self.local_minimizations} local minimizations, "
             f"{self.generations} generations, {self.evaluations} op calls)"),
        ]
        if self.best_known is not None:
            rel = self.difference / self.best_known
            lines.append(f"best known    {self.best_known:.10f} (difference {self.difference:+.3e}, {rel:+.2e} relative)")
        return "\n".join(lines)

    def save(self, path) -> Path:
        """Write the points as .npy (float64) or .csv (one point per line, 17 digits)."""
        path = Path(path)
        pts = self.points.detach().cpu().numpy()
        if path.suffix.lower() == ".csv":
            np.savetxt(path, pts, delimiter=",", fmt="%.17g")
        elif path.suffix.lower() == ".npy":
            np.save(path, pts)
        else:
            raise ValueError(f"out must end in .npy or .csv, got {str(path)!r}")
        return path


_table_cache: dict[int, float] | None = None


def best_known_energy(n: int, dim: int = 3, power: float = 1.0) -> float | None:
    """The best known E_1 of n points on S^2 from the shipped table (N = 2..470, not every N), else None."""
    global _table_cache
    if dim != 3 or power != 1:
        return None
    if _table_cache is None:
        table = {}
        for line in TABLE_PATH.read_text().splitlines():
            if line and not line.startswith("#") and line[0].isdigit():
                count, energy = line.split("\t")[:2]
                table[int(count)] = float(energy)
        _table_cache = table
    return _table_cache.get(int(n))


class _Progress:
    """A rich progress bar over the time budget with the phase and the energy.

    Silent when disabled, or (with a warning) when rich is not installed: it is
    an optional dependency of the package.
    """

    def __init__(self, enabled: bool, n: int, time_limit: float):
        self.bar = None
        self.last = 0.0
        if not enabled:
            return
        try:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
        except ImportError:
            warnings.warn("comhe_kernels.thomson: install rich for the progress bar", RuntimeWarning, stacklevel=3)
            return
        self.bar = Progress(
            TextColumn("[bold]N={task.fields[n]}"),
            BarColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.description}"),
        )
        self.task = self.bar.add_task("starting", total=time_limit, n=n)
        self.bar.start()
        self.start = time.perf_counter()

    def update(self, text: str) -> None:
        if self.bar is None:
            return
        now = time.perf_counter()
        if now - self.last > 0.1:  # rich redraws at 10 Hz
            self.bar.update(self.task, completed=now - self.start, description=text)
            self.last = now

    def close(self) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=self.bar.tasks[0].total)
            self.bar.stop()


def solve(
    n: int,
    dim: int = 3,
    power=1,
    *,
    restarts: int | None = None,
    time_limit: float = 25.0,
    patience: int = 10,
    seed: int = 0,
    device="cpu",
    backend: str = "auto",
    gtol: float = 1e-12,
    max_iter: int = 100_000,
    progress: bool = False,
) -> ThomsonResult:
    r"""Minimize the Riesz s-energy (s = ``power``) of ``n`` points on S^{dim-1}.

        E_s(x) = sum_{i<j} |x_i - x_j|^{-s}  (s > 0),   E_0(x) = sum_{i<j} -log |x_i - x_j|

    Args:
        n: number of points, >= 2.
        dim: ambient dimension, >= 2 (points on S^{dim-1}; 3 is the Thomson problem).
        power: s >= 0 (1: Coulomb; 0: log energy).
        restarts: population size of the global search (independent starts,
            relaxed together). Default: 16 for n <= 500, 4 for n <= 2000,
            else 1, which for n > 2000 selects the large-N method (one
            multilevel start, relaxed, annealed with the remaining time,
            relaxed again; module docstring).
        time_limit: wall-clock seconds for the search and polish (counted from when the op is
            loaded; its one-time build on first use is not included).
        patience: end the search after this many generations without a lower best energy.
        seed: seeds the random starts and moves. Runs repeat exactly when the search ends
            by ``patience`` (not by the time limit); the large-N annealing runs for a
            time, not a number of steps, so its result depends on the machine's speed.
        device: where the op runs ("cpu", or "cuda" once a CUDA backend is built;
            without one the op falls back to its O(N^2)-memory reference).
        backend: the op's backend ("auto", "cpu", "reference", ...).
        gtol: convergence: RMS tangential gradient per point <= gtol * max(|E|, 1) / n.
        max_iter: L-BFGS iterations per local minimization.
        progress: show a progress bar with the best energy.

    Returns:
        ThomsonResult (points in float64 on the CPU).

    Equivalent to (for a result ``r``)::

        r.energy == hyperspherical_energy(r.points, power, eps=0.0, reduction="sum")
    """
    n = _check_int("n", n, 2)
    dim = _check_int("dim", dim, 2)
    s = _check_power(power)
    time_limit = _check_positive("time_limit", time_limit)
    patience = _check_int("patience", patience, 1)
    seed = _check_int("seed", seed, 0)
    gtol = _check_positive("gtol", gtol)
    max_iter = _check_int("max_iter", max_iter, 1)
    if restarts is None:
        restarts = 1 if n > _LARGE_ABOVE else 16 if n <= 500 else 4
    restarts = _check_int("restarts", restarts, 1)
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was requested but torch.cuda.is_available() is False")
    fg = _EnergyGrad(s, device, backend)  # loads (on first use: builds) the op, outside the time limit
    start_time = time.perf_counter()
    deadline = start_time + time_limit
    gen = torch.Generator().manual_seed(seed)
    bar = _Progress(progress, n, time_limit)
    history: list[tuple[float, float]] = []
    minimizations = 0

    def relax(starts: torch.Tensor, dtype: torch.dtype, tol: float, label: str, until: float = deadline,
              window: int | None = None) -> _Minima:
        def on_iter(it, index, e, rms):
            best = e.min().item()
            if starts.shape[1] == n and (not history or best < history[-1][1]):  # not a coarse level's
                history.append((time.perf_counter() - start_time, best))
            bar.update(f"{label} it {it}, RMS grad {rms.max().item():.1e}, E = {best:.10g}")

        nonlocal minimizations
        minimizations += starts.shape[0]
        return _minimize(starts.to(device=device, dtype=dtype), fg, gtol=tol, max_iter=max_iter,
                         deadline=until, on_iter=on_iter, window=window)

    serial = device.type == "cpu" and restarts * n * (n - 1) // 2 < _SERIAL_PAIRS
    try:
        with _torch_threads(1 if serial else None):
            if restarts == 1 and n > _LARGE_ABOVE:
                pop = _multilevel(n, dim, gtol, gen, relax, fg, start_time + 0.9 * time_limit,
                                  lambda text: bar.update(text))
                search = _SearchStats(1, 0, 1)
            else:
                # The search stops at 90% of the budget so that the polish has time to run.
                pop, search = _search(n, dim, restarts, patience, gtol, gen, relax,
                                      start_time + 0.9 * time_limit)
            best = int(torch.argmin(pop.energy))
            final = relax(pop.x[best : best + 1], torch.float64, gtol, "polish")
    finally:
        bar.close()

    points = final.x[0].double().cpu()
    energy = float(final.energy[0])
    rms = float(final.grad_rms[0])
    known = best_known_energy(n, dim, s)
    return ThomsonResult(
        n=n, dim=dim, power=s, points=points, energy=energy, grad_norm=rms * math.sqrt(n), grad_rms=rms,
        seconds=time.perf_counter() - start_time, status=final.status[0], best_known=known,
        difference=None if known is None else energy - known, restarts=search.restarts,
        generations=search.generations, local_minimizations=minimizations,
        distinct_minima=search.distinct, evaluations=fg.evaluations, history=history,
    )


# ---------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    """``comhe-thomson N [--dim D] [--power S] [--restarts R] [--seed S] [--device cpu|cuda] [--out points.npy]``."""
    p = argparse.ArgumentParser(
        prog="comhe-thomson",
        description="Minimize the Riesz s-energy sum_{i<j} |x_i - x_j|^-s (s = 0: -log) of N points "
        "on the unit sphere S^{D-1} (the Thomson problem for D = 3, s = 1).",
    )
    p.add_argument("n", type=int, metavar="N", help="number of points (>= 2)")
    p.add_argument("--dim", type=int, default=3, help="ambient dimension D >= 2 (default 3)")
    p.add_argument("--power", type=float, default=1.0, help="Riesz exponent s >= 0; 0 = log energy (default 1)")
    p.add_argument("--restarts", type=int, default=None,
                   help="population size of the global search (default: 16 for N <= 500, 4 for N <= 2000; "
                   "above that 1, the large-N method: multilevel start and annealing)")
    p.add_argument("--time-limit", type=float, default=25.0, help="seconds for the whole solve (default 25)")
    p.add_argument("--patience", type=int, default=10,
                   help="stop the search after this many generations without improvement (default 10)")
    p.add_argument("--gtol", type=float, default=1e-12,
                   help="stop when RMS tangential gradient <= gtol * |E| / N (default 1e-12)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the op runs (default cpu)")
    p.add_argument("--out", type=Path, default=None, help="write the points to this .npy or .csv file")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    if a.out is not None and a.out.suffix.lower() not in (".npy", ".csv"):
        p.error(f"--out must end in .npy or .csv, got {str(a.out)!r}")
    try:
        result = solve(a.n, a.dim, a.power, restarts=a.restarts, time_limit=a.time_limit, patience=a.patience,
                       seed=a.seed, device=a.device, gtol=a.gtol, progress=not a.quiet)
    except (ValueError, TypeError) as e:
        p.error(str(e))
    print(result.summary())
    if a.out is not None:
        print(f"points        {result.save(a.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
