"""Row operations on batches of point sets (B, N, k) on the unit sphere S^{k-1}."""

from __future__ import annotations

import math

import torch


def rowdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise inner products, (B, N, k) x (B, N, k) -> (B, N, 1)."""
    return (a * b).sum(-1, keepdim=True)


def dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-set inner products, (B, N, k) x (B, N, k) -> (B,)."""
    return (a * b).sum((1, 2))


def normalize(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def tangent(g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """g with its radial part removed at the unit rows x: the projection on the tangent spaces."""
    return g - rowdot(g, x) * x


def grad_rms(g: torch.Tensor) -> torch.Tensor:
    """RMS of the rows' gradients per set, (B,) float64."""
    return g.double().square().sum((1, 2)).div(g.shape[1]).sqrt()


def mean_spacing(n: int, dim: int) -> float:
    """Spacing of n evenly spread points on S^{dim-1}: the side of a triangle of area
    4 pi / (2n) on S^2, (area / n)^(1 / (dim - 1)) in general."""
    if dim == 3:
        return math.sqrt(8.0 * math.pi / (math.sqrt(3.0) * n))
    area = 2.0 * math.pi ** (dim / 2) / math.gamma(dim / 2)
    return (area / n) ** (1.0 / (dim - 1))
