"""The sharded energy over 1 and P gloo processes on this machine, and the cost model's terms.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_distributed.py --n 16384 --k 32 256 \
        --out benchmarks/results/distributed_cpu.json

For each (N, k), float32, s = 1, forward + backward (energy and gradient):
- "1 process": the plain op, on all cores and on cores / P threads;
- "P processes": comhe_kernels.distributed.hyperspherical_energy_and_grad,
  cores / P threads each, for each schedule ("once", "twice"): the median
  over repetitions of the slowest rank's time;
- the model's terms, measured alone in one process with cores / P threads:
  each rank's compute (its own block and its visits, the op calls of the
  ring without messages) and, in the P processes, one ring step's message
  (a block of N/P rows each way) and the all-reduce of the energy.
The model (docs/distributed.md) predicts the P-process time from those
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


def _median_time(fn, reps: int) -> float:
    fn()  # warm-up: first calls allocate and fault in pages
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def points(n: int, k: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, k, generator=torch.Generator().manual_seed(seed))


def rank_compute(x: torch.Tensor, rank: int, world_size: int, schedule: str) -> dict:
    """The op calls that rank ``rank`` makes in the ring, without messages: seconds of
    its own block and of each visit (the ring's compute term)."""
    bounds = block_bounds(x.shape[0], world_size)
    block = lambda r: x[bounds[r]:bounds[r + 1]]  # noqa: E731
    own = block(rank)
    times = {"own": _median_time(lambda: ck.hyperspherical_energy_and_grad(own, 1), 3), "visits": []}
    for visit in plan(rank, world_size, schedule):
        visitor = block(visit.visitor)
        rows_own, rows_visitor = visit.rows(own.shape[0], visitor.shape[0])
        a, b = own[rows_own], visitor[rows_visitor]
        times["visits"].append(_median_time(lambda: ck.cross_energy_and_grad(a, b, 1, reduction="sum"), 3))
    return times


def _worker(rank, world_size, cases, reps, threads, out_dir):
    torch.set_num_threads(threads)
    dist.init_process_group("gloo", init_method=f"file://{out_dir}/store", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(minutes=10))
    results = []
    for n, k, schedule in cases:
        bounds = block_bounds(n, world_size)
        x = points(n, k)[bounds[rank]:bounds[rank + 1]].contiguous()

        def call():
            dist.barrier()
            t = time.perf_counter()
            distributed.hyperspherical_energy_and_grad(x, 1, schedule=schedule)
            slowest = torch.tensor([time.perf_counter() - t], dtype=torch.float64)
            dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
            return slowest.item()

        call()
        ring = statistics.median(call() for _ in range(reps))
        block = torch.empty_like(x)
        nxt, prev = (rank + 1) % world_size, (rank - 1) % world_size

        def message():
            ops = [dist.P2POp(dist.isend, x, nxt), dist.P2POp(dist.irecv, block, prev)]
            for w in dist.batch_isend_irecv(ops):
                w.wait()

        dist.barrier()
        step = _median_time(message, reps)
        energy = torch.zeros(1, dtype=torch.float64)
        reduce = _median_time(lambda: dist.all_reduce(energy), reps)
        results.append({"seconds": ring, "message_seconds": step, "all_reduce_seconds": reduce})
    if rank == 0:
        torch.save(results, Path(out_dir) / "results.pt")
    dist.destroy_process_group()


def run_processes(world_size: int, cases: list, reps: int, threads: int) -> list:
    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(_worker, args=(world_size, cases, reps, threads, out_dir), nprocs=world_size)
        return torch.load(Path(out_dir) / "results.pt")


def predicted_once(terms: dict, message: float, reduce: float) -> float:
    """The model of schedule "once": the own block overlaps the first block's
    transfer, each visit the next transfer (blocks and gradients both way); the
    gradient's return and the all-reduce do not overlap."""
    visits = terms["visits"]
    t = max(terms["own"], message)
    for i, v in enumerate(visits):
        following = 2 * message if i + 1 < len(visits) else 0.0  # the next block and this visitor's gradient
        t += max(v, following)
    return t + message + reduce


def predicted_twice(terms: dict, message: float, reduce: float) -> float:
    t = max(terms["own"], message)
    for i, v in enumerate(terms["visits"]):
        t += max(v, message if i + 1 < len(terms["visits"]) else 0.0)
    return t + reduce


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
    cases = [(n, k, s) for n in args.n for k in args.k for s in ("once", "twice")]
    measured = run_processes(p, cases, args.reps, threads)
    for (n, k, schedule), m in zip(cases, measured):
        x = points(n, k)
        before = torch.get_num_threads()
        torch.set_num_threads(cores)
        one_all = _median_time(lambda: ck.hyperspherical_energy_and_grad(x, 1), args.reps)
        torch.set_num_threads(threads)
        one_share = _median_time(lambda: ck.hyperspherical_energy_and_grad(x, 1), args.reps)
        terms = [rank_compute(x, r, p, schedule) for r in range(p)]
        torch.set_num_threads(before)
        model = predicted_once if schedule == "once" else predicted_twice
        predicted = max(model(t, m["message_seconds"], m["all_reduce_seconds"]) for t in terms)
        row = {
            "n": n, "k": k, "dtype": "float32", "power": 1, "nproc": p, "threads_per_process": threads,
            "schedule": schedule,
            "one_process_all_cores_s": one_all, f"one_process_{threads}_threads_s": one_share,
            "processes_s": m["seconds"], "speedup_vs_one_process": one_all / m["seconds"],
            "predicted_s": predicted, "rank_compute_s": terms,
            "message_s": m["message_seconds"], "message_bytes": 4 * k * (n // p),
            "all_reduce_s": m["all_reduce_seconds"],
        }
        rows.append(row)
        print(f"N={n} k={k} {schedule}: 1 process {one_all:.3f} s ({cores} threads), {one_share:.3f} s "
              f"({threads}); {p} processes {m['seconds']:.3f} s (model {predicted:.3f} s); one ring message "
              f"{row['message_bytes'] / 1e6:.1f} MB in {m['message_seconds'] * 1e3:.2f} ms", flush=True)
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
