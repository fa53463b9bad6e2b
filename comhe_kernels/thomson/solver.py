"""``solve``: the arguments, the phases in order, the time limit, the best set so far, Ctrl-C.

The time limit: every phase starts an op call only where the evaluation's
timing of earlier calls predicts that it ends in the phase's time (the
search and the multilevel levels end at 90% of the limit, the top level
earlier where the polish's float64 evaluation needs that and it fits); the
one call made regardless is the evaluation of the returned points when none
was made in time. So a solve ends within the limit plus that one call (and
the error of the predictions), and always returns a finite, evaluated set:
the lowest-energy N-point set that any phase evaluated, polished where time
allows.
"""

from __future__ import annotations

import math
import time
import warnings

import torch

from .arguments import check_int, check_positive, check_power
from .evaluation import EnergyAndGrad, Evaluation, num_pairs, op_energy_and_grad, threads_for
from .lbfgs import TIME_LIMIT, Minima, minimize
from .multilevel import multilevel, relax_dtype
from .result import ThomsonResult, best_known_energy
from .search import SearchStats, population
from .sphere import normalize

# More points than this (and one start): the multilevel start and annealing instead of the
# population search, whose local minimizations take seconds to minutes each there.
_LARGE_ABOVE = 2000
# The search phases end at this share of the time limit, leaving the rest to the polish.
_SEARCH_SHARE = 0.9


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (KeyboardInterrupt) during ``solve``. ``result``: the lowest-energy N-point
    set evaluated until then, as a ThomsonResult with status "interrupted", or None when
    the interrupt came before the first evaluation of N points."""

    def __init__(self, result: ThomsonResult | None):
        super().__init__("comhe_kernels.thomson.solve was interrupted")
        self.result = result


class _Progress:
    """A rich progress bar over the time budget with the phase and the energy; silent when disabled."""

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


class _Run:
    """One solve's state, shared by its phases: the problem, the evaluation and the clock,
    the random stream, the progress bar, and what was found: the history of improvements
    and the best N-point set evaluated so far."""

    def __init__(self, n, dim, gtol, max_iter, device, fg: Evaluation, gen, bar: _Progress, time_limit: float):
        self.n, self.dim, self.gtol, self.max_iter, self.device = n, dim, gtol, max_iter, device
        self.fg, self.gen, self.bar = fg, gen, bar
        self.start = time.perf_counter()
        self.deadline = self.start + time_limit
        self.history: list[tuple[float, float]] = []
        # (points (n, dim) float64 CPU, energy, grad_rms, dtype evaluated in), replaced as one
        # object so that a Ctrl-C between two bytecodes leaves the old or the new one, never a mix.
        self.best: tuple[torch.Tensor, float, float, torch.dtype] | None = None
        self.minimizations = 0
        self.stats = SearchStats(1, 0, 1)

    def report(self, text: str) -> None:
        self.bar.update(text)

    def relax(self, starts: torch.Tensor, dtype: torch.dtype, tol: float, label: str, until: float,
              window: int | None = None) -> Minima:
        """Minimize the sets ``starts`` (B, N, dim) in ``dtype`` to tol, until ``until``."""

        def on_iter(it, index, x, e, rms):
            i = int(torch.argmin(e))
            lowest = e[i].item()
            if x.shape[1] == self.n and math.isfinite(lowest) and (self.best is None or lowest < self.best[1]):
                self.best = (_float64_points(x[i]), lowest, rms[i].item(), x.dtype)
                self.history.append((time.perf_counter() - self.start, lowest))
            if self.bar.bar is not None:
                self.bar.update(f"{label} it {it}, RMS grad {rms.max().item():.1e}, E = {lowest:.10g}")

        self.minimizations += starts.shape[0]
        return minimize(starts.to(device=self.device, dtype=dtype), self.fg, gtol=tol, max_iter=self.max_iter,
                        until=until, on_iter=on_iter, window=window)

    def polish(self, found: Minima, dtype: torch.dtype) -> tuple[torch.Tensor, float, float, str]:
        """The best set evaluated so far (else the lowest of ``found``, unevaluated), minimized
        in float64 to gtol where time allows: (points, energy, grad_rms, status).

        Where a float64 call does not fit: the best set as evaluated (in float32 for the
        relaxations above 20,000 points), or, with none, one evaluation in ``dtype``, the
        relaxations' (at N = 200,000 a float32 call took a quarter of a float64 one)."""
        if self.best is None:
            x = found.x[int(torch.argmin(found.energy))].double().cpu()
            if dtype == torch.float64 or self.fg.fits(1, self.n, torch.float64, self.deadline, calls=2):
                dtype = torch.float64
        else:
            x, energy, rms, _ = self.best
            if not self.fg.fits(1, self.n, torch.float64, self.deadline, calls=2):
                return x, energy, rms, TIME_LIMIT
            dtype = torch.float64
        final = self.relax(x[None], dtype, self.gtol, "polish", self.deadline)
        return _float64_points(final.x[0]), float(final.energy[0]), float(final.grad_rms[0]), final.status[0]

    def result(self, s: float, points: torch.Tensor, energy: float, rms: float, status: str) -> ThomsonResult:
        known = best_known_energy(self.n, self.dim, s)
        return ThomsonResult(
            n=self.n, dim=self.dim, power=s, points=points, energy=energy, grad_norm=rms * math.sqrt(self.n),
            grad_rms=rms, seconds=time.perf_counter() - self.start, status=status, best_known=known,
            difference=None if known is None else energy - known, restarts=self.stats.restarts,
            generations=self.stats.generations, local_minimizations=self.minimizations,
            distinct_minima=self.stats.distinct, evaluations=self.fg.calls, longest_call=self.fg.longest,
            history=list(self.history),
        )


