"""The energy of point sets whose rows are sharded over the ranks of a process group.

Rank r holds X_r (N_r rows, N_r may differ and may be 0); the union's energy is

    E(X) = sum_r E(X_r) + c sum_{r<s} cross(X_r, X_s),   c = 1, or 2 with half_space

(the half-space set [X; -X] holds each cross pair (u_i, v_j) twice: as itself and
as (-u_i, -v_j); the cross op's half_space counts f(u_i, v_j) + f(u_i, -v_j)
once). The blocks travel around a ring of point-to-point messages
(batch_isend_irecv); each rank computes its rows against the visiting block
while the next one is in flight, and gets its rows' gradient in the same
pass (the visited block's gradient travels along with it and then back to
its owner), so that autograd's backward is a product with saved tensors.
The energy is one all-reduce of the float64 (B,) per-set sums.
"""

from __future__ import annotations

import torch

from .. import _spec
from ..ops._autograd import _first_order
from ..ops.cross_energy import cross_energy, cross_energy_and_grad
from ..ops import hyperspherical_energy as _op
from ._group import TAG_BLOCK, TAG_GRAD, TAG_RETURN, Group, as_timedelta
from ._plan import plan

_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

# The agreement row each rank contributes: its status and size, then what the ranks
# must share, as (name in the error, how to print a value).
_STATUS, _SET, _ROW, _ROWS, _NEEDS_GRAD = range(5)
_number = lambda v: str(int(v)) if v == int(v) else f"{v:g}"  # noqa: E731
_SHARED = (
    ("ndim", _number), ("B", _number), ("k", _number), ("dtype", lambda v: str(_DTYPES[int(v)])),
    ("power", lambda v: _spec.KINDS[int(v)] + " kind"), ("power", _number), ("half_space", lambda v: str(bool(v))),
    ("eps", _number), ("delta", _number), ("squared_log", lambda v: str(v != 1.0)),
    ("reduction", lambda v: repr(_spec.REDUCTIONS[int(v)])), ("precision", lambda v: repr(_spec.PRECISIONS[int(v)])),
)
_OK, _BAD_ARGUMENT, _NOT_FINITE = 0, 1, 2


def _kwargs(power, half_space, eps, delta, squared_log, backend, precision) -> dict:
    return dict(power=power, half_space=half_space, eps=eps, delta=delta, squared_log=squared_log,
                backend=backend, precision=precision)


def _local_row(x, spec_args, reduction, timeout, group: Group, needs_grad: bool):
    """This rank's agreement row (float64, every value exact), its own error if
    any, and its timeout. Every argument is checked here, so that a bad one on
    any rank is reported by all of them after the all-gather."""
    row = torch.zeros(5 + len(_SHARED), dtype=torch.float64)
    error = parsed = None
    try:
        parsed = as_timedelta(timeout)
        _spec.check_points(x)
        if x.dtype not in _DTYPES:
            raise TypeError(f"x_local must be float16, bfloat16, float32 or float64, got {x.dtype}")
        _spec.check_reduction(reduction)
        power, half_space, eps, delta, squared_log, precision = spec_args
        spec = _spec.make_spec(power, half_space, eps, delta, squared_log, precision)
        _spec.check_precision(precision, x.dtype)
        why = group.device_error(x.device)
        if why is not None:
            raise ValueError(why)
        x3 = x if x.dim() == 3 else x.unsqueeze(0)
        bad = ~torch.isfinite(x3.detach()).all(-1)
        if bool(bad.any()):
            where = tuple(bad.nonzero()[0].tolist())
            row[_STATUS], row[_SET], row[_ROW] = _NOT_FINITE, where[0], where[1]
            error = ValueError(_spec.non_finite_message(f"x_local of rank {group.rank}", where))
        row[_ROWS] = x.shape[-2]
        row[_NEEDS_GRAD] = float(needs_grad)
        shared = (x.dim(), x3.shape[0], x.shape[-1], _DTYPES.index(x.dtype), _spec.KINDS.index(spec.kind), spec.s,
                  spec.half_space, spec.eps, spec.delta, spec.scale, _spec.REDUCTIONS.index(reduction),
                  _spec.PRECISIONS.index(precision))
        row[5:] = torch.tensor([float(v) for v in shared], dtype=torch.float64)
    except (TypeError, ValueError) as e:
        row[_STATUS], error = _BAD_ARGUMENT, e
    return row, error, parsed


