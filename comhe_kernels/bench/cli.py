"""The command line: presets, argument checking, and main()."""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import math
import os
import shlex
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from .cases import DTYPES, FLOP_MODEL, GIB, MODES, BenchOptions, Case, canonical_power
from .oracle import TOLERANCES
from .providers import default_providers
from .report import (
    environment,
    evaluate_criteria,
    finish_rows,
    plot,
    results_table,
    write_csv,
    write_json,
)
from .runner import Plan, run_benchmark

DIMENSIONS = ("n", "k", "power", "half_space", "dtype", "mode")


@dataclass(frozen=True)
class Group:
    """A block of a preset: every combination of these lists, run by these providers (None: all)."""

    n: tuple
    k: tuple
    power: tuple = ("1",)
    half_space: tuple = (False,)
    dtype: tuple = ("float32",)
    mode: tuple = ("fwd+bwd",)
    providers: tuple | None = None


@dataclass(frozen=True)
class Criterion:
    """A target on one provider's result for one case of a preset."""

    text: str
    n: int
    k: int
    provider: str
    metric: str  # a row field (speedups: >= bound; seconds, MiB: <= bound), or "skipped"
    bound: float | None = None


@dataclass(frozen=True)
class Preset:
    description: str
    groups: tuple
    rep_seconds: float = 2.0
    max_call_seconds: float = 60.0
    criteria: tuple = ()


# The performance acceptance of the core op (float32, s = 1, forward + backward,
# ratios measured in the same run).
ACCEPTANCE = (
    Criterion("N=16384 k=32: fused >= 40x faster than the reference", 16384, 32, "cpu", "speedup_vs_reference", 40),
    Criterion("N=16384 k=32: fused >= 30x faster than pykeops", 16384, 32, "cpu", "speedup_vs_keops", 30),
    Criterion("N=16384 k=3: fused >= 150x faster than the reference", 16384, 3, "cpu", "speedup_vs_reference", 150),
    Criterion("N=16384 k=256: fused under 1.0 s", 16384, 256, "cpu", "time_median_s", 1.0),
    Criterion("N=65536 k=3: fused under 0.5 s", 65536, 3, "cpu", "time_median_s", 0.5),
    Criterion("N=65536 k=32: fused under 3 s", 65536, 32, "cpu", "time_median_s", 3.0),
    Criterion("N=65536 k=3: fused extra peak <= 64 MiB", 65536, 3, "cpu", "peak_extra_mib", 64),
    Criterion("N=65536 k=32: fused extra peak <= 64 MiB", 65536, 32, "cpu", "peak_extra_mib", 64),
    Criterion("N=65536: the reference is skipped, with the reason", 65536, 32, "reference", "skipped"),
)

PRESETS = {
    "quick": Preset(
        "every provider, N = 256, 1024, 4096, k = 32, s = 1, float32, forward+backward (~1.5 min on 2 cores)",
        (Group(n=(256, 1024, 4096), k=(32,)),),
        rep_seconds=0.5,
        max_call_seconds=20.0,
    ),
    "full": Preset(
        "every provider, N = 1024 .. 65536, k = 3, 32, 256, s = 1, float32, forward+backward",
        (Group(n=(1024, 2048, 4096, 8192, 16384, 32768, 65536), k=(3, 32, 256)),),
        rep_seconds=3.0,
        max_call_seconds=60.0,
    ),
    "acceptance": Preset(
        "the core op's targets: reference, keops, cpu at N = 16384 and 65536, float32, s = 1, forward+backward",
        (
            Group(n=(16384,), k=(3, 32), providers=("reference", "keops", "cpu")),
            Group(n=(16384,), k=(256,), providers=("reference", "cpu")),
            Group(n=(65536,), k=(3, 32), providers=("reference", "cpu")),
        ),
        rep_seconds=3.0,
        max_call_seconds=600.0,
        criteria=ACCEPTANCE,
    ),
}
# Lists on the command line without a preset: one group, these where a list is missing.
CUSTOM_DEFAULT = Group(n=(1024, 4096), k=(32,))


