"""Running a sweep: one worker process per measurement, correctness first, then time and memory.

In the worker: the provider builds (compiles) and warms up on a few rows;
freed heap is handed back to the OS and the resident-set peak is reset
(/proc/self/clear_refs), so that the next, full-size call's peak minus the
baseline is what that call needs (torch.cuda.max_memory_allocated on GPU).
That call is checked against the float64 oracle; only then come the timed
calls: perf_counter on CPU, CUDA events after an L2 flush on GPU.
"""

from __future__ import annotations

import ctypes
import datetime
import gc
import math
import multiprocessing
import os
import statistics
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .cases import DTYPES, GIB, MIB, BenchOptions, Case, make_points
from .oracle import TOLERANCES, Oracle, check_result, compute_oracle
from .providers import Provider, Unavailable, first_line


@dataclass
class Job:
    """What a worker process measures."""

    provider: Provider
    case: Case
    options: BenchOptions
    oracle: Oracle
    log: str  # the worker's stdout and stderr go here (pykeops and compilers print)


@dataclass
class Plan:
    """The (case, provider name) pairs of a run, in the order they run."""

    items: list = field(default_factory=list)
    not_run: dict = field(default_factory=dict)  # "provider (device)" -> why it does not run at all


# --------------------------------------------------------------------------- inside the worker


def _memory_status() -> dict:
    """VmRSS and VmHWM of this process in bytes (Linux /proc)."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                name, value, _unit = line.split()
                out[name[:-1]] = int(value) * 1024
    return out


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _release_free_memory() -> None:
    """Hand freed heap pages back to the OS (glibc malloc_trim), so that the
    measured call's allocations raise the RSS instead of reusing pages that the
    baseline already counts."""
    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError, TypeError):  # not glibc: the peak may then read low
        pass


def _make_call(fn: Callable, x: torch.Tensor, backward: bool) -> Callable:
    """One call as a user makes it: forward (no autograd graph), or forward and backward."""
    if backward:

        def call():
            x.grad = None  # allocated again by every call, as in training
            energy = fn(x)
            energy.backward()
            return energy.detach(), x.grad

    else:

        def call():
            with torch.no_grad():
                return fn(x), None

    return call


def _checked_call_cpu(call: Callable, result: dict) -> tuple:
    """The full-size call whose peak resident set above the baseline is reported."""
    if not os.path.exists("/proc/self/status"):
        result["memory_method"] = "not measured (no /proc)"
        return call()
    base = _memory_status()["VmRSS"]
    reset = _reset_peak_rss()
    out = call()
    result["peak_extra_bytes"] = _memory_status()["VmHWM"] - base
    result["memory_method"] = (
        "VmHWM - VmRSS before the call, in the worker process"
        if reset
        else "VmHWM - VmRSS before the call (the peak could not be reset: includes the warm-up)"
    )
    return out


def _checked_call_cuda(call: Callable, result: dict) -> tuple:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = call()
    torch.cuda.synchronize()
    result["peak_extra_bytes"] = torch.cuda.max_memory_allocated() - base
    result["memory_method"] = "torch.cuda.max_memory_allocated - allocated before the call"
    return out


def reps_for(call_seconds: float, options: BenchOptions) -> int:
    """Enough timed calls for options.rep_seconds of work, within [min_reps, max_reps]."""
    wanted = math.ceil(options.rep_seconds / max(call_seconds, 1e-6))
    return max(options.min_reps, min(options.max_reps, wanted))


def warm_up(call: Callable, seconds_done: float, seconds: float, sync: Callable = lambda: None) -> int:
    """Untimed calls until ``seconds`` of full-size calls have run, counting the
    ``seconds_done`` already spent (the checked call); returns how many. On the
    2-core VM of the README the first ~25 calls of the fused op at N = 4096
    took 11-13.6 ms, the steady state a training loop sees 10 ms."""
    calls = 0
    while seconds_done < seconds:
        start = time.perf_counter()
        call()
        sync()
        seconds_done += time.perf_counter() - start
        calls += 1
    return calls


def _time_cpu(call: Callable, reps: int) -> list:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


def _time_cuda(call: Callable, reps: int) -> list:
    """CUDA events around each call, the L2 flushed before it (writing 256 MiB
    evicts the 50 MiB L2 of an H100), so that no call finds its inputs cached."""
    flush = torch.empty(256 * MIB, dtype=torch.int8, device="cuda")
    times = []
    for _ in range(reps):
        flush.zero_()
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        call()
        end.record()
        torch.cuda.synchronize()
        times.append(begin.elapsed_time(end) / 1e3)
    return times


def measure(job: Job) -> dict:
    """Build, check, measure memory, time: the worker's work, as a result dict."""
    case, options = job.case, job.options
    if options.threads:
        torch.set_num_threads(options.threads)
    x = make_points(case).to(case.device).requires_grad_(case.backward)
    fn = job.provider.build(case, options, x)
    call = _make_call(fn, x, case.backward)
    result = {"threads": torch.get_num_threads(), "peak_extra_bytes": None}

    if case.device == "cuda":
        # A full-size call first: Triton autotunes per shape, cuBLAS picks its
        # kernels; neither belongs in the measured peak. (On the CPU the
        # few-row warm-up suffices and a full-size call of the naive code
        # would cost seconds.)
        call()
        start = time.perf_counter()
        energy, grad = _checked_call_cuda(call, result)
    else:
        _release_free_memory()
        start = time.perf_counter()
        energy, grad = _checked_call_cpu(call, result)
    first = time.perf_counter() - start

    energy_value = float(energy)
    e_err, g_err, passed = check_result(case, job.oracle, energy_value, grad)
    del energy, grad
    result.update(energy=energy_value, energy_rel_err=e_err, grad_rel_err=g_err, check=job.oracle.method)
    if not passed and (options.strict or not job.provider.naive_math):
        tol_e, tol_g = TOLERANCES[case.dtype]
        result.update(
            status="failed",
            peak_extra_bytes=None,  # reported, not measured
            reason=f"outside the tolerance (energy {tol_e:g}, gradient {tol_g:g} of max |g|): not timed",
        )
        return result
    result["status"] = "ok" if passed else "inaccurate"
    if not passed:
        result["reason"] = "gram-form baseline outside the tolerance, timed anyway"
    sync = torch.cuda.synchronize if case.device == "cuda" else lambda: None
    warm_up(call, first, options.warmup_seconds, sync)
    timer = _time_cuda if case.device == "cuda" else _time_cpu
    result["times"] = timer(call, reps_for(first, options))
    return result


