r"""comhe-thomson: the Thomson problem and its Riesz / log generalizations.

Find N unit vectors x_1..x_N on the sphere S^{dim-1} in R^dim minimizing

    E_s(x) = sum_{i<j} |x_i - x_j|^{-s}        (s > 0, Riesz; s = 1 is Thomson's Coulomb case)
    E_0(x) = sum_{i<j} -log |x_i - x_j|        (s = 0, the log energy)

with the energy and its gradient taken only from one callable, by default
the package's public op ``hyperspherical_energy_and_grad(x, s, eps=0,
reduction="none")`` (exact unit normalization; no N x N matrix is formed).

Method, one module each:

1. Starts (starts.py): the spherical Fibonacci lattice for dim = 3, Gaussian
   directions otherwise and for the other starts.
2. Local minimization (lbfgs.py): batched Riemannian L-BFGS on the product of
   spheres, to an RMS tangential gradient of gtol * max(|E|, 1) / N.
3. Global search, N <= 2000 (search.py): population basin hopping with
   cut-and-splice mating and cap rotations.
4. Global search, N > 2000 (multilevel.py): a multilevel start (a (N + 6)/4
   configuration made the same way, subdivided), relaxed, annealed by
   Langevin dynamics with the remaining time, relaxed again; float32
   relaxations above 20,000 points.
5. Polish (solver.py): the best set minimized again in float64 to gtol, in
   the time that is left; the result is the lowest-energy set evaluated.

evaluation.py holds the energy callable and the timing of its calls, from
which every phase decides whether its next op call ends in time; result.py
the result and the shipped best-known table (dim = 3, s = 1, N = 2..470),
used only to report how far a result is from the best known value: the
solver never looks at it. cli.py: the command line (``comhe-thomson``,
``python -m comhe_kernels.thomson``).
"""

from .cli import main
from .evaluation import riesz_energy
from .result import ThomsonResult, best_known_energy
from .solver import Interrupted, solve
from .starts import fibonacci_sphere

__all__ = ["Interrupted", "ThomsonResult", "best_known_energy", "fibonacci_sphere", "main", "riesz_energy", "solve"]