def make_plan(groups, providers: dict, devices: tuple, seed: int, overrides: dict, only: tuple | None) -> Plan:
    """Expand groups into (case, provider) items. overrides (dimension -> tuple)
    replace a group's lists; ``only`` replaces its providers. Within a series
    the cases run in increasing N, so that a slow provider's next time can be
    predicted and skipped; a case's providers run one after the other."""
    plan = Plan()
    reasons = {}
    seen = set()
    for group in groups:
        dims = {d: overrides.get(d) or getattr(group, d) for d in DIMENSIONS}
        names = only or group.providers or tuple(providers)
        for device in devices:
            for k in dims["k"]:
                for power in dims["power"]:
                    for half in dims["half_space"]:
                        for dtype in dims["dtype"]:
                            for mode in dims["mode"]:
                                for n in sorted(dims["n"]):
                                    case = Case(n, k, power, half, dtype, mode, device, seed)
                                    for name in names:
                                        if (case, name) in seen:
                                            continue
                                        seen.add((case, name))
                                        if (name, device) not in reasons:
                                            reasons[(name, device)] = providers[name].unavailable_reason(device)
                                        if reasons[(name, device)] is None:
                                            plan.items.append((case, name))
                                        else:
                                            plan.not_run[f"{name} ({device})"] = reasons[(name, device)]
    return plan


