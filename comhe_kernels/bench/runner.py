"""The parent side of a run: worker processes, what is skipped and why, the rows.

Every CPU measurement runs in a fresh worker process, so that its peak
resident set is its own. CUDA measurements share one worker (the peak is
torch.cuda.max_memory_allocated, which resets in place), as a process start
with its CUDA context costs seconds that a GPU run of ~60 measurements
cannot spare; a task that fails ends that worker and the next gets a new one.
"""

from __future__ import annotations

import datetime
import math
import multiprocessing
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from .cases import GIB, BenchOptions, Case
from .oracle import compute_oracle
from .providers import Provider, first_line
from .worker import Job, measure, measure_ceilings, serve

# The speedup columns: over the naive code, pykeops and Wang and Isola's formula.
BASELINES = ("reference", "keops", "pdist")


@dataclass
class Plan:
    """The (case, provider name) pairs of a run, in the order they run."""

    items: list = field(default_factory=list)
    not_run: dict = field(default_factory=dict)  # "provider (device)" -> why it does not run (here)


class Worker:
    """A spawned worker process (worker.serve) and its pipe."""

    def __init__(self, log: str):
        ctx = multiprocessing.get_context("spawn")  # no fork: the parent's threads and CUDA state stay behind
        self.log = log
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=serve, args=(child, log))  # not a daemon: compilers start processes
        self.process.start()
        child.close()

    def run(self, label: str, function: Callable, args: tuple, timeout: float) -> tuple:
        """(result, None) or (None, why there is none); after the latter the worker is gone."""
        try:
            self.conn.send((label, function, args))
            if self.conn.poll(timeout):
                result, ended = self.conn.recv()
                if ended:  # the task raised: serve() has returned
                    self.close()
                return result, None
            self.close(wait=0)
            return None, f"no result after {timeout:.0f} s (--timeout): worker killed"
        except (EOFError, BrokenPipeError, ConnectionResetError):
            self.process.join(30)
            code = self.process.exitcode
            why = " (SIGKILL: out of memory?)" if code == -9 else ""
            self.close()
            return None, f"worker exited with code {code}{why}; its last output: {_log_tail(self.log)}"

    @property
    def alive(self) -> bool:
        return not self.conn.closed and self.process.is_alive()

    def close(self, wait: float = 30) -> None:
        """Ask the worker to end; kill it if it has not after ``wait`` seconds."""
        if self.conn.closed:
            return
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.process.join(wait)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()


def _log_tail(path: str, lines: int = 3) -> str:
    try:
        text = Path(path).read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(none)"
    return " | ".join(text[-lines:]) or "(none)"


class Workers:
    """Worker processes by device: a fresh one per CPU task, one shared (while it lives) for CUDA tasks."""

    def __init__(self, workdir: str):
        self.workdir = workdir
        self.started = 0
        self.cuda: Worker | None = None

    def run(self, device: str, label: str, function: Callable, args: tuple, timeout: float) -> tuple:
        if device == "cuda" and self.cuda is not None and self.cuda.alive:
            worker = self.cuda
        else:
            self.started += 1
            worker = Worker(os.path.join(self.workdir, f"worker-{self.started:03d}.log"))
        result, error = worker.run(label, function, args, timeout)
        if device == "cuda" and error is None:
            self.cuda = worker
        elif error is None:
            worker.close()
        return result, error

    def close(self) -> None:
        if self.cuda is not None:
            self.cuda.close()

    def logs(self) -> list:
        return sorted(Path(self.workdir).glob("worker-*.log"))


def skip_reason(provider: Provider, case: Case, options: BenchOptions, history: dict) -> str | None:
    """Why a case is not run: its predicted memory (the provider's model) or its
    predicted time (the provider's last measured time in the same series, scaled
    by the number of pairs) exceeds the run's budget."""
    need = memory_need(provider, case, options)
    limit = memory_limit(case, options)
    if need is not None and limit > 0 and need > limit:
        return (
            f"needs ~{need / GIB:.3g} GiB ({provider.name}'s memory model) > {limit / GIB:.3g} GiB (--max-memory-gib)"
        )
    last = history.get((provider.name, case.series()))
    if last is not None:
        pairs, seconds = last
        predicted = seconds * case.pairs / pairs
        if predicted > options.max_call_seconds:
            return (
                f"predicted ~{predicted:.0f} s per call ({seconds:.2g} s for {pairs:.3g} pairs, x pairs) "
                f"> {options.max_call_seconds:g} s (--max-call-seconds)"
            )
    return None


def memory_need(provider: Provider, case: Case, options: BenchOptions) -> float | None:
    return provider.extra_bytes(case, options) if provider.extra_bytes is not None else None


def memory_limit(case: Case, options: BenchOptions) -> float:
    """The budget a case's predicted memory is held to (0: none)."""
    return options.max_cuda_memory_bytes if case.device == "cuda" else options.max_memory_bytes


def quantile(values: list, q: float) -> float:
    """Linear-interpolation quantile (numpy's default), for p20 and p80."""
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def ceilings_wanted(plan: Plan, options: BenchOptions) -> list:
    """(device, dtypes) of the ceilings a plan's rows are compared with."""
    if not options.gemm_sizes:
        return []
    wanted = {}
    for case, _ in plan.items:
        wanted.setdefault(case.device, set()).add(case.peak_dtype)
    return [(device, tuple(sorted(dtypes))) for device, dtypes in sorted(wanted.items())]


