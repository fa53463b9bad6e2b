"""``comhe-thomson``: the command line of ``solve``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..distributed import thomson as distributed_thomson
from .evaluation import EnergyAndGrad
from .solver import Interrupted, solve

# The exit status of a command stopped by Ctrl-C (128 + SIGINT), as shells report it.
_INTERRUPTED = 130


def _check_out(parser: argparse.ArgumentParser, path: Path) -> None:
    """Fail before solving where the points could not be written: a wrong suffix, a directory,
    a folder that does not exist or is not writable. Leaves no new file and changes none."""
    if path.suffix.lower() not in (".npy", ".csv"):
        parser.error(f"--out must end in .npy or .csv, got {str(path)!r}")
    if path.is_dir():
        parser.error(f"--out {str(path)!r} is a directory")
    existed = path.exists()
    try:
        with open(path, "ab"):  # appending nothing: an existing file keeps its content
            pass
    except OSError as e:
        parser.error(f"--out {str(path)!r} cannot be written: {e.strerror or e}")
    if not existed:  # missing_ok: under a launcher every rank checks the same path at once
        path.unlink(missing_ok=True)


def main(argv: list[str] | None = None, *, energy_and_grad: EnergyAndGrad | None = None) -> int:
    """``comhe-thomson N [--dim D] [--power S] [--restarts R] [--seed S] [--device cpu|cuda] [--out points.npy]``.

    ``energy_and_grad``: the evaluation for ``solve`` instead of the op (the
    multi-process launch in comhe_kernels.distributed.thomson passes the sharded one).
    Returns the exit status: 0, 2 for bad arguments (argparse), 130 after Ctrl-C
    (the best set found until then is printed and, with --out, saved).
    """
    p = argparse.ArgumentParser(
        prog="comhe-thomson",
        description="Minimize the Riesz s-energy sum_{i<j} |x_i - x_j|^-s (s = 0: -log) of N points "
        "on the unit sphere S^{D-1} (the Thomson problem for D = 3, s = 1). Ctrl-C stops the search "
        "and keeps the best set found so far.",
    )
    p.add_argument("n", type=int, metavar="N", help="number of points (>= 2)")
    p.add_argument("--dim", type=int, default=3, help="ambient dimension D >= 2 (default 3)")
    p.add_argument("--power", type=float, default=1.0, help="Riesz exponent s >= 0; 0 = log energy (default 1)")
    p.add_argument("--restarts", type=int, default=None,
                   help="population size of the global search (default: 16 for N <= 500, 4 for N <= 2000; "
                   "above that 1, the large-N method: multilevel start and annealing)")
    p.add_argument("--time-limit", type=float, default=25.0, help="seconds for the whole solve (default 25)")
    p.add_argument("--patience", type=int, default=10,
                   help="stop the search after this many generations without improvement (default 10)")
    p.add_argument("--gtol", type=float, default=1e-12,
                   help="stop when RMS tangential gradient <= gtol * |E| / N (default 1e-12)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the op runs (default cpu)")
    p.add_argument("--out", type=Path, default=None, help="write the points to this .npy or .csv file")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--nproc", type=int, default=1,
                   help="processes that share the energy's pairs (gloo on the CPU, NCCL with a GPU each; "
                   "under torchrun its processes: docs/distributed.md) (default 1)")
    a = p.parse_args(argv)
    if a.out is not None:
        _check_out(p, a.out)
    if a.nproc < 1:
        p.error(f"--nproc must be >= 1, got {a.nproc}")
    if energy_and_grad is None and (a.nproc > 1 or distributed_thomson.under_torchrun()):
        return distributed_thomson.launch(main, argv, a.nproc, a.device, a.power)
    try:
        print(f"comhe-thomson: N = {a.n}, dim = {a.dim}, s = {a.power:g}, time limit {a.time_limit:g} s "
              "(Ctrl-C stops and keeps the best set so far)", flush=True)
        code = 0
        try:
            result = solve(a.n, a.dim, a.power, restarts=a.restarts, time_limit=a.time_limit, patience=a.patience,
                           seed=a.seed, device=a.device, gtol=a.gtol, progress=not a.quiet,
                           energy_and_grad=energy_and_grad)
        except Interrupted as stop:
            result, code = stop.result, _INTERRUPTED
            print("comhe-thomson: interrupted" + ("" if result else " before the first evaluation of N points: "
                  "nothing to show or save"), file=sys.stderr, flush=True)
        except (ValueError, TypeError) as e:
            p.error(str(e))
        if result is not None:
            print(result.summary())
            if a.out is not None:
                print(f"points        {result.save(a.out)}")
        return code
    except KeyboardInterrupt:  # a second Ctrl-C, while printing or saving
        print("comhe-thomson: interrupted", file=sys.stderr)
        return _INTERRUPTED
