"""The float64 truth each provider is checked against before it is timed.

Small sets (at most BenchOptions.full_check_points points): the package's
exact reference in float64 with autograd, every gradient row. Larger sets,
where the reference would need M x M float64 matrices: the energy by row
blocks (exact_energy) and the gradient of a random sample of rows
(exact_grad_rows), each row from its pairs with all points.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .. import reference
from .._spec import EnergySpec
from .cases import DELTA, EPS, BenchOptions, Case, make_points, pair_energy

# Energy: relative error; gradient: max |g - g_ref| / max |g_ref| over the
# checked rows. float32 is the core op's accuracy contract (its tests measure
# 1.5e-7 and 1e-4). float64: the fused op is good to 1e-12; 1e-10 and 1e-7
# leave room for blocked sums and still flag the gram form, whose float64
# error grows as 1e-16 / d2 for close pairs. 16-bit inputs are computed in
# float32, and the gradient is rounded to the input dtype on return, which
# adds 2^-11 (float16) or 2^-8 (bfloat16).
TOLERANCES = {
    "float64": (1e-10, 1e-7),
    "float32": (1e-5, 1e-3),
    "float16": (1e-5, 1e-3 + 2**-11),
    "bfloat16": (1e-5, 1e-3 + 2**-8),
}

# Pairs closer than this (in d2 or d2p) are recomputed in the difference form:
# the float64 gram entry is off by about 4e-16, so above it d2 is good to 1e-13.
_CLOSE = 2.0**-8


@dataclass
class Oracle:
    """The float64 truth of one case."""

    energy: float
    energy_scale: float  # |E|; |E| + pairs for the log energies, whose terms have both signs
    rows: torch.Tensor  # the gradient rows that are checked
    grad: torch.Tensor | None  # their gradient, float64 (None for forward-only cases)
    method: str


def exact_energy(x: torch.Tensor, spec: EnergySpec, tile: int = 1024) -> float:
    """The energy in float64 without M x M memory: tiles of the gram form over
    the pairs i < j, pairs with d2 (or d2p, where it matters) below 2^-8
    recomputed in the difference form |u_i -+ u_j|^2 + a_i + a_j.

    The half space needs no 2N x 2N work: the pairs {u_i, u_j} and {-u_i, -u_j}
    share d2 and d2p; {u_i, -u_j} and {u_j, -u_i} have them swapped; and each
    {u_i, -u_i} has d2 = 4 - 2 a_i, d2p = 2 a_i.

    Square tiles keep the few elementwise passes cheap: 0.4-0.6 s at N = 16384
    on 2 cores with 1024 x 1024 tiles, 2.5x less than row blocks against all
    columns. The entries j <= i of the diagonal tiles get c = 0, a finite
    placeholder whose known contribution f(2, 2) is subtracted.
    """
    u, a = reference.normalize(x.detach().to(torch.float64), spec.eps)
    n = u.shape[0]
    not_pair = torch.ones(tile, tile, dtype=torch.bool).tril()  # j <= i
    need_d2p = spec.half_space or spec.kind == "angular"
    two = torch.full((), 2.0, dtype=torch.float64)
    placeholder = pair_energy(two, two, spec).item() * (4 if spec.half_space else 1)
    total = torch.zeros((), dtype=torch.float64)
    for i0 in range(0, n, tile):
        ui_tile, ai_tile = u[i0 : i0 + tile], a[i0 : i0 + tile]
        for j0 in range(i0, n, tile):
            c = ui_tile @ u[j0 : j0 + tile].T
            if j0 == i0:
                b = c.shape[0]
                c.masked_fill_(not_pair[:b, :b], 0.0)
                total -= placeholder * (b * (b + 1) // 2)
            d2p = torch.add(2, c, alpha=2) if need_d2p else None
            d2 = torch.sub(2, c, alpha=2)
            close = d2 < _CLOSE
            if need_d2p:
                close |= d2p < _CLOSE
            p, q = close.nonzero(as_tuple=True)
            if p.numel():
                ui, uj, aij = ui_tile[p], u[j0 + q], ai_tile[p] + a[j0 + q]
                d2[p, q] = (ui - uj).square().sum(-1) + aij
                if need_d2p:
                    d2p[p, q] = (ui + uj).square().sum(-1) + aij
            block = pair_energy(d2, d2p if need_d2p else d2, spec).sum()
            if spec.half_space:
                block = 2 * (block + pair_energy(d2p, d2, spec).sum())
            total += block
    if spec.half_space:
        total += pair_energy(4 - 2 * a, 2 * a, spec).sum()
    return total.item()


def exact_grad_rows(x: torch.Tensor, spec: EnergySpec, rows: torch.Tensor, chunk: int = 32) -> torch.Tensor:
    """dE/dx_i in float64 for the given rows, each from its pairs with all points.

    Row i enters only the pairs that contain u_i (and -u_i): with every other
    point held constant, dE/dx_i = d/dx_i sum over q != u_i of f(u_i, q), and
    in the half space the same pairs seen from -u_i again. Distances in the
    difference form (cdist without the matmul shortcut), as the exact reference.
    """
    x64 = x.detach().to(torch.float64)
    u_all, a_all = reference.normalize(x64, spec.eps)
    one = torch.ones((), dtype=torch.float64)
    out = []
    for c0 in range(0, rows.numel(), chunk):
        idx = rows[c0 : c0 + chunk]
        xs = x64[idx].clone().requires_grad_()
        us, a_s = reference.normalize(xs, spec.eps)
        aa = a_s[:, None] + a_all[None, :]
        d2 = torch.cdist(us, u_all, compute_mode="donot_use_mm_for_euclid_dist").square() + aa
        d2p = torch.cdist(us, -u_all, compute_mode="donot_use_mm_for_euclid_dist").square() + aa
        other = torch.ones(d2.shape, dtype=torch.bool)
        other[torch.arange(idx.numel()), idx] = False  # not u_i with itself
        energy = torch.where(other, pair_energy(torch.where(other, d2, one), d2p, spec), 0.0).sum()
        if spec.half_space:
            # u_i with every -u_j (-u_i included), and all of it again from -u_i's side.
            energy = 2 * (energy + pair_energy(d2p, d2, spec).sum())
        (g,) = torch.autograd.grad(energy, xs)
        out.append(g)
    return torch.cat(out) if out else x64.new_zeros((0, x.shape[1]))


def compute_oracle(case: Case, options: BenchOptions) -> Oracle:
    """The float64 truth of a case (on the CPU, from make_points(case))."""
    spec = case.spec()
    x = make_points(case)
    if case.points <= options.full_check_points:
        x64 = x.to(torch.float64).requires_grad_(case.backward)
        e = reference.hyperspherical_energy(
            x64, case.power_arg, half_space=case.half_space, reduction="sum", eps=EPS, delta=DELTA
        )
        grad = torch.autograd.grad(e, x64)[0] if case.backward else None
        energy, rows, method = e.item(), torch.arange(case.n), "float64 exact reference, all rows"
    else:
        energy = exact_energy(x, spec)
        g = torch.Generator().manual_seed(case.seed + 1)
        rows = torch.randperm(case.n, generator=g)[: options.check_rows].sort().values
        grad = exact_grad_rows(x, spec, rows) if case.backward else None
        method = f"float64 blocked energy, gradient of {rows.numel()} random rows"
    scale = abs(energy) + (case.pairs if spec.s == 0 else 0)
    return Oracle(energy, scale, rows, grad, method)


def check_result(case: Case, oracle: Oracle, energy: float, grad: torch.Tensor | None) -> tuple:
    """(energy relative error, gradient error relative to max |g| or None, passed).
    Non-finite results have infinite error."""
    tol_e, tol_g = TOLERANCES[case.dtype]
    e_err = abs(energy - oracle.energy) / oracle.energy_scale if oracle.energy_scale > 0 else abs(energy)
    if not math.isfinite(energy):
        e_err = math.inf
    g_err = None
    if oracle.grad is not None:
        g = grad.detach().to("cpu", torch.float64)[oracle.rows]
        scale = oracle.grad.abs().max().item()
        diff = (g - oracle.grad).abs().max().item()
        g_err = diff / scale if scale > 0 else diff
        if not bool(torch.isfinite(g).all()):
            g_err = math.inf
    passed = e_err <= tol_e and (g_err is None or g_err <= tol_g)
    return e_err, g_err, passed
