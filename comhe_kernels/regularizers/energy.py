"""The energy the regularizers minimize: one function of point sets, the op's settings, the original weights."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._spec import make_spec, parse_power
from ..ops import _registry
from ..ops.hyperspherical_energy import hyperspherical_energy
from ..projections import neurons, project


def default_weights(power) -> tuple[float, float]:
    """(hidden, output) weights of the original MHE code for ``power``.

    1 and 10 for the chordal powers and "a0"; 0.1 and 1 for the angular Riesz
    powers ("a1", "a2"), whose energies are ~10x larger: (theta + 1e-4)^-1 is
    2 at theta = pi/2 but 1e4 at theta -> 0.
    """
    kind, s = parse_power(power)
    return (0.1, 1.0) if kind == "angular" and s > 0 else (1.0, 10.0)


@dataclass(frozen=True)
class PairEnergy:
    """The mean pair energy of point sets, with the op's settings fixed.

    ``energy(x, half_space)`` is ``hyperspherical_energy(x, power,
    half_space=half_space, reduction="mean", ...)`` of x (N, k) or (B, N, k):
    the mean over every pair of every set. Every term of a regularizer's
    value goes through this one call, so that another way of computing it
    (e.g. each rank of a data-parallel job taking a share of the pairs) is
    one replacement of ``CoMHE.energy``. The constructor checks every
    setting, so that a bad one fails when the regularizer is built, not at
    its first call.
    """

    power: object = 2
    squared_log: bool = True
    eps: float = 1e-4
    delta: float = 1e-4
    backend: str = "auto"

    def __post_init__(self):
        make_spec(self.power, False, self.eps, self.delta, self.squared_log)
        _registry.check_name(self.backend)

    def __call__(self, x: torch.Tensor, half_space: bool) -> torch.Tensor:
        return hyperspherical_energy(
            x, self.power, half_space=half_space, reduction="mean", eps=self.eps, delta=self.delta,
            squared_log=self.squared_log, backend=self.backend,
        )


def mhe_loss(
    weight: torch.Tensor,
    power=2,
    *,
    half_space: bool = False,
    projection: torch.Tensor | None = None,
    squared_log: bool = True,
    eps: float = 1e-4,
    delta: float = 1e-4,
    backend: str = "auto",
) -> torch.Tensor:
    r"""The MHE loss of one layer weight (functional form of the regularizers).

        W = weight.reshape(out, -1)               (one row per neuron)
        X = W                 (projection None)
          = W P^T             (P of shape (pd, k))
          = W P_b^T, b = 1..B (P of shape (B, pd, k): one batched op call)
        loss = mean over the pairs (and the B sets) of f(x_i / sqrt(||x_i||^2 + eps), ...)

    as ``_add_thomson_constraint`` in wy1iu/MHE and ``_add_thomson_*`` in
    rmlin/CoMHE. ``squared_log=True`` (default) makes power 0 the original's
    -log(d^2); the other powers are unaffected.

    Equivalent to::

        comhe_kernels.hyperspherical_energy(project(neurons(weight), P), power,
            half_space=half_space, reduction="mean", squared_log=squared_log, ...)
    """
    w = neurons(weight)
    x = w if projection is None else project(w, projection)
    return hyperspherical_energy(
        x, power, half_space=half_space, reduction="mean", eps=eps, delta=delta,
        squared_log=squared_log, backend=backend,
    )
