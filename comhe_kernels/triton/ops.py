"""The Triton kernels as torch ops, with the schemas of csrc/ops.cpp.

    comhe::hyperspherical_energy_triton(x, kind, s, half_space, eps, delta, compute_grad, precision)
    comhe::cross_energy_triton(x, y, kind, s, half_space, eps, delta, compute_grad, precision)

``torch.library.triton_op`` makes the kernels visible to torch.compile (it
traces the launches through ``wrap_triton`` instead of treating the op as
opaque); ops/backends/triton.py adds autograd, vmap and the fake kernels
(_autograd.register_python_side) and registers the backend.
"""

from __future__ import annotations

import math

import torch
from torch.library import triton_op, wrap_triton

from .._spec import PRECISIONS, check_precision
from . import hyperspherical_energy as _kernels

ENERGY_OP = "comhe::hyperspherical_energy_triton"
CROSS_OP = "comhe::cross_energy_triton"
_KINDS = ("chordal", "angular", "gaussian")
# The float32 Gaussian with t > 4 is computed in float64, as on the CPU: each
# pair's exp(-t d2) is off by t times d2's rounding, and at large t a few
# closest pairs carry the energy (CPU kernel, N = 2000, k = 40: 2.7e-8
# relative at t = 8, 1.1e-5 at t = 50, against the contract's 1e-6).
_GAUSSIAN_FLOAT64_ABOVE = 4.0


def check_args(name, x, kind, s, eps, delta, precision, y=None):
    """The op-level checks, worded as the CPU op's (the public functions check
    everything before this; these guard direct calls of the op)."""
    for label, t in (("x", x), ("y", y)):
        if t is None:
            continue
        if t.dim() != 3:
            raise ValueError(f"{name}: {label} must have shape (B, N, k), got {list(t.shape)}")
        if t.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"{name}: {label} must be float32 or float64, got {t.dtype}")
        if t.shape[2] < 1:
            raise ValueError(f"{name}: {label} must have k >= 1 coordinates, got {list(t.shape)}")
    if y is not None:
        if y.shape[0] != x.shape[0] or y.shape[2] != x.shape[2] or y.dtype != x.dtype or y.device != x.device:
            raise ValueError(
                f"{name}: x and y must have the same B, k, dtype and device, got {list(x.shape)} {x.dtype} "
                f"{x.device} and {list(y.shape)} {y.dtype} {y.device}"
            )
    if kind not in _KINDS:
        raise ValueError(f"{name}: kind must be 'chordal', 'angular' or 'gaussian', got '{kind}'")
    if not (math.isfinite(s) and s >= 0):
        raise ValueError(f"{name}: s must be finite and >= 0, got {s}")
    if kind == "gaussian" and s == 0:
        raise ValueError(f"{name}: the Gaussian kind needs s = t > 0, got {s}")
    for label, v in (("eps", eps), ("delta", delta)):
        if not (math.isfinite(v) and v >= 0):
            raise ValueError(f"{name}: {label} must be finite and >= 0, got {v}")
    if precision not in PRECISIONS:
        raise ValueError(f"{name}: precision must be one of {PRECISIONS}, got '{precision}'")
    check_precision(precision, x.dtype)
    if x.device.type != "cuda" and not _kernels.interpreting():
        raise ValueError(f"{name}: x must be a CUDA tensor (CPU tensors run only under TRITON_INTERPRET=1), got {x.device}")


def _float64_gaussian(x, kind, s) -> bool:
    return x.dtype == torch.float32 and kind == "gaussian" and s > _GAUSSIAN_FLOAT64_ABOVE


@triton_op(ENERGY_OP, mutates_args=())
def hyperspherical_energy_triton(
    x: torch.Tensor, kind: str, s: float, half_space: bool, eps: float, delta: float, compute_grad: bool,
    precision: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    check_args(ENERGY_OP, x, kind, s, eps, delta, precision)
    if _float64_gaussian(x, kind, s):
        energy, grad, _ = _kernels.run(x.double(), None, kind, s, half_space, eps, delta, compute_grad, "ieee", wrap_triton)
        return energy, grad.to(x.dtype)
    energy, grad, _ = _kernels.run(x, None, kind, s, half_space, eps, delta, compute_grad, precision, wrap_triton)
    return energy, grad


@triton_op(CROSS_OP, mutates_args=())
def cross_energy_triton(
    x: torch.Tensor, y: torch.Tensor, kind: str, s: float, half_space: bool, eps: float, delta: float,
    compute_grad: bool, precision: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    check_args(CROSS_OP, x, kind, s, eps, delta, precision, y)
    if _float64_gaussian(x, kind, s):
        energy, gx, gy = _kernels.run(x.double(), y.double(), kind, s, half_space, eps, delta, compute_grad, "ieee",
                                      wrap_triton)
        return energy, gx.to(x.dtype), gy.to(y.dtype)
    return _kernels.run(x, y, kind, s, half_space, eps, delta, compute_grad, precision, wrap_triton)