def run_benchmark(
    plan: Plan, providers: dict, options: BenchOptions, progress: Callable | None = None, log: str | None = None
) -> tuple:
    """Measure every item of the plan: (rows, {(device, name): ceiling}), the
    ceilings in GFLOP/s (GB/s for "copy"). ``log``: a file that gets every
    worker's output.

    A provider's failure never ends the run: it becomes a row whose status is
    "failed" (with the reason) or "skipped".
    """
    rows = []
    history = {}  # (provider, series) -> (pairs, median seconds) of its last timed case
    oracle_case, oracle = None, None
    deadline = time.monotonic() + options.time_budget if options.time_budget > 0 else math.inf
    with tempfile.TemporaryDirectory(prefix="comhe-bench-") as workdir:
        workers = Workers(workdir)
        try:
            ceilings = {}
            for device, dtypes in ceilings_wanted(plan, options):
                if progress is not None:
                    progress(0, f"measuring the {device} ceilings ({', '.join(dtypes)} matmul)")
                args = (device, dtypes, options.threads, options.gemm_sizes)
                result, _error = workers.run(device, f"ceilings on {device}", measure_ceilings, args, 600)
                if result is not None and "status" not in result:
                    ceilings.update({(device, name): value for name, value in result.items()})
            for number, (case, name) in enumerate(plan.items):
                provider = providers[name]
                if progress is not None:
                    progress(number, f"{name:<9} {case.label()}")
                row = {"provider": name, "fused": provider.fused, **asdict(case), "pairs": case.pairs}
                started = time.monotonic()
                reason = skip_reason(provider, case, options, history)
                if reason is None and time.monotonic() > deadline:
                    reason = f"the run's time budget was spent (--time-budget {options.time_budget:g} s)"
                if reason is not None:
                    row.update(status="skipped", reason=reason)
                else:
                    if case != oracle_case:  # the plan runs a case's providers one after the other
                        oracle_case, oracle, oracle_error = case, *_oracle(case, options)
                    if oracle is None:
                        row.update(status="failed", reason=oracle_error)
                    else:
                        job = Job(provider, case, options, oracle)
                        label = f"{name} {case.label()}"
                        result, error = workers.run(case.device, label, measure, (job,), options.timeout)
                        row.update(result if error is None else {"status": "failed", "reason": error})
                times = row.pop("times", None)
                if times:
                    median = statistics.median(times)
                    row.update(time_median_s=median, time_p20_s=quantile(times, 0.2), time_p80_s=quantile(times, 0.8))
                    row["reps"] = len(times)
                    history[(name, case.series())] = (case.pairs, median)
                row["wall_s"] = round(time.monotonic() - started, 2)  # the oracle, worker start and build included
                row["timestamp"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
                rows.append(row)
        finally:
            workers.close()
            if log is not None:
                with open(log, "w") as out:
                    for path in workers.logs():
                        out.write(f"##### {path.name}\n")
                        with open(path, errors="replace") as f:
                            shutil.copyfileobj(f, out)
    if progress is not None:
        progress(len(plan.items), "done")
    add_derived_columns(rows, ceilings)
    return rows, ceilings


def _oracle(case: Case, options: BenchOptions) -> tuple:
    """(the oracle, None) or (None, why there is none): a case without its truth is not measured."""
    try:
        return compute_oracle(case, options), None
    except Exception as e:  # e.g. out of memory on the device: the case's rows fail, the run goes on
        return None, f"the float64 oracle failed: {type(e).__name__}: {first_line(e)}"


def dry_run_rows(plan: Plan, providers: dict, options: BenchOptions) -> list:
    """The rows a run of the plan would start from, measuring nothing: status
    "dry run", the reason saying whether the item would run or be skipped by
    its memory model (the time predictions need measured times), with the
    model's need."""
    rows = []
    for case, name in plan.items:
        provider = providers[name]
        row = {"provider": name, "fused": provider.fused, **asdict(case), "pairs": case.pairs, "status": "dry run"}
        need = memory_need(provider, case, options)
        skip = skip_reason(provider, case, options, {})
        if skip is not None:
            reason = f"would be skipped: {skip}"
        elif need is not None:
            limit = memory_limit(case, options)
            budget = f" of {limit / GIB:.3g}" if limit > 0 else ""
            reason = f"would run: needs ~{need / GIB:.3g}{budget} GiB ({name}'s memory model)"
            if limit <= 0:
                reason += "; no memory budget here (--max-memory-gib sets one)"
        else:
            reason = "would run"
        rows.append({**row, "reason": reason})
    add_derived_columns(rows, {})
    return rows


def case_of(row: dict) -> Case:
    return Case(**{name: row[name] for name in Case.__dataclass_fields__})


def add_derived_columns(rows: list, ceilings: dict) -> None:
    """Throughput, the fraction of the GEMM ceiling, the speedups over the
    baselines and the time against the random input of the same size, each
    from the same run."""
    timed = {(case_of(r), r["provider"]): r["time_median_s"] for r in rows if r.get("time_median_s")}
    for row in rows:
        case = case_of(row)
        peak = ceilings.get((case.device, case.peak_dtype))
        row["peak_gflops"] = peak
        seconds = row.get("time_median_s")
        if not seconds:
            continue
        row["pairs_per_s"] = case.pairs / seconds
        row["gflops"] = case.flops / seconds / 1e9
        row["fraction_of_peak"] = row["gflops"] / peak if peak else None
        for other in BASELINES:
            base = timed.get((case, other))
            row[f"speedup_vs_{other}"] = base / seconds if base else None
        random = timed.get((Case(**{**asdict(case), "inputs": "random"}), row["provider"]))
        row["time_vs_random"] = seconds / random if random and case.inputs != "random" else None
