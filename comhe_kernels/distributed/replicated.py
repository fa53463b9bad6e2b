"""Each rank's share of the pairs of weights every rank holds (DistributedDataParallel).

Under DDP the ranks hold the same weights and average their gradients. The
N rows are cut into P blocks of equal row counts, and rank r computes the
pairs that the ring's plan gives it (_plan.py: its own block, the blocks of
ranks r-1..r-P//2, the even-P mutual visit split by rows), about N^2 / (2P)
pairs on every rank. The share is multiplied by P, so that DDP's average
of the gradients, (1/P) sum_r P grad S_r, is exactly the gradient of the
full energy sum_r S_r, without any communication beyond DDP's own.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from .. import _spec
from ..ops.cross_energy import cross_energy
from ..ops.hyperspherical_energy import hyperspherical_energy
from ._plan import plan


def block_bounds(n: int, world_size: int) -> list[int]:
    """Row r's block is [bounds[r], bounds[r + 1]): sizes differ by at most one row."""
    return [r * n // world_size for r in range(world_size + 1)]


def _rank_and_size(rank, world_size, group):
    if rank is None and world_size is None:
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError(
                "comhe_kernels.distributed.replicated_energy needs rank and world_size, or an initialized "
                "torch.distributed process group to take them from"
            )
        return dist.get_rank(group), dist.get_world_size(group)
    if rank is None or world_size is None:
        raise ValueError("replicated_energy: pass both rank and world_size, or neither (from the process group)")
    for name, value in (("rank", rank), ("world_size", world_size)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    return rank, world_size


def replicated_energy(
    w: torch.Tensor,
    power=1,
    *,
    half_space: bool = False,
    reduction: str = "mean",
    eps: float = 1e-4,
    delta: float = 1e-4,
    squared_log: bool = False,
    rank: int | None = None,
    world_size: int | None = None,
    group=None,
    backend: str = "auto",
    precision: str = "auto",
) -> torch.Tensor:
    r"""``world_size`` times this rank's share of the energy of ``w``, where every rank holds the same ``w``.

    The shares of the ranks sum to :func:`comhe_kernels.hyperspherical_energy`
    of ``w`` (same arguments; reduction "mean" or "sum", each share divided
    by the full pair count for "mean"), and each rank's share costs about
    1/world_size of it. The returned value is world_size x the share:
    averaged over the ranks (DDP averages gradients) it gives the energy and
    its exact gradient. Only the gradient average is meaningful on its own;
    the value of one rank is not the energy (log the plain op's value, or
    all-reduce these and divide by world_size).

    ``rank`` and ``world_size`` default to those of ``group`` (None: the
    default process group); no communication happens here.

    Equivalent to::

        sum(replicated_energy(w, ..., rank=r, world_size=P) for r in range(P)) / P
            == comhe_kernels.hyperspherical_energy(w, ...)
    """
    rank, world_size = _rank_and_size(rank, world_size, group)
    _spec.check_points(w)
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum' (the shares sum to the energy), got {reduction!r}")
    kw = dict(half_space=half_space, eps=eps, delta=delta, squared_log=squared_log, backend=backend,
              precision=precision)
    if world_size == 1:
        return hyperspherical_energy(w, power, reduction=reduction, **kw)
    n = w.shape[-2]
    bounds = block_bounds(n, world_size)
    block = lambda r: w[..., bounds[r]:bounds[r + 1], :]  # noqa: E731
    own = block(rank)
    share = hyperspherical_energy(own, power, reduction="sum", **kw)
    factor = 2.0 if half_space else 1.0
    for visit in plan(rank, world_size):
        visitor = block(visit.visitor)
        own_rows, visitor_rows = visit.rows(own.shape[-2], visitor.shape[-2])
        cross = cross_energy(own[..., own_rows, :], visitor[..., visitor_rows, :], power, reduction="sum", **kw)
        share = share + factor * cross
    if reduction == "mean":
        pairs = (w.shape[0] if w.dim() == 3 else 1) * _spec.num_pairs(n, half_space)
        share = share / pairs if pairs > 0 else share * 0.0
    return share * world_size


def for_regularizer(energy, distributed):
    """The pair energy of ``CoMHE(..., distributed=...)``: ``energy`` itself for
    False, else its replicated share over the default group (True) or the
    given process group (DDP's)."""
    if distributed is False:
        return energy
    if distributed is not True and not isinstance(distributed, dist.ProcessGroup):
        raise TypeError(
            f"distributed must be a bool or a torch.distributed.ProcessGroup, got {type(distributed).__name__}"
        )
    return ReplicatedPairEnergy(energy, None if distributed is True else distributed)


class ReplicatedPairEnergy:
    """A regularizer's pair energy (``regularizers.PairEnergy``: the op's mean
    over pairs, the settings of ``energy``) as this rank's scaled share of the
    pairs over the ranks of ``group`` (None: the default process group)."""

    def __init__(self, energy, group=None):
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError(
                "distributed=True needs an initialized torch.distributed process group (the one DDP uses)"
            )
        self.base, self.group = energy, group

    def __call__(self, x: torch.Tensor, half_space: bool) -> torch.Tensor:
        e = self.base
        return replicated_energy(
            x, e.power, half_space=half_space, reduction="mean", eps=e.eps, delta=e.delta,
            squared_log=e.squared_log, group=self.group, backend=e.backend,
        )

    def __repr__(self) -> str:
        return f"ReplicatedPairEnergy({self.base!r}, group={self.group!r})"
