"""The public op: hyperspherical energy of point sets, with its gradient.

``backend`` names who computes the pairwise sums (ops/_registry.py: every
module of ops/backends/ registers one): "reference" is the plain-PyTorch
definition (comhe_kernels.reference), "cpu" the fused C++ kernel behind
``torch.ops.comhe.hyperspherical_energy``, and "auto" the first fused
backend available for the tensor's device.
"""

from __future__ import annotations

import torch

from .._spec import check_points, check_precision, check_reduction, make_spec, num_pairs, reduce_sets, upcast
from . import _registry


def _prepare(x, power, half_space, reduction, eps, delta, squared_log, backend, precision):
    check_points(x)
    check_reduction(reduction)
    spec = make_spec(power, half_space, eps, delta, squared_log, precision)
    check_precision(precision, x.dtype)
    _registry.check_name(backend)
    name = _registry.resolve(backend, "hyperspherical_energy", x.device.type)
    _registry.check_precision(name, precision)
    batched = x.dim() == 3
    x3 = upcast(x if batched else x.unsqueeze(0))
    return spec, _registry.functions(name), batched, x3


def hyperspherical_energy(
    x: torch.Tensor,
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
    r"""Hyperspherical energy of the rows of ``x``, differentiable in ``x``.

    Rows are normalized inside, u_i = x_i / sqrt(||x_i||^2 + eps), as in the
    original MHE code, and the energy sums a function of each pair's distance:

        E = sum_{i<j} f(u_i, u_j),   d2 = 2 - 2 u_i.u_j,   theta = arccos(u_i.u_j) / pi
        power = s > 0:  f = d^-s           power = 0:    f = -log d  (-log d^2 with squared_log)
        power = "a<s>": f = (theta + delta)^-s,  "a0": f = -log(theta + delta)
        power = "g<t>": f = exp(-t d2)     (the kernel of Wang and Isola's uniformity loss)

    Args:
        x: (N, k) or (B, N, k), B independent sets of N points. float32 or
            float64; float16/bfloat16 are computed in float32 (the energy is
            float32, the gradient comes back in x's dtype). Any strides.
        power: a real s >= 0 (fast paths s = 1, 2; 0 is the log energy),
            "a0", "a1", "a2" (any "a<s>") for the angular energies, or
            "g<t>" (t > 0) for the Gaussian one.
        half_space: use the 2N points [u; -u] (all their pairs), half-space MHE.
        reduction: "mean" (sum / number of pairs, the original convention;
            0 when there are no pairs), "sum", or "none" (each set's sum, (B,)).
        eps: the normalization epsilon (>= 0). With eps = 0 a zero row counts
            as the centre (cosine 0 with every row) and gets a zero gradient,
            and coincident rows give an infinite chordal energy (NaN gradient).
        delta: the angular offset of the original code.
        squared_log: power 0 only: -log(d^2) as the original code (twice -log d).
        backend: "auto" or a registered backend (comhe_kernels.available_backends()).
        precision: how float32 products are formed: "auto" (the backend's
            default, which meets the float32 accuracy contract: energy within
            1e-6 relative, gradient within 1e-3 of max |g| of the float64
            evaluation), "ieee" (float32 FMAs), or the GPU backends'
            tensor-core modes "tf32x3", "tf32", "bf16" (documented error
            bounds). float64 input is always computed in float64.

    NaN or Inf in ``x`` raise ValueError. N = 0 or 1 gives a zero sum
    (half-space N = 1 has the single pair (u, -u)). First derivatives in
    both modes (backward, torch.func.grad/vjp/jacrev, forward-mode AD,
    jvp/jacfwd); vmap maps to the batched form (one call).

    Equivalent to::

        comhe_kernels.reference.hyperspherical_energy(x, power, half_space=...,
            reduction=..., eps=..., delta=..., squared_log=...)
    """
    spec, fns, batched, x3 = _prepare(x, power, half_space, reduction, eps, delta, squared_log, backend, precision)
    per_set = fns.energy(x3, spec).to(x3.dtype)
    return reduce_sets(per_set, x3.shape[1], spec, reduction, batched)


def hyperspherical_energy_and_grad(
    x: torch.Tensor,
    power=1,
    *,
    half_space: bool = False,
    reduction: str = "sum",
    eps: float = 1e-4,
    delta: float = 1e-4,
    squared_log: bool = False,
    backend: str = "auto",
    precision: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The energy of :func:`hyperspherical_energy` and its gradient
    ``d energy.sum() / d x`` from one kernel call, without an autograd graph:
    for optimizers that want both (the Thomson solver). Same arguments; the
    default reduction is "sum". The energy is float64 (the fused backends
    sum in float64 for any input; the reference computes in x's dtype); the
    gradient has x's shape and dtype (with reduction "none", row block b of
    it is d energy[b] / d x[b]).
    """
    spec, fns, batched, x3 = _prepare(x, power, half_space, reduction, eps, delta, squared_log, backend, precision)
    per_set, grad = fns.energy_and_grad(x3, spec)
    energy = reduce_sets(per_set.double(), x3.shape[1], spec, reduction, batched)
    factor = spec.scale
    if reduction == "mean":
        pairs = x3.shape[0] * num_pairs(x3.shape[1], spec.half_space)
        factor = factor / pairs if pairs > 0 else 0.0
    grad = grad * factor if factor != 1.0 else grad
    return energy, grad.reshape(x.shape).to(x.dtype)
