"""What ``solve`` returns, and the shipped table of best-known energies it is compared with."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

TABLE_PATH = Path(__file__).resolve().parents[1] / "data" / "thomson_best_known.tsv"


@dataclass
class ThomsonResult:
    """What ``solve`` found.

    points: (n, dim) float64 unit vectors. energy: E_s of ``points``, evaluated in
    float64, except where the time limit or Ctrl-C ended a run of more than
    20,000 points before its float64 polish: then the float64 sum over the
    float32 points of its float32 relaxation (``points`` holds those values),
    within about 1e-8 relative (3e-9 measured at N = 5000).
    grad_norm: Frobenius norm of the tangential gradient at ``points``;
    grad_rms = grad_norm / sqrt(n). best_known / difference: the shipped
    table's value and energy - best_known, for dim = 3, s = 1 and a tabulated
    n, else None. status: how the final minimization ended ("converged":
    gradient below the tolerance; "stalled": no step lowers the energy at
    float64 precision; "time_limit"; "max_iter"; "interrupted": Ctrl-C, see
    ``Interrupted``).
    """

    n: int
    dim: int
    power: float
    points: torch.Tensor
    energy: float
    grad_norm: float
    grad_rms: float
    seconds: float
    status: str
    best_known: float | None
    difference: float | None
    restarts: int
    generations: int
    local_minimizations: int
    distinct_minima: int
    evaluations: int
    longest_call: float  # seconds of the longest op call: the time limit is kept to within one
    # (seconds, lowest energy so far) at every improvement; entries from float32 relaxations
    # (N > 20,000) carry the float32 rounding of the points, about 1e-8 relative.
    history: list[tuple[float, float]] = field(default_factory=list)

    def summary(self) -> str:
        lines = [
            f"N = {self.n}, dim = {self.dim}, s = {self.power:g}",
            f"energy        {self.energy:.10f}",
            f"grad norm     {self.grad_norm:.3e} (RMS per point {self.grad_rms:.3e}, {self.status})",
            (f"time          {self.seconds:.2f} s ({self.local_minimizations} local minimizations, "
             f"{self.generations} generations, {self.evaluations} op calls, the longest {self.longest_call:.2g} s)"),
        ]
        if self.best_known is not None:
            rel = self.difference / self.best_known
            lines.append(f"best known    {self.best_known:.10f} (difference {self.difference:+.3e}, {rel:+.2e} relative)")
        return "\n".join(lines)

    def save(self, path) -> Path:
        """Write the points as .npy (float64) or .csv (one point per line, 17 digits)."""
        path = Path(path)
        pts = self.points.detach().cpu().numpy()
        if path.suffix.lower() == ".csv":
            np.savetxt(path, pts, delimiter=",", fmt="%.17g")
        elif path.suffix.lower() == ".npy":
            np.save(path, pts)
        else:
            raise ValueError(f"out must end in .npy or .csv, got {str(path)!r}")
        return path


_table_cache: dict[int, float] | None = None


def best_known_energy(n: int, dim: int = 3, power: float = 1.0) -> float | None:
    """The best known E_1 of n points on S^2 from the shipped table (N = 2..470, not every N), else None."""
    global _table_cache
    if dim != 3 or power != 1:
        return None
    if _table_cache is None:
        table = {}
        for line in TABLE_PATH.read_text().splitlines():
            if line and not line.startswith("#") and line[0].isdigit():
                count, energy = line.split("\t")[:2]
                table[int(count)] = float(energy)
        _table_cache = table
    return _table_cache.get(int(n))
