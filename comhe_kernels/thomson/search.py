"""Global search for N <= 2000: population basin hopping.

``restarts`` starts (the Fibonacci lattice for dim = 3, random sets) are
relaxed together in one batched op call per step; then each generation makes
as many children, half by cut-and-splice mating (Deaven-Ho, as used for the
Thomson problem by Morris, Deaven and Ho, Phys. Rev. B 53, R1740 (1996): the
upper part of one randomly rotated parent joined to the lower part of
another), half by rotating a random cap of one member about its axis. A
relaxed child replaces the worst member when it is lower and not a copy of
one. The search ends when the best energy has not improved for ``patience``
generations, or when a generation would not end by the time limit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .lbfgs import TIME_LIMIT, Minima
from .sphere import normalize
from .starts import fibonacci_sphere, mate, random_points, rotate_cap

# Two local minima whose energies agree to this (relative) are taken to be one.
_SAME_MINIMUM = 1e-10


@dataclass
class SearchStats:
    restarts: int
    generations: int
    distinct: int


def population(run, restarts: int, patience: int, until: float) -> Minima:
    """Population basin hopping of ``run.n`` points on S^{run.dim - 1} (module docstring);
    returns the final population and counts in ``run.stats``."""
    n, dim, gen = run.n, run.dim, run.gen
    starts = random_points(restarts, n, dim, gen)
    if dim == 3:
        starts[0] = fibonacci_sphere(n)
    # The search only compares minima, to _SAME_MINIMUM: gradients 100x the final
    # tolerance leave energy errors of order 1e-4 of that (the error is quadratic).
    tol = 100 * run.gtol
    pop = run.relax(starts, torch.float64, tol, "relax", until)
    stats = run.stats = SearchStats(restarts, 0, 0)
    # Distinct minima seen, keyed by the energy in units of _SAME_MINIMUM relative to the first best.
    unit = _SAME_MINIMUM * max(abs(pop.energy.min().item()), 1.0)
    seen = {round(e / unit) for e in pop.energy.tolist() if math.isfinite(e)}
    stats.distinct = len(seen)
    since_better = 0
    # A generation is relaxed for tens of iterations: it starts only where two op calls fit.
    while restarts > 1 and since_better < patience and run.fg.fits(restarts, n, torch.float64, until, calls=2):
        children = []
        for c in range(restarts):
            if c % 2 == 0:
                i, j = torch.randperm(restarts, generator=gen)[:2].tolist()
                children.append(mate(pop.x[i].double().cpu(), pop.x[j].double().cpu(), gen))
            else:
                i = int(torch.randint(restarts, (1,), generator=gen))
                children.append(rotate_cap(pop.x[i].double().cpu(), gen))
        stats.generations += 1
        kids = run.relax(normalize(torch.stack(children)), torch.float64, tol, f"gen {stats.generations}", until)
        best_before = pop.energy.min().item()
        for c in range(restarts):
            ec = kids.energy[c].item()
            if kids.status[c] == TIME_LIMIT or not math.isfinite(ec):
                continue
            seen.add(round(ec / unit))
            same = _SAME_MINIMUM * max(abs(ec), 1.0)
            if bool(((pop.energy - ec).abs() <= same).any()):
                continue  # a copy of a member: keeps the population diverse
            worst = int(torch.argmax(pop.energy))
            if ec < pop.energy[worst].item():
                pop.x[worst], pop.energy[worst] = kids.x[c], ec
                pop.grad_rms[worst], pop.status[worst] = kids.grad_rms[c], kids.status[c]
        improved = pop.energy.min().item() < best_before - _SAME_MINIMUM * max(abs(best_before), 1.0)
        since_better = 0 if improved else since_better + 1
        stats.distinct = len(seen)
    return pop
