"""Local minimization: batched Riemannian L-BFGS on the product of spheres.

The op's gradient with respect to x flows through x / |x|, so at |x_i| = 1 it
is already the tangential (Riemannian) gradient; a step is retracted by
normalizing every row, x_i <- (x_i + t d_i) / |x_i + t d_i|. Step lengths by
backtracking on the Armijo condition; where the energy change is below its
rounding (float64 sums of N^2/2 terms round at about 6e-16 relative, measured)
the approximate Wolfe test of Hager and Zhang decides instead, so the iteration
keeps converging in the gradient instead of stalling on rounding. A set stops
when its RMS tangential gradient per point is at most gtol * max(|E|, 1) / N
(|E| / N is the energy per point: the test is the same for any N, s and dim).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import torch

from .evaluation import Evaluation
from .sphere import dot, grad_rms, normalize, rowdot

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
ENERGY_NOISE = {torch.float64: 1e-13, torch.float32: 1e-8}

RUNNING, CONVERGED, STALLED, MAX_ITER, TIME_LIMIT = "running", "converged", "stalled", "max_iter", "time_limit"


@dataclass
class Minima:
    """Results of one batched minimization, per set. A set that was never evaluated
    (``unevaluated``) has energy and gradient inf and 0 iterations."""

    x: torch.Tensor  # (B, N, k) unit rows
    energy: torch.Tensor  # (B,) float64
    grad_rms: torch.Tensor  # (B,) RMS tangential gradient per point
    iterations: torch.Tensor  # (B,) int64
    status: list[str]

    @classmethod
    def unevaluated(cls, x: torch.Tensor) -> "Minima":
        b = x.shape[0]
        inf = torch.full((b,), math.inf, dtype=torch.float64)
        return cls(x, inf, inf.clone(), torch.zeros(b, dtype=torch.int64), [TIME_LIMIT] * b)


def threshold(energy: torch.Tensor, n: int, gtol: float) -> torch.Tensor:
    """The RMS gradient at which a set counts as converged: gtol * max(|E|, 1) / N."""
    return gtol * energy.abs().clamp_min(1.0) / n


def rowmat(v: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """(B, L) vectors against (B, m, L) rows -> (B, m, 1) inner products.

    As a (1 x L) @ (L x m) product: torch's batched matrix-vector form
    (M @ v) took 6x longer at B = 16, L = 450 (measured, 1 thread).
    """
    return torch.bmm(v[:, None, :], M.transpose(1, 2)).transpose(1, 2)


class History:
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
        sg = rowmat(g, self.S)
        upper = self.SY.triu(1)
        alpha = torch.linalg.solve_triangular(eye + rho * upper, rho * sg, upper=True, unitriangular=True)
        r = h0[:, None] * (g - torch.bmm(alpha.transpose(1, 2), self.Y).squeeze(1))
        lower = self.SY.transpose(1, 2).tril(-1)
        rhs = rho * (rowmat(r, self.Y) + torch.bmm(lower, alpha))
        beta = torch.linalg.solve_triangular(eye + rho * lower, rhs, upper=False, unitriangular=True)
        return -(r + torch.bmm((alpha - beta).transpose(1, 2), self.S).squeeze(1))

    def push(self, s: torch.Tensor, y: torch.Tensor, rho: torch.Tensor) -> None:
        drop = 1 if self.S.shape[1] == _MEMORY else 0
        S = torch.cat([self.S[:, drop:], s[:, None]], 1)
        Y = torch.cat([self.Y[:, drop:], y[:, None]], 1)
        m = S.shape[1]
        SY = self.SY.new_zeros((S.shape[0], m, m))
        SY[:, : m - 1, : m - 1] = self.SY[:, drop:, drop:]
        SY[:, m - 1, :] = rowmat(s, Y).squeeze(2)
        SY[:, :, m - 1] = rowmat(y, S).squeeze(2)
        self.S, self.Y, self.SY = S, Y, SY
        self.rho = torch.cat([self.rho[:, drop:], rho[:, None]], 1)

    def forget(self, mask: torch.Tensor) -> None:
        """Drop every pair of the sets in mask."""
        self.rho = torch.where(mask[:, None], torch.zeros_like(self.rho), self.rho)

    def keep(self, mask: torch.Tensor) -> None:
        self.S, self.Y, self.SY, self.rho = self.S[mask], self.Y[mask], self.SY[mask], self.rho[mask]


def minimize(
    x: torch.Tensor,
    fg: Evaluation,
    *,
    gtol: float,
    max_iter: int,
    until: float,
    on_iter: Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], None] | None = None,
    window: int | None = None,
) -> Minima:
    """Batched Riemannian L-BFGS from unit-row starts x (B, N, k).

    Sets that finish (converged, stalled, out of iterations or time) leave the
    batch, so the op only evaluates the ones still running. The first
    evaluation is always made; an iteration starts only where it is predicted
    to end by ``until`` (taking as long as the last one, or as ``fg``
    predicts its op call), and a further backtracking call only where that
    call is; else the running sets end "time_limit" at their last accepted point. ``on_iter(it, index, x, energy, grad_rms)`` is
    called after the first evaluation (it = 0) and after every iteration with
    the running sets' original indices, points, energies and RMS gradients.
    With ``window``, a set also stops ("stalled") when its energy fell by less
    than the energy's rounding over the last ``window`` iterations.
    """
    b, n, k = x.shape
    # Largest move of a point in one step: a fifth of the typical spacing of n
    # points on S^{k-1} (3.5 / sqrt(n) on S^2, 2 pi / n on the circle); longer
    # steps from random starts let close points pass through each other.
    max_step = 0.2 * (2.0 * math.pi if k == 2 else 3.5) * n ** (-1.0 / (k - 1))
    noise = ENERGY_NOISE[x.dtype]
    tiny = torch.finfo(x.dtype).tiny
    out = Minima(x.clone(), torch.zeros(b, dtype=torch.float64), torch.zeros(b, dtype=torch.float64),
                  torch.zeros(b, dtype=torch.int64), [RUNNING] * b)
    index = torch.arange(b, device=x.device)
    e, g = fg(x)
    rms = grad_rms(g)
    memory = History(b, n * k, x)
    # 1 / curvature along the last accepted step (Nocedal & Wright's H0 scaling); NaN: none yet.
    gamma = torch.full((b,), float("nan"), dtype=x.dtype, device=x.device)
    # Energies of the last `window` iterations (ring buffer), for the progress test.
    past = torch.full((b, window or 1), math.inf, dtype=torch.float64, device=x.device)
    it = 0
    out_of_time = False
    last_iteration = 0.0  # seconds
    if on_iter is not None:
        on_iter(it, index, x, e, rms)

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
        finish(rms <= threshold(e, n, gtol), CONVERGED)
        if index.numel() == 0:
            break
        bn = index.numel()
        began = time.perf_counter()
        if it >= max_iter or out_of_time or began + max(last_iteration, fg.predict(bn, n, x.dtype)) > until:
            finish(torch.ones_like(index, dtype=torch.bool), MAX_ITER if it >= max_iter else TIME_LIMIT)
            break
        # Without curvature information yet, the first step moves the fastest point by max_step.
        first_scale = max_step / g.norm(dim=-1).amax(1).clamp_min(tiny)
        h0 = torch.where(torch.isnan(gamma), first_scale, gamma)
        steepest = ~(memory.rho > 0).any(1)
        d = memory.direction(g.reshape(bn, -1), h0).view_as(g)
        d -= rowdot(d, x) * x
        slope = dot(g, d)
        # Not a descent direction (rounding near the floor, or bad curvature pairs): steepest descent.
        uphill = slope >= 0
        if bool(uphill.any()):
            d = torch.where(uphill[:, None, None], -g * h0[:, None, None], d)
            slope = dot(g, d)
            steepest = steepest | uphill

        # Backtracking along the retraction; each round evaluates only the sets still searching.
        # Accept on Armijo, or, where the energy change is within rounding, on the approximate
        # Wolfe condition phi'(t) <= (2 delta - 1) phi'(0) (Hager & Zhang 2005).
        t = (max_step / d.norm(dim=-1).amax(1).clamp_min(tiny)).clamp(max=1.0)
        searching = torch.ones(bn, dtype=torch.bool, device=x.device)
        x_new, e_new, g_new = x.clone(), e.clone(), g.clone()
        for trial in range(_MAX_BACKTRACKS):
            sel = searching.nonzero().squeeze(1)
            if trial > 0 and not fg.fits(sel.numel(), n, x.dtype, until):
                out_of_time = True  # the sets still searching keep their point; all end after this iteration
                break
            xt = normalize(x[sel] + t[sel, None, None] * d[sel])
            et, gt = fg(xt)
            e0, sl = e[sel], slope[sel]
            armijo = et <= e0 + _ARMIJO_C1 * (t[sel] * sl).double()
            flat = (et - e0).abs() <= noise * e0.abs().clamp_min(1.0)
            wolfe = dot(gt, d[sel]) <= (2 * _HZ_DELTA - 1) * sl
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
        s_vec -= rowdot(s_vec, x_new) * x_new
        y_vec = g_new - (g - rowdot(g, x_new) * x_new)
        sy = dot(s_vec, y_vec)
        good = ~searching & (sy > 0)
        memory.push(s_vec.reshape(bn, -1), y_vec.reshape(bn, -1),
                    torch.where(good, 1.0 / torch.where(good, sy, torch.ones_like(sy)), torch.zeros_like(sy)))
        gamma = torch.where(good, sy / dot(y_vec, y_vec).clamp_min(tiny), gamma)
        # A failed search with curvature pairs restarts from steepest descent (scaled by the last
        # curvature); a failed steepest descent means that no step found lowers the energy beyond
        # rounding: the set is at its precision floor.
        reset = searching & ~steepest
        if bool(reset.any()):
            memory.forget(reset)
        x, e, g = x_new, e_new, g_new
        rms = grad_rms(g)
        it += 1
        last_iteration = time.perf_counter() - began
        if on_iter is not None:
            on_iter(it, index, x, e, rms)
        if out_of_time:
            continue
        stuck = searching & steepest
        if window is not None:
            before = past[:, it % window].clone()
            past[:, it % window] = e
            stuck |= before - e <= noise * e.abs().clamp_min(1.0)
        finish(stuck, STALLED)
    return out