def _agree(group: Group, row: torch.Tensor, error) -> torch.Tensor:
    """The agreement check: one all-gather of every rank's row; raises the same verdict on every rank."""
    table = group.all_gather(row.to(group.control_device()), "checking the ranks' arguments").cpu()
    if error is not None:
        raise error
    for r in range(group.world_size):
        status = int(table[r, _STATUS])
        if status == _NOT_FINITE:
            where = (int(table[r, _SET]), int(table[r, _ROW]))
            raise ValueError(_spec.non_finite_message(f"x_local of rank {r}", where))
        if status == _BAD_ARGUMENT:
            raise ValueError(
                f"comhe_kernels.distributed.{group.op}: rank {r} rejected its arguments (its own error names "
                "the argument); no rank computed"
            )
    for i, (name, describe) in enumerate(_SHARED):
        column = table[:, 5 + i]
        if bool((column != column[0]).any()):
            values = ", ".join(f"rank {r}: {describe(column[r].item())}" for r in range(group.world_size))
            raise ValueError(
                f"comhe_kernels.distributed.{group.op}: the ranks disagree on {name} ({values}); every rank "
                f"must pass the same {name}"
            )
    return table


def _ring(x: torch.Tensor, sizes: list[int], group: Group, kw: dict, needs_grad: bool):
    """This rank's share of the union's per-set sums, (B,) float64, and the
    gradient of the union's sums with respect to its rows x (B, n, k), or None."""
    b, n, k = x.shape
    visits = plan(group.rank, group.world_size)
    factor = 2.0 if kw["half_space"] else 1.0
    block = lambda rank: x.new_empty((b, sizes[rank], k))  # noqa: E731
    nxt, prev = (group.rank + 1) % group.world_size, (group.rank - 1) % group.world_size

    incoming = block(visits[0].visitor)
    pending = group.post([(x, nxt, TAG_BLOCK)], [(incoming, prev, TAG_BLOCK)], "passing the first block")
    if needs_grad:
        energy, grad = _op.hyperspherical_energy_and_grad(x, reduction="none", **kw)
    else:
        energy, grad = _op.hyperspherical_energy(x, reduction="none", **kw).double(), None
    travels = needs_grad
    partial = received = None  # the visitor's gradient from this rank / from the ranks before
    for t, visit in enumerate(visits):
        pending.wait()
        visitor = incoming
        sends, receives = [], []
        if t + 1 < len(visits):
            incoming = block(visits[t + 1].visitor)
            sends.append((visitor, nxt, TAG_BLOCK))
            receives.append((incoming, prev, TAG_BLOCK))
        if travels and t > 0:
            # The previous visitor's gradient, complete up to this rank, goes on to the next
            # rank, which is visited by that block now; this visitor's arrives from the previous.
            sends.append((partial if received is None else partial + received, nxt, TAG_GRAD))
            received = block(visit.visitor)
            receives.append((received, prev, TAG_GRAD))
        pending = group.post(sends, receives, f"passing the blocks of ring step {t + 2}")

        own_rows, visitor_rows = visit.rows(n, sizes[visit.visitor])
        if needs_grad:
            e, gx, gy = cross_energy_and_grad(x[:, own_rows], visitor[:, visitor_rows], reduction="none", **kw)
            grad[:, own_rows] += factor * gx
            if travels:
                partial = torch.zeros_like(visitor)
                partial[:, visitor_rows] = factor * gy
        else:
            e = cross_energy(x[:, own_rows], visitor[:, visitor_rows], reduction="none", **kw).double()
        energy = energy + factor * e
    pending.wait()
    if travels:
        # The last visitor's gradient goes home; this rank's comes from the rank it visited last.
        last = visits[-1].visitor
        home = partial if received is None else partial + received
        mine = block(group.rank)
        back_from = (group.rank + len(visits)) % group.world_size
        group.post([(home, last, TAG_RETURN)], [(mine, back_from, TAG_RETURN)], "returning the gradients").wait()
        grad += mine
    return energy, grad


def _sharded(x_local, power, half_space, reduction, eps, delta, squared_log, group, backend, precision,
             timeout, needs_grad, op):
    """(energy with the reduction applied, float64; the gradient of x_local or None, in x_local's dtype)."""
    g = Group(group, op)
    spec_args = (power, half_space, eps, delta, squared_log, precision)
    row, error, g.timeout = _local_row(x_local, spec_args, reduction, timeout, g, needs_grad)
    table = _agree(g, row, error)
    sizes = [int(v) for v in table[:, _ROWS]]
    needs_grad = bool(table[:, _NEEDS_GRAD].any())
    batched = x_local.dim() == 3
    x3 = _spec.upcast(x_local.detach() if batched else x_local.detach().unsqueeze(0)).contiguous()
    kw = _kwargs(power, half_space, eps, delta, squared_log, backend, precision)
    energy, grad = _ring(x3, sizes, g, kw, needs_grad)
    energy = g.all_reduce(energy, "summing the energy")
    if reduction == "none":
        return (energy if batched else energy[0]), _shape(grad, x_local)
    total = energy.sum()
    if reduction == "mean":
        pairs = energy.shape[0] * _spec.num_pairs(sum(sizes), half_space)
        total = total / pairs if pairs > 0 else total * 0.0
        if grad is not None:
            grad = grad / pairs if pairs > 0 else grad * 0.0
    return total, _shape(grad, x_local)


