"""Argument checking and the energy specification shared by every backend.

Every public entry point turns its arguments into one ``EnergySpec`` here, so
that the reference, the fused CPU op and the GPU backends agree on what a
``power`` means and reject bad input with the same messages.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch

REDUCTIONS = ("mean", "sum", "none")
KINDS = ("chordal", "angular")


@dataclass(frozen=True)
class EnergySpec:
    """What to compute, independent of the backend.

    kind: "chordal" (f of the chordal distance d) or "angular" (f of
        theta = arccos(cos)/pi, the normalized angle of the original code).
    s: the Riesz exponent; s = 0 means the log energy.
    half_space: add the mirrored points -x (the 2N-point set of half-space MHE).
    eps: the normalization x / sqrt(||x||^2 + eps).
    delta: the angular offset, f = (theta + delta)^-s or -log(theta + delta).
    scale: a constant factor on the energy (2 for ``squared_log``).
    """

    kind: str
    s: float
    half_space: bool
    eps: float
    delta: float
    scale: float = 1.0


def parse_power(power) -> tuple[str, float]:
    """``power`` -> (kind, s).

    Numbers (and numeric strings, as the original code spells them: "0", "1",
    "2") give the chordal Riesz energy d^-s, s = 0 the log energy. Strings
    "a<s>" ("a0", "a1", "a2", "a1.5") give the angular variants.
    """
    if isinstance(power, bool) or not isinstance(power, (numbers.Real, str)):
        raise TypeError(f"power must be a real number or a string like 'a1', got {type(power).__name__}")
    kind = "chordal"
    value = power
    if isinstance(power, str):
        text = power.strip().lower()
        if text.startswith("a"):
            kind, text = "angular", text[1:]
        try:
            value = float(text)
        except ValueError:
            raise ValueError(
                f"power must be a real number >= 0 or 'a<s>' for the angular energy, got {power!r}"
            ) from None
    s = float(value)
    if not math.isfinite(s) or s < 0:
        raise ValueError(f"power must be finite and >= 0 (0 is the log energy), got {power!r}")
    return kind, s


def make_spec(power, half_space, eps, delta, squared_log) -> EnergySpec:
    kind, s = parse_power(power)
    if not isinstance(half_space, bool):
        raise TypeError(f"half_space must be a bool, got {type(half_space).__name__}")
    if not isinstance(squared_log, bool):
        raise TypeError(f"squared_log must be a bool, got {type(squared_log).__name__}")
    for name, value in (("eps", eps), ("delta", delta)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
    if kind == "angular" and s > 0 and delta == 0:
        raise ValueError("delta must be > 0 for the angular Riesz energies: theta = 0 would give 1/0")
    # squared_log reproduces the original MHE code's power 0, -log(d^2) = -2 log d.
    scale = 2.0 if (squared_log and kind == "chordal" and s == 0) else 1.0
    return EnergySpec(kind, s, half_space, float(eps), float(delta), scale)


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


def check_finite(x: torch.Tensor) -> None:
    """The NaN/Inf policy: non-finite input is an error, reported with its position."""
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        where = bad.nonzero()[0].tolist()
        raise ValueError(f"x contains NaN or Inf (first at index {tuple(where)}); the energy is undefined")


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


def reduce_sets(per_set: torch.Tensor, n: int, spec: EnergySpec, reduction: str, batched: bool) -> torch.Tensor:
    """(B,) per-set sums -> the requested reduction, with ``spec.scale`` applied.

    "sum": the total over every pair of every set. "mean": that total divided
    by the number of pairs (B * num_pairs), the original code's convention; a
    set with no pairs (N < 2 in the full space) has mean 0. "none": each set's
    sum, shape (B,) (a 0-dim tensor for unbatched input).
    """
    per_set = per_set * spec.scale if spec.scale != 1.0 else per_set
    if reduction == "none":
        return per_set if batched else per_set[0]
    total = per_set.sum()
    if reduction == "sum":
        return total
    pairs = per_set.shape[0] * num_pairs(n, spec.half_space)
    return total / pairs if pairs > 0 else total * 0.0
