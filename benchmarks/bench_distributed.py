"""The sharded energy over 1 and P gloo processes on this machine, and the cost model's terms.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_distributed.py --n 16384 --k 32 256 \
        --out benchmarks/results/distributed_cpu.json

For each (N, k), float32, s = 1, forward + backward (energy and gradient),
each time as wall seconds and as the CPU seconds of the process (all its
threads: on a shared machine the wall time says how busy it was, the CPU
time what the work cost):
- "1 process": the plain op, on all cores and on cores / P threads;
- "P processes": comhe_kernels.distributed.hyperspherical_energy_and_grad,
  cores / P threads each: the median over repetitions of the slowest rank;
- the model's terms, measured alone in one process with cores / P threads:
  each rank's compute (its own block and its visits: the op calls of the
  ring without messages) and, in the P processes, one ring step's message
  (a block of N/P rows each way) and the all-reduce of the energy.
The model (docs/distributed.md) predicts the P-process times from those
terms; the JSON holds the measured and the predicted times side by side.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import comhe_kernels as ck
from comhe_kernels import distributed
from comhe_kernels.bench.report import cpu_name, git_sha
from comhe_kernels.distributed._plan import plan
from comhe_kernels.distributed.replicated import block_bounds


def _clocks() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _median_times(fn, reps: int) -> dict:
    """Median wall and CPU seconds of ``fn()`` (after one warm-up call: first calls
    allocate and fault in pages)."""
    fn()
    wall, cpu = [], []
    for _ in range(reps):
        t, c = _clocks()
        fn()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return {"wall": statistics.median(wall), "cpu": statistics.median(cpu)}


def points(n: int, k: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, k, generator=torch.Generator().manual_seed(seed))


def rank_compute(x: torch.Tensor, rank: int, world_size: int) -> dict:
    """The op calls that rank ``rank`` makes in the ring, without messages: seconds of
    its own block and of each visit (the ring's compute term)."""
    bounds = block_bounds(x.shape[0], world_size)
    block = lambda r: x[bounds[r]:bounds[r + 1]]  # noqa: E731
    own = block(rank)
    times = {"own": _median_times(lambda: ck.hyperspherical_energy_and_grad(own, 1), 3), "visits": []}
    for visit in plan(rank, world_size):
        visitor = block(visit.visitor)
        rows_own, rows_visitor = visit.rows(own.shape[0], visitor.shape[0])
        a, b = own[rows_own], visitor[rows_visitor]
        times["visits"].append(_median_times(lambda: ck.cross_energy_and_grad(a, b, 1, reduction="sum"), 3))
    return times


def _worker(rank, world_size, cases, reps, threads, out_dir):
    torch.set_num_threads(threads)
    dist.init_process_group("gloo", init_method=f"file://{out_dir}/store", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(minutes=10))
    results = []
    for n, k in cases:
        bounds = block_bounds(n, world_size)
        x = points(n, k)[bounds[rank]:bounds[rank + 1]].contiguous()

        def call():
            dist.barrier()
            t, c = _clocks()
            distributed.hyperspherical_energy_and_grad(x, 1)
            slowest = torch.tensor([time.perf_counter() - t, time.process_time() - c], dtype=torch.float64)
            dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
            return slowest

        call()
        ring = torch.stack([call() for _ in range(reps)]).median(dim=0).values.tolist()
        block = torch.empty_like(x)
        nxt, prev = (rank + 1) % world_size, (rank - 1) % world_size

        def message():
            ops = [dist.P2POp(dist.isend, x, nxt), dist.P2POp(dist.irecv, block, prev)]
            for w in dist.batch_isend_irecv(ops):
                w.wait()

        dist.barrier()
        step = _median_times(message, reps)["wall"]
        energy = torch.zeros(1, dtype=torch.float64)
        reduce = _median_times(lambda: dist.all_reduce(energy), reps)["wall"]
        results.append({"wall": ring[0], "cpu": ring[1], "message_seconds": step, "all_reduce_seconds": reduce})
    if rank == 0:
        torch.save(results, Path(out_dir) / "results.pt")
    dist.destroy_process_group()


def run_processes(world_size: int, cases: list, reps: int, threads: int) -> list:
    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(_worker, args=(world_size, cases, reps, threads, out_dir), nprocs=world_size)
        return torch.load(Path(out_dir) / "results.pt")


def predicted_wall(terms: dict, message: float, reduce: float) -> float:
    """The model's wall time of one rank: its own block overlaps the first block's transfer,
    each visit the next transfer (a block and a gradient); the gradient's return and the
    all-reduce do not overlap."""
    visits = [v["wall"] for v in terms["visits"]]
    t = max(terms["own"]["wall"], message)
    for i, v in enumerate(visits):
        t += max(v, 2 * message if i + 1 < len(visits) else 0.0)
    return t + message + reduce


def predicted_cpu(terms: dict) -> float:
    """The model's CPU time of one rank: its compute (messages cost little CPU)."""
    return terms["own"]["cpu"] + sum(v["cpu"] for v in terms["visits"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[16384])
    parser.add_argument("--k", type=int, nargs="+", default=[32, 256])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    cores = os.cpu_count() or 1
    p = args.nproc
    threads = max(cores // p, 1)
    load = os.getloadavg()[0]
    rows = []
    cases = [(n, k) for n in args.n for k in args.k]
    measured = run_processes(p, cases, args.reps, threads)
    for (n, k), m in zip(cases, measured):
        x = points(n, k)
        before = torch.get_num_threads()
        torch.set_num_threads(cores)
        one_all = _median_times(lambda: ck.hyperspherical_energy_and_grad(x, 1), args.reps)
        torch.set_num_threads(threads)
        one_share = _median_times(lambda: ck.hyperspherical_energy_and_grad(x, 1), args.reps)
        terms = [rank_compute(x, r, p) for r in range(p)]
        torch.set_num_threads(before)
        wall = max(predicted_wall(t, m["message_seconds"], m["all_reduce_seconds"]) for t in terms)
        cpu = max(predicted_cpu(t) for t in terms)
        row = {
            "n": n, "k": k, "dtype": "float32", "power": 1, "nproc": p, "threads_per_process": threads,
            "one_process_all_cores": one_all, f"one_process_{threads}_threads": one_share,
            "processes": {"wall": m["wall"], "cpu": m["cpu"]}, "predicted": {"wall": wall, "cpu": cpu},
            "speedup_vs_one_process_wall": one_all["wall"] / m["wall"], "rank_compute": terms,
            "message_s": m["message_seconds"], "message_bytes": 4 * k * (n // p),
            "all_reduce_s": m["all_reduce_seconds"],
        }
        rows.append(row)
        print(f"N={n} k={k}: 1 process {one_all['wall']:.3f} s wall / {one_all['cpu']:.3f} s CPU "
              f"({cores} threads), {one_share['wall']:.3f} / {one_share['cpu']:.3f} s ({threads}); {p} processes "
              f"{m['wall']:.3f} s wall (model {wall:.3f}), {m['cpu']:.3f} s CPU per rank (model {cpu:.3f}); "
              f"one ring message {row['message_bytes'] / 1e6:.1f} MB in {m['message_seconds'] * 1e3:.2f} ms",
              flush=True)
    meta = {
        "cpu": cpu_name(), "cores": cores, "load_avg_start": load, "load_avg_end": os.getloadavg()[0],
        "torch": torch.__version__, "python": platform.python_version(), "git_sha": git_sha(),
        "timestamp": datetime.datetime.now().isoformat(timespec="seconds"),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "command": "python benchmarks/bench_distributed.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    if args.out:
        Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
