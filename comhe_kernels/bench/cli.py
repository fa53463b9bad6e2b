"""The command line: argument checking, and main().

What a run measures is a preset (presets.py) or the lists given; each
(case, provider) pair is measured by runner.py and shown by report.py, the
preset's targets judged by verdicts.py. ``--dry-run`` walks the same steps
without measuring: the plan, what the memory models would skip, the files.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import io
import math
import os
import shlex
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .cases import DTYPES, FLOP_MODEL, GIB, INPUTS, MODES, OPS, BenchOptions, canonical_power
from .oracle import TOLERANCES
from .presets import CUSTOM_DEFAULT, DIMENSIONS, PRESETS, Preset, expand_providers, make_plan
from .providers import at_cpu_isa_levels, default_providers
from .report import environment, finish_rows, plot, results_table, write_csv, write_json
from .runner import ceilings_wanted, dry_run_rows, run_benchmark
from .verdicts import evaluate_criteria, verdict_table
from .worker import CUDA_COPY_BYTES, CUDA_GEMM_SIZE


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
        "first, then timed, with its peak memory and GFLOP/s next to the matmul rate measured in the same run.",
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
    p.add_argument("--op", nargs="+", choices=OPS, metavar="OP", help=f"{', '.join(OPS)} (default: the first)")
    p.add_argument("--b", nargs="+", type=_positive_int, metavar="B", help="point sets per call (default 1)")
    p.add_argument("--n", nargs="+", type=_positive_int, metavar="N", help="numbers of points")
    p.add_argument(
        "--m", nargs="+", type=_positive_int, metavar="M", help="cross_energy: the second set's points (default: N)"
    )
    p.add_argument("--k", nargs="+", type=_positive_int, metavar="K", help="dimensions of the points")
    p.add_argument(
        "--power",
        nargs="+",
        type=_power,
        metavar="S",
        help="s >= 0 (0: log), a0, a1, a<s> (angular), g<t> (Gaussian; the uniformity loss's t, default g2)",
    )
    p.add_argument("--half-space", nargs="+", type=_yes_no, metavar="YES|NO", help="half-space energy of [u; -u]")
    p.add_argument("--dtype", nargs="+", choices=tuple(DTYPES), metavar="DTYPE", help=", ".join(DTYPES))
    p.add_argument("--mode", nargs="+", choices=MODES, metavar="MODE", help="fwd, or fwd+bwd (energy and gradient)")
    p.add_argument(
        "--inputs", nargs="+", choices=INPUTS, metavar="KIND", help=f"{', '.join(INPUTS)} points (default random)"
    )
    p.add_argument(
        "--device", nargs="+", choices=("cpu", "cuda"), help="default: the preset's, else cuda if torch sees one"
    )
    p.add_argument(
        "--threads", type=_nonnegative_int, default=0, help="CPU threads per worker (default: torch's, all cores)"
    )
    p.add_argument(
        "--cpu-isa",
        nargs="+",
        metavar="LEVEL",
        help="run the cpu provider once per ISA level of its kernel (e.g. avx2 avx512; rows cpu@LEVEL); "
        "default: one run at COMHE_CPU_ISA or the CPU's best",
    )
    p.add_argument("--seed", type=_nonnegative_int, default=0, help="seed of the random points (default 0)")
    p.add_argument("--min-reps", type=_positive_int, help="timed calls at least (preset's; default 3)")
    p.add_argument("--max-reps", type=_positive_int, help="timed calls at most (preset's; default 20)")
    p.add_argument("--rep-seconds", type=_positive_float, help="timed work to aim for per measurement (preset's)")
    p.add_argument(
        "--warmup-seconds",
        type=_nonnegative_float,
        help="untimed full-size calls before the timed ones, the checked call included (preset's; default 1)",
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
        "--time-budget",
        type=_positive_float,
        metavar="SECONDS",
        help="for the whole run: what is left when it is spent is skipped, with the reason (default: none)",
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
        help=f"square torch.mm sizes whose best rate is the CPU's ceiling (default 1024 2048 3072; "
        f"a GPU's: {CUDA_GEMM_SIZE})",
    )
    p.add_argument("--strict", action="store_true", help="time no provider that fails its check, baselines included")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="measure nothing: show what would run (also on a device this machine lacks) and what would be "
        "skipped and why, and write the output files with those rows",
    )
    p.add_argument(
        "--out",
        metavar="DIR",
        help="write <preset>_<device>.txt (what is printed), .csv, .json and .log (the workers' output) there",
    )
    p.add_argument("--csv", metavar="FILE", help="write the rows as CSV")
    p.add_argument(
        "--json", metavar="FILE", help="write the rows, the run's metadata and the preset's verdicts as JSON"
    )
    p.add_argument("--plot", metavar="FILE.png", help="draw time and peak memory against N (needs matplotlib)")
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


class _Output:
    """The console, and the same text for --out's .txt file (the progress bar is not in it)."""

    def __init__(self, record: bool):
        # Piped into a file or a README, the table keeps its width instead of wrapping at 80 columns.
        self.console = Console() if sys.stdout.isatty() else Console(width=220)
        self.text = Console(file=io.StringIO(), width=220) if record else None

    def print(self, *objects) -> None:
        self.console.print(*objects)
        if self.text is not None:
            self.text.print(*objects)

    def save(self, path: Path) -> None:
        path.write_text(self.text.file.getvalue())


