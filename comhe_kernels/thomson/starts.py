"""Starting configurations and moves: the Fibonacci lattice, random sets, the search's
children (cut-and-splice mating, cap rotations) and the multilevel subdivision."""

from __future__ import annotations

import itertools
import math

import torch

from .arguments import check_int
from .sphere import mean_spacing, normalize

# Neighbour search: cells of this many mean spacings. On relaxed sets the 7th neighbour is
# at about sqrt(3) spacings (the second ring of the triangular lattice), so nearly every
# point finds its 7 nearest in the 27 cells around its own; the others are searched in full.
_CELL_SPACINGS = 2.0
# Candidate distances computed at once (memory: a few times 2^22 elements).
_BLOCK = 2**22
# A subdivided start is used only where no point is closer to another than this share of the
# mean spacing: subdividing a level that was not relaxed puts midpoints on top of existing
# points or of each other (at N = 50,000 with 2 s, 8 exact duplicates and an infinite energy;
# the 7 nearest neighbours of an unrelaxed Fibonacci lattice of 782 points gave pairs at 0.04
# of the spacing), while on relaxed levels the closest pair stays above half the spacing.
_MIN_GAP = 0.25


def fibonacci_sphere(n: int, dtype=torch.float64, device=None) -> torch.Tensor:
    """The spherical Fibonacci lattice: n points on S^2, shape (n, 3).

    z_i = 1 - (2i + 1) / n, phi_i = 2 pi i / golden^2 (the golden angle), i = 0..n-1:
    equal-area latitude bands with a quasi-uniform spiral in longitude.
    """
    n = check_int("n", n, 1)
    i = torch.arange(n, dtype=torch.float64)
    z = 1.0 - (2.0 * i + 1.0) / n
    r = torch.sqrt((1.0 - z * z).clamp_min(0.0))
    golden_angle = math.pi * (3.0 - math.sqrt(5.0))
    phi = golden_angle * i
    x = torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], dim=1)
    return x.to(dtype=dtype, device=device)


def random_points(count: int, n: int, dim: int, gen: torch.Generator) -> torch.Tensor:
    """count independent sets of n uniform points on S^{dim-1} (normalized Gaussians), float64, CPU."""
    return normalize(torch.randn(count, n, dim, generator=gen, dtype=torch.float64))