# --------------------------------------------------------------------------- arguments


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _nonnegative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def _float(text: str, ok: Callable, wanted: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
    if not (ok(value) and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    return _float(text, lambda v: v > 0, "a positive number")


def _nonnegative_float(text: str) -> float:
    return _float(text, lambda v: v >= 0, "a number >= 0")


def _power(text: str) -> str:
    try:
        return canonical_power(text)
    except (TypeError, ValueError) as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _yes_no(text: str) -> bool:
    value = text.strip().lower()
    if value in ("yes", "true", "1", "on"):
        return True
    if value in ("no", "false", "0", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected yes or no, got {text!r}")


def build_parser(provider_names: tuple) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="comhe-bench",
        description="How much faster and smaller the fused hyperspherical energy is than the naive code, "
        "a hand-chunked version, torch.compile and pykeops: each provider is checked against float64 "
        "first, then timed, with its peak memory and GFLOP/s next to the measured GEMM peak.",
        epilog="presets: "
        + "; ".join(f"{name}: {preset.description}" for name, preset in PRESETS.items())
        + ". Lists given with --n, --k, ... replace the preset's.",
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--quick", dest="preset", action="store_const", const="quick", help="the quick preset (the default)"
    )
    which.add_argument("--full", dest="preset", action="store_const", const="full", help="the full preset")
    which.add_argument("--preset", choices=tuple(PRESETS), help="a preset by name")
    p.add_argument(
        "--providers", nargs="+", metavar="NAME", help=f"among {', '.join(provider_names)} (default: all that run here)"
    )
    p.add_argument("--n", nargs="+", type=_positive_int, metavar="N", help="numbers of points")
    p.add_argument("--k", nargs="+", type=_positive_int, metavar="K", help="dimensions of the points")
    p.add_argument(
        "--power", nargs="+", type=_power, metavar="S", help="s >= 0 (0: log), or a0, a1, a2, a<s> (angular)"
    )
    p.add_argument("--half-space", nargs="+", type=_yes_no, metavar="YES|NO", help="half-space energy of [u; -u]")
    p.add_argument("--dtype", nargs="+", choices=tuple(DTYPES), metavar="DTYPE", help=", ".join(DTYPES))
    p.add_argument("--mode", nargs="+", choices=MODES, metavar="MODE", help="fwd, or fwd+bwd (energy and gradient)")
    p.add_argument("--device", nargs="+", choices=("cpu", "cuda"), help="default: cuda if torch sees one, else cpu")
    p.add_argument(
        "--threads", type=_nonnegative_int, default=0, help="CPU threads per worker (default: torch's, all cores)"
    )
    p.add_argument("--seed", type=_nonnegative_int, default=0, help="seed of the random points (default 0)")
    p.add_argument("--min-reps", type=_positive_int, default=3, help="timed calls at least (default 3)")
    p.add_argument("--max-reps", type=_positive_int, default=20, help="timed calls at most (default 20)")
    p.add_argument("--rep-seconds", type=_positive_float, help="timed work to aim for per measurement (preset's)")
    p.add_argument(
        "--warmup-seconds",
        type=_nonnegative_float,
        default=1.0,
        help="untimed full-size calls before the timed ones, the checked call included (default 1)",
    )
    p.add_argument(
        "--max-call-seconds", type=_positive_float, help="skip a case predicted to take longer per call (preset's)"
    )
    p.add_argument(
        "--max-memory-gib",
        type=_positive_float,
        help="skip a case predicted to need more (default: 80%% of the available RAM, 90%% of the GPU's)",
    )
    p.add_argument(
        "--timeout", type=_positive_float, default=900.0, help="kill a worker after this many seconds (default 900)"
    )
    p.add_argument(
        "--chunk-mib", type=_positive_float, default=16.0, help="block size of the chunked provider (default 16)"
    )
    p.add_argument(
        "--check-rows", type=_positive_int, default=256, help="gradient rows checked for large N (default 256)"
    )
    p.add_argument(
        "--gemm-sizes",
        nargs="+",
        type=_positive_int,
        default=[1024, 2048, 3072],
        metavar="SIZE",
        help="square torch.mm sizes whose best rate is the peak (default 1024 2048 3072)",
    )
    p.add_argument("--strict", action="store_true", help="time no provider that fails its check, baselines included")
    p.add_argument("--csv", metavar="FILE", help="write the rows as CSV")
    p.add_argument(
        "--json", metavar="FILE", help="write the rows, the run's metadata and the preset's verdicts as JSON"
    )
    p.add_argument("--plot", metavar="FILE.png", help="draw time and peak memory against N")
    p.add_argument(
        "--list-providers", action="store_true", help="show the providers and whether they run here, then exit"
    )
    return p


def _available_memory_bytes() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024.0
    except OSError:
        pass
    return 0.0


def _cuda_memory_bytes() -> float:
    return float(torch.cuda.get_device_properties(0).total_memory) if torch.cuda.is_available() else 0.0


def _console():
    from rich.console import Console

    # Piped into a file or a README, the table keeps its width instead of wrapping at 80 columns.
    return Console() if sys.stdout.isatty() else Console(width=220)


def main(argv: list | None = None, providers: dict | None = None) -> int:
    """The comhe-bench command. ``providers`` replaces the default registry
    (default_providers()); returns the exit status."""
    providers = dict(providers) if providers is not None else default_providers()
    parser = build_parser(tuple(providers))
    args = parser.parse_args(argv)
    if args.providers:
        unknown = [name for name in args.providers if name not in providers]
        if unknown:
            parser.error(f"argument --providers: unknown {', '.join(unknown)} (choose from {', '.join(providers)})")
    if args.min_reps > args.max_reps:
        parser.error(f"argument --min-reps: {args.min_reps} is more than --max-reps {args.max_reps}")
    if args.plot and not args.plot.lower().endswith(".png"):
        parser.error(f"argument --plot: expected a file name ending in .png, got {args.plot!r}")
    if importlib.util.find_spec("rich") is None:
        parser.error("comhe-bench needs rich: pip install rich (or comhe-kernels[bench])")
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        parser.error("argument --plot: needs matplotlib: pip install matplotlib")
    devices = (
        tuple(dict.fromkeys(args.device)) if args.device else (("cuda",) if torch.cuda.is_available() else ("cpu",))
    )
    if "cuda" in devices and not torch.cuda.is_available():
        parser.error("argument --device: cuda, but torch sees no CUDA device")

    console = _console()
    if args.list_providers:
        for name, provider in providers.items():
            for device in devices:
                why = provider.unavailable_reason(device)
                console.print(
                    f"{name:<10} {device:<5} {'runs' if why is None else 'unavailable: ' + why}. {provider.summary}"
                )
        return 0

    explicit = any(getattr(args, d) for d in DIMENSIONS)
    if args.preset:
        preset = PRESETS[args.preset]
    elif explicit:
        preset = Preset("the lists given", (CUSTOM_DEFAULT,))
    else:
        preset = PRESETS["quick"]
    overrides = {d: tuple(getattr(args, d) or ()) for d in DIMENSIONS}
    only = tuple(name for name in providers if name in args.providers) if args.providers else None
    plan = make_plan(preset.groups, providers, devices, args.seed, overrides, only)
    options = BenchOptions(
        threads=args.threads,
        min_reps=args.min_reps,
        max_reps=args.max_reps,
        rep_seconds=args.rep_seconds or preset.rep_seconds,
        warmup_seconds=args.warmup_seconds,
        max_call_seconds=args.max_call_seconds or preset.max_call_seconds,
        max_memory_bytes=args.max_memory_gib * GIB if args.max_memory_gib else 0.8 * _available_memory_bytes(),
        max_cuda_memory_bytes=args.max_memory_gib * GIB if args.max_memory_gib else 0.9 * _cuda_memory_bytes(),
        timeout=args.timeout,
        chunk_mib=args.chunk_mib,
        check_rows=args.check_rows,
        strict=args.strict,
        gemm_sizes=tuple(args.gemm_sizes),
    )
    env = environment(devices, args.threads)
    command = shlex.join(["comhe-bench", *(sys.argv[1:] if argv is None else argv)])
    console.print(f"[bold]{command}[/bold]")
    console.print(
        f"{'; '.join(env['device_names'].values())}; {env['threads']} threads; load average {env['load_avg_start']}; "
        f"OMP_WAIT_POLICY={env['omp_wait_policy']}; "
        f"torch {env['torch']}, pykeops {env['pykeops'] or '-'}, triton {env['triton'] or '-'}; "
        f"git {env['git_sha'] or '-'}"
    )
    load = env["load_avg_start"]
    if load is not None and load > 0.5 * (os.cpu_count() or 1):
        console.print(
            f"[yellow]busy machine: load average {load} on {os.cpu_count()} cores before the run. Times will be "
            "longer than on a quiet machine; the GEMM peak measured below shows by how much.[/yellow]"
        )
    for name, why in plan.not_run.items():
        console.print(f"[dim]not run: {name}: {why}[/dim]")
    if not plan.items:
        console.print("[red]nothing to run: no provider can run these cases here[/red]")
        return 1

    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, transient=True, refresh_per_second=2,  # a quiet parent: the workers measure
    ) as bar:  # fmt: skip
        task = bar.add_task("starting", total=len(plan.items))
        rows, peaks = run_benchmark(
            plan, providers, options, lambda done, what: bar.update(task, completed=done, description=what)
        )
    finish_rows(rows, env, options)

    title = f"hyperspherical energy: {'; '.join(env['device_names'].values())}, {env['threads']} threads"
    console.print(results_table(rows, title))
    for (device, dtype), peak in peaks.items():
        gemm = "sgemm" if dtype == "float32" else "dgemm"
        console.print(
            f"peak: {gemm} on {device}, measured in this run: {peak:.0f} GFLOP/s "
            f"(torch.mm, best of sizes {', '.join(map(str, options.gemm_sizes))})"
            if peak
            else f"peak: {gemm} on {device} could not be measured"
        )
    console.print(f"FLOP model: {FLOP_MODEL}. error: relative to float64 (gradient: to max |g|).")
    verdicts = evaluate_criteria(preset.criteria, rows)
    if verdicts:
        from rich.table import Table

        table = Table(title="acceptance (ratios measured in this run)")
        for name in ("criterion", "measured", "verdict"):
            table.add_column(name)
        for v in verdicts:
            value = v["value"]
            color = {"PASS": "green", "FAIL": "red"}.get(v["verdict"], "yellow")
            table.add_row(
                v["criterion"], f"{value:.3g}" if isinstance(value, float) else str(value), v["verdict"], style=color
            )
        console.print(table)
    meta = dict(
        env,
        command=command,
        preset=args.preset,
        flop_model=FLOP_MODEL,
        tolerances={name: {"energy": e, "grad": g} for name, (e, g) in TOLERANCES.items()},
        peak_gflops={f"{device}/{dtype}": peak for (device, dtype), peak in peaks.items()},
        not_run=plan.not_run,
        options=asdict(options),
        timestamp=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )
    if args.csv:
        write_csv(args.csv, rows)
        console.print(f"wrote {args.csv}")
    if args.json:
        write_json(args.json, rows, meta, verdicts)
        console.print(f"wrote {args.json}")
    if args.plot:
        plot(args.plot, rows, title)
        console.print(f"wrote {args.plot}")
    return 0
