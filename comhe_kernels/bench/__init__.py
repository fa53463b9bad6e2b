"""comhe-bench: how much faster and smaller the fused op is than what you would otherwise write.

Run ``comhe-bench`` (or ``python -m comhe_kernels.bench``). It compares, on the
same inputs and in the same run, the providers that compute a case's op (the
hyperspherical energy E = sum over pairs i < j of f(u_i, u_j), the cross-set
energy, the uniformity loss) and, in "fwd+bwd" mode, its gradient:

    reference  the naive code of the original MHE code and its ports:
               normalize, gram matrix 2 - 2 U U^T, M x M elementwise, masked
               sum, backward by autograd (comhe_kernels.reference, exact=False)
    compiled   the same function under torch.compile
    chunked    what a careful user writes by hand: row blocks against the
               columns j >= i, memory bounded by torch.utils.checkpoint
    keops      a pykeops LazyTensor reduction, backward by its autodiff
    cpu, ...   the fused op, one provider per backend of the registry
               (comhe_kernels/ops/_registry.py) that "auto" may choose
    pdist      the uniformity loss as Wang and Isola publish it
    uniformity_loss  comhe_kernels.uniformity_loss

Correctness comes before speed: every provider's value and gradient are
compared with a float64 oracle first (oracle.py). A provider outside the
tolerance is reported as "failed" and not timed, except the baselines that
reproduce the naive gram-form math (reference, compiled, chunked): their
float32 error for close pairs is the defect their users live with, so they are
timed and labelled "inaccurate" with the measured error; ``--strict`` times no
provider that fails.

Every CPU measurement runs in a worker process of its own (worker.py, started
by runner.py): a warm-up on a few rows (compilers, thread pools, code pages),
one full-size call that is checked and whose peak memory above the worker's
baseline is reported, then the timed calls.

Layout: cases.py (what is measured), providers.py (who computes it),
oracle.py (the float64 truth), presets.py (the presets and their targets),
worker.py (what a measuring process does), runner.py (the parent: worker
processes, skips, rows), verdicts.py (targets and the verdict table),
report.py (table, CSV, JSON, plot), cli.py (the command line).
"""

import os

# GNU OpenMP spin-waits between parallel regions by default; on a shared
# machine that made small calls 10-15x slower when other processes competed for
# the cores. libgomp reads this variable when it starts, so setting it here
# (torch, and with it libgomp, is already loaded in this process) applies to
# the worker processes the benchmark spawns, which do all the measuring.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .cli import main  # noqa: E402

__all__ = ["main"]
