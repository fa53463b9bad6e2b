"""The worker side: what a measuring process does.

A worker process (spawned by runner.py) serves tasks from a pipe: a
measurement (measure) or the run's ceilings (measure_ceilings). In a
measurement the provider builds (compiles) and warms up on a few rows; freed
heap is handed back to the OS and the resident-set peak is reset
(/proc/self/clear_refs), so that the next, full-size call's peak minus the
baseline is what that call needs (torch.cuda.max_memory_allocated on GPU).
That call is checked against the float64 oracle; only then come untimed
calls for warmup_seconds and the timed calls: perf_counter on the CPU, CUDA
events after an L2 flush on a GPU.
"""

from __future__ import annotations

import ctypes
import gc
import math
import os
import time
import traceback
from dataclasses import dataclass
from typing import Callable

import torch

from .. import _extension
from .cases import DTYPES, MIB, BenchOptions, Case, make_inputs
from .oracle import TOLERANCES, Oracle, check_result
from .providers import Provider, Unavailable, first_line

# The GPU's ceilings: one 8192^3 product (1.1 TFLOP, ~20 ms in float32 on an
# H100: long enough for CUDA events, 0.8 GiB of operands) and a copy of 1 GiB.
CUDA_GEMM_SIZE = 8192
CUDA_COPY_BYTES = 2**30


@dataclass
class Job:
    """What a worker measures."""

    provider: Provider
    case: Case
    options: BenchOptions
    oracle: Oracle


# --------------------------------------------------------------------------- memory


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


# --------------------------------------------------------------------------- timing


def _make_call(fn: Callable, inputs: tuple, backward: bool) -> Callable:
    """One call as a user makes it: forward (no autograd graph), or forward and
    backward; returns the value and the gradients of the inputs."""
    if backward:

        def call():
            for t in inputs:
                t.grad = None  # allocated again by every call, as in training
            value = fn(*inputs)
            value.backward()
            return value.detach(), tuple(t.grad for t in inputs)

    else:

        def call():
            with torch.no_grad():
                return fn(*inputs), None

    return call


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


# --------------------------------------------------------------------------- the tasks


def measure(job: Job) -> dict:
    """Build, check, measure memory, time: a measurement, as a result dict."""
    case, options = job.case, job.options
    if options.threads:
        torch.set_num_threads(options.threads)
    inputs = tuple(t.to(case.device).requires_grad_(case.backward) for t in make_inputs(case))
    if job.provider.cpu_isa:  # for this measurement only: the worker serves the next one
        previous = _extension.set_cpu_isa(job.provider.cpu_isa)
        try:
            return _measure(job, inputs)
        finally:
            _extension.set_cpu_isa(previous)
    return _measure(job, inputs)


def _measure(job: Job, inputs: tuple) -> dict:
    case, options = job.case, job.options
    fn = job.provider.build(case, options, inputs)
    call = _make_call(fn, inputs, case.backward)
    result = {"threads": torch.get_num_threads(), "peak_extra_bytes": None}

    if case.device == "cuda":
        # A full-size call first: Triton autotunes per shape, cuBLAS picks its
        # kernels; neither belongs in the measured peak. (On the CPU the
        # few-row warm-up suffices and a full-size call of the naive code
        # would cost seconds.)
        call()
        start = time.perf_counter()
        value, grads = _checked_call_cuda(call, result)
    else:
        _release_free_memory()
        start = time.perf_counter()
        value, grads = _checked_call_cpu(call, result)
    first = time.perf_counter() - start
    result["cpu_isa"] = _cpu_isa_level(case)  # after the first call, which loads the extension

    energy = float(value)
    e_err, g_err, passed = check_result(case, job.oracle, energy, grads)
    del value, grads
    result.update(energy=energy, energy_rel_err=e_err, grad_rel_err=g_err, check=job.oracle.method)
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


def _cpu_isa_level(case) -> str | None:
    """The CPU kernel's ISA level if this worker's provider loaded the
    extension for a CPU case (COMHE_CPU_ISA or the CPU's best), else None: the
    reference and pykeops rows do not run it, and the check must not build it."""
    if case.device != "cpu" or not _extension._loaded:
        return None
    return _extension.cpu_isa()["level"]


def _best_rate(run: Callable, work: float, device: str, calls: int = 3) -> float:
    """work / the fastest of ``calls`` timed runs (after one untimed), per second."""
    run()
    best = math.inf
    for _ in range(calls):
        if device == "cuda":
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            run()
            end.record()
            torch.cuda.synchronize()
            best = min(best, begin.elapsed_time(end) / 1e3)
        else:
            start = time.perf_counter()
            run()
            best = min(best, time.perf_counter() - start)
    return work / best


def measure_ceilings(device: str, dtypes: tuple, threads: int, sizes: tuple) -> dict:
    """The device's rates in this run, under the same conditions as the
    measurements: name -> GFLOP/s of square torch.mm (the best over ``sizes``
    on the CPU, CUDA_GEMM_SIZE on a GPU) for each of ``dtypes``; on a GPU also
    "tf32" (float32 inputs on the tensor cores), "bfloat16" and "copy" (GB/s
    of a device-to-device copy, read + write)."""
    if threads:
        torch.set_num_threads(threads)
    names = list(dtypes)
    if device == "cuda":
        sizes = (CUDA_GEMM_SIZE,)
        names += [name for name in ("tf32", "bfloat16") if name not in names]
    out = {}
    for name in names:
        best = 0.0
        for size in sizes:
            dtype = torch.float32 if name == "tf32" else DTYPES[name]
            a = torch.randn(size, size, dtype=dtype, device=device)
            b = torch.randn(size, size, dtype=dtype, device=device)
            if device == "cuda":
                torch.backends.cuda.matmul.allow_tf32 = name == "tf32"
            best = max(best, _best_rate(lambda: torch.mm(a, b), 2 * size**3, device) / 1e9)
            del a, b
        out[name] = best
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        src = torch.empty(CUDA_COPY_BYTES, dtype=torch.uint8, device=device)
        dst = torch.empty_like(src)
        out["copy"] = _best_rate(lambda: dst.copy_(src), 2 * CUDA_COPY_BYTES, device) / 1e9
        del src, dst
        torch.cuda.empty_cache()
    return out


# --------------------------------------------------------------------------- the process


def _redirect_output(path: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def serve(conn, log: str) -> None:
    """Entry point of a worker process: runs (label, function, args) tasks
    from ``conn`` until it gets None, sending each result.

    A task that raises sends a "failed" result (Unavailable: "skipped") and
    ends the process: a CUDA error can leave the context unusable, so the next
    task gets a fresh process. Each result goes with that flag: (result, ended).
    """
    _redirect_output(log)
    while True:
        try:
            task = conn.recv()
        except EOFError:
            return
        if task is None:
            return
        label, function, args = task
        print(f"=== {label}", flush=True)
        ok = True
        try:
            result = function(*args)
        except Unavailable as e:
            result = {"status": "skipped", "reason": str(e)}
        except Exception as e:  # becomes the row's reason: one broken provider must not end the run
            traceback.print_exc()
            result, ok = {"status": "failed", "reason": f"{type(e).__name__}: {first_line(e)}"}, False
        if torch.cuda.is_initialized():
            torch.cuda.empty_cache()
        conn.send((result, not ok))
        if not ok:
            return
