"""Global search for N > 2000 (one start; each local minimization takes seconds to minutes).

A multilevel start on S^2 (a configuration of (N + 6) // 4 points, made the
same way, with every edge of its Delaunay triangulation subdivided) is
relaxed, then cooled slowly by Langevin dynamics with the remaining time
(dislocations glide and annihilate, scars form) and relaxed again. Above
_FLOAT32_ABOVE points these relaxations run in float32 (the op still sums the
energy in float64) until they stop making progress. Every phase starts only
where the op calls it needs are predicted to end in its time; a level whose
time is too short for that returns its start unevaluated.
"""

from __future__ import annotations

import time

import torch

from .evaluation import Evaluation, num_pairs, threads_for
from .lbfgs import TIME_LIMIT, Minima
from .sphere import dot, mean_spacing, normalize, rowdot, tangent
from .starts import fibonacci_sphere, random_points, subdivide, well_separated

# More points than this: float32 relaxation first, then float64.
# Below it float64 throughout is affordable (N = 10^4: about 40 ms per evaluation on the
# 2 cores) and float32 would stop about 1e-8 relative short of the minimum anyway;
# float32 took 11 ms per L-BFGS iteration at N = 5000, float64 19 ms.
_FLOAT32_ABOVE = 20_000
# The float32 phase ends when the energy fell by less than its noise over this many
# iterations: there its gradient is rounding (at N = 5000 the float32 RMS gradient
# levels off at 4e-3 while the float64 one at the same points is 1.4e-2).
_FLOAT32_WINDOW = 50
# Levels down to this many points; a coarse level gets this share of its level's time. At
# N = 10^4 the subdivided relaxed 2501-point Fibonacci start relaxed to 364 above
# N^2/2 - 0.5530513 N^1.5, the Fibonacci start to 445; annealing it then gave 306.
_COARSEST = 500
_COARSE_SHARE = 0.15
# A coarse level is made only where this many op calls at its size fit in its share:
# relaxing a level takes hundreds of iterations, and an unrelaxed one is not a better
# start than the Fibonacci lattice (see starts.well_separated).
_COARSE_CALLS = 20
# Initial Langevin noise per step, in units of the mean spacing (see anneal).
_ANNEAL_SIGMA = 0.05
# Power iterations for the stiffest curvature (see largest_curvature).
_POWER_ITERATIONS = 10


def multilevel(run, n: int, until: float) -> Minima:
    """One well-relaxed configuration of n points on S^{run.dim - 1} (module docstring).

    dim 3: the start is the subdivision of a configuration of m = (n + 6) // 4
    points made the same way in _COARSE_SHARE of the time (down to fewer than
    _COARSEST points, relaxed from the Fibonacci lattice), plus n - (4m - 6)
    random points, where that is well separated, else the Fibonacci lattice;
    other dims start at random. The start is relaxed, annealed while time
    remains beyond 1.2 x the relaxation's time (to relax again), relaxed
    again, and the lower of the two minima is kept.
    """
    with threads_for(num_pairs(1, n), run.device):
        return _level(run, n, until)


def relax_dtype(run, n: int) -> torch.dtype:
    """float32 for relaxations of more than _FLOAT32_ABOVE points where the evaluation sums in float64."""
    return torch.float32 if n > _FLOAT32_ABOVE and run.fg.float64_sums else torch.float64


