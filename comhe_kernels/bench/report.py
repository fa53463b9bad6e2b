"""The results: a rich table, CSV and JSON rows that say where and how they were
measured (and the command that measures each again), and the plot (matplotlib,
optional)."""

from __future__ import annotations

import csv
import importlib.metadata
import json
import math
import os
import platform
import shlex
import subprocess
from pathlib import Path

import torch

from rich.table import Table

from .. import __version__
from .cases import FLOP_MODEL, MIB, BenchOptions
from .runner import BASELINES, case_of

# The columns of the CSV and of each JSON row, in this order.
ROW_FIELDS = (
    "provider", "fused", "status", "reason",
    "op", "b", "n", "m", "k", "power", "half_space", "dtype", "mode", "device", "inputs", "seed", "pairs",
    "check", "energy", "energy_rel_err", "grad_rel_err",
    "time_median_s", "time_p20_s", "time_p80_s", "reps",
    "peak_extra_bytes", "peak_extra_mib", "memory_method",
    "pairs_per_s", "gflops", "peak_gflops", "fraction_of_peak", "flop_model",
    *(f"speedup_vs_{name}" for name in BASELINES), "time_vs_random",
    "wall_s", "device_name", "cpu_isa", "threads", "load_avg_start", "omp_wait_policy",
    "torch", "pykeops", "triton", "comhe_kernels", "python", "git_sha", "timestamp", "command",
)  # fmt: skip


def environment(devices: tuple, threads: int) -> dict:
    """Where and with what the rows are measured."""
    return {
        "device_names": {d: gpu_name() if d == "cuda" else cpu_name() for d in devices},
        "threads": threads or torch.get_num_threads(),
        # 1-minute load average before the first worker: others' work on a shared machine
        "load_avg_start": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
        "torch": torch.__version__,
        "pykeops": _dist_version("pykeops"),
        "triton": _dist_version("triton"),
        "comhe_kernels": __version__,
        "python": platform.python_version(),
        "git_sha": git_sha(),
    }


def cpu_name() -> str:
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores"


def gpu_name() -> str:
    if not torch.cuda.is_available():
        return "no CUDA device here"
    props = torch.cuda.get_device_properties(0)
    memory = props.total_memory / 2**30
    return f"{props.name}, {memory:.0f} GiB, sm_{props.major}{props.minor}, CUDA {torch.version.cuda}"


def _dist_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return ""