def _shape(grad, x_local):
    return None if grad is None else grad.reshape(x_local.shape).to(x_local.dtype)


class _ShardedEnergy(torch.autograd.Function):
    """The forward runs the ring and keeps the gradient: backward is a product, no second ring pass."""

    @staticmethod
    def forward(ctx, x_local, args):
        energy, grad = _sharded(x_local, *args, needs_grad=True, op="hyperspherical_energy")
        ctx.save_for_backward(x_local, grad)
        return energy.to(_spec.upcast(x_local).dtype)

    @staticmethod
    def backward(ctx, grad_energy):
        x_local, grad = ctx.saved_tensors
        return _first_order(grad_energy, grad, x_local), None


def _world_size(group, timeout, op: str) -> int:
    """The group's size; a one-rank world (the plain op) checks the timeout here."""
    world_size = Group(group, op).world_size
    if world_size == 1:
        as_timedelta(timeout)
    return world_size


def hyperspherical_energy(
    x_local: torch.Tensor,
    power=1,
    *,
    half_space: bool = False,
    reduction: str = "mean",
    eps: float = 1e-4,
    delta: float = 1e-4,
    squared_log: bool = False,
    group=None,
    backend: str = "auto",
    precision: str = "auto",
    timeout=None,
) -> torch.Tensor:
    r"""The hyperspherical energy of the union of every rank's rows, differentiable in this rank's rows.

    Each rank of ``group`` passes its own rows ``x_local``, (N_r, k) or
    (B, N_r, k) (B sets, each split over the ranks by rows; N_r may differ
    between ranks and be 0). Every rank gets the same value: the energy of
    :func:`comhe_kernels.hyperspherical_energy` on the rows of all ranks
    concatenated in rank order, with the same arguments ("mean" divides by
    the union's pair count). Backward gives each rank the gradient of that
    energy with respect to its own rows (for the loss every rank computes
    with the same upstream weight; there is no communication in backward).

    Args: as :func:`comhe_kernels.hyperspherical_energy`, plus
        group: the process group (None: the default one). gloo takes CPU
            tensors, NCCL CUDA tensors. A one-rank group computes the plain op.
        timeout: seconds (or a timedelta) that a rank waits for any message
            before it raises; None: the process group's timeout.

    Every rank must make the same call: the ranks first compare k, dtype,
    ndim, B, power, half_space, eps, delta, squared_log, reduction and
    precision (one small all-gather) and all raise the same
    ValueError where they disagree, where one of them got a bad argument
    or a NaN/Inf row. A rank that fails, leaves or stalls later makes the
    others raise RuntimeError within the timeout.

    Each rank holds O((N_r + max_s N_s) k) memory: its rows, its gradient,
    two visiting blocks and their gradients.

    Equivalent to (with every rank's rows gathered)::

        comhe_kernels.hyperspherical_energy(torch.cat(all_ranks_rows, dim=-2), power, ...)
    """
    if _world_size(group, timeout, "hyperspherical_energy") == 1:
        return _op.hyperspherical_energy(
            x_local, power, half_space=half_space, reduction=reduction, eps=eps, delta=delta,
            squared_log=squared_log, backend=backend, precision=precision,
        )
    args = (power, half_space, reduction, eps, delta, squared_log, group, backend, precision, timeout)
    if torch.is_grad_enabled() and isinstance(x_local, torch.Tensor) and x_local.requires_grad:
        return _ShardedEnergy.apply(x_local, args)
    energy, _ = _sharded(x_local, *args, needs_grad=False, op="hyperspherical_energy")
    return energy.to(_spec.upcast(x_local).dtype) if isinstance(x_local, torch.Tensor) else energy


def hyperspherical_energy_and_grad(
    x_local: torch.Tensor,
    power=1,
    *,
    half_space: bool = False,
    reduction: str = "sum",
    eps: float = 1e-4,
    delta: float = 1e-4,
    squared_log: bool = False,
    group=None,
    backend: str = "auto",
    precision: str = "auto",
    timeout=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`hyperspherical_energy` (default reduction "sum") and the gradient of
    its sum with respect to this rank's rows, without an autograd graph (the
    sharded Thomson solver). The energy is float64 and the same on every rank."""
    if _world_size(group, timeout, "hyperspherical_energy_and_grad") == 1:
        return _op.hyperspherical_energy_and_grad(
            x_local, power, half_space=half_space, reduction=reduction, eps=eps, delta=delta,
            squared_log=squared_log, backend=backend, precision=precision,
        )
    args = (power, half_space, reduction, eps, delta, squared_log, group, backend, precision, timeout)
    return _sharded(x_local, *args, needs_grad=True, op="hyperspherical_energy_and_grad")
