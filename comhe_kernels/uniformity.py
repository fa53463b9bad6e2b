"""Two sphere-uniformity objectives beyond MHE.

* ``uniformity_loss``: Wang & Isola (ICML 2020), log mean_{i<j} exp(-t d_ij^2).
  The mean is a pair sum, the op's Gaussian kind (power "g<t>",
  f = exp(-t d2)); the log is one scalar op on it. Fused: O(N k) memory.
* ``min_pairwise_distance``: MHS (wy1iu/Sphere-Uniformity, AISTATS 2021),
  maximize min_{i<j} d_ij. A max-min is not a sum of f(pair), and its
  (sub)gradient touches one pair: plain PyTorch over row blocks, memory
  O(chunk * N). A fused version would be a tiled argmax-reduction kernel.

Both normalize rows as the op does, u = x / sqrt(||x||^2 + eps)
(``comhe_kernels.reference.normalize``), with the squared distance
d^2 = ||u_i - u_j||^2 + a_i + a_j = 2 - 2 u_i.u_j (eps = 0: exactly x / ||x||).
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F

from ._spec import check_finite, check_points, num_pairs
from .ops.hyperspherical_energy import hyperspherical_energy
from .reference import normalize

__all__ = ["uniformity_loss", "min_pairwise_distance", "wang_isola_uniformity"]

# float32 holds exp(-t d2) >= exp(-4 t) (d2 <= 4) as a normal number, with
# ten orders of magnitude to spare for the gradient's products, while
# 4 t <= 64 (exp(-64) = 1.6e-28; float32's normal range ends at 1.2e-38).
# Beyond, the sets are computed in float64 (the CPU kernel computes the
# Gaussian kind with t > 4 from float64 anyway: no extra cost there).
_FLOAT32_MAX_T = 16.0
# Where exp(-t d2) leaves float64's normal range for every pair (t d2 > 708,
# 2.2e-308) the sum loses its digits and then underflows to 0 (t d2 > 745):
# the loss would be wrong or -inf. Only t > 708 / 4 can get there.
_FLOAT64_MAX_TD2 = 708.0


def wang_isola_uniformity(x: torch.Tensor, t: float = 2.0) -> torch.Tensor:
    """Wang and Isola's published formula, O(N^2) memory: the oracle of the
    tests and the baseline of the benchmarks (x (N, k), normalized here)."""
    return torch.pdist(F.normalize(x, dim=-1), p=2).pow(2).mul(-t).exp().mean().log()


def uniformity_loss(x: torch.Tensor, t: float = 2.0, *, eps: float = 1e-4, backend: str = "auto") -> torch.Tensor:
    r"""Wang & Isola's uniformity loss of the rows of ``x``: (N, k) -> 0-dim, (B, N, k) -> (B,).

        L = log( mean_{i<j} exp(-t d_ij^2) ),   d_ij^2 = ||u_i - u_j||^2 + a_i + a_j

    Lower is more uniform; t = 2 as in the paper; any t > 0. The mean is the
    op's Gaussian energy (``power=f"g{t}"``), fused: forward and backward in
    one kernel call, O(N k) memory, no N(N-1)/2 vector. With eps = 0 it is
    Wang and Isola's formula on unit rows::

        torch.pdist(F.normalize(x, dim=1), p=2).pow(2).mul(-t).exp().mean().log()

    (``wang_isola_uniformity``), except that a zero row counts as orthogonal
    to every row (d^2 = 2, the op's convention) where F.normalize leaves it
    at the centre (d^2 = 1). Batched input gives each set's loss, from one
    op call. The result has x's dtype; 16-bit input is computed in float32,
    and t > 16 in float64, so that exp(-t d2) never underflows float32.

    The op sums the pairs in float64, so the log of the mean is exact
    wherever exp(-t d2) is a normal float64 for some pair (t d2 < 708; for
    t <= 177 every pair is). Where t d2 > 708 for every pair of a set the
    mean has lost its digits (and is 0, the loss -inf, from t d2 > 745):
    that is a ValueError naming the set, as no finite loss can be
    returned; lower t.
    """
    check_points(x)
    if isinstance(t, bool) or not isinstance(t, numbers.Real) or not (0 < t < math.inf):
        raise ValueError(f"t must be a finite number > 0, got {t!r}")
    t = float(t)
    n = x.shape[-2]
    if n < 2:
        raise ValueError(f"the uniformity loss needs N >= 2 points (a mean over pairs), got N = {n}")
    work = torch.float64 if x.dtype == torch.float64 or t > _FLOAT32_MAX_T else torch.float32
    # per-set sums in float64 for t > 16, and >= exp(-64) per pair in float32 otherwise
    energy = hyperspherical_energy(x.to(work), f"g{t!r}", reduction="none", eps=eps, backend=backend)
    if 4 * t > _FLOAT64_MAX_TD2:
        low = (energy < torch.finfo(torch.float64).tiny).nonzero()
        if len(low):
            raise ValueError(
                f"uniformity_loss: exp(-t d2) is below float64's normal range for every pair of set "
                f"{int(low[0, 0]) if energy.dim() else 0} (t d2 > {_FLOAT64_MAX_TD2:g} with t = {t:g}): "
                "the loss would be wrong or -inf; lower t"
            )
    return (energy.log() - math.log(num_pairs(n))).to(x.dtype)


def _row_chunks(n: int, chunk_size: int | None):
    # Rows per chunk: chunk * N elements of the cosine block (2^22 float32 = 16 MiB).
    step = chunk_size or max(1, (1 << 22) // max(n, 1))
    for r0 in range(0, n, step):
        yield r0, min(n, r0 + step)


def min_pairwise_distance(
    x: torch.Tensor, *, half_space: bool = False, eps: float = 1e-4, chunk_size: int | None = None
) -> torch.Tensor:
    r"""MHS's objective: the smallest chordal distance min_{i<j} d_ij between rows.

    Maximize it (``loss = -min_pairwise_distance(w)``) to push the closest
    pair apart. half_space=True measures the 2N points [u; -u] (pairs
    (i, -i) have d = 2), i.e. min over i != j of sqrt(2 - 2 |u_i.u_j|). The
    angle is 2 asin(d / 2).

    Not a pair sum, so not the fused op: plain PyTorch. The closest pair is
    found without gradient over row blocks (memory O(chunk * N)); d of that
    pair is then recomputed differentiably from the difference form
    ||u_i - u_j||^2 + a_i + a_j (a = eps / (||x||^2 + eps), as
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
