"""Two sphere-uniformity objectives that are not sums of f(pair): plain PyTorch,
row-chunked, memory O(chunk * N) instead of O(N^2). NOT fused.

* ``uniformity_loss``: Wang & Isola (ICML 2020), log mean_{i<j} exp(-t d_ij^2).
  The log of a mean is not a pair sum, and exp(-t d^2) is not one of the op's
  energies (chordal Riesz/log, angular). A kernel kind f = exp(-t d^2) in the
  op would give the inner sum, fused; the log is then one scalar op.
* ``min_pairwise_distance``: MHS (wy1iu/Sphere-Uniformity, AISTATS 2021),
  maximize min_{i<j} d_ij. A max-min is not a sum; its (sub)gradient touches
  one pair. A fused version would be a tiled argmax-reduction kernel.

Both normalize rows as the op does, u = x / sqrt(||x||^2 + eps), and use its
squared distance d^2 = 2 - 2 u_i.u_j (eps = 0: exactly x / ||x||).
"""

from __future__ import annotations

import math

import torch

from ._spec import check_finite, check_points
from .reference import normalize

__all__ = ["uniformity_loss", "min_pairwise_distance"]

# Rows per chunk: chunk * N elements of the cosine block (2^22 float32 = 16 MiB).
_BLOCK_ELEMENTS = 1 << 22


def _row_chunks(n: int, chunk_size: int | None):
    step = chunk_size or max(1, _BLOCK_ELEMENTS // max(n, 1))
    for r0 in range(0, n, step):
        yield r0, min(n, r0 + step)


class _LogSumExpGaussian(torch.autograd.Function):
    """log sum_{i != j} exp(-t (2 - 2 u_i.u_j)), chunked forward and backward.

    Backward recomputes each block (as FlashAttention does) instead of storing
    the N x N weights: dL/du_i = 4 t sum_j w_ij u_j, w_ij = exp(z_ij - L), as
    z_ij = z_ji and dz_ij/du_i = 2 t u_j.
    """

    @staticmethod
    def _logits(u, r0, r1, t):
        z = (2 * t) * (u[r0:r1] @ u.T) - 2 * t
        idx = torch.arange(r0, r1, device=u.device)
        z[idx - r0, idx] = -math.inf  # i = j is no pair
        return z

    @staticmethod
    def forward(ctx, u, t, chunk_size):
        n = u.shape[0]
        m = torch.tensor(-math.inf, dtype=torch.float64, device=u.device)
        s = torch.zeros((), dtype=torch.float64, device=u.device)
        for r0, r1 in _row_chunks(n, chunk_size):  # online log-sum-exp
            z = _LogSumExpGaussian._logits(u, r0, r1, t)
            bm = torch.maximum(m, z.max().double())
            s = s * torch.exp(m - bm) + torch.exp(z.double() - bm).sum()
            m = bm
        lse = m + torch.log(s)
        ctx.save_for_backward(u, lse)
        ctx.t, ctx.chunk_size = t, chunk_size
        return lse.to(u.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        u, lse = ctx.saved_tensors
        grad = torch.empty_like(u)
        for r0, r1 in _row_chunks(u.shape[0], ctx.chunk_size):
            w = torch.exp(_LogSumExpGaussian._logits(u, r0, r1, ctx.t) - lse.to(u.dtype))
            grad[r0:r1] = w @ u
        return grad * (4 * ctx.t * grad_out), None, None


def uniformity_loss(x: torch.Tensor, t: float = 2.0, *, eps: float = 1e-4, chunk_size: int | None = None) -> torch.Tensor:
    r"""Wang & Isola's uniformity loss of the rows of ``x`` (N, k):

        L = log( mean_{i<j} exp(-t d_ij^2) ),   d_ij^2 = 2 - 2 u_i.u_j

    Lower is more uniform; t = 2 as in the paper. Equivalent to (for unit rows, eps = 0)::

        torch.pdist(x, p=2).pow(2).mul(-t).exp().mean().log()

    but without the N(N-1)/2 vector: forward and backward go over row blocks
    of ``chunk_size`` rows (default: 2^22 / N), so N = 10^5 embeddings need
    ~16 MiB of scratch instead of 20 GB. Plain PyTorch (three N^2 k matmul
    passes), not the fused op; see the module docstring.
    """
    check_points(x)
    if x.dim() != 2:
        raise ValueError(f"x must have shape (N, k), got shape {tuple(x.shape)}")
    if not (isinstance(t, (int, float)) and math.isfinite(t) and t > 0):
        raise ValueError(f"t must be a finite number > 0, got {t!r}")
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"the uniformity loss needs N >= 2 points (a mean over pairs), got N = {n}")
    check_finite(x)
    u, _ = normalize(x, eps)
    return _LogSumExpGaussian.apply(u, float(t), chunk_size) - math.log(n * (n - 1))


def min_pairwise_distance(
    x: torch.Tensor, *, half_space: bool = False, eps: float = 1e-4, chunk_size: int | None = None
) -> torch.Tensor:
    r"""MHS's objective: the smallest chordal distance min_{i<j} d_ij between rows.

    Maximize it (``loss = -min_pairwise_distance(w)``) to push the closest
    pair apart. half_space=True measures the 2N points [u; -u] (pairs
    (i, -i) have d = 2), i.e. min over i != j of sqrt(2 - 2 |u_i.u_j|). The
    angle is 2 asin(d / 2).

    The closest pair is found without gradient over row blocks (memory
    O(chunk * N)); d of that pair is then recomputed differentiably from the
    difference form ||u_i - u_j||^2 + a_i + a_j (a = eps / (||x||^2 + eps), as
    comhe_kernels.reference), so its gradient is exact: the subgradient of
    the min, which reaches only the two rows of the closest pair.
    """
    check_points(x)
    if x.dim() != 2:
        raise ValueError(f"x must have shape (N, k), got shape {tuple(x.shape)}")
    n = x.shape[0]
    if n < 2 and not half_space:
        raise ValueError(f"the minimum pairwise distance needs N >= 2 points, got N = {n}")
    check_finite(x)
    u, a = normalize(x, eps)
    if n == 1:  # half-space, the single pair (u, -u)
        return torch.sqrt((2 * u[0]).square().sum() + 2 * a[0])
    best, where = -math.inf, (0, 1, 1.0)
    with torch.no_grad():
        for r0, r1 in _row_chunks(n, chunk_size):
            c = u[r0:r1] @ u.T
            if half_space:
                c = c.abs()
            idx = torch.arange(r0, r1, device=u.device)
            c[idx - r0, idx] = -math.inf
            flat = int(c.argmax())
            value = float(c.view(-1)[flat])
            if value > best:
                i, j = r0 + flat // n, flat % n
                sign = -1.0 if half_space and float(u[i] @ u[j]) < 0 else 1.0
                best, where = value, (i, j, sign)
    i, j, sign = where
    d2 = (u[i] - sign * u[j]).square().sum() + a[i] + a[j]
    return torch.sqrt(d2)