def _float64_points(x: torch.Tensor) -> torch.Tensor:
    """A copy of the unit rows x (n, dim) in float64 on the CPU; float32 rows normalized again
    in float64 (the op normalizes its input rows, so their energy is the same)."""
    y = x.detach().cpu().clone()
    return y if y.dtype == torch.float64 else normalize(y.double())


def _check_device(device) -> torch.device:
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device must name a torch device ('cpu', 'cuda', 'cuda:1'), got {device!r}: {e}") from None
    if device.type == "meta":
        raise ValueError("device='meta' holds no values: the solver needs the energies (use 'cpu' or 'cuda')")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was requested but torch.cuda.is_available() is False")
    try:
        torch.zeros(1, device=device).tolist()
    except (RuntimeError, AssertionError) as e:
        raise ValueError(f"device={str(device)!r} cannot hold the points here: {e}") from None
    return device


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
    energy_and_grad: EnergyAndGrad | None = None,
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
            relaxed again; package docstring).
        time_limit: wall-clock seconds for the search and polish (counted from when the op is
            loaded; its one-time build on first use is not included). Kept to within the
            error of the predicted op-call times plus one op call: the float64 evaluation of
            the returned points, where none was made in time.
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
        energy_and_grad: the evaluation, instead of the op: a callable taking unit points
            x (B, n, dim) (float64, or float32 for the relaxations above 20,000 points) to
            their energies E_s (B,) summed in float64 and the gradient d E_s / d x (B, n, dim),
            e.g. an energy whose pairs are split over processes. ``backend`` is then unused.

    Returns:
        ThomsonResult (points in float64 on the CPU): the lowest-energy set found.

    Raises:
        Interrupted (a KeyboardInterrupt) on Ctrl-C, holding the best set found until then.

    Equivalent to (for a result ``r``)::

        r.energy == hyperspherical_energy(r.points, power, eps=0.0, reduction="sum")
    """
    n = check_int("n", n, 2)
    dim = check_int("dim", dim, 2)
    s = check_power(power)
    time_limit = check_positive("time_limit", time_limit)
    patience = check_int("patience", patience, 1)
    seed = check_int("seed", seed, 0)
    gtol = check_positive("gtol", gtol)
    max_iter = check_int("max_iter", max_iter, 1)
    if restarts is None:
        restarts = 1 if n > _LARGE_ABOVE else 16 if n <= 500 else 4
    restarts = check_int("restarts", restarts, 1)
    device = _check_device(device)
    if energy_and_grad is None:
        # Loads (on first use: builds) the op, before the time limit starts.
        fn, float64_sums = op_energy_and_grad(s, device, backend)
    elif callable(energy_and_grad):
        fn, float64_sums = energy_and_grad, True
    else:
        raise TypeError(f"energy_and_grad must be a callable or None, got {type(energy_and_grad).__name__}")
    fg = Evaluation(fn, float64_sums)
    bar = _Progress(progress, n, time_limit)
    run = _Run(n, dim, gtol, max_iter, device, fg, torch.Generator().manual_seed(seed), bar, time_limit)
    until = run.start + _SEARCH_SHARE * time_limit
    try:
        with threads_for(num_pairs(restarts, n), device):
            if restarts == 1 and n > _LARGE_ABOVE:
                found, dtype = multilevel(run, n, until), relax_dtype(run, n)
            else:
                found, dtype = population(run, restarts, patience, until), torch.float64
            points, energy, rms, status = run.polish(found, dtype)
    except KeyboardInterrupt:
        best = run.best
        raise Interrupted(None if best is None else run.result(s, best[0], best[1], best[2], "interrupted")) from None
    finally:
        bar.close()
    return run.result(s, points, energy, rms, status)
