"""The public op: hyperspherical energy of point sets, with its gradient.

Dispatch: ``backend`` names who computes the pairwise sum. "reference" is the
plain-PyTorch definition (comhe_kernels.reference); "cpu" is the fused C++
kernel behind ``torch.ops.comhe.hyperspherical_energy``; "auto" picks the
fastest one available for the tensor's device. GPU backends register
themselves in ``_BACKENDS`` under their own names.
"""

from __future__ import annotations

import warnings

import torch

from .. import _extension, reference
from .._spec import EnergySpec, check_finite, check_points, check_reduction, make_spec, reduce_sets

BACKENDS = ("auto", "reference", "cpu", "triton", "cuda")


def _op_per_set(x: torch.Tensor, spec: EnergySpec) -> torch.Tensor:
    """(B, N, k) -> (B,) energy sums through the registered op (CPU or CUDA)."""
    need_grad = torch.is_grad_enabled() and x.requires_grad
    energy, _ = torch.ops.comhe.hyperspherical_energy(
        x, spec.kind, spec.s, spec.half_space, spec.eps, spec.delta, need_grad
    )
    return energy.to(x.dtype)


def _reference_per_set(x: torch.Tensor, spec: EnergySpec) -> torch.Tensor:
    check_finite(x)
    return reference.per_set_energy(x, spec)


# name -> (device types it runs on, function computing per-set sums)
_BACKENDS = {
    "reference": (("cpu", "cuda"), _reference_per_set),
    "cpu": (("cpu", "meta"), _op_per_set),
}
# "auto" tries these in order for each device type.
_AUTO_ORDER = {"cpu": ("cpu",), "cuda": ("cuda", "triton"), "meta": ("cpu",)}
_warned_fallback = False


@torch._dynamo.assume_constant_result
def _extension_error():
    """The extension's load status; torch.compile takes it as a constant
    instead of tracing the loader (file hashing, a possible build)."""
    return _extension.load()


def _available(name: str) -> bool:
    if name == "reference":
        return True
    if name not in _BACKENDS:
        return False
    return _extension_error() is None


def _resolve_backend(backend, x: torch.Tensor) -> str:
    global _warned_fallback
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    device = x.device.type
    if backend == "auto":
        for name in _AUTO_ORDER.get(device, ()):
            if _available(name):
                return name
        if not _warned_fallback and device != "meta":
            why = _extension_error() or "no fused backend for this device"
            warnings.warn(
                f"comhe_kernels: no fused backend for {device} tensors ({why}); "
                "using the O(N^2)-memory reference",
                RuntimeWarning,
                stacklevel=3,
            )
            _warned_fallback = True
        return "reference"
    if backend not in _BACKENDS:
        raise ValueError(f"backend {backend!r} is not part of this build of comhe_kernels")
    devices, _ = _BACKENDS[backend]
    if device not in devices:
        raise ValueError(f"backend {backend!r} needs x on one of {devices}, but x is on {x.device}")
    if backend != "reference":
        error = _extension_error()
        if error is not None:
            raise RuntimeError(f"backend {backend!r} is unavailable: {error}")
    return backend


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
) -> torch.Tensor:
    r"""Hyperspherical energy of the rows of ``x``, differentiable in ``x``.

    Rows are normalized inside, u_i = x_i / sqrt(||x_i||^2 + eps), as in the
    original MHE code, and the energy sums a function of each pair's distance:

        E = sum_{i<j} f(u_i, u_j),   d2 = 2 - 2 u_i.u_j,   theta = arccos(u_i.u_j) / pi
        power = s > 0:  f = d^-s           power = 0:    f = -log d  (-log d^2 with squared_log)
        power = "a<s>": f = (theta + delta)^-s,  "a0": f = -log(theta + delta)

    Args:
        x: (N, k) or (B, N, k), B independent sets of N points. float32 or
            float64; float16/bfloat16 are computed in float32 (the energy is
            float32, the gradient comes back in x's dtype). Any strides.
        power: a real s >= 0 (fast paths s = 1, 2; 0 is the log energy), or
            "a0", "a1", "a2" (any "a<s>") for the angular energies.
        half_space: use the 2N points [u; -u] (all their pairs), half-space MHE.
        reduction: "mean" (sum / number of pairs, the original convention;
            0 when there are no pairs), "sum", or "none" (each set's sum, (B,)).
        eps: the normalization epsilon (>= 0). With eps = 0 a zero row counts
            as the centre (cosine 0 with every row) and gets a zero gradient,
            and coincident rows give an infinite chordal energy (NaN gradient).
        delta: the angular offset of the original code.
        squared_log: power 0 only: -log(d^2) as the original code (twice -log d).
        backend: "auto", "reference" or "cpu" ("triton", "cuda" on GPU builds).

    NaN or Inf in ``x`` raise ValueError. N = 0 or 1 gives a zero sum
    (half-space N = 1 has the single pair (u, -u)).

    Equivalent to::

        comhe_kernels.reference.hyperspherical_energy(x, power, half_space=...,
            reduction=..., eps=..., delta=..., squared_log=...)
    """
    check_points(x)
    check_reduction(reduction)
    spec = make_spec(power, half_space, eps, delta, squared_log)
    name = _resolve_backend(backend, x)
    batched = x.dim() == 3
    x3 = x if batched else x.unsqueeze(0)
    if x3.dtype in (torch.float16, torch.bfloat16):
        x3 = x3.float()
    per_set = _BACKENDS[name][1](x3, spec)
    return reduce_sets(per_set, x3.shape[1], spec, reduction, batched)


def _register_python_side() -> None:
    """Fake (meta) kernel and autograd formula of the C++ op; run once after it loads."""

    @torch.library.register_fake("comhe::hyperspherical_energy")
    def _fake(x, kind, s, half_space, eps, delta, compute_grad):
        energy = x.new_empty((x.shape[0],), dtype=torch.float64)
        grad = x.new_empty(x.shape if compute_grad else (0,))
        return energy, grad

    def _setup_context(ctx, inputs, output):
        ctx.compute_grad = inputs[-1]
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(output[1])

    def _backward(ctx, grad_energy, _grad_of_grad):
        if torch.is_grad_enabled() and not torch.compiler.is_compiling():
            # the saved gradient is a constant here: a second derivative
            # through it would be silently incomplete
            raise RuntimeError(
                "comhe::hyperspherical_energy has no second derivative (backward with create_graph=True)"
            )
        if not ctx.compute_grad:
            raise RuntimeError(
                "comhe::hyperspherical_energy was called with compute_grad=False; "
                "call it with compute_grad=True to differentiate it"
            )
        (grad,) = ctx.saved_tensors
        return grad_energy.to(grad.dtype)[:, None, None] * grad, None, None, None, None, None, None

    torch.library.register_autograd(
        "comhe::hyperspherical_energy", _backward, setup_context=_setup_context
    )
