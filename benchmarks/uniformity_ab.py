"""The fused uniformity loss against Wang and Isola's formula: forward + backward, A/B alternating.

    PYTHONPATH=. OMP_WAIT_POLICY=PASSIVE python benchmarks/uniformity_ab.py            # N = 4096, 8192; k = 32, 128
    PYTHONPATH=. OMP_WAIT_POLICY=PASSIVE python benchmarks/uniformity_ab.py --n 16384 --k 128 --repeats 3

A: ``comhe_kernels.uniformity.wang_isola_uniformity`` (F.normalize, torch.pdist,
pow, exp, mean, log: the published formula, an N(N-1)/2 vector and its
autograd buffers). B: ``comhe_kernels.uniformity_loss(x, t, eps=0)`` (the
op's Gaussian kind under a log). Both on the same float32 rows; the calls
alternate A, B, A, B, ... so that a change in the machine's load hits both;
the medians and the ratio of the medians are reported with the load average
before and after. Peak memory: the resident-set high-water mark (VmHWM, reset
before the call) of a fresh process running one call, above its resident
set before the call (x itself excluded).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import statistics
import time

import torch

import comhe_kernels
from comhe_kernels.uniformity import wang_isola_uniformity


def fused(x, t):
    return comhe_kernels.uniformity_loss(x, t, eps=0.0)


PROVIDERS = {"wang_isola": wang_isola_uniformity, "fused": fused}


def _points(n: int, k: int) -> torch.Tensor:
    return torch.randn(n, k, generator=torch.Generator().manual_seed(n * 1000 + k))


def _step(fn, x, t) -> float:
    x = x.detach().requires_grad_()
    start = time.perf_counter()
    fn(x, t).backward()
    return time.perf_counter() - start


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _peak_worker(name, n, k, t, threads, out):
    torch.set_num_threads(threads)
    x = _points(n, k)
    PROVIDERS[name](x[:64], t)  # load the extension and the allocator's first pages outside the measurement
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets the high-water mark VmHWM to the current RSS (Linux)
    before = _status_kib("VmRSS")
    _step(PROVIDERS[name], x, t)
    out.put(_status_kib("VmHWM") - before)


def peak_mib(name, n, k, t, threads) -> float:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    p = ctx.Process(target=_peak_worker, args=(name, n, k, t, threads, out))
    p.start()
    kib = out.get()
    p.join()
    return kib / 1024


def measure(n: int, k: int, t: float, repeats: int) -> dict:
    x = _points(n, k)
    a, b = (wang_isola_uniformity(x.double(), t).item(), fused(x, t).item())
    if abs(a - b) > 1e-5 * abs(a):
        raise AssertionError(f"N = {n}, k = {k}: fused {b} vs formula {a}")
    times = {name: [] for name in PROVIDERS}
    for name, fn in PROVIDERS.items():  # warm-up
        _step(fn, x, t)
    for _ in range(repeats):
        for name, fn in PROVIDERS.items():
            times[name].append(_step(fn, x, t))
    med = {name: statistics.median(v) for name, v in times.items()}
    return {"n": n, "k": k, "t": t, "loss": b, **{f"{name}_s": m for name, m in med.items()},
            **{f"{name}_all": v for name, v in times.items()}, "speedup": med["wang_isola"] / med["fused"]}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, nargs="+", default=[4096, 8192])
    p.add_argument("--k", type=int, nargs="+", default=[32, 128])
    p.add_argument("--t", type=float, default=2.0)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    args = p.parse_args(argv)
    threads = torch.get_num_threads()
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    print(f"{cpu}, {os.cpu_count()} logical cores, torch {torch.__version__}, {threads} threads, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, load average {os.getloadavg()}")
    print("| N | k | Wang-Isola formula fwd+bwd | fused fwd+bwd | speedup | formula peak MiB | fused peak MiB |")
    print("|---|---|---|---|---|---|---|")
    for n in args.n:
        for k in args.k:
            r = measure(n, k, args.t, args.repeats)
            mem = ("", "") if args.no_memory else tuple(
                f"{peak_mib(name, n, k, args.t, threads):.1f}" for name in PROVIDERS
            )
            print(f"| {n} | {k} | {1e3 * r['wang_isola_s']:.1f} ms | {1e3 * r['fused_s']:.1f} ms "
                  f"| {r['speedup']:.1f}x | {mem[0]} | {mem[1]} |", flush=True)
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
