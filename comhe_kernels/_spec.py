"""Argument checking and the energy specification shared by every backend.

Every public entry point turns its arguments into one ``EnergySpec`` here, so
that the reference, the fused CPU op and the GPU backends agree on what a
``power`` means and reject bad input with the same messages.
"""

from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass

import torch

REDUCTIONS = ("mean", "sum", "none")
# How float32 products are formed (csrc/ops.cpp): "auto" is each backend's
# default, which meets the float32 accuracy contract; the tensor-core modes
# exist on the GPU backends only.
PRECISIONS = ("auto", "ieee", "tf32x3", "tf32", "bf16")
KINDS = ("chordal", "angular", "gaussian")
# A decimal number as the original code writes powers ("0", "1", "2", "1.5",
# "2e-1"); stricter than float(), which also takes "1_0" (= 10), "inf", "nan".
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


@dataclass(frozen=True)
class EnergySpec:
    """What to compute, independent of the backend.

    kind: "chordal" (f of the chordal distance d), "angular" (f of
        theta = arccos(cos)/pi, the normalized angle of the original code) or
        "gaussian" (f = exp(-t d^2), the kernel of Wang and Isola's
        uniformity loss).
    s: the kind's parameter: the exponent of the chordal and angular kinds
        (s = 0 means the log energy), the scale t > 0 of the Gaussian kind.
    half_space: add the mirrored points -x (the 2N-point set of half-space MHE).
    eps: the normalization x / sqrt(||x||^2 + eps).
    delta: the angular offset, f = (theta + delta)^-s or -log(theta + delta).
    scale: a constant factor on the energy (2 for ``squared_log``).
    precision: how float32 products are formed (PRECISIONS).
    """

    kind: str
    s: float
    half_space: bool
    eps: float
    delta: float
    scale: float = 1.0
    precision: str = "auto"


def _finite(value) -> bool:
    """math.isfinite that torch.compile can trace on symbolic floats (dynamic=True)."""
    return -math.inf < value < math.inf


def parse_power(power) -> tuple[str, float]:
    """``power`` -> (kind, s).

    Numbers (and numeric strings, as the original code spells them: "0", "1",
    "2") give the chordal Riesz energy d^-s, s = 0 the log energy. Strings
    "a<s>" ("a0", "a1", "a2", "a1.5") give the angular variants, "g<t>"
    ("g2") the Gaussian kind exp(-t d^2), t > 0.
    """
    if isinstance(power, bool) or not isinstance(power, (numbers.Real, str)):
        raise TypeError(f"power must be a real number or a string like 'a1' or 'g2', got {type(power).__name__}")
    kind = "chordal"
    if isinstance(power, str):
        text = power.strip().lower()
        if text[:1] in ("a", "g"):
            kind, text = ("angular" if text[0] == "a" else "gaussian"), text[1:]
        if not _NUMBER.fullmatch(text):
            raise ValueError(
                "power must be a real number >= 0, 'a<s>' for the angular energy or 'g<t>' for the "
                f"Gaussian one, got {power!r}"
            )
        s = float(text)
    else:
        s = float(power)
    if not _finite(s) or s < 0:
        raise ValueError(f"power must be finite and >= 0 (0 is the log energy), got {power!r}")
    if kind == "gaussian" and s == 0:
        raise ValueError(f"power {power!r}: the Gaussian kind needs t > 0 (f = exp(-t d^2))")
    return kind, s


