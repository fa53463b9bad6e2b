"""The energy and its gradient: the one callable the solver evaluates, and what its calls cost.

Every energy the solver sees comes from one ``energy_and_grad(x)`` callable,
x (B, N, k) unit rows -> (E (B,) float64, dE/dx (B, N, k)). By default it is
the package's public op (``op_energy_and_grad``); ``solve(energy_and_grad=...)``
replaces it, e.g. with an energy whose pairs are split over processes.
``Evaluation`` wraps it: it counts and times the calls, and from those times
predicts what the next call will cost, so that no phase of the solver starts
work that ends after its time limit.
"""

from __future__ import annotations

import contextlib
import time
from typing import Callable

import numpy as np
import torch

from ..ops import _registry
from ..ops.hyperspherical_energy import hyperspherical_energy, hyperspherical_energy_and_grad
from .arguments import check_power
from .sphere import tangent

EnergyAndGrad = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

# A float64 op call costs this many times the float32 one of the same size: 1.9-4.0 measured at
# N = 10^4..2 * 10^5, k = 3 on the 2 cores (load 5); used only until a call of the dtype was timed.
_FLOAT64_OVER_FLOAT32 = 2.5
# One thread where an op call has fewer pairs than this (about a millisecond of one core):
# there the fork/join of every small tensor operation costs more than it saves
# (N = 150, 16 restarts: 6.4 s with 1 thread, 10.0 s with 2, on the shared 2 cores).
_SERIAL_PAIRS = 2**21


def num_pairs(b: int, n: int) -> int:
    """Pairs in one op call on b sets of n points."""
    return b * n * (n - 1) // 2


def op_energy_and_grad(power: float, device: torch.device, backend: str) -> tuple[EnergyAndGrad, bool]:
    """The public op as the solver's evaluation, and whether it sums in float64 for float32
    points (the fused backends do; the reference computes in the points' dtype).

    Loads the backend (on first use: builds the C++ extension)."""
    _registry.check_name(backend)
    name = _registry.resolve(backend, "hyperspherical_energy", device.type)

    def energy_and_grad(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return hyperspherical_energy_and_grad(x, power, eps=0.0, reduction="none", backend=name)

    return energy_and_grad, name != "reference"


class Evaluation:
    """E(x) per set (float64) and its tangential gradient from ``energy_and_grad``.

    ``float64_sums``: float32 points get energies summed in float64 (then the
    solver may relax large sets in float32). Counts the calls (``calls``),
    keeps the longest call's seconds (``longest``) and the time of the last
    call of each size and dtype for ``predict``.
    """

    def __init__(self, energy_and_grad: EnergyAndGrad, float64_sums: bool):
        self.energy_and_grad = energy_and_grad
        self.float64_sums = float64_sums
        self.calls = 0
        self.longest = 0.0
        self._seconds: dict[tuple[int, torch.dtype], float] = {}
        self._largest: dict[torch.dtype, tuple[int, float]] = {}  # dtype -> (pairs, seconds), most pairs timed

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        started = time.perf_counter()
        energy, grad = self.energy_and_grad(x)
        seconds = time.perf_counter() - started
        if energy.shape != x.shape[:1] or grad.shape != x.shape:
            raise ValueError(
                f"energy_and_grad must return the energies (B,) and the gradient (B, N, k) of points (B, N, k); "
                f"got {tuple(energy.shape)} and {tuple(grad.shape)} for {tuple(x.shape)}"
            )
        self.calls += 1
        self.longest = max(self.longest, seconds)
        pairs = num_pairs(x.shape[0], x.shape[1])
        self._seconds[(pairs, x.dtype)] = seconds
        if pairs >= self._largest.get(x.dtype, (0, 0.0))[0]:
            self._largest[x.dtype] = (pairs, seconds)
        # The op's gradient is tangent up to rounding; removing the radial rest keeps
        # L-BFGS's curvature pairs on the tangent spaces.
        return energy.double(), tangent(grad, x)

    def predict(self, b: int, n: int, dtype: torch.dtype) -> float:
        """Seconds that one call on b sets of n points of ``dtype`` will take: the last such
        call's time, else the largest timed call's scaled by the pair count (an overestimate
        from smaller calls, whose fixed costs weigh more), else 0 (nothing timed yet)."""
        pairs = num_pairs(b, n)
        if (pairs, dtype) in self._seconds:
            return self._seconds[(pairs, dtype)]
        timed, factor = self._largest.get(dtype), 1.0
        if timed is None:  # only the other dtype was timed
            other = torch.float32 if dtype == torch.float64 else torch.float64
            timed = self._largest.get(other)
            factor = _FLOAT64_OVER_FLOAT32 if dtype == torch.float64 else 1 / _FLOAT64_OVER_FLOAT32
        if timed is None:
            return 0.0
        p0, t0 = timed
        return factor * t0 * pairs / max(p0, 1)

    def fits(self, b: int, n: int, dtype: torch.dtype, until: float, calls: int = 1) -> bool:
        """Whether ``calls`` calls on b sets of n points end before ``until`` (time.perf_counter)."""
        return time.perf_counter() + calls * self.predict(b, n, dtype) <= until


@contextlib.contextmanager
def threads_for(pairs: int, device: torch.device):
    """One intra-op thread for CPU calls of fewer than _SERIAL_PAIRS pairs (the op follows torch's
    setting); otherwise torch's setting unchanged."""
    before = torch.get_num_threads()
    if device.type == "cpu" and pairs < _SERIAL_PAIRS:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def riesz_energy(points, power=1.0) -> float:
    """E_s of one point set (rows normalized exactly), float64, through the fused op.

    Equivalent to ``hyperspherical_energy(torch.as_tensor(points, dtype=torch.float64),
    power, eps=0.0, reduction="sum")``.
    """
    x = points if isinstance(points, torch.Tensor) else torch.as_tensor(np.asarray(points))
    return float(hyperspherical_energy(x.double(), check_power(power), eps=0.0, reduction="sum"))