def git_sha() -> str:
    """The checkout's commit, with "+dirty" when it has changes other than to
    benchmarks/results (the output of earlier runs, which changes nothing
    measured); "" outside a checkout."""
    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return ""
        changes = ["git", "status", "--porcelain", "--", ".", ":(exclude)benchmarks/results"]
        status = subprocess.run(changes, cwd=root, capture_output=True, text=True, timeout=10)
        return sha.stdout.strip() + ("+dirty" if status.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return ""


def row_command(row: dict, options: BenchOptions) -> str:
    """The command that measures this row again."""
    args = ["python", "-m", "comhe_kernels.bench", "--providers", row["provider"]]
    if row["op"] != "hyperspherical_energy":
        args += ["--op", row["op"]]
    if row["b"] != 1:
        args += ["--b", str(row["b"])]
    args += ["--n", str(row["n"])]
    if row["op"] == "cross_energy":
        args += ["--m", str(row["m"])]
    args += [
        "--k", str(row["k"]), "--power", row["power"],
        "--half-space", "yes" if row["half_space"] else "no",
        "--dtype", row["dtype"], "--mode", row["mode"], "--device", row["device"],
        "--inputs", row["inputs"], "--seed", str(row["seed"]), "--threads", str(row["threads"]),
    ]  # fmt: skip
    if options.strict:
        args.append("--strict")
    return f"OMP_WAIT_POLICY={row['omp_wait_policy']} " + shlex.join(args)


def finish_rows(rows: list, env: dict, options: BenchOptions) -> None:
    """Add the environment, MiB, the FLOP model and each row's command."""
    for row in rows:
        row["device_name"] = env["device_names"][row["device"]]
        for name, value in env.items():
            if name != "device_names":
                row.setdefault(name, value)
        if row.get("peak_extra_bytes") is not None:
            row["peak_extra_mib"] = row["peak_extra_bytes"] / MIB
        if row.get("time_median_s"):
            row["flop_model"] = FLOP_MODEL
        row["command"] = row_command(row, options)


def _json_value(value):
    """JSON has no NaN or infinity: null and the strings "inf", "-inf"."""
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def write_csv(path: str, rows: list) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=ROW_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({name: "" if row.get(name) is None else row[name] for name in ROW_FIELDS})


def write_json(path: str, rows: list, meta: dict, verdicts: list) -> None:
    """{"meta": the run, "rows": [ROW_FIELDS each], "criteria": the preset's verdicts}."""
    doc = {
        "meta": meta,
        "rows": [{name: _json_value(row.get(name)) for name in ROW_FIELDS} for row in rows],
        "criteria": [{**v, "value": _json_value(v["value"])} for v in verdicts],
    }
    Path(path).write_text(json.dumps(doc, indent=1) + "\n")


def plot(path: str, rows: list, title: str) -> None:
    """Median time and extra peak memory against N, log-log, one line per
    provider; one row of panels per series (Case.series: everything but N and
    M). Baselines that failed their check are dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = list(dict.fromkeys(case_of(r).series() for r in rows))
    providers = list(dict.fromkeys(r["provider"] for r in rows))
    fig, axes = plt.subplots(len(series), 2, figsize=(11, 3.8 * len(series)), squeeze=False)
    for line, key in enumerate(series):
        for number, name in enumerate(providers):
            pts = sorted(
                (r for r in rows if r["provider"] == name and case_of(r).series() == key and r.get("time_median_s")),
                key=lambda r: r["n"],
            )
            if not pts:
                continue
            inaccurate = any(r["status"] == "inaccurate" for r in pts)
            style = dict(color=f"C{number}", marker="o", linestyle="--" if inaccurate else "-")
            label = name + (" (inaccurate)" if inaccurate else "")
            axes[line][0].plot([r["n"] for r in pts], [r["time_median_s"] for r in pts], label=label, **style)
            mem = [r for r in pts if r.get("peak_extra_bytes") is not None]
            # log axis: a peak below 1 KiB (a provider that allocates nothing new) is drawn at 1 KiB
            mib = [max(r["peak_extra_bytes"], 1024) / MIB for r in mem]
            axes[line][1].plot([r["n"] for r in mem], mib, label=label, **style)
        what = next(case_of(r) for r in rows if case_of(r).series() == key).series_label()
        for ax, ylabel in zip(axes[line], ("median time per call (s)", "extra peak memory (MiB)")):
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("N (points)")
            ax.set_ylabel(ylabel)
            ax.set_title(what, fontsize=9)
            ax.grid(True, which="both", alpha=0.3)
            if ax.has_data():
                ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt_seconds(s) -> str:
    return f"{s * 1e3:.3g} ms" if s < 1 else f"{s:.3g} s"


def _fmt_time(row: dict) -> str:
    if not row.get("time_median_s"):
        return ""
    lo, hi = row["time_p20_s"], row["time_p80_s"]
    return f"{_fmt_seconds(row['time_median_s'])} ({_fmt_seconds(lo)}-{_fmt_seconds(hi)})"


def _fmt_ratio(r) -> str:
    return "" if r is None else (f"{r:.0f}x" if r >= 10 else f"{r:.2g}x")


def _fmt_err(row: dict) -> str:
    e, g = row.get("energy_rel_err"), row.get("grad_rel_err")
    if e is None:
        return ""
    return f"{e:.1e}" + ("" if g is None else f" / {g:.1e}")


def _fmt_status(row: dict) -> str:
    """The status, with the reason where it says something the row does not
    (an inaccurate baseline's error is in its error column)."""
    if row["status"] in ("ok", "inaccurate") or not row.get("reason"):
        return row["status"]
    return f"{row['status']}: {row['reason']}"


# The table's short names of the ops.
_OP_NAMES = {"hyperspherical_energy": "energy", "cross_energy": "cross", "uniformity_loss": "uniformity"}


def results_table(rows: list, title: str) -> Table:
    """A rich Table of the rows: the dimensions that are the same in every row
    move to the caption, and the columns that no row fills are left out."""
    dims = ("power", "half_space", "dtype", "mode", "device", "inputs")
    constant = [d for d in ("op", *dims) if len({r[d] for r in rows}) <= 1]

    def measured(r):
        return r["status"] in ("ok", "inaccurate") and r.get("peak_extra_bytes") is not None

    # The CPU kernel's ISA level: in the caption when the rows that ran it agree
    levels = {r.get("cpu_isa") for r in rows} - {None, ""}
    columns = [  # (header, cell), kept where a row has a cell
        ("provider", lambda r: r["provider"]),
        ("ISA", lambda r: (r.get("cpu_isa") or "") if len(levels) > 1 else ""),
        ("op", lambda r: _OP_NAMES.get(r["op"], r["op"]) if "op" not in constant else ""),
        ("B", lambda r: str(r["b"]) if any(q["b"] != 1 for q in rows) else ""),
        ("N", lambda r: str(r["n"])),
        ("M", lambda r: str(r["m"]) if r["m"] else ""),
        ("k", lambda r: str(r["k"])),
        *((d, lambda r, d=d: str(r[d]) if d not in constant else "") for d in dims),
        ("error E / grad", _fmt_err),
        ("median (p20-p80)", _fmt_time),
        ("peak MiB", lambda r: f"{r['peak_extra_bytes'] / MIB:.1f}" if measured(r) else ""),
        ("pairs/s", lambda r: f"{r['pairs_per_s']:.2e}" if r.get("pairs_per_s") else ""),
        ("GFLOP/s", lambda r: f"{r['gflops']:.3g}" if r.get("gflops") else ""),
        ("% GEMM", lambda r: f"{100 * r['fraction_of_peak']:.0f}%" if r.get("fraction_of_peak") else ""),
        *(
            (f"vs {'ref' if b == 'reference' else b}", lambda r, b=b: _fmt_ratio(r.get(f"speedup_vs_{b}")))
            for b in BASELINES
        ),
        ("vs random", lambda r: _fmt_ratio(r.get("time_vs_random"))),
        ("status", _fmt_status),
    ]
    cells = [[cell(r) for _, cell in columns] for r in rows]
    keep = [i for i in range(len(columns)) if any(line[i] for line in cells)]
    table = Table(title=title, header_style="bold")
    for i in keep:
        name = columns[i][0]
        table.add_column(name, justify="left" if name in ("provider", "op", "status", *dims) else "right")
    colors = {"ok": "green", "inaccurate": "yellow", "failed": "red", "skipped": "dim", "dry run": "cyan"}
    for r, line in zip(rows, cells):
        table.add_row(*(line[i] for i in keep), style=colors.get(r["status"]))
    if rows:
        table.caption = ", ".join(
            [f"{d}={rows[0][d]}" for d in constant] + [f"CPU kernel at {level}" for level in levels if len(levels) == 1]
        )
    return table