def _redirect_output(path: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _worker(conn, job: Job) -> None:
    """Entry point of a measuring worker process: sends one result dict."""
    _redirect_output(job.log)
    try:
        result = measure(job)
    except Unavailable as e:
        result = {"status": "skipped", "reason": str(e)}
    except Exception as e:  # becomes the row's reason: one broken provider must not end the run
        traceback.print_exc()
        result = {"status": "failed", "reason": f"{type(e).__name__}: {first_line(e)}"}
    conn.send(result)
    conn.close()


def _gemm_worker(conn, device: str, dtype: str, threads: int, sizes: tuple, log: str) -> None:
    """Entry point of the worker measuring the GEMM peak: the best torch.mm rate
    over the square sizes (3 calls each, after one warm-up call)."""
    _redirect_output(log)
    if threads:
        torch.set_num_threads(threads)
    best = 0.0
    for size in sizes:
        a = torch.randn(size, size, dtype=DTYPES[dtype], device=device)
        b = torch.randn(size, size, dtype=DTYPES[dtype], device=device)
        torch.mm(a, b)
        for _ in range(3):
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            torch.mm(a, b)
            if device == "cuda":
                torch.cuda.synchronize()
            best = max(best, 2 * size**3 / (time.perf_counter() - start) / 1e9)
    conn.send(best)
    conn.close()


# --------------------------------------------------------------------------- in the parent


def in_worker(target: Callable, args: tuple, timeout: float, log: str) -> tuple:
    """Run target(conn, *args) in a fresh spawned process: (result, None) or (None, why not)."""
    ctx = multiprocessing.get_context("spawn")  # no fork: the parent's threads and CUDA state stay behind
    parent, child = ctx.Pipe(duplex=False)
    process = ctx.Process(target=target, args=(child, *args))  # not a daemon: compilers start processes
    process.start()
    child.close()
    try:
        if parent.poll(timeout):
            result = parent.recv()
            process.join(30)
            return result, None
        return None, f"no result after {timeout:.0f} s (--timeout): worker killed"
    except EOFError:
        process.join()
        code = process.exitcode
        why = " (SIGKILL: out of memory?)" if code == -9 else ""
        return None, f"worker exited with code {code}{why}; its last output: {_log_tail(log)}"
    finally:
        parent.close()
        if process.is_alive():
            process.kill()
            process.join()


def _log_tail(path: str, lines: int = 3) -> str:
    try:
        text = Path(path).read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(none)"
    return " | ".join(text[-lines:]) or "(none)"


def measure_peak_gflops(device: str, dtype: str, options: BenchOptions, workdir: str) -> float | None:
    """The device's GEMM rate in this run, under the same conditions as the measurements."""
    log = os.path.join(workdir, f"gemm-{device}-{dtype}.log")
    result, _error = in_worker(_gemm_worker, (device, dtype, options.threads, options.gemm_sizes, log), 300, log)
    return result


def skip_reason(provider: Provider, case: Case, options: BenchOptions, history: dict) -> str | None:
    """Why a case is not run: its predicted memory (the provider's model) or its
    predicted time (the provider's last measured time in the same series, scaled
    by the number of pairs) exceeds the run's budget."""
    limit = options.max_cuda_memory_bytes if case.device == "cuda" else options.max_memory_bytes
    if provider.extra_bytes is not None and limit > 0:
        need = provider.extra_bytes(case, options)
        if need > limit:
            return (
                f"needs ~{need / GIB:.3g} GiB ({provider.name}'s memory model) "
                f"> {limit / GIB:.3g} GiB (--max-memory-gib)"
            )
    last = history.get((provider.name, case.series()))
    if last is not None:
        points, seconds = last
        predicted = seconds * (case.points / points) ** 2
        if predicted > options.max_call_seconds:
            return (
                f"predicted ~{predicted:.0f} s per call ({seconds:.2g} s at {points} points, x N^2) "
                f"> {options.max_call_seconds:g} s (--max-call-seconds)"
            )
    return None


def quantile(values: list, q: float) -> float:
    """Linear-interpolation quantile (numpy's default), for p20 and p80."""
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def run_benchmark(plan: Plan, providers: dict, options: BenchOptions, progress: Callable | None = None) -> tuple:
    """Measure every item of the plan: (rows, {(device, dtype): GEMM GFLOP/s}).

    A provider's failure never ends the run: it becomes a row whose status is
    "failed" (with the reason) or "skipped".
    """
    rows = []
    history = {}  # (provider, series) -> (points, median seconds) of its last timed case
    oracle_case, oracle = None, None
    with tempfile.TemporaryDirectory(prefix="comhe-bench-") as workdir:
        peaks = {}
        for device, dtype in sorted({(case.device, case.peak_dtype) for case, _ in plan.items if options.gemm_sizes}):
            if progress is not None:
                progress(0, f"measuring the {device} GEMM peak ({dtype})")
            peaks[(device, dtype)] = measure_peak_gflops(device, dtype, options, workdir)
        for number, (case, name) in enumerate(plan.items):
            provider = providers[name]
            if progress is not None:
                progress(number, f"{name:<9} {case.label()}")
            row = {"provider": name, **asdict(case), "pairs": case.pairs}
            reason = skip_reason(provider, case, options, history)
            if reason is not None:
                row.update(status="skipped", reason=reason)
            else:
                if case != oracle_case:  # the plan runs a case's providers one after the other
                    oracle_case, oracle = case, compute_oracle(case, options)
                log = os.path.join(workdir, f"worker-{number}.log")
                result, error = in_worker(_worker, (Job(provider, case, options, oracle, log),), options.timeout, log)
                row.update(result if error is None else {"status": "failed", "reason": error})
            times = row.pop("times", None)
            if times:
                median = statistics.median(times)
                row.update(time_median_s=median, time_p20_s=quantile(times, 0.2), time_p80_s=quantile(times, 0.8))
                row["reps"] = len(times)
                history[(name, case.series())] = (case.points, median)
            row["timestamp"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
            rows.append(row)
    if progress is not None:
        progress(len(plan.items), "done")
    add_derived_columns(rows, peaks)
    return rows, peaks


def case_of(row: dict) -> Case:
    return Case(**{name: row[name] for name in Case.__dataclass_fields__})


def add_derived_columns(rows: list, peaks: dict) -> None:
    """Throughput, the fraction of the GEMM peak, and the speedups over the
    reference and keops measured on the same case in the same run."""
    timed = {(case_of(r), r["provider"]): r["time_median_s"] for r in rows if r.get("time_median_s")}
    for row in rows:
        case = case_of(row)
        peak = peaks.get((case.device, case.peak_dtype))
        row["peak_gflops"] = peak
        seconds = row.get("time_median_s")
        if not seconds:
            continue
        row["pairs_per_s"] = case.pairs / seconds
        row["gflops"] = case.flops / seconds / 1e9
        row["fraction_of_peak"] = row["gflops"] / peak if peak else None
        for other in ("reference", "keops"):
            base = timed.get((case, other))
            row[f"speedup_vs_{other}"] = base / seconds if base else None
