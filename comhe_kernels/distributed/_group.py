"""The process group side: membership, the agreement check before the ring,
point-to-point messages with a bounded wait, and their errors.

Every failure here is raised on every rank that can still hear the others:
an argument one rank got wrong is reported by all of them after the one
all-gather of the agreement check, and a rank that fails, leaves or stalls
inside the ring makes the others raise once ``timeout`` (else the process
group's own timeout, torch.distributed.init_process_group(timeout=...))
has passed, never a hang.
"""

from __future__ import annotations

import datetime
import numbers

import torch
import torch.distributed as dist

# Message tags (gloo matches a receive by source and tag; NCCL by order).
TAG_BLOCK, TAG_GRAD, TAG_RETURN = 1, 2, 3


def as_timedelta(timeout) -> datetime.timedelta | None:
    if timeout is None or isinstance(timeout, datetime.timedelta):
        return timeout
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real) or not timeout > 0:
        raise ValueError(f"timeout must be None, a positive number of seconds or a timedelta, got {timeout!r}")
    return datetime.timedelta(seconds=float(timeout))


class Group:
    """This rank's view of ``group`` (None: the default group) for one call of ``op``.

    ``timeout`` (a timedelta or None: the group's own) bounds every wait.
    """

    timeout: datetime.timedelta | None = None

    def __init__(self, group, op: str):
        self.op = op
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError(
                f"comhe_kernels.distributed.{op} needs an initialized torch.distributed process group "
                "(torch.distributed.init_process_group, e.g. under torchrun); in one process use "
                f"comhe_kernels.{op}"
            )
        self.group = group
        self.rank = dist.get_rank(group)
        if self.rank < 0:
            raise RuntimeError(f"comhe_kernels.distributed.{op}: this process is not a member of the given group")
        self.world_size = dist.get_world_size(group)
        self.backend = str(dist.get_backend(group))
        self._global = [dist.get_global_rank(group, r) if group is not None else r for r in range(self.world_size)]

    def global_rank(self, rank: int) -> int:
        """The default group's rank of this group's ``rank`` (what point-to-point messages name)."""
        return self._global[rank]

    def device_error(self, device: torch.device) -> str | None:
        """Why tensors on ``device`` cannot travel in this group, or None."""
        if self.backend == "nccl" and device.type != "cuda":
            return f"the NCCL process group needs CUDA tensors, got x_local on {device}"
        if self.backend == "gloo" and device.type != "cpu":
            return f"the gloo process group (point-to-point) needs CPU tensors, got x_local on {device}"
        return None

    def control_device(self) -> torch.device:
        """Where the small agreement tensors live: the current CUDA device for NCCL, else the CPU."""
        if self.backend == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def _failed(self, what: str, error: Exception) -> RuntimeError:
        bound = (
            f"timeout={self.timeout.total_seconds():g} s"
            if self.timeout is not None
            else "the process group's timeout (init_process_group(timeout=...))"
        )
        return RuntimeError(
            f"comhe_kernels.distributed.{self.op}: rank {self.rank} of {self.world_size} failed while {what}: "
            f"{error}. Another rank failed, left, did not make the same call or is slower than {bound}; "
            "the process group is not usable after this"
        )

    def wait(self, work, what: str) -> None:
        try:
            if self.timeout is None:
                work.wait()
            else:
                work.wait(self.timeout)
        except RuntimeError as e:
            raise self._failed(what, e) from e

    def all_gather(self, row: torch.Tensor, what: str) -> torch.Tensor:
        """(world_size, len(row)): every rank's ``row``."""
        rows = [torch.empty_like(row) for _ in range(self.world_size)]
        try:
            work = dist.all_gather(rows, row, group=self.group, async_op=True)
        except RuntimeError as e:
            raise self._failed(what, e) from e
        self.wait(work, what)
        return torch.stack(rows)

    def all_reduce(self, t: torch.Tensor, what: str) -> torch.Tensor:
        try:
            work = dist.all_reduce(t, group=self.group, async_op=True)
        except RuntimeError as e:
            raise self._failed(what, e) from e
        self.wait(work, what)
        return t

    def post(self, sends, receives, what: str) -> "Pending":
        """Start the messages: sends and receives are (tensor, peer group rank, tag).

        Empty tensors are not sent: both ends know every block's size from
        the agreement check, so both skip the same messages.
        """
        ops = [
            dist.P2POp(fn, t, self._global[peer], self.group, tag)
            for fn, items in ((dist.isend, sends), (dist.irecv, receives))
            for t, peer, tag in items
            if t.numel() > 0
        ]
        try:
            works = dist.batch_isend_irecv(ops) if ops else []
        except RuntimeError as e:
            raise self._failed(what, e) from e
        return Pending(self, works, [t for t, _, _ in (*sends, *receives)], what)


class Pending:
    """Messages in flight; holds their tensors until they are done."""

    def __init__(self, group: Group, works, tensors, what: str):
        self.group, self.works, self.tensors, self.what = group, works, tensors, what

    def wait(self) -> None:
        for work in self.works:
            self.group.wait(work, self.what)
        self.works, self.tensors = [], []


NONE = Pending(None, [], [], "")
