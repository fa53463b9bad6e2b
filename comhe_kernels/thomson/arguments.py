"""Checks of the solver's arguments: a clear error naming the argument."""

from __future__ import annotations

import math
import numbers


def check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_positive(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be finite and > 0, got {value!r}")
    return float(value)


def check_power(power) -> float:
    if isinstance(power, bool) or not isinstance(power, numbers.Real):
        raise TypeError(
            f"power must be a real number s >= 0 (Riesz s > 0, 0 for the log energy), got {type(power).__name__}"
        )
    if not math.isfinite(power) or power < 0:
        raise ValueError(
            f"power must be finite and >= 0 (Riesz s > 0, 0 for the log energy), got {power!r}; "
            "the fused op has no s < 0 (distance-maximizing) energies"
        )
    return float(power)
