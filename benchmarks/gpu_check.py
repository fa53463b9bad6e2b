"""The Python steps of benchmarks/gpu_check.sh (see there); results go into OUT/summary.json.

    python benchmarks/gpu_check.py device OUT [--dry-run]     device, driver, versions, ceilings
    python benchmarks/gpu_check.py accuracy OUT [--dry-run]   the float32 contract at N = 65536, every precision
    python benchmarks/gpu_check.py thomson OUT [--dry-run]    Thomson N = 10^5, time per descent step
    python benchmarks/gpu_check.py status OUT STEP RC SECONDS
    python benchmarks/gpu_check.py summary OUT

With --dry-run (no GPU needed) every step runs on the CPU at small sizes
and the GPU parts are skipped with the reason, so the script is exercised
before a GPU is lent.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

PRECISIONS = ("auto", "ieee", "tf32x3", "tf32", "bf16")
# The documented bounds of each mode (tests/conftest.py PRECISION_TOL): energy relative, gradient of max |g|.
BOUNDS = {"auto": (1e-6, 1e-3), "ieee": (1e-6, 1e-3), "tf32x3": (1e-6, 1e-3), "tf32": (1e-5, 6.5e-3), "bf16": (6e-5, 4e-2)}


def _summary_path(out: str) -> Path:
    return Path(out) / "summary.json"


def _update(out: str, key: str, value) -> None:
    path = _summary_path(out)
    data = json.loads(path.read_text()) if path.exists() else {}
    data[key] = value
    path.write_text(json.dumps(data, indent=1, default=str))


def _cuda_time_ms(fn, reps: int, warmup: int = 2) -> float:
    """Median of reps calls timed by CUDA events, after warm-up calls."""
    import torch

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


def device(out: str, dry: bool) -> None:
    import torch

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "host": platform.node(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    try:
        import comhe_kernels

        info["comhe_kernels"] = comhe_kernels.__version__
        info["comhe_kernels_path"] = os.path.dirname(comhe_kernels.__file__)
        info["build"] = str(comhe_kernels.build_info())
    except Exception as e:  # the summary says why rather than stopping the call
        info["comhe_kernels"] = f"import failed: {e}"
    try:
        sha = subprocess.run(["git", "-C", str(Path(__file__).parent), "rev-parse", "HEAD"], capture_output=True, text=True)
        info["git_sha"] = sha.stdout.strip() or None
    except OSError:
        info["git_sha"] = None
    if dry or not torch.cuda.is_available():
        info["gpu"] = "none: " + ("dry run" if dry else "torch sees no CUDA device")
        _update(out, "device", info)
        _update(out, "ceilings", {"skipped": "no GPU (dry run)" if dry else "no GPU"})
        print(json.dumps(info, indent=1))
        return
    props = torch.cuda.get_device_properties(0)
    info.update(
        gpu=props.name,
        capability=f"{props.major}.{props.minor}",
        sm_count=props.multi_processor_count,
        memory_gib=round(props.total_memory / 2**30, 1),
        l2_mib=round(getattr(props, "L2_cache_size", 0) / 2**20, 1),
    )
    smi = subprocess.run(
        ["nvidia-smi", "--query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.limit,temperature.gpu",
         "--format=csv,noheader"], capture_output=True, text=True)
    info["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
    _update(out, "device", info)
    print(json.dumps(info, indent=1))
    _update(out, "ceilings", ceilings())


def ceilings() -> dict:
    """Matrix rates (8192^3 products of random data) and the copy bandwidth, measured here."""
    import torch

    n = 8192
    res = {}
    a32, b32 = torch.randn(n, n, device="cuda"), torch.randn(n, n, device="cuda")
    for name, dtype, tf32 in (("fp32_tflops", torch.float32, False), ("tf32_tflops", torch.float32, True),
                              ("bf16_tflops", torch.bfloat16, False)):
        torch.backends.cuda.matmul.allow_tf32 = tf32
        a, b = a32.to(dtype), b32.to(dtype)
        ms = _cuda_time_ms(lambda: a @ b, reps=10, warmup=3)
        res[name] = round(2 * n**3 / (ms * 1e-3) / 1e12, 1)
    torch.backends.cuda.matmul.allow_tf32 = False
    src = torch.randn(2**29, device="cuda")  # 2 GiB
    dst = torch.empty_like(src)
    ms = _cuda_time_ms(lambda: dst.copy_(src), reps=10, warmup=3)
    res["copy_tb_per_s"] = round(2 * src.numel() * 4 / (ms * 1e-3) / 1e12, 2)  # bytes read plus written
    del src, dst
    print("ceilings:", res, flush=True)
    return res


def _with_close_pairs(n: int, k: int, gen):
    """The contract's input (tests/test_hyperspherical_energy.py): random rows plus
    planted near-duplicates and near-antipodes, neighbours and n / 2 rows apart."""
    import torch

    x = torch.randn(n, k, dtype=torch.float64, generator=gen)
    m, h = max(1, n // 50), n // 2
    noise = lambda scale: scale * torch.randn(m, k, dtype=torch.float64, generator=gen)
    x[1 : 2 * m : 2] = x[0 : 2 * m : 2] + noise(1e-5)
    x[2 * m : 4 * m : 2] = -x[2 * m + 1 : 4 * m : 2] + noise(1e-6)
    x[h : h + m] = x[4 * m : 5 * m] + noise(1e-5)
    x[h + m : h + 2 * m] = -x[5 * m : 6 * m] + noise(1e-6)
    return x.float()


def accuracy(out: str, dry: bool) -> None:
    """Each precision against the float64 evaluation (the kernel in float64, itself
    checked against the CPU kernel in float64 once per k), s = 1, eps = 1e-4."""
    import torch

    import comhe_kernels as ck

    on_gpu = not dry and torch.cuda.is_available()
    device, backend, n = ("cuda", "triton", 65536) if on_gpu else ("cpu", "cpu", 512)
    rows = []
    gen = torch.Generator().manual_seed(0)
    for k in (3, 32):
        x = _with_close_pairs(n, k, gen).to(device)
        kw = dict(reduction="sum", backend=backend)
        e64, g64 = ck.hyperspherical_energy_and_grad(x.double(), 1, **kw)
        row64 = {"k": k, "n": n, "precision": "float64", "backend": backend}
        if on_gpu and "cpu" in ck.available_backends("hyperspherical_energy", "cpu"):
            e_cpu, g_cpu = ck.hyperspherical_energy_and_grad(x.double().cpu(), 1, reduction="sum", backend="cpu")
            row64["vs_cpu_float64_energy"] = abs(e64.item() - e_cpu.item()) / abs(e_cpu.item())
            row64["vs_cpu_float64_grad"] = ((g64.cpu() - g_cpu).abs().max() / g_cpu.abs().max()).item()
        rows.append(row64)
        scale = g64.abs().max().item()
        for precision in PRECISIONS:
            row = {"k": k, "n": n, "precision": precision, "backend": backend}
            if precision not in ck.ops._registry.backends()[backend].precisions:
                row["skipped"] = f"backend {backend!r} has no precision {precision!r} (a GPU mode)"
                rows.append(row)
                continue
            fn = lambda: ck.hyperspherical_energy_and_grad(x, 1, precision=precision, **kw)
            e32, g32 = fn()
            row["energy_rel"] = abs(e32.item() - e64.item()) / abs(e64.item())
            row["grad_rel_max"] = (g32.double() - g64).abs().max().item() / scale
            if on_gpu:
                row["ms_fwd_bwd"] = round(_cuda_time_ms(fn, reps=5), 3)
            e_tol, g_tol = BOUNDS[precision]
            row["within_bound"] = row["energy_rel"] <= e_tol and row["grad_rel_max"] <= g_tol
            rows.append(row)
            print(json.dumps(row), flush=True)
    _update(out, "accuracy", rows)


def thomson(out: str, dry: bool, iterations: int = 20) -> None:
    """N = 10^5 points on S^2, s = 1, eps = 0: projected gradient steps
    x <- normalize(x - lr g), each one energy-and-gradient call; the median
    time per step (CUDA events)."""
    import torch

    import comhe_kernels as ck

    on_gpu = not dry and torch.cuda.is_available()
    n, device, backend = (100_000, "cuda", "triton") if on_gpu else (500, "cpu", "cpu")
    if not on_gpu:
        iterations = 3
    x = torch.nn.functional.normalize(torch.randn(n, 3, generator=torch.Generator().manual_seed(1)), dim=1).to(device)
    lr = 0.1 / n**1.5
    energies = []

    def step():
        nonlocal x
        e, g = ck.hyperspherical_energy_and_grad(x, 1, eps=0.0, reduction="sum", backend=backend)
        x = torch.nn.functional.normalize(x - lr * g, dim=1)
        energies.append(e)

    if on_gpu:
        ms = _cuda_time_ms(step, reps=iterations, warmup=3)
    else:
        t = time.perf_counter()
        for _ in range(iterations):
            step()
        ms = (time.perf_counter() - t) / iterations * 1e3
    res = {"n": n, "backend": backend, "device": device, "iterations": iterations, "ms_per_step": round(ms, 3),
           "energy_first": energies[0].item(), "energy_last": energies[-1].item(),
           "energy_decreased": energies[-1].item() < energies[0].item()}
    if not on_gpu:
        res["note"] = "dry run: N = 500 on the CPU backend"
    print(json.dumps(res), flush=True)
    _update(out, "thomson", res)


def status(out: str, name: str, rc: int, seconds: int) -> None:
    path = _summary_path(out)
    data = json.loads(path.read_text()) if path.exists() else {}
    data.setdefault("steps", {})[name] = {"exit": rc, "seconds": seconds}
    path.write_text(json.dumps(data, indent=1, default=str))


def summary(out: str) -> None:
    """The short table printed last (the tail of the output is what comes back)."""
    path = _summary_path(out)
    data = json.loads(path.read_text()) if path.exists() else {}
    dev = data.get("device", {})
    print("=" * 78)
    print(f"gpu_check summary: {dev.get('gpu', '?')}, torch {dev.get('torch')}, CUDA {dev.get('torch_cuda')}, "
          f"triton {dev.get('triton')}, git {str(dev.get('git_sha'))[:10]}")
    print(f"ceilings: {data.get('ceilings', {})}")
    for name, st in data.get("steps", {}).items():
        print(f"  step {name:14s} exit {st['exit']:>3}  {st['seconds']:>4} s")
    junit = Path(out) / "pytest_cuda.xml"
    if junit.exists():
        import xml.etree.ElementTree as ET

        suites = ET.parse(junit).getroot()
        suite = suites if suites.tag == "testsuite" else suites[0]
        print("  pytest -m cuda: " + ", ".join(f"{a} {suite.get(a)}" for a in ("tests", "failures", "errors", "skipped")))
    print("accuracy (energy rel / gradient of max|g| / ms fwd+bwd / within the documented bound):")
    for r in data.get("accuracy", []):
        if "skipped" in r:
            print(f"  k={r['k']:<3} {r['precision']:7s} skipped: {r['skipped']}")
        elif r["precision"] == "float64":
            extra = f" vs CPU float64 {r.get('vs_cpu_float64_energy', '-')!s:.9} / {r.get('vs_cpu_float64_grad', '-')!s:.9}"
            print(f"  k={r['k']:<3} float64 ({r['backend']}){extra}")
        else:
            print(f"  k={r['k']:<3} {r['precision']:7s} {r['energy_rel']:.2e} / {r['grad_rel_max']:.2e} / "
                  f"{r.get('ms_fwd_bwd', '-')} / {'yes' if r['within_bound'] else 'NO'}")
    th = data.get("thomson")
    if th:
        print(f"thomson N = {th['n']}: {th['ms_per_step']} ms per step ({th['backend']}, {th['iterations']} steps, "
              f"energy {th['energy_first']:.6g} -> {th['energy_last']:.6g})")
    bench = Path(out) / "bench" / "gpu_cuda.txt"
    if bench.exists():
        print(f"benchmark: {bench} (its verdict table is above, in the bench step)")
    print("=" * 78)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=("device", "accuracy", "thomson", "status", "summary"))
    p.add_argument("out")
    p.add_argument("rest", nargs="*")
    p.add_argument("--dry-run", action="store_true")
    a = p.parse_args(argv)
    if a.what == "status":
        status(a.out, a.rest[0], int(a.rest[1]), int(a.rest[2]))
    elif a.what == "summary":
        summary(a.out)
    else:
        {"device": device, "accuracy": accuracy, "thomson": thomson}[a.what](a.out, a.dry_run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
