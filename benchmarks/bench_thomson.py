"""Quality and time of comhe_kernels.thomson.solve, written as CSV rows.

Sweeps (the issue's quality goals):

    python benchmarks/bench_thomson.py table --ns 2-100 --out benchmarks/results/thomson_2_100.csv
    python benchmarks/bench_thomson.py table --ns 101-200 --out benchmarks/results/thomson_101_200.csv
    python benchmarks/bench_thomson.py polytopes --out benchmarks/results/thomson_polytopes.csv
    python benchmarks/bench_thomson.py large --ns 10000 --time-limit 840 --out benchmarks/results/thomson_large.csv
    python benchmarks/bench_thomson.py large --ns 20000,50000,200000 --time-limit 2 --out benchmarks/results/thomson_time_limits.csv
    python benchmarks/bench_thomson.py summary benchmarks/results/thomson_*.csv

"table" compares with the shipped best-known table (dim 3, s = 1); "polytopes"
with the proven optima in other dimensions (energies from their distance
distributions, below); "large" records energy, time and peak memory, and for
dim 3, s = 1 the asymptotic N^2/2 - 0.5530513 N^1.5.
Every row carries the machine's load average when it started: the machine is
shared, and a loaded machine makes the times longer, not the energies worse
(except where the time limit cut the search).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import math
import os
import platform
import resource
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from comhe_kernels import thomson

GOLDEN = (1 + 5**0.5) / 2


def parse_ns(text: str) -> list[int]:
    """'2-100' or '100,150,200' or '2-10,50' -> the list of N."""
    ns = []
    for part in text.split(","):
        if "-" in part:
            a, b = part.split("-")
            ns.extend(range(int(a), int(b) + 1))
        else:
            ns.append(int(part))
    return ns


def _energy_from_cosines(n: int, cosines: dict[float, int], s: float) -> float:
    """Energy of a configuration in which every point sees the same inner-product distribution
    {t: count} (true of these symmetric sets): (n / 2) sum_t count * f(sqrt(2 - 2 t))."""
    total = 0.0
    for t, count in cosines.items():
        d = math.sqrt(2.0 - 2.0 * t)
        total += count * (-math.log(d) if s == 0 else d**-s)
    return n * total / 2


def proven_optima(s: float = 1.0) -> list[tuple[str, int, int, float]]:
    """(name, n, dim, energy) of universally optimal sets (Cohn & Kumar, JAMS 2007):
    optimal for every Riesz s > 0 and the log energy."""
    rows = []
    for dim in (3, 4, 5, 8, 10):
        # Regular simplex: dim + 1 points, every inner product -1/dim.
        rows.append((f"simplex S^{dim - 1}", dim + 1, dim, _energy_from_cosines(dim + 1, {-1.0 / dim: dim}, s)))
    for dim in (3, 4, 5, 8):
        # Cross-polytope +-e_i: one antipode, 2 dim - 2 orthogonal points.
        rows.append((f"cross-polytope S^{dim - 1}", 2 * dim, dim,
                     _energy_from_cosines(2 * dim, {-1.0: 1, 0.0: 2 * dim - 2}, s)))
    # Icosahedron on S^2: 5 at 1/sqrt5, 5 at -1/sqrt5, 1 antipode.
    rows.append(("icosahedron S^2", 12, 3, _energy_from_cosines(12, {5**-0.5: 5, -(5**-0.5): 5, -1.0: 1}, s)))
    # 600-cell on S^3: inner products +-phi/2 (12 each), +-1/2 (20), +-1/(2 phi) (12), 0 (30), -1 (1).
    cells = {GOLDEN / 2: 12, 0.5: 20, 1 / (2 * GOLDEN): 12, 0.0: 30,
             -1 / (2 * GOLDEN): 12, -0.5: 20, -GOLDEN / 2: 12, -1.0: 1}
    rows.append(("600-cell S^3", 120, 4, _energy_from_cosines(120, cells, s)))
    # E8 roots on S^7: 56 at 1/2, 126 at 0, 56 at -1/2, 1 antipode.
    rows.append(("E8 roots S^7", 240, 8, _energy_from_cosines(240, {0.5: 56, 0.0: 126, -0.5: 56, -1.0: 1}, s)))
    return rows


def _conditions() -> dict:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, check=False).stdout.strip()
    except OSError:
        sha = ""
    return {
        "git": sha,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }


def _row(r: thomson.ThomsonResult, reference: float | None, label: str, **extra) -> dict:
    rel = None if reference is None else (r.energy - reference) / abs(reference)
    return {
        "case": label,
        "n": r.n,
        "dim": r.dim,
        "power": r.power,
        "energy": f"{r.energy:.12f}",
        "reference": "" if reference is None else f"{reference:.12f}",
        "relative_difference": "" if rel is None else f"{rel:.3e}",
        "seconds": f"{r.seconds:.2f}",
        "status": r.status,
        "grad_norm": f"{r.grad_norm:.3e}",
        "restarts": r.restarts,
        "generations": r.generations,
        "local_minimizations": r.local_minimizations,
        "distinct_minima": r.distinct_minima,
        "evaluations": r.evaluations,
        "longest_call": f"{r.longest_call:.3f}",
        "load_average": f"{os.getloadavg()[0]:.2f}",
        **extra,
    }


def run(mode: str, ns: list[int], out: Path, dim: int, power: float, restarts, time_limit: float,
        patience: int, seed: int) -> None:
    cond = _conditions()
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = None
    with out.open("w", newline="") as f:
        if mode == "table":
            cases = [(f"N={n}", n, 3, thomson.best_known_energy(n)) for n in ns]
        elif mode == "polytopes":
            cases = [(name, n, d, e) for name, n, d, e in proven_optima(power)]
        else:
            cases = [(f"N={n}", n, dim, None) for n in ns]
        for label, n, d, reference in cases:
            load = os.getloadavg()[0]
            r = thomson.solve(n, d, power, restarts=restarts, time_limit=time_limit, patience=patience,
                              seed=seed)
            extra = {"load_average_start": f"{load:.2f}"}
            if mode == "large":
                extra["peak_rss_mib"] = f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}"
                if d == 3 and power == 1:
                    reference = n * n / 2 - 0.5530513 * n**1.5
            row = _row(r, reference, label, **extra, time_limit=time_limit, patience=patience, seed=seed, **cond)
            if writer is None:
                writer = csv.DictWriter(f, fieldnames=list(row))
                writer.writeheader()
            writer.writerow(row)
            f.flush()
            print(f"{label:>24}  E = {r.energy:.10f}  ref {row['reference'] or '-':>18}  "
                  f"rel {row['relative_difference'] or '-':>10}  {r.seconds:7.2f} s  {r.status}", flush=True)


def summarize(paths: list[Path]) -> str:
    """A Markdown table (N, D, s, energy found, reference, relative difference, time, status)
    of the rows in the given CSV files, and per file how many rows reach the reference to 1e-9."""
    lines = ["| case | N | D | s | energy found | best known / proven / asymptotic | relative difference | time (s) |",
             "|---|---|---|---|---|---|---|---|"]
    notes = []
    for path in paths:
        with path.open() as f:
            rows = list(csv.DictReader(f))
        hits = sum(1 for r in rows if r["relative_difference"] and float(r["relative_difference"]) <= 1e-9)
        worst = max(float(r["seconds"]) for r in rows)
        notes.append(f"{path.name}: {hits}/{len(rows)} rows within 1e-9 of the reference, "
                     f"slowest {worst:.1f} s, load average {min(float(r['load_average_start']) for r in rows):.1f}"
                     f"-{max(float(r['load_average_start']) for r in rows):.1f}")
        for r in rows:
            lines.append(f"| {r['case']} | {r['n']} | {r['dim']} | {float(r['power']):g} | {r['energy']} | "
                         f"{r['reference'] or '-'} | {r['relative_difference'] or '-'} | {r['seconds']} |")
    return "\n".join(lines + [""] + notes)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["table", "polytopes", "large", "summary"])
    p.add_argument("csv", nargs="*", type=Path, help="summary: the CSV files to tabulate")
    p.add_argument("--ns", default="2-100", help="N values: '2-100', '100,150', ...")
    p.add_argument("--dim", type=int, default=3)
    p.add_argument("--power", type=float, default=1.0)
    p.add_argument("--restarts", type=int, default=None)
    p.add_argument("--time-limit", type=float, default=25.0)
    p.add_argument("--patience", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path)
    a = p.parse_args(argv)
    if a.mode == "summary":
        print(summarize(a.csv))
        return
    if a.out is None:
        p.error("--out is required for table, polytopes and large")
    print("reproduce:", "python", " ".join(sys.argv), flush=True)
    run(a.mode, parse_ns(a.ns), a.out, a.dim, a.power, a.restarts, a.time_limit, a.patience, a.seed)


if __name__ == "__main__":
    main()
