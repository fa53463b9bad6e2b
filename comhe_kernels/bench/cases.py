"""What is measured: a case (the op, its point sets, the energy, the dtype,
forward or forward+backward), its inputs, and the knobs of a run."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import reference
from .._spec import EnergySpec, make_spec, num_cross_pairs, num_pairs, parse_power

EPS = 1e-4  # the defaults of the public op (the original code's values)
DELTA = 1e-4
# The ops a case can measure, by the names of the package's public functions.
OPS = ("hyperspherical_energy", "cross_energy", "uniformity_loss")
DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}
MODES = ("fwd", "fwd+bwd")
# How the points are drawn (make_inputs): uniformly random directions; all
# rows within SPREAD of one direction (a layer whose neurons collapsed, the
# pathology MHE exists to fix); CLUSTERS groups of such near points.
INPUTS = ("random", "collapsed", "clusters")
SPREAD = 1e-3
CLUSTERS = 64
MIB = 2**20
GIB = 2**30

# The useful work of one call, the same for every provider: the gram entry
# u_i . u_j is 2k flops; the gradient adds two GEMM-shaped products (the
# weighted sums over j for row i and over i for row j), 2k flops each.
FLOP_MODEL = "2k flops per pair forward (the gram entry); 6k forward+backward (gram + two gradient GEMMs)"


@dataclass(frozen=True)
class Case:
    """One point of a sweep.

    op "hyperspherical_energy": the energy (sum over pairs i < j) of b sets
    of n points in k dimensions (input (b, n, k), or (n, k) for b = 1);
    "cross_energy": the sum over all pairs between sets of n and m points;
    "uniformity_loss": Wang and Isola's log mean_{i<j} exp(-t d_ij^2) of n
    unit rows, power "g<t>".
    """

    n: int
    k: int
    power: str = "1"  # canonical text: "1", "0.5", "a1", "g2" (see canonical_power)
    half_space: bool = False
    dtype: str = "float32"
    mode: str = "fwd+bwd"
    device: str = "cpu"
    seed: int = 0
    op: str = "hyperspherical_energy"
    b: int = 1  # point sets per call
    m: int = 0  # cross_energy: points of the second set
    inputs: str = "random"

    def __post_init__(self):
        kind, _ = parse_power(self.power)
        if self.op not in OPS:
            raise ValueError(f"op must be one of {OPS}, got {self.op!r}")
        if self.inputs not in INPUTS:
            raise ValueError(f"inputs must be one of {INPUTS}, got {self.inputs!r}")
        if (self.op == "cross_energy") != (self.m > 0):
            raise ValueError(f"m (the second set's points) is for cross_energy only, and it needs m >= 1: {self}")
        if self.op == "uniformity_loss" and (kind != "gaussian" or self.half_space or self.b != 1):
            raise ValueError(f"uniformity_loss takes one set (b = 1), no half space and a power 'g<t>': {self}")

    @property
    def backward(self) -> bool:
        return self.mode == "fwd+bwd"

    @property
    def points(self) -> int:
        """Points of one set whose pairs are summed: 2N for the half space [u; -u]."""
        return 2 * self.n if self.half_space else self.n

    @property
    def pairs(self) -> int:
        if self.op == "cross_energy":
            return self.b * num_cross_pairs(self.n, self.m, self.half_space)
        return self.b * num_pairs(self.n, self.half_space)

    @property
    def matrix_elements(self) -> int:
        """Entries of the pair matrix that the naive code materializes, over all sets."""
        columns = (2 * self.m if self.half_space else self.m) if self.op == "cross_energy" else self.points
        return self.b * self.points * columns

    @property
    def flops(self) -> float:
        return (6 if self.backward else 2) * self.k * self.pairs

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def element_size(self) -> int:
        """Bytes of a computed element: 16-bit inputs are computed in float32, by every provider as by the op."""
        return 8 if self.dtype == "float64" else 4

    @property
    def peak_dtype(self) -> str:
        """The GEMM whose rate is this case's peak: dgemm for float64, sgemm otherwise."""
        return "float64" if self.dtype == "float64" else "float32"

    @property
    def power_arg(self):
        """The power as the op takes it: a float, or "a<s>" / "g<t>"."""
        kind, s = parse_power(self.power)
        return s if kind == "chordal" else self.power

    def spec(self) -> EnergySpec:
        """What the providers compute; the uniformity loss normalizes to unit
        rows (eps = 0), as Wang and Isola do."""
        eps = 0.0 if self.op == "uniformity_loss" else EPS
        return make_spec(self.power, self.half_space, eps, DELTA, False)

    def series(self) -> tuple:
        """Everything but N, M and the seed: what one line of a plot connects."""
        return (self.op, self.b, self.k, self.power, self.half_space, self.dtype, self.mode, self.device, self.inputs)

    def series_label(self) -> str:
        """The series in words (what label says but N and M)."""
        op = "" if self.op == "hyperspherical_energy" else f"{self.op}, "
        sets = f"B={self.b}, " if self.b > 1 else ""
        half = ", half space" if self.half_space else ""
        inputs = "" if self.inputs == "random" else f", {self.inputs}"
        return f"{op}{sets}k={self.k}, s={self.power}{half}, {self.dtype}, {self.mode}, {self.device}{inputs}"

    def label(self) -> str:
        m = f" M={self.m}" if self.op == "cross_energy" else ""
        return f"N={self.n}{m} {self.series_label()}"


