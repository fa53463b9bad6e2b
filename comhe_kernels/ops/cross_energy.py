"""The public cross-set op: the energy between two point sets, with both gradients.

Rows of one set against the rows of another: the distributed energy (a
rank's rows against a visiting block) and the energy between two groups
(new classes against old ones). Backends as for hyperspherical_energy.
"""

from __future__ import annotations

import torch

from .._spec import check_cross, check_precision, check_reduction, make_spec, num_cross_pairs, reduce_cross, upcast
from . import _registry


def _prepare(x, y, power, half_space, reduction, eps, delta, squared_log, backend, precision):
    check_cross(x, y)
    check_reduction(reduction)
    spec = make_spec(power, half_space, eps, delta, squared_log, precision)
    check_precision(precision, x.dtype)
    _registry.check_name(backend)
    name = _registry.resolve(backend, "cross_energy", x.device.type)
    _registry.check_precision(name, precision)
    batched = x.dim() == 3
    x3 = upcast(x if batched else x.unsqueeze(0))
    y3 = upcast(y if batched else y.unsqueeze(0))
    return spec, _registry.functions(name), batched, x3, y3


def cross_energy(
    x: torch.Tensor,
    y: torch.Tensor,
    power=1,
    *,
    half_space: bool = False,
    reduction: str = "mean",
    eps: float = 1e-4,
    delta: float = 1e-4,
    squared_log: bool = False,
    backend: str = "auto",
    precision: str = "auto",
) -> torch.Tensor:
    r"""Energy between the rows of ``x`` and the rows of ``y``, differentiable in both.

        E = sum_i sum_j f(u_i, v_j)     (half_space: + f(u_i, -v_j))

    with u, v the normalized rows and f as in :func:`hyperspherical_energy`
    (same ``power``, ``eps``, ``delta``, ``squared_log``). Every pair (i, j)
    counts once; with half_space, also each row of x against the mirrored
    rows of y. (In the half-space set [x; -x; y; -y] of both sets each such
    pair occurs twice: (u_i, v_j) and (-u_i, -v_j).)

    Args:
        x, y: (N, k) and (M, k), or (B, N, k) and (B, M, k): B pairs of sets.
            Same k, dtype and device; N or M may be 0 (the energy is then 0).
        reduction: "mean" (sum / (B N M), or / (2 B N M) with half_space),
            "sum", or "none" ((B,) per pair of sets).
        precision: as for hyperspherical_energy.

    Equivalent to::

        comhe_kernels.reference.cross_energy(x, y, power, half_space=..., reduction=..., ...)
    """
    spec, fns, batched, x3, y3 = _prepare(x, y, power, half_space, reduction, eps, delta, squared_log, backend, precision)
    per_set = fns.cross(x3, y3, spec).to(x3.dtype)
    return reduce_cross(per_set, x3.shape[1], y3.shape[1], spec, reduction, batched)


def cross_energy_and_grad(
    x: torch.Tensor,
    y: torch.Tensor,
    power=1,
    *,
    half_space: bool = False,
    reduction: str = "sum",
    eps: float = 1e-4,
    delta: float = 1e-4,
    squared_log: bool = False,
    backend: str = "auto",
    precision: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`cross_energy` and its gradients ``d energy.sum() / d x`` and
    ``/ d y`` from one kernel call, without an autograd graph (default
    reduction "sum"). The energy is float64, as for hyperspherical_energy_and_grad."""
    spec, fns, batched, x3, y3 = _prepare(x, y, power, half_space, reduction, eps, delta, squared_log, backend, precision)
    per_set, gx, gy = fns.cross_and_grad(x3, y3, spec)
    energy = reduce_cross(per_set.double(), x3.shape[1], y3.shape[1], spec, reduction, batched)
    factor = spec.scale
    if reduction == "mean":
        pairs = x3.shape[0] * num_cross_pairs(x3.shape[1], y3.shape[1], spec.half_space)
        factor = factor / pairs if pairs > 0 else 0.0
    if factor != 1.0:
        gx, gy = gx * factor, gy * factor
    return energy, gx.reshape(x.shape).to(x.dtype), gy.reshape(y.shape).to(y.dtype)
