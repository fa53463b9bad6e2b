"""``comhe-thomson N --nproc P``: the Thomson solver's energy over P processes.

Rank 0 runs the solver (``thomson.solve``) with ``ShardedEnergyAndGrad`` as
its ``energy_and_grad``: at every evaluation it sends each rank its rows of
the points (blocks of N/P rows of every set), all ranks compute the sharded
energy (sharded.py: the ring, one all-reduce), and rank 0 collects the
gradient rows. The other ranks only ``serve`` evaluations until rank 0 says
stop. Per evaluation that is a 5-number header broadcast, the rows out and
the gradient rows back (N k values each, from and to rank 0), and the ring.

``launch`` starts the P processes (torch.multiprocessing, one machine) or,
under torchrun (WORLD_SIZE set), joins the process group torchrun made:
gloo for CPU points, NCCL for CUDA points (one GPU per process; a draft
until a GPU runs it).
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ._group import TAG_BLOCK, TAG_GRAD, Group
from .replicated import block_bounds
from .sharded import hyperspherical_energy_and_grad

_STOP, _EVALUATE = 0.0, 1.0
_DTYPES = (torch.float32, torch.float64)


def _evaluate(x_local: torch.Tensor, power: float, group):
    return hyperspherical_energy_and_grad(x_local, power, eps=0.0, reduction="none", group=group)


class ShardedEnergyAndGrad:
    """Rank 0's ``energy_and_grad`` for ``thomson.solve``: points (B, N, k) ->
    (energies (B,) float64, gradient (B, N, k)), the pairs computed by every
    rank of ``group``. Call ``close()`` when done, so that the others stop."""

    def __init__(self, power: float, group=None):
        self.power, self.group = power, group
        self._g = Group(group, "hyperspherical_energy_and_grad")
        if self._g.rank != 0:
            raise RuntimeError("ShardedEnergyAndGrad runs on rank 0 of its group; the other ranks call serve()")

    def _header(self, command: float, shape=(0, 0, 0), dtype=torch.float64) -> None:
        header = torch.tensor([command, *shape, _DTYPES.index(dtype)], dtype=torch.float64)
        dist.broadcast(header.to(self._g.control_device()), self._g.global_rank(0), group=self.group)

    def __call__(self, x: torch.Tensor):
        b, n, k = x.shape
        self._header(_EVALUATE, (b, n, k), x.dtype)
        bounds = block_bounds(n, self._g.world_size)
        rows = [x[:, bounds[r]:bounds[r + 1]].contiguous() for r in range(self._g.world_size)]
        grads = [torch.empty_like(t) for t in rows]
        peers = range(1, self._g.world_size)
        self._g.post([(rows[r], r, TAG_BLOCK) for r in peers], [], "sending the points").wait()
        energy, grads[0] = _evaluate(rows[0], self.power, self.group)
        self._g.post([], [(grads[r], r, TAG_GRAD) for r in peers], "collecting the gradient").wait()
        return energy, torch.cat(grads, dim=1)

    def close(self) -> None:
        self._header(_STOP)


def serve(power: float, group=None, device="cpu") -> None:
    """The other ranks' loop: evaluate this rank's rows whenever rank 0 asks, until it stops."""
    g = Group(group, "hyperspherical_energy_and_grad")
    header = torch.empty(5, dtype=torch.float64, device=g.control_device())
    while True:
        dist.broadcast(header, g.global_rank(0), group=group)
        command, b, n, k, dtype = header.tolist()
        if command == _STOP:
            return
        bounds = block_bounds(int(n), g.world_size)
        rows = torch.empty((int(b), bounds[g.rank + 1] - bounds[g.rank], int(k)), dtype=_DTYPES[int(dtype)],
                           device=device)
        g.post([], [(rows, 0, TAG_BLOCK)], "receiving the points").wait()
        _, grad = _evaluate(rows, power, group)
        g.post([(grad, 0, TAG_GRAD)], [], "returning the gradient").wait()


def under_torchrun() -> bool:
    """Whether this process is one of several that torchrun (or another launcher) started."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _rank_main(rank, world_size, init_method, cli_main, argv, power, device, status):
    """One process: rank 0 runs the command line with the sharded evaluation, the others serve.
    ``init_method`` None: the process group is torchrun's (from the environment) or already made."""
    if device == "cuda":
        local = int(os.environ.get("LOCAL_RANK", rank or 0))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    elif init_method is not None:  # spawned here: the cores shared out
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    own_group = not dist.is_initialized()
    if own_group:
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if init_method is None:
            dist.init_process_group(backend)
        else:
            dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world_size)
    try:
        if dist.get_rank() == 0:
            # Ctrl-C stops the solve (it keeps the best set); the launcher ignored it for all of them.
            signal.signal(signal.SIGINT, signal.default_int_handler)
            evaluation = ShardedEnergyAndGrad(power)
            try:
                code = cli_main(argv, energy_and_grad=evaluation)
            finally:
                evaluation.close()
            if status is not None:
                status.value = code
            return code
        handler = signal.signal(signal.SIGINT, signal.SIG_IGN)  # rank 0's close() stops this rank
        try:
            serve(power, device=device)
        finally:
            signal.signal(signal.SIGINT, handler)
        return 0
    finally:
        if own_group:
            dist.destroy_process_group()


def launch(cli_main, argv: list[str] | None, nproc: int, device: str, power: float) -> int:
    """Run ``cli_main(argv, energy_and_grad=...)`` on rank 0 of ``nproc`` new processes,
    or of the processes torchrun started (or of the process group this one is in), the
    others serving; returns the exit status (rank 0's; 0 on the others)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if under_torchrun() or dist.is_initialized():
        return _rank_main(None, None, None, cli_main, argv, power, device, None)
    if device == "cuda" and torch.cuda.device_count() < nproc:
        raise ValueError(f"--nproc {nproc} with --device cuda needs {nproc} CUDA devices, found "
                         f"{torch.cuda.device_count()}")
    status = mp.get_context("spawn").Value("i", 0)
    ctrl_c = signal.signal(signal.SIGINT, signal.SIG_IGN)  # rank 0 handles it and returns its status
    # The processes meet in a file store: no port to pick (and to lose to another program).
    with tempfile.TemporaryDirectory(prefix="comhe-thomson-") as folder:
        init = f"file://{os.path.join(folder, 'store')}"
        try:
            mp.spawn(_rank_main, args=(nproc, init, cli_main, argv, power, device, status), nprocs=nproc)
        except mp.ProcessExitedException as e:  # rank 0 exited with an error status (it printed why)
            return e.exit_code
        finally:
            signal.signal(signal.SIGINT, ctrl_c)
    return status.value