def canonical_power(text: str) -> str:
    """'1.0' -> '1', 'A2' -> 'a2', 'g2.0' -> 'g2'; raises TypeError/ValueError as the op would."""
    kind, s = parse_power(text)
    return {"chordal": "", "angular": "a", "gaussian": "g"}[kind] + f"{s:g}"


def _near(center: torch.Tensor, n: int, g: torch.Generator) -> torch.Tensor:
    """n points within SPREAD of the unit vector ``center``: center + SPREAD r w,
    w a random direction, r uniform in [0, 1)."""
    w = torch.randn(n, center.shape[-1], generator=g, dtype=torch.float64)
    w = w / w.norm(dim=-1, keepdim=True)
    r = torch.rand(n, 1, generator=g, dtype=torch.float64)
    return center + SPREAD * r * w


def _draw_set(inputs: str, n: int, k: int, g: torch.Generator) -> torch.Tensor:
    if inputs == "random":  # standard normal rows: uniformly random directions
        return torch.randn(n, k, generator=g, dtype=torch.float64)
    centers = torch.randn(1 if inputs == "collapsed" else CLUSTERS, k, generator=g, dtype=torch.float64)
    centers = centers / centers.norm(dim=-1, keepdim=True)
    return _near(centers[torch.arange(n) % centers.shape[0]], n, g)


def make_inputs(case: Case) -> tuple[torch.Tensor, ...]:
    """The case's input tensors, on the CPU: x, and y for cross_energy.

    Seeded, drawn in float64 and rounded to the case's dtype, so that every
    process builds the same values; (b, n, k) for b > 1, else (n, k).
    """
    g = torch.Generator().manual_seed(case.seed)
    sizes = (case.n, case.m) if case.op == "cross_energy" else (case.n,)
    out = []
    for size in sizes:
        sets = torch.stack([_draw_set(case.inputs, size, case.k, g) for _ in range(case.b)])
        out.append((sets if case.b > 1 else sets[0]).to(case.torch_dtype))
    return tuple(out)


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
    time_budget: float = 0.0  # seconds for the whole run; items left when it is spent are skipped (0: none)
    chunk_mib: float = 16.0  # the chunked provider's block: one block_rows x M matrix
    check_rows: int = 256  # gradient rows checked when the set is large
    full_check_points: int = 2048  # up to this many points: the exact reference, all rows
    strict: bool = False  # time no provider that fails its check, baselines included
    gemm_sizes: tuple = (1024, 2048, 3072)  # square matmul sizes for the ceilings; () skips them


def point_set(x: torch.Tensor, spec: EnergySpec) -> tuple[torch.Tensor, torch.Tensor]:
    """The normalized points u and a = eps / (|x|^2 + eps) (|u|^2 = 1 - a) of
    (..., N, k) input, as the reference normalizes them; [u; -u] and [a; a]
    along the points for the half space."""
    u, a = reference.normalize(x, spec.eps)
    if spec.half_space:
        return torch.cat([u, -u], dim=-2), torch.cat([a, a], dim=-1)
    return u, a
