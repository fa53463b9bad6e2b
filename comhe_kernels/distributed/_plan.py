"""Which pairs of row blocks each rank computes: the plan shared by the ring
(rows sharded over ranks) and the replicated split (DDP).

The union of P row blocks X_0..X_{P-1} has the pairs of each block with
itself (rank r computes E(X_r)) and the pairs between blocks. Each unordered
pair of blocks is computed on one rank: rank r visits the blocks of ranks
r-1, ..., r-P//2; for even P the last visit is mutual (r and r - P/2 visit
each other), so the lower rank of the two computes the first ceil(n/2) of
its own rows against the other block, and the upper rank the rest of the
lower rank's rows against its own. With equal blocks of b rows every rank
computes b^2 (P-1)/2 + b^2/2 = P b^2 / 2 pairs: the pairs split evenly, a
triangular split of row-block pairs (equal row ranges of the upper triangle
would give rank 0 about 2/P of all pairs). The visited block's gradient
travels back to its owner.

Computing each cross pair on both of its ranks instead (no gradient
traffic) sends as many bytes and costs 1.5x the compute per rank at P = 2
(measured 1.45x at N = 16384, k = 256), 2x at large P: docs/distributed.md.
"""

from __future__ import annotations

from dataclasses import dataclass


def first_half(n: int) -> int:
    """The rows [0, first_half(n)) of the lower block in a mutual visit."""
    return (n + 1) // 2


@dataclass(frozen=True)
class Visit:
    """This rank's rows against the block of rank ``visitor``.

    split: None (all rows of both), "own" (only this rank's first half of
    rows: it is the lower rank of a mutual visit) or "visitor" (only the
    visitor's second half of rows: this rank is the upper one).
    """

    visitor: int
    split: str | None

    def rows(self, n_own: int, n_visitor: int) -> tuple[slice, slice]:
        """The rows of this rank's block and of the visitor's that the visit pairs."""
        if self.split == "own":
            return slice(0, first_half(n_own)), slice(0, n_visitor)
        if self.split == "visitor":
            return slice(0, n_own), slice(first_half(n_visitor), n_visitor)
        return slice(0, n_own), slice(0, n_visitor)


def plan(rank: int, world_size: int) -> list[Visit]:
    """The visits of ``rank``, in ring order: visit t (1-based) is the block of rank (rank - t) mod P."""
    p = world_size
    visits = []
    for t in range(1, p // 2 + 1):
        visitor = (rank - t) % p
        split = None
        if 2 * t == p:
            split = "own" if rank < visitor else "visitor"
        visits.append(Visit(visitor, split))
    return visits