def random_orthogonal(k: int, gen: torch.Generator) -> torch.Tensor:
    """A Haar-random k x k orthogonal matrix (QR of a Gaussian with the signs fixed)."""
    q, r = torch.linalg.qr(torch.randn(k, k, generator=gen, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


def mate(a: torch.Tensor, b: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Cut-and-splice child of two (N, k) parents: after independent random rotations,
    the top m points of a along the first axis and the bottom N - m of b, m uniform in 1..N-1."""
    n, k = a.shape
    a = a @ random_orthogonal(k, gen).T
    b = b @ random_orthogonal(k, gen).T
    m = int(torch.randint(1, n, (1,), generator=gen))
    top = torch.argsort(a[:, 0], descending=True)[:m]
    bottom = torch.argsort(b[:, 0])[: n - m]
    return torch.cat([a[top], b[bottom]])


def rotate_cap(a: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Mutation: the points of a random cap holding 5-30% of a (N, k) set are turned
    by a random orthogonal map of the directions orthogonal to the cap's axis
    (a rotation about the axis on S^2; a reflection on the circle)."""
    n, k = a.shape
    axis = normalize(torch.randn(k, generator=gen, dtype=torch.float64))
    share = 0.05 + 0.25 * float(torch.rand((), generator=gen, dtype=torch.float64))
    inside = torch.argsort(a @ axis, descending=True)[: max(1, round(share * n))]
    # Basis [axis, V] of R^k; map p -> axis (axis.p) + V O V^T p.
    basis = torch.linalg.qr(torch.cat([axis[:, None], torch.randn(k, k - 1, generator=gen, dtype=torch.float64)], 1))[0]
    v = basis[:, 1:]
    o = random_orthogonal(k - 1, gen)
    p = a[inside]
    child = a.clone()
    child[inside] = (p @ axis)[:, None] * axis + (p @ v) @ o.T @ v.T
    return child


def neighbours(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k nearest other points of every row of x (m, 3), m > k: distances and indices (m, k),
    nearest first, in O(m) time and memory for evenly spread points.

    Points are binned into cubic cells of _CELL_SPACINGS mean spacings, and each
    point is compared with the points of the 27 cells around its own, which
    hold every point within one cell width. Points whose k-th candidate is
    farther than that (sparse regions) are searched again with cells twice as
    wide, until the cells hold the whole sphere.
    """
    m = x.shape[0]
    if not 0 < k < m:
        raise ValueError(f"neighbours needs 0 < k < m, got k = {k} for m = {m} points")
    width = _CELL_SPACINGS * mean_spacing(m, 3)
    dist = torch.empty(m, k, dtype=x.dtype)
    index = torch.empty(m, k, dtype=torch.long)
    todo = torch.arange(m)
    while todo.numel() > 0:
        dist[todo], index[todo] = _search_cells(x, todo, k, width)
        todo = todo[dist[todo, -1] > width]
        width *= 2
    return dist, index


def _search_cells(x: torch.Tensor, rows: torch.Tensor, k: int, width: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The k nearest points to x[rows] among those in the 27 cells of side ``width`` around each.

    The rows of one cell share their candidates: the lists are made per occupied cell
    (a sixth as many as points on evenly spread sets), then looked up per row.
    """
    side = int(2.0 / width) + 3  # cells per axis, with a margin: the keys of neighbouring cells stay apart
    cell = ((x + 1.0) / width).long() + 1
    key = (cell[:, 0] * side + cell[:, 1]) * side + cell[:, 2]
    order = torch.argsort(key)
    sorted_key = key[order]
    cells, row_cell = torch.unique(key[rows], return_inverse=True)
    shifts = torch.tensor([(a * side + b) * side + c for a, b, c in itertools.product((-1, 0, 1), repeat=3)])
    near = (cells[:, None] + shifts).reshape(-1)  # the 27 cells around each occupied cell
    lo = torch.searchsorted(sorted_key, near)
    count = torch.searchsorted(sorted_key, near, right=True) - lo
    # Candidate lists, one row per occupied cell, padded with -1: cell pair j contributes
    # count[j] consecutive points of the sorted order.
    j = torch.repeat_interleave(torch.arange(near.numel()), count)
    start = torch.cumsum(count, 0) - count
    owner = j // 27
    per_cell = count.view(-1, 27).sum(1)
    col = torch.arange(j.numel()) - (torch.cumsum(per_cell, 0) - per_cell)[owner]
    lists = torch.full((cells.numel(), max(int(per_cell.max()), k)), -1, dtype=torch.long)
    lists[owner, col] = order[lo[j] + torch.arange(j.numel()) - start[j]]
    dist = torch.empty(rows.numel(), k, dtype=x.dtype)
    index = torch.empty(rows.numel(), k, dtype=torch.long)
    block = max(1, _BLOCK // lists.shape[1])
    for b0 in range(0, rows.numel(), block):
        query = rows[b0 : b0 + block]
        cand = lists[row_cell[b0 : b0 + block]]
        d = (x[cand.clamp_min(0)] - x[query, None]).norm(dim=-1)
        d[(cand < 0) | (cand == query[:, None])] = math.inf  # padding and the point itself
        d, t = d.topk(k, largest=False)  # a row with fewer than k candidates keeps inf: searched again
        dist[b0 : b0 + block], index[b0 : b0 + block] = d, cand.gather(1, t)
    return dist, index


def subdivide(x: torch.Tensor) -> torch.Tensor:
    """Edge-midpoint subdivision of m points on S^2: the m points and the normalized
    midpoints of the 3m - 6 edges of their spherical Delaunay triangulation (4m - 6 points).

    The edges are taken as the 3m - 6 shortest pairs among every point's 7
    nearest neighbours, which needs no triangulation code: on relaxed
    configurations this set equals the convex hull's edges (all 7497 edges at
    m = 2501, checked against scipy's ConvexHull). On other sets it need not:
    see ``well_separated``.
    """
    m = x.shape[0]
    _, j = neighbours(x, min(7, m - 1))
    i = torch.arange(m, device=x.device)[:, None].expand_as(j)
    key = torch.unique(torch.minimum(i, j) * m + torch.maximum(i, j))
    a, b = key // m, key % m
    edges = (x[a] - x[b]).norm(dim=1).argsort()[: 3 * m - 6]
    return torch.cat([x, normalize(x[a[edges]] + x[b[edges]])])


def well_separated(x: torch.Tensor) -> bool:
    """Whether no two of the points x (n, 3) are closer than _MIN_GAP mean spacings."""
    if x.shape[0] < 2:
        return True
    gap = _MIN_GAP * mean_spacing(x.shape[0], 3)
    # Two points closer than the gap lie in neighbouring cells of that size: one pass over
    # cells that hold about one point each (the full neighbour search costs 5x more).
    dist, _ = _search_cells(x, torch.arange(x.shape[0]), 1, gap)
    return bool(dist.min() >= gap)
