"""The float64 truth each provider is checked against before it is timed.

Small cases (at most BenchOptions.full_check_points^2 entries in the pair
matrices): the package's exact reference in float64 with autograd, every
gradient row. Larger ones, where the reference would need those matrices in
float64: the energy by tiles (exact_energy, exact_cross_energy) and the
gradient of a random sample of rows (exact_grad_rows), each row from its
pairs with all points. Computed on the case's device (a GPU does the tiles
of N = 262144 in seconds; 16 CPU cores would take minutes).

The uniformity loss L = log(E / pairs) of the Gaussian energy E has
dL/dx = (dE/dx) / E: the same truth, transformed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .. import reference
from .._spec import EnergySpec
from .cases import DELTA, BenchOptions, Case, make_inputs

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
    rows: tuple  # per input tensor: the checked rows, indices into it viewed as (-1, k)
    grads: tuple | None  # per input tensor: their gradient, float64 (None for forward-only cases)
    method: str


def _distances(ui, ai, vj, bj, need_d2p: bool) -> tuple:
    """d2 and d2p (None unless needed) of the pairs (u_i, v_j) of a tile, in
    float64: the gram form, the pairs closer than _CLOSE in the difference
    form |u_i -+ v_j|^2 + a_i + b_j. Where more than 1/16 of the tile is close
    (collapsed or clustered rows) the whole tile is recomputed by cdist
    without the matmul shortcut: gathering the pairs would copy k values each."""
    c = ui @ vj.T
    d2 = torch.sub(2, c, alpha=2)
    d2p = torch.add(2, c, alpha=2) if need_d2p else None
    close = d2 < _CLOSE
    if need_d2p:
        close |= d2p < _CLOSE
    count = int(close.sum())
    if count > close.numel() // 16:
        ab = ai[:, None] + bj[None, :]
        d2 = torch.cdist(ui, vj, compute_mode="donot_use_mm_for_euclid_dist").square() + ab
        if need_d2p:
            d2p = torch.cdist(ui, -vj, compute_mode="donot_use_mm_for_euclid_dist").square() + ab
    elif count:
        p, q = close.nonzero(as_tuple=True)
        up, vq, ab = ui[p], vj[q], ai[p] + bj[q]
        d2[p, q] = (up - vq).square().sum(-1) + ab
        if need_d2p:
            d2p[p, q] = (up + vq).square().sum(-1) + ab
    return d2, d2p


def _tile(device: torch.device) -> int:
    # 1024 x 1024 on the CPU: the elementwise passes stay in cache (0.4-0.6 s
    # at N = 16384 on 2 cores, 2.5x less than row blocks against all columns);
    # larger on a GPU, where each launch has a fixed cost.
    return 4096 if device.type == "cuda" else 1024


def exact_energy(x: torch.Tensor, spec: EnergySpec, tile: int | None = None) -> float:
    """The energy of one set x (N, k) in float64 without N x N memory: tiles
    over the pairs i < j (_distances), on x's device.

    The half space needs no 2N x 2N work: the pairs {u_i, u_j} and {-u_i, -u_j}
    share d2 and d2p; {u_i, -u_j} and {u_j, -u_i} have them swapped; and each
    {u_i, -u_i} has d2 = 4 - 2 a_i, d2p = 2 a_i.
    """
    u, a = reference.normalize(x.detach().to(torch.float64), spec.eps)
    n = u.shape[0]
    tile = tile or _tile(u.device)
    pair = torch.ones(tile, tile, dtype=torch.bool, device=u.device).triu(1)  # j > i within a diagonal tile
    need_d2p = spec.half_space or spec.kind == "angular"
    total = torch.zeros((), dtype=torch.float64, device=u.device)
    for i0 in range(0, n, tile):
        ui, ai = u[i0 : i0 + tile], a[i0 : i0 + tile]
        for j0 in range(i0, n, tile):
            d2, d2p = _distances(ui, ai, u[j0 : j0 + tile], a[j0 : j0 + tile], need_d2p)
            f = reference.pair_energy(d2, d2p if need_d2p else d2, spec)
            if spec.half_space:
                f = 2 * (f + reference.pair_energy(d2p, d2, spec))
            if j0 == i0:  # the diagonal and the pairs j < i are no pairs (f may be inf there)
                f = torch.where(pair[: f.shape[0], : f.shape[1]], f, 0.0)
            total += f.sum()
    if spec.half_space:
        total += reference.pair_energy(4 - 2 * a, 2 * a, spec).sum()
    return (total * spec.scale).item()


def exact_cross_energy(x: torch.Tensor, y: torch.Tensor, spec: EnergySpec, tile: int | None = None) -> float:
    """The cross energy of one pair of sets x (N, k), y (M, k) in float64, by tiles."""
    u, a = reference.normalize(x.detach().to(torch.float64), spec.eps)
    v, b = reference.normalize(y.detach().to(torch.float64), spec.eps)
    tile = tile or _tile(u.device)
    need_d2p = spec.half_space or spec.kind == "angular"
    total = torch.zeros((), dtype=torch.float64, device=u.device)
    for i0 in range(0, u.shape[0], tile):
        for j0 in range(0, v.shape[0], tile):
            d2, d2p = _distances(u[i0 : i0 + tile], a[i0 : i0 + tile], v[j0 : j0 + tile], b[j0 : j0 + tile], need_d2p)
            f = reference.pair_energy(d2, d2p if need_d2p else d2, spec)
            if spec.half_space:
                f = f + reference.pair_energy(d2p, d2, spec)
            total += f.sum()
    return (total * spec.scale).item()


def exact_grad_rows(
    x: torch.Tensor, spec: EnergySpec, rows: torch.Tensor, others: torch.Tensor | None = None, chunk: int = 32
) -> torch.Tensor:
    """dE/dx_i in float64 for the given rows of one set x (N, k), each from its
    pairs with all points: of x itself (the energy; others None) or of the
    other set (the cross energy, others (M, k)).

    Row i enters only the pairs that contain u_i (and -u_i): with every other
    point held constant, dE/dx_i = d/dx_i sum over q != u_i of f(u_i, q), and
    in the half space of one set the same pairs seen from -u_i again.
    Distances in the difference form (cdist without the matmul shortcut), as
    the exact reference.
    """
    x64 = x.detach().to(torch.float64)
    pool, pool_a = reference.normalize(x64 if others is None else others.detach().to(torch.float64), spec.eps)
    one = torch.ones((), dtype=torch.float64, device=x.device)
    out = []
    for c0 in range(0, rows.numel(), chunk):
        idx = rows[c0 : c0 + chunk].to(x.device)
        xs = x64[idx].clone().requires_grad_()
        us, a_s = reference.normalize(xs, spec.eps)
        ab = a_s[:, None] + pool_a[None, :]
        d2 = torch.cdist(us, pool, compute_mode="donot_use_mm_for_euclid_dist").square() + ab
        d2p = torch.cdist(us, -pool, compute_mode="donot_use_mm_for_euclid_dist").square() + ab
        if others is None:
            other = torch.ones(d2.shape, dtype=torch.bool, device=x.device)
            other[torch.arange(idx.numel(), device=x.device), idx] = False  # not u_i with itself
            energy = torch.where(other, reference.pair_energy(torch.where(other, d2, one), d2p, spec), 0.0).sum()
            if spec.half_space:
                # u_i with every -u_j (-u_i included), and all of it again from -u_i's side.
                energy = 2 * (energy + reference.pair_energy(d2p, d2, spec).sum())
        else:
            energy = reference.pair_energy(d2, d2p, spec).sum()
            if spec.half_space:
                energy = energy + reference.pair_energy(d2p, d2, spec).sum()
        (g,) = torch.autograd.grad(energy * spec.scale, xs)
        out.append(g)
    return torch.cat(out) if out else x64.new_zeros((0, x.shape[-1]))


def _sets(t: torch.Tensor, case: Case) -> torch.Tensor:
    return t.reshape(case.b, -1, case.k)


def _reference_truth(case: Case, inputs: tuple) -> tuple:
    """The exact reference in float64 with autograd: (energy, grads of every row)."""
    leaves = tuple(t.to(torch.float64).requires_grad_(case.backward) for t in inputs)
    args = dict(half_space=case.half_space, reduction="sum", eps=case.spec().eps, delta=DELTA)
    if case.op == "cross_energy":
        e = reference.cross_energy(*leaves, case.power_arg, **args)
    else:
        e = reference.hyperspherical_energy(leaves[0], case.power_arg, **args)
    grads = torch.autograd.grad(e, leaves) if case.backward else None
    return e.item(), (None if grads is None else tuple(g.reshape(-1, case.k) for g in grads))


def _tiled_truth(case: Case, inputs: tuple, rows: tuple) -> tuple:
    """The tiled energy and the gradient of the sampled rows: (energy, grads of those rows)."""
    spec = case.spec()
    sets = [_sets(t, case) for t in inputs]  # x's sets, and y's for the cross energy
    cross = case.op == "cross_energy"
    if cross:
        energy = sum(exact_cross_energy(sets[0][s], sets[1][s], spec) for s in range(case.b))
    else:
        energy = sum(exact_energy(sets[0][s], spec) for s in range(case.b))
    if not case.backward:
        return energy, None
    grads = []
    for which, flat_rows in enumerate(rows):
        mine, per_set = sets[which], sets[which].shape[1]
        g = torch.empty(flat_rows.numel(), case.k, dtype=torch.float64)
        for s in range(case.b):
            sel = flat_rows // per_set == s
            if sel.any():
                others = sets[1 - which][s] if cross else None
                g[sel] = exact_grad_rows(mine[s], spec, flat_rows[sel] % per_set, others).cpu()
        grads.append(g)
    return energy, tuple(grads)


def compute_oracle(case: Case, options: BenchOptions) -> Oracle:
    """The float64 truth of a case (from make_inputs(case), on case.device)."""
    inputs = tuple(t.to(case.device) for t in make_inputs(case))
    if case.matrix_elements <= options.full_check_points**2:
        energy, grads = _reference_truth(case, inputs)
        rows = tuple(torch.arange(t.numel() // case.k) for t in inputs)
        method = "float64 exact reference, all rows"
    else:
        g = torch.Generator().manual_seed(case.seed + 1)
        rows = tuple(
            torch.randperm(t.numel() // case.k, generator=g)[: options.check_rows].sort().values for t in inputs
        )
        energy, grads = _tiled_truth(case, inputs, rows)
        method = f"float64 tiled energy, gradient of {rows[0].numel()} random rows" + (
            " of each set" if len(inputs) > 1 else ""
        )
    if grads is not None:
        grads = tuple(gr.detach().cpu() for gr in grads)
    if case.op == "uniformity_loss":  # L = log(E / pairs), dL/dx = (dE/dx) / E
        if grads is not None:
            grads = tuple(gr / energy for gr in grads)
        energy = math.log(energy / case.pairs) if energy > 0 else -math.inf
    scale = abs(energy) + (case.pairs if case.spec().s == 0 and case.op != "uniformity_loss" else 0)
    if case.device == "cuda":
        torch.cuda.empty_cache()  # the tiles' memory back to the GPU before the workers measure
    return Oracle(energy, scale, rows, grads, method)


def check_result(case: Case, oracle: Oracle, energy: float, grads: tuple | None) -> tuple:
    """(energy relative error, gradient error relative to max |g| or None, passed).
    Non-finite results have infinite error."""
    tol_e, tol_g = TOLERANCES[case.dtype]
    e_err = abs(energy - oracle.energy) / oracle.energy_scale if oracle.energy_scale > 0 else abs(energy)
    if not math.isfinite(energy):
        e_err = math.inf
    g_err = None
    if oracle.grads is not None:
        diff, scale, finite = 0.0, 0.0, True
        for rows, want, got in zip(oracle.rows, oracle.grads, grads):
            g = got.detach().reshape(-1, case.k).to("cpu", torch.float64)[rows]
            finite = finite and bool(torch.isfinite(g).all())
            diff = max(diff, (g - want).abs().max().item() if g.numel() else 0.0)
            scale = max(scale, want.abs().max().item() if want.numel() else 0.0)
        g_err = diff / scale if scale > 0 else diff
        if not finite:
            g_err = math.inf
    passed = e_err <= tol_e and (g_err is None or g_err <= tol_g)
    return e_err, g_err, passed