def make_spec(power, half_space, eps, delta, squared_log, precision="auto") -> EnergySpec:
    kind, s = parse_power(power)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if not isinstance(half_space, bool):
        raise TypeError(f"half_space must be a bool, got {type(half_space).__name__}")
    if not isinstance(squared_log, bool):
        raise TypeError(f"squared_log must be a bool, got {type(squared_log).__name__}")
    for name, value in (("eps", eps), ("delta", delta)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
        if not _finite(value) or value < 0:
            raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
    if kind == "angular" and s > 0 and delta == 0:
        raise ValueError("delta must be > 0 for the angular Riesz energies: theta = 0 would give 1/0")
    # squared_log reproduces the original MHE code's power 0, -log(d^2) = -2 log d.
    scale = 2.0 if (squared_log and kind == "chordal" and s == 0) else 1.0
    return EnergySpec(kind, s, half_space, float(eps), float(delta), scale, precision)


def check_precision(precision: str, dtype: torch.dtype) -> None:
    """The tensor-core modes round float32 products; float64 input is always computed in float64."""
    if dtype == torch.float64 and precision not in ("auto", "ieee"):
        raise ValueError(
            f"precision={precision!r} is for float32 and 16-bit inputs; float64 input is computed in float64 "
            "(precision 'auto' or 'ieee')"
        )


def check_points(x) -> None:
    """Shape and dtype of ``x``: (N, k) or (B, N, k), floating point, k >= 1."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype.is_complex or not x.dtype.is_floating_point:
        raise TypeError(
            f"x must be a real floating-point tensor (float16, bfloat16, float32 or float64), got {x.dtype}"
        )
    if x.dim() not in (2, 3):
        raise ValueError(
            f"x must have shape (N, k) or (B, N, k) (B sets of N points in k dimensions), got shape {tuple(x.shape)}"
        )
    if x.shape[-1] < 1:
        raise ValueError(f"x must have k >= 1 coordinates per point, got shape {tuple(x.shape)}")


def non_finite_message(name: str, where: tuple) -> str:
    """The NaN/Inf error of every backend; ``where`` = (set, row) of the first bad row."""
    return f"{name} contains NaN or Inf (set {where[0]}, row {where[1]}); the energy is undefined"


@torch.library.custom_op("comhe::finite_guard", mutates_args=())
def finite_guard(x: torch.Tensor, name: str) -> torch.Tensor:
    """Raises the NaN/Inf error for a (B, N, k) tensor with a non-finite entry;
    else returns a zero (0-dim, float64) that the caller adds to its result.

    An op rather than a Python check so that torch.compile (fullgraph) and
    vmap can run it: a Python ``if`` on tensor data is a data-dependent guard
    for the one and data-dependent control flow for the other. The zero is
    what keeps the graph from dropping a call whose result nobody uses.
    """
    bad = ~torch.isfinite(x).all(-1)
    if bool(bad.any()):
        raise ValueError(non_finite_message(name, tuple(bad.nonzero()[0].tolist())))
    return torch.zeros((), dtype=torch.float64, device=x.device)


@finite_guard.register_fake
def _(x, name):
    return torch.empty((), dtype=torch.float64, device=x.device)


@finite_guard.register_vmap
def _(info, in_dims, x, name):
    xb = x if in_dims[0] is None else x.movedim(in_dims[0], 0).flatten(0, 1)
    return finite_guard(xb, name), None


def check_cross(x, y) -> None:
    """The two sets of the cross-set energy: each as check_points, and alike in
    what they must share (the number of sets, k, dtype, device)."""
    for name, t in (("x", x), ("y", y)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        try:
            check_points(t)
        except (TypeError, ValueError) as e:
            raise type(e)(str(e).replace("x must", f"{name} must", 1)) from None
    if x.dim() != y.dim():
        raise ValueError(
            f"x and y must both be (N, k) / (M, k) or both (B, N, k) / (B, M, k), got shapes "
            f"{tuple(x.shape)} and {tuple(y.shape)}"
        )
    if x.dim() == 3 and x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must hold the same number of sets B, got {x.shape[0]} and {y.shape[0]}")
    if x.shape[-1] != y.shape[-1]:
        raise ValueError(f"x and y must have the same k (coordinates per point), got {x.shape[-1]} and {y.shape[-1]}")
    if x.dtype != y.dtype:
        raise TypeError(f"x and y must have the same dtype, got {x.dtype} and {y.dtype}")
    if x.device != y.device:
        raise ValueError(f"x and y must be on the same device, got {x.device} and {y.device}")


def check_finite(x: torch.Tensor, name: str = "x") -> torch.Tensor:
    """The NaN/Inf policy for (N, k) or (B, N, k) input: an error naming the
    first bad row; returns the zero of finite_guard."""
    return finite_guard((x if x.dim() == 3 else x.unsqueeze(0)).detach(), name)


def upcast(x: torch.Tensor) -> torch.Tensor:
    """16-bit floats are computed in float32 by every backend."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def check_reduction(reduction) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def num_pairs(n: int, half_space: bool = False) -> int:
    """How many pairs the energy of one set of ``n`` points sums over.

    n(n-1)/2, or n(2n-1) for the half-space set [x; -x] of 2n points.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return n * (2 * n - 1) if half_space else n * (n - 1) // 2


def num_cross_pairs(n: int, m: int, half_space: bool = False) -> int:
    """How many pairs the cross-set energy of sets of n and m points sums over:
    n m, or 2 n m with the mirrored points of the second set."""
    if n < 0 or m < 0:
        raise ValueError(f"n and m must be >= 0, got {n} and {m}")
    return (2 if half_space else 1) * n * m


def reduce_cross(per_set: torch.Tensor, n: int, m: int, spec: EnergySpec, reduction: str, batched: bool):
    """reduce_sets for the cross-set energy: "mean" divides by B * num_cross_pairs."""
    return _reduce(per_set, num_cross_pairs(n, m, spec.half_space), spec, reduction, batched)


def reduce_sets(per_set: torch.Tensor, n: int, spec: EnergySpec, reduction: str, batched: bool) -> torch.Tensor:
    """(B,) per-set sums -> the requested reduction, with ``spec.scale`` applied.

    "sum": the total over every pair of every set. "mean": that total divided
    by the number of pairs (B * num_pairs), the original code's convention; a
    set with no pairs (N < 2 in the full space) has mean 0. "none": each set's
    sum, shape (B,) (a 0-dim tensor for unbatched input).
    """
    return _reduce(per_set, num_pairs(n, spec.half_space), spec, reduction, batched)


def _reduce(per_set: torch.Tensor, pairs_per_set: int, spec: EnergySpec, reduction: str, batched: bool):
    per_set = per_set * spec.scale if spec.scale != 1.0 else per_set
    if reduction == "none":
        return per_set if batched else per_set[0]
    total = per_set.sum()
    if reduction == "sum":
        return total
    pairs = per_set.shape[0] * pairs_per_set
    return total / pairs if pairs > 0 else total * 0.0
