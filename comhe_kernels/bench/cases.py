"""What is measured: a case (N points in k dimensions, the energy, the dtype,
forward or forward+backward), its inputs, and the knobs of a run."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .. import reference
from .._spec import EnergySpec, make_spec, num_pairs, parse_power

EPS = 1e-4  # the defaults of the public op (the original code's values)
DELTA = 1e-4
DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}
MODES = ("fwd", "fwd+bwd")
MIB = 2**20
GIB = 2**30

# The useful work of one call, the same for every provider: the gram entry
# u_i . u_j is 2k flops; the gradient adds two GEMM-shaped products (the
# weighted sums over j for row i and over i for row j), 2k flops each.
FLOP_MODEL = "2k flops per pair forward (the gram entry); 6k forward+backward (gram + two gradient GEMMs)"


@dataclass(frozen=True)
class Case:
    """One point of the sweep: the energy (sum over pairs) of N random points in k dimensions."""

    n: int
    k: int
    power: str = "1"  # canonical text: "1", "0.5", "a1" (see canonical_power)
    half_space: bool = False
    dtype: str = "float32"
    mode: str = "fwd+bwd"
    device: str = "cpu"
    seed: int = 0

    @property
    def backward(self) -> bool:
        return self.mode == "fwd+bwd"

    @property
    def points(self) -> int:
        """Points of the set whose pairs are summed: 2N for the half space [u; -u]."""
        return 2 * self.n if self.half_space else self.n

    @property
    def pairs(self) -> int:
        return num_pairs(self.n, self.half_space)

    @property
    def flops(self) -> float:
        return (6 if self.backward else 2) * self.k * self.pairs

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def compute_dtype(self) -> torch.dtype:
        """16-bit inputs are computed in float32, by every provider as by the op."""
        return torch.float64 if self.dtype == "float64" else torch.float32

    @property
    def element_size(self) -> int:
        return 8 if self.compute_dtype == torch.float64 else 4

    @property
    def peak_dtype(self) -> str:
        """The GEMM whose rate is this case's peak: dgemm for float64, sgemm otherwise."""
        return "float64" if self.dtype == "float64" else "float32"

    @property
    def power_arg(self):
        """The power as the op takes it: a float, or "a<s>"."""
        kind, s = parse_power(self.power)
        return f"a{s:g}" if kind == "angular" else s

    def spec(self) -> EnergySpec:
        return make_spec(self.power, self.half_space, EPS, DELTA, False)

    def series(self) -> tuple:
        """Everything but N and the seed: what one line of a plot connects."""
        return (self.k, self.power, self.half_space, self.dtype, self.mode, self.device)

    def label(self) -> str:
        half = " half-space" if self.half_space else ""
        return f"N={self.n} k={self.k} s={self.power}{half} {self.dtype} {self.mode} {self.device}"


def canonical_power(text: str) -> str:
    """'1.0' -> '1', 'A2' -> 'a2'; raises TypeError/ValueError as the op would."""
    kind, s = parse_power(text)
    return f"a{s:g}" if kind == "angular" else f"{s:g}"


def make_points(case: Case) -> torch.Tensor:
    """The case's input, on the CPU: N x k standard normal rows (uniformly random
    directions), seeded, drawn in float64 and rounded to the case's dtype, so
    that every process builds the same values."""
    g = torch.Generator().manual_seed(case.seed)
    return torch.randn(case.n, case.k, generator=g, dtype=torch.float64).to(case.torch_dtype)


@dataclass(frozen=True)
class BenchOptions:
    """The knobs of a run that are not part of a case."""

    threads: int = 0  # CPU threads per worker; 0: torch's default (all cores)
    min_reps: int = 3
    max_reps: int = 20
    rep_seconds: float = 2.0  # timed work to aim for per measurement
    warmup_seconds: float = 1.0  # untimed full-size calls before the timed ones, the checked call included
    max_call_seconds: float = 60.0  # skip a case whose predicted call time is longer
    max_memory_bytes: float = 0.0  # skip a CPU case whose predicted extra memory is larger (0: no limit)
    max_cuda_memory_bytes: float = 0.0  # the same for CUDA cases, against the GPU's memory
    timeout: float = 900.0  # a worker still running after this is killed, its row "failed"
    chunk_mib: float = 16.0  # the chunked provider's block: one block_rows x M matrix
    check_rows: int = 256  # gradient rows checked when the set is large
    full_check_points: int = 2048  # up to this many points: the exact reference, all rows
    strict: bool = False  # time no provider that fails its check, baselines included
    gemm_sizes: tuple = (1024, 2048, 3072)  # square torch.mm sizes for the peak; () skips it


def pair_energy(d2: torch.Tensor, d2p: torch.Tensor, spec: EnergySpec) -> torch.Tensor:
    """f of each pair from d2 = 2 - 2c (its squared chordal distance) and d2p = 2 + 2c.

    The definitions of comhe_kernels.reference: chordal d^-s = d2^(-s/2) (s = 0:
    -log d); angular (theta + delta)^-s with theta = arccos(c) / pi =
    (2/pi) atan2(sqrt(d2), sqrt(d2p)) (s = 0: -log(theta + delta)).
    """
    if spec.kind == "chordal":
        if spec.s == 0:
            f = -0.5 * torch.log(d2)
        elif spec.s == 1:
            f = torch.rsqrt(d2)
        elif spec.s == 2:
            f = torch.reciprocal(d2)
        else:
            f = d2.pow(-0.5 * spec.s)
    else:
        theta = (2 / math.pi) * torch.atan2(d2.clamp_min(0).sqrt(), d2p.clamp_min(0).sqrt())
        t = theta + spec.delta
        f = -torch.log(t) if spec.s == 0 else t.pow(-spec.s)
    return f * spec.scale if spec.scale != 1.0 else f


def point_set(x: torch.Tensor, spec: EnergySpec) -> tuple[torch.Tensor, torch.Tensor]:
    """The normalized points u and a = eps / (|x|^2 + eps) (|u|^2 = 1 - a), as
    the reference normalizes them; [u; -u] and [a; a] for the half space."""
    u, a = reference.normalize(x, spec.eps)
    if spec.half_space:
        return torch.cat([u, -u]), torch.cat([a, a])
    return u, a