def _list_providers(out: _Output, providers: dict, devices: tuple) -> None:
    for name, provider in providers.items():
        for device in devices:
            reasons = {op: provider.unavailable_reason(op, device) for op in provider.ops}
            mismatch = provider.mismatch(provider.ops[0], device)
            if mismatch is not None:
                status = f"unavailable: {mismatch}"
            elif all(why is None for why in reasons.values()):
                status = f"runs {', '.join(provider.ops)}"
            else:
                status = "; ".join(f"{op}: {why or 'runs'}" for op, why in reasons.items())
            out.print(f"{name:<15} {device:<5} {status}. {provider.summary}")


def _cpu_isa_levels(parser: argparse.ArgumentParser, levels: list) -> tuple:
    """--cpu-isa's levels, each one this build has and this CPU runs."""
    from .. import _extension

    try:
        info = _extension.cpu_isa()
    except RuntimeError as e:
        parser.error(f"argument --cpu-isa: {e}")
    bad = [level for level in levels if level not in info["runnable"]]
    if bad:
        parser.error(
            f"argument --cpu-isa: {', '.join(bad)} not runnable here "
            f"(this build: {', '.join(info['levels'])}; this CPU runs {', '.join(info['runnable'])})"
        )
    return tuple(dict.fromkeys(levels))