def _level(run, n: int, until: float) -> Minima:
    """The body of multilevel, run with the thread count chosen for n."""
    dim, gen, fg = run.dim, run.gen, run.fg
    begin = time.perf_counter()
    m = (n + 6) // 4
    dtype = relax_dtype(run, n)
    coarse_until = begin + _COARSE_SHARE * (until - begin)
    x = None
    if dim == 3 and m >= _COARSEST and fg.fits(1, m, relax_dtype(run, m), coarse_until, calls=_COARSE_CALLS):
        coarse = multilevel(run, m, coarse_until)
        if int(coarse.iterations[0]) > 0:
            x = subdivide(coarse.x[0].double().cpu())
            x = torch.cat([x, random_points(1, n - x.shape[0], 3, gen)[0]])
            if not well_separated(x):
                x = None
    if x is None:
        x = fibonacci_sphere(n) if dim == 3 else random_points(1, n, dim, gen)[0]
    x = x[None]
    if n == run.n and dtype == torch.float32:
        # Time for the polish's float64 evaluation, where it is at most half of what is left;
        # else the float32 relaxation takes it all and its result is returned as evaluated.
        polish = fg.predict(1, n, torch.float64)
        if polish <= 0.5 * (until - time.perf_counter()):
            until = min(until, run.deadline - polish)
    window = _FLOAT32_WINDOW if dtype == torch.float32 else None
    tol = 100 * run.gtol
    if not fg.fits(1, n, dtype, until, calls=2):
        return Minima.unevaluated(x)
    started = time.perf_counter()
    first = run.relax(x, dtype, tol, f"N={n} relax", until, window)
    took = time.perf_counter() - started
    anneal_until = until - 1.2 * took
    if (first.status[0] == TIME_LIMIT or anneal_until - time.perf_counter() < 0.5 * took
            or not fg.fits(1, n, dtype, anneal_until, calls=_POWER_ITERATIONS + 2)):
        return first
    hot = anneal(first.x.to(dtype), fg, gen, anneal_until, mean_spacing(n, dim), run.report)
    second = run.relax(hot, dtype, tol, f"N={n} relax after anneal", until, window)
    return second if second.energy[0] < first.energy[0] else first


def largest_curvature(x: torch.Tensor, fg: Evaluation, gen: torch.Generator, step: float) -> float:
    """Largest Hessian eigenvalue at x (1, N, k) by _POWER_ITERATIONS power iterations on
    finite differences of the gradient, with displacements of ``step`` (a hundredth of the
    spacing: large enough for float32 gradients, small enough to stay quadratic)."""
    _, g0 = fg(x)
    v = torch.randn(x.shape, generator=gen, dtype=torch.float64).to(x)
    lam = 0.0
    for _ in range(_POWER_ITERATIONS):
        v = v - rowdot(v, x) * x
        v = v / v.norm()
        _, g1 = fg(normalize(x + step * v))
        hv = tangent((g1 - g0) / step, x)
        lam = dot(hv, v).item()
        v = hv
    return lam


def anneal(x: torch.Tensor, fg: Evaluation, gen: torch.Generator, until: float, spacing: float, report) -> torch.Tensor:
    """Cool x (1, N, k) by Langevin dynamics until ``until``, then return it (not relaxed).

        x <- normalize(x - g / lambda_max + sigma(t) a xi),   sigma(t) = sigma0 (1 - t / T),  xi ~ N(0, I)

    with a the mean spacing and lambda_max the stiffest curvature (so the
    gradient step is stable). Relaxed large configurations hold many more
    dislocations than the best known ones; slow cooling lets them glide and
    annihilate and lets scars form at the twelve disclinations. sigma0 = 0.05:
    at N = 2432, cooling from 0.05 over 8000 steps lowered the relaxed
    Fibonacci energy by 4.5 (7% of its excess over N^2/2 - 0.5530513 N^1.5),
    from 0.1 and 0.15 it raised it (the lattice melts and quenches into a glass).
    A step starts only where its op call is predicted to end by ``until``.
    """
    step = 1.0 / largest_curvature(x, fg, gen, 0.01 * spacing)
    start = time.perf_counter()
    length = max(until - start, 1e-9)
    steps = 0
    while fg.fits(1, x.shape[1], x.dtype, until):
        sigma = _ANNEAL_SIGMA * (1.0 - (time.perf_counter() - start) / length)
        e, g = fg(x)
        noise = torch.randn(x.shape, generator=gen, dtype=torch.float64).to(x)
        x = normalize(x - step * g + (sigma * spacing) * noise)
        steps += 1
        report(f"anneal step {steps}, sigma {sigma:.3f}, E = {e.item():.10g}")
    return x
