"""Projected neuron sets for Compressive MHE (CoMHE, Lin et al., CVPR 2020).

A layer's N neurons w_i (rows of W, shape (N, k)) are mapped by a matrix P of
shape (pd, k) to P w_i, and the hyperspherical energy of the projected set is
minimized instead of (or besides) that of the original set. The op normalizes
rows itself, so every function here returns the UNnormalized projected rows
W P^T and leaves the normalization to ``hyperspherical_energy``; this is the
"normalize after projecting" of the original code (rmlin/CoMHE).

Also here: the angle-preservation objective of AP-CoMHE, computed from k x k,
pd x pd and k x pd Gram matrices instead of the N x N cosine matrices, and the
channel-group split of G-CoMHE.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._spec import check_finite, upcast
from .reference import normalize


def neurons(weight: torch.Tensor) -> torch.Tensor:
    """The neuron matrix of a layer weight: one row per output unit.

    Linear (out, in) -> itself; Conv{1,2,3}d (out, in/groups, *kernel) ->
    (out, in/groups * prod(kernel)), as ``filt.reshape(-1, n_filt)`` in the
    original TensorFlow code (whose filters are (kh, kw, in, out)).
    """
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    if weight.dim() < 2:
        raise ValueError(
            f"weight must have shape (out, in, *kernel) with one row per neuron, got shape {tuple(weight.shape)}"
        )
    return weight.reshape(weight.shape[0], -1)


def project(w: torch.Tensor, projection: torch.Tensor) -> torch.Tensor:
    """Rows of ``w`` (N, k) projected by ``projection`` (pd, k) or (B, pd, k).

    Returns W P^T of shape (N, pd), or (B, N, pd): B projected copies of the
    set in one tensor, which the op evaluates in ONE batched call.
    """
    if projection.dim() not in (2, 3) or projection.shape[-1] != w.shape[-1]:
        raise ValueError(
            f"projection must have shape (pd, k) or (B, pd, k) with k = {w.shape[-1]} "
            f"(the neurons' dimension), got shape {tuple(projection.shape)}"
        )
    return torch.matmul(w, projection.transpose(-1, -2))


def gaussian_projections(
    num_proj: int, proj_dim: int, fan_in: int, *, generator=None, device=None, dtype=None
) -> torch.Tensor:
    """RP-CoMHE's projections: (num_proj, proj_dim, fan_in) with i.i.d. N(0, 1)
    entries (``tf.random_normal(shape=[pd, k], stddev=1.0)`` in the original).
    The scale is irrelevant: the op normalizes the projected rows."""
    return torch.randn(num_proj, proj_dim, fan_in, generator=generator, device=device, dtype=dtype)


def angle_preservation_loss(
    weight: torch.Tensor, projection: torch.Tensor, *, eps: float = 1e-4, method: str = "gram"
) -> torch.Tensor:
    r"""AP-CoMHE's objective ||cos(W P^T) - cos(W)||_F (Frobenius norm, not squared).

    cos(X) is the N x N matrix of row cosines with the original code's epsilon,
    c_ij = x_i.x_j / (sqrt(||x_i||^2 + eps) sqrt(||x_j||^2 + eps)), diagonal
    included, exactly as ``tf.norm(cal(P W) - cal(W))`` in rmlin/CoMHE
    (angle_projection/architecture.py).

    method="gram" (default) never forms an N x N matrix. With U, V the
    normalized rows of W and W P^T, cos(W) = U U^T, cos(W P^T) = V V^T, and

        ||V V^T - U U^T||_F^2 = ||V^T V||_F^2 + ||U^T U||_F^2 - 2 ||U^T V||_F^2,

    Gram matrices of size pd x pd, k x k and k x pd (the last two replaced by
    U U^T when N < k, so the memory never exceeds that of W itself). Cost
    O(N k pd + N min(N, k)^2) instead of O(N^2 (k + pd)) time and O(N^2) memory:
    at N = 10^5 classes the N x N float32 matrix alone would take 40 GB.
    method="naive" forms both N x N matrices (the original code; for tests).

    The rows are normalized as the op does (``comhe_kernels.reference.normalize``,
    the original's ``cal``). 16-bit inputs are computed in float32, as by the
    op: the three Gram terms cancel to O(N^2 / pd), which float16's 2^-11
    would not resolve.

    Args:
        weight: (N, k) neurons, or a layer weight (out, ...) (reshaped).
        projection: (pd, k).
    """
    if method not in ("gram", "naive"):
        raise ValueError(f"method must be 'gram' or 'naive', got {method!r}")
    w = upcast(neurons(weight))
    if projection.dim() != 2:
        raise ValueError(f"projection must have shape (pd, k), got shape {tuple(projection.shape)}")
    check_finite(w)
    u, _ = normalize(w, eps)
    v, _ = normalize(project(w, upcast(projection)), eps)
    if method == "naive":
        return torch.linalg.matrix_norm(v @ v.T - u @ u.T)
    n, k = u.shape
    # ||U U^T||_F^2 through whichever Gram matrix is smaller (equal by the trace identity).
    uu = (u.T @ u) if k <= n else (u @ u.T)
    sq = (v.T @ v).square().sum() + uu.square().sum() - 2 * (u.T @ v).square().sum()
    # The three terms are O(N^2 / pd) and their difference is of the same order
    # for any pd < k (a random P distorts each cosine by ~1/sqrt(pd)), so the
    # cancellation costs few digits; clamp only guards the sqrt's gradient at 0.
    return sq.clamp_min(torch.finfo(sq.dtype).tiny).sqrt()


def channel_groups(w: torch.Tensor, in_channels: int, num_groups: int) -> torch.Tensor:
    """G-CoMHE's groups: (N, k) neurons -> (G, N, k_g), in ONE tensor.

    A neuron of a conv layer is (in_channels, *kernel) flattened; group g keeps
    the contiguous block of input channels ``torch.tensor_split(range(C), G)[g]``
    with their whole kernels (for Linear, the kernel is one tap). Group sizes
    differ by at most one channel; smaller groups are padded with zero
    columns, which changes no norm and no dot product, so every group's
    energy is exact and the G energies come from one batched op call.
    """
    n, k = w.shape
    if in_channels < 1 or k % in_channels:
        raise ValueError(f"in_channels = {in_channels} does not divide the neuron dimension {k}")
    if not 1 <= num_groups <= in_channels:
        raise ValueError(f"num_groups must be in [1, in_channels = {in_channels}], got {num_groups}")
    taps = k // in_channels
    w3 = w.reshape(n, in_channels, taps)
    if in_channels % num_groups == 0:  # equal groups: a strided view, no copy
        return w3.reshape(n, num_groups, (in_channels // num_groups) * taps).transpose(0, 1)
    chunks = torch.tensor_split(w3, num_groups, dim=1)
    width = chunks[0].shape[1]  # tensor_split puts the larger chunks first
    return torch.stack([F.pad(c, (0, 0, 0, width - c.shape[1])).reshape(n, width * taps) for c in chunks])