def main(argv: list | None = None, providers: dict | None = None) -> int:
    """The comhe-bench command. ``providers`` replaces the default registry
    (default_providers()); returns the exit status."""
    providers = dict(providers) if providers is not None else default_providers()
    parser = build_parser(tuple(providers))
    args = parser.parse_args(argv)
    if args.cpu_isa:
        providers = at_cpu_isa_levels(providers, _cpu_isa_levels(parser, args.cpu_isa))
    if args.providers:
        unknown = [name for name in args.providers if not expand_providers(name, providers)]
        if unknown:
            parser.error(f"argument --providers: unknown {', '.join(unknown)} (choose from {', '.join(providers)})")
    if args.min_reps and args.max_reps and args.min_reps > args.max_reps:
        parser.error(f"argument --min-reps: {args.min_reps} is more than --max-reps {args.max_reps}")
    if args.plot and not args.plot.lower().endswith(".png"):
        parser.error(f"argument --plot: expected a file name ending in .png, got {args.plot!r}")
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        parser.error("argument --plot: needs matplotlib: pip install matplotlib")
    if args.m and args.op and "cross_energy" not in args.op:
        parser.error("argument --m: the second set's size is for --op cross_energy")

    explicit = any(getattr(args, d) for d in DIMENSIONS)
    if args.preset:
        preset = PRESETS[args.preset]
    elif explicit:
        preset = Preset("the lists given", (CUSTOM_DEFAULT,))
    else:
        preset = PRESETS["quick"]
    devices = tuple(dict.fromkeys(args.device or preset.devices or ("cuda" if torch.cuda.is_available() else "cpu",)))
    if "cuda" in devices and not torch.cuda.is_available() and not args.dry_run:
        parser.error("cuda, but torch sees no CUDA device here (--dry-run shows what would run)")

    out = _Output(record=bool(args.out))
    if args.list_providers:
        _list_providers(out, providers, devices)
        return 0

    overrides = {d: tuple(getattr(args, d) or ()) for d in DIMENSIONS}
    if args.providers:
        wanted = {n for name in args.providers for n in expand_providers(name, providers)}
        only = tuple(name for name in providers if name in wanted)
    else:
        only = None
    try:
        plan = make_plan(preset.groups, providers, devices, args.seed, overrides, only, dry_run=args.dry_run)
    except ValueError as e:
        parser.error(str(e))
    options = BenchOptions(
        threads=args.threads,
        min_reps=args.min_reps or preset.min_reps,
        max_reps=args.max_reps or preset.max_reps,
        rep_seconds=args.rep_seconds or preset.rep_seconds,
        warmup_seconds=preset.warmup_seconds if args.warmup_seconds is None else args.warmup_seconds,
        max_call_seconds=args.max_call_seconds or preset.max_call_seconds,
        max_memory_bytes=args.max_memory_gib * GIB if args.max_memory_gib else 0.8 * _available_memory_bytes(),
        max_cuda_memory_bytes=args.max_memory_gib * GIB if args.max_memory_gib else 0.9 * _cuda_memory_bytes(),
        time_budget=args.time_budget or 0.0,
        timeout=args.timeout,
        chunk_mib=args.chunk_mib,
        check_rows=args.check_rows,
        strict=args.strict,
        gemm_sizes=tuple(args.gemm_sizes),
    )
    if options.min_reps > options.max_reps:
        parser.error(f"{options.min_reps} timed calls at least is more than {options.max_reps} at most")
    stem = f"{args.preset or ('custom' if explicit else 'quick')}_{'+'.join(devices)}"
    outdir = Path(args.out) if args.out else None
    if outdir is not None:
        outdir.mkdir(parents=True, exist_ok=True)

    env = environment(devices, args.threads)
    command = shlex.join(["comhe-bench", *(sys.argv[1:] if argv is None else argv)])
    out.print(f"[bold]{command}[/bold]")
    out.print(
        f"{'; '.join(env['device_names'].values())}; {env['threads']} threads; load average {env['load_avg_start']}; "
        f"OMP_WAIT_POLICY={env['omp_wait_policy']}; "
        f"torch {env['torch']}, pykeops {env['pykeops'] or '-'}, triton {env['triton'] or '-'}; "
        f"git {env['git_sha'] or '-'}"
    )
    load = env["load_avg_start"]
    if load is not None and load > 0.5 * (os.cpu_count() or 1) and not args.dry_run:
        out.print(
            f"[yellow]busy machine: load average {load} on {os.cpu_count()} cores before the run. Times will be "
            "longer than on a quiet machine; the matmul rate measured below shows by how much.[/yellow]"
        )
    for name, why in plan.not_run.items():
        out.print(f"[dim]not run{' here' if args.dry_run else ''}: {name}: {why}[/dim]")
    if not plan.items:
        out.print("[red]nothing to run: no provider can run these cases here[/red]")
        return 1

    if args.dry_run:
        rows, ceilings = dry_run_rows(plan, providers, options), {}
        _print_planned_ceilings(out, plan, options)
    else:
        with Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=out.console, transient=True, refresh_per_second=2,  # a quiet parent: the workers measure
        ) as bar:  # fmt: skip
            task = bar.add_task("starting", total=len(plan.items))
            rows, ceilings = run_benchmark(
                plan,
                providers,
                options,
                lambda done, what: bar.update(task, completed=done, description=what),
                log=str(outdir / f"{stem}.log") if outdir is not None else None,
            )
    finish_rows(rows, env, options)

    title = f"comhe-bench {stem}: {'; '.join(env['device_names'].values())}, {env['threads']} threads"
    for op in dict.fromkeys(r["op"] for r in rows):  # a table per op: each has its own columns
        out.print(results_table([r for r in rows if r["op"] == op], f"{op}: {title}"))
    for device, _ in ceilings_wanted(plan, options) if not args.dry_run else ():
        if not any(d == device for d, _ in ceilings):
            out.print(f"[yellow]ceilings on {device}: could not be measured (the workers' output: --out)[/yellow]")
    for (device, name), value in ceilings.items():
        what = "device-to-device copy, read + write" if name == "copy" else f"{name} matmul"
        unit = "GB/s" if name == "copy" else "GFLOP/s"
        out.print(f"ceiling on {device}, measured in this run: {what} {value:.0f} {unit}")
    out.print(f"FLOP model: {FLOP_MODEL}. error: relative to float64 (gradient: to max |g|).")
    verdicts = evaluate_criteria(preset.criteria, rows)
    if verdicts:
        out.print(verdict_table(verdicts))
    meta = dict(
        env,
        command=command,
        preset=args.preset,
        dry_run=args.dry_run,
        flop_model=FLOP_MODEL,
        tolerances={name: {"energy": e, "grad": g} for name, (e, g) in TOLERANCES.items()},
        ceilings={f"{device}/{name}": value for (device, name), value in ceilings.items()},
        not_run=plan.not_run,
        options=asdict(options),
        timestamp=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )
    csv_files, json_files = [args.csv], [args.json]
    if outdir is not None:
        csv_files.append(str(outdir / f"{stem}.csv"))
        json_files.append(str(outdir / f"{stem}.json"))
    written = []
    for path in filter(None, csv_files):
        write_csv(path, rows)
        written.append(path)
    for path in filter(None, json_files):
        write_json(path, rows, meta, verdicts)
        written.append(path)
    if args.plot:
        plot(args.plot, rows, title)
        written.append(args.plot)
    if outdir is not None:
        written.append(str(outdir / f"{stem}.txt"))
        if not args.dry_run:
            written.append(str(outdir / f"{stem}.log"))
    for path in written:
        out.print(f"wrote {path}")
    if outdir is not None:
        out.save(outdir / f"{stem}.txt")
    return 0


def _print_planned_ceilings(out: _Output, plan, options: BenchOptions) -> None:
    for device, dtypes in ceilings_wanted(plan, options):
        if device == "cuda":
            what = (
                f"{', '.join(dict.fromkeys((*dtypes, 'tf32', 'bfloat16')))} matmul ({CUDA_GEMM_SIZE}^3), "
                f"device-to-device copy ({CUDA_COPY_BYTES / GIB:g} GiB)"
            )
        else:
            what = f"{', '.join(dtypes)} matmul (best of {', '.join(map(str, options.gemm_sizes))})"
        here = "" if device == "cpu" or torch.cuda.is_available() else "; not here: no CUDA device"
        out.print(f"would measure the ceilings on {device}: {what}{here}")
