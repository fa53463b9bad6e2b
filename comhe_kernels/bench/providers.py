"""Who computes the energy: the providers the benchmark compares.

Every provider computes the same thing, the sum over pairs (reduction "sum";
for 16-bit inputs in float32) and, through ``energy.backward()``, its gradient
with respect to x. A provider's functions live at module level: they reach the
worker process by reference (pickled by name), so a provider defined in any
importable module, a test's included, can join the registry.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch.utils.checkpoint import checkpoint

from .. import _extension, reference
from .._spec import EnergySpec
from ..ops.hyperspherical_energy import hyperspherical_energy
from .cases import MIB, BenchOptions, Case, pair_energy, point_set


class Unavailable(Exception):
    """The provider cannot run this case here (toolchain, library): the row says "skipped"."""


@dataclass(frozen=True)
class Provider:
    """A way to compute the energy of a case, and its gradient.

    build(case, options, x) returns ``fn(x) -> energy`` (a 0-dim tensor) after
    whatever warm-up the provider needs, compilation included (it is not run
    time); it raises Unavailable when the provider cannot run here.
    """

    name: str
    summary: str
    build: Callable
    devices: tuple = ("cpu", "cuda")
    naive_math: bool = False  # a gram-form baseline: timed even when inaccurate (unless --strict)
    available: Callable | None = None  # (device) -> None, or why the provider cannot run at all
    extra_bytes: Callable | None = None  # (case, options) -> predicted peak memory beyond the inputs

    def unavailable_reason(self, device: str) -> str | None:
        if device not in self.devices:
            return f"runs on {'/'.join(self.devices)} tensors only"
        return self.available(device) if self.available is not None else None


def first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0][:300] if lines else type(e).__name__


def warm_up(fn: Callable, x: torch.Tensor, case: Case, rows: int | None = 16) -> None:
    """One call on the first rows (all rows if rows is None), forward and, for
    fwd+bwd, backward: loads code pages, starts thread pools and fills JIT
    caches before the measured call. Without it the first call's peak resident
    set included up to 150 MiB of libtorch code faulted in for the first time."""
    xs = (x if rows is None else x[: min(rows, case.n)]).detach().clone().requires_grad_(case.backward)
    if case.backward:
        fn(xs).backward()
    else:
        with torch.no_grad():
            fn(xs)


# --------------------------------------------------------------------------- the naive code


def naive_energy(x: torch.Tensor, spec: EnergySpec) -> torch.Tensor:
    """The naive code: the reference's per-set sum in the gram form, for one set."""
    x3 = x.unsqueeze(0)
    if x3.dtype in (torch.float16, torch.bfloat16):
        x3 = x3.float()
    return reference.per_set_energy(x3, spec, exact=False)[0]


def _build_reference(case: Case, options: BenchOptions, x: torch.Tensor):
    fn = functools.partial(naive_energy, spec=case.spec())
    warm_up(fn, x, case)
    return fn


def naive_bytes(case: Case, options: BenchOptions) -> float:
    """Peak of the naive code beyond its inputs: M x M matrices of 4 or 8 bytes.

    Measured with this tool in float32, forward and forward+backward alike:
    6.3 matrices at M = 4096 and 8192 (c, d2, d2p, the mask, the masked
    copies, f; autograd keeps most of them), 7.2 at M = 16384 in the core
    op's anchors. The model takes 8.
    """
    return 8.0 * case.element_size * float(case.points) ** 2


def compiled_bytes(case: Case, options: BenchOptions) -> float:
    """torch.compile fuses the elementwise chain: measured 1.25 M x M matrices
    forward+backward and 1.0 forward (float32, M = 4096, 8192). The model takes 2."""
    return 2.0 * case.element_size * float(case.points) ** 2


def _build_compiled(case: Case, options: BenchOptions, x: torch.Tensor):
    fn = torch.compile(functools.partial(naive_energy, spec=case.spec()))
    try:  # compile now, at the case's shape (compiled code is specialized to it)
        warm_up(fn, x, case, rows=None)
    except Exception as e:
        raise Unavailable(f"torch.compile failed here: {type(e).__name__}: {first_line(e)}") from e
    return fn


# --------------------------------------------------------------------------- chunked by hand


def chunked_energy(x: torch.Tensor, spec: EnergySpec, block_rows: int) -> torch.Tensor:
    """The naive code in row blocks: block I against the columns j >= min(I), pairs j > i.

    Each block materializes block_rows x M matrices only. With autograd, every
    block runs under torch.utils.checkpoint: the forward keeps only its input
    and the backward recomputes the block, so memory stays bounded at the cost
    of one more forward pass. (Plain autograd through the blocks would keep
    every block's intermediates: the M x M matrices again, in pieces.)
    """
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    u, _ = point_set(x, spec)
    m = u.shape[0]
    total = u.new_zeros(())
    for r0 in range(0, m, block_rows):
        r1 = min(m, r0 + block_rows)
        if torch.is_grad_enabled() and u.requires_grad:
            total = total + checkpoint(_block_energy, u, r0, r1, spec, use_reentrant=False)
        else:
            total = total + _block_energy(u, r0, r1, spec)
    return total


def _block_energy(u: torch.Tensor, r0: int, r1: int, spec: EnergySpec) -> torch.Tensor:
    c = u[r0:r1] @ u[r0:].T  # rows i in [r0, r1), columns j >= r0
    upper = torch.ones(c.shape, dtype=torch.bool, device=c.device).triu(1)  # j > i
    one = c.new_ones(())
    d2 = torch.where(upper, 2 - 2 * c, one)  # masked entries: a harmless 1, not f(0)
    d2p = torch.where(upper, 2 + 2 * c, one)
    return torch.where(upper, pair_energy(d2, d2p, spec), 0.0).sum()


def chunk_rows(case: Case, options: BenchOptions) -> int:
    return max(1, int(options.chunk_mib * MIB // (case.points * case.element_size)))


def _build_chunked(case: Case, options: BenchOptions, x: torch.Tensor):
    fn = functools.partial(chunked_energy, spec=case.spec(), block_rows=chunk_rows(case, options))
    warm_up(fn, x, case)
    return fn


def chunked_bytes(case: Case, options: BenchOptions) -> float:
    """Measured 14 block-sized matrices forward+backward (the recomputed block
    and its gradients) and 6 forward (float32, 16 MiB blocks, M = 4096, 8192).
    The model takes 16 and 8."""
    blocks = 16.0 if case.backward else 8.0
    return blocks * min(chunk_rows(case, options), case.points) * case.points * case.element_size


# --------------------------------------------------------------------------- pykeops


def keops_energy(x: torch.Tensor, spec: EnergySpec) -> torch.Tensor:
    """The energy as a pykeops LazyTensor reduction, differentiable by its autodiff.

    KeOps reductions sum over all j, so this is half the double sum over
    i != j: the diagonal is masked by the index difference (|i - j| > 0), and
    its d2 gets +1 so that f stays finite there (a masked inf would give NaN).
    Distances in the difference form d2 = |u_i - u_j|^2 + a_i + a_j, the same
    value as 2 - 2c and exact for close pairs. a rides along as an extra
    coordinate of the points, so that autodiff runs two reductions (d/dv_i,
    d/dv_j) instead of four: 25% faster forward+backward at N = 2048, k = 32.
    """
    from pykeops.torch import LazyTensor

    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    u, a = point_set(x, spec)
    m, k = u.shape
    v = torch.cat([u, a[:, None]], dim=1)
    idx = torch.arange(m, dtype=v.dtype, device=v.device)  # exact in float32 up to 2^24 points
    vi, vj = LazyTensor(v[:, None, :]), LazyTensor(v[None, :, :])
    off = (LazyTensor(idx[:, None, None]) - LazyTensor(idx[None, :, None])).abs().sign()  # 1 off the diagonal
    aij = vi[k] + vj[k] + (1 - off)
    d2 = ((vi[:k] - vj[:k]) ** 2).sum(-1) + aij
    if spec.kind == "chordal":
        if spec.s == 0:
            f = -0.5 * d2.log()
        elif spec.s == 1:
            f = d2.rsqrt()
        elif spec.s == 2:
            f = d2**-1
        else:
            f = d2 ** (-0.5 * spec.s)
    else:
        d2p = ((vi[:k] + vj[:k]) ** 2).sum(-1) + aij
        t = (2 / math.pi) * d2.sqrt().atan2(d2p.sqrt()) + spec.delta
        f = -t.log() if spec.s == 0 else t ** (-float(spec.s))
    energy = 0.5 * (f * off).sum(dim=1).sum()
    return energy * spec.scale if spec.scale != 1.0 else energy


def _build_keops(case: Case, options: BenchOptions, x: torch.Tensor):
    fn = functools.partial(keops_energy, spec=case.spec())
    # KeOps compiles a library per formula (per k and dtype, not per N) on
    # first use, about 10 s each, cached on disk: done here, outside the timing.
    try:
        warm_up(fn, x, case)
    except Exception as e:
        raise Unavailable(f"pykeops failed here: {type(e).__name__}: {first_line(e)}") from e
    return fn


def _keops_available(device: str) -> str | None:
    if importlib.util.find_spec("pykeops") is None:
        return "pykeops is not installed (pip install pykeops)"
    if device == "cuda":
        import pykeops

        if not pykeops.config.gpu_available:
            return "this pykeops build has no GPU support"
    return None


# --------------------------------------------------------------------------- the fused op


def fused_energy(x: torch.Tensor, case: Case, backend: str) -> torch.Tensor:
    return hyperspherical_energy(x, case.power_arg, half_space=case.half_space, reduction="sum", backend=backend)


def _build_fused(case: Case, x: torch.Tensor, backend: str):
    fn = functools.partial(fused_energy, case=case, backend=backend)
    warm_up(fn, x, case)
    return fn


def _build_cpu(case: Case, options: BenchOptions, x: torch.Tensor):
    return _build_fused(case, x, "cpu")


def _build_triton(case: Case, options: BenchOptions, x: torch.Tensor):
    return _build_fused(case, x, "triton")


def _build_cuda(case: Case, options: BenchOptions, x: torch.Tensor):
    return _build_fused(case, x, "cuda")


def _cpu_available(device: str) -> str | None:
    error = _extension.load()
    return f"the C++ extension did not load: {error}" if error else None


def _gpu_backend_available(backend: str) -> str | None:
    """Asks the op itself, so that a backend a later build adds is found without changes here."""
    if not torch.cuda.is_available():
        return "no CUDA device"
    try:
        hyperspherical_energy(torch.randn(4, 3, device="cuda"), backend=backend)
    except (ValueError, RuntimeError) as e:
        return first_line(e)
    return None


def _triton_available(device: str) -> str | None:
    return _gpu_backend_available("triton")


def _cuda_available(device: str) -> str | None:
    return _gpu_backend_available("cuda")


def default_providers() -> dict:
    """name -> Provider, in the order of the tables. run_benchmark and main take
    any such dict: add your own provider to a copy."""
    providers = [
        Provider(
            "reference",
            "the naive code: gram form 2 - 2 U U^T, M x M matrices, autograd",
            _build_reference,
            naive_math=True,
            extra_bytes=naive_bytes,
        ),
        Provider(
            "compiled",
            "the naive code under torch.compile",
            _build_compiled,
            naive_math=True,
            extra_bytes=compiled_bytes,
        ),
        Provider(
            "chunked",
            "the naive code in row blocks x columns j >= i, checkpointed (memory bounded)",
            _build_chunked,
            naive_math=True,
            extra_bytes=chunked_bytes,
        ),
        Provider(
            "keops",
            "pykeops LazyTensor sum over i != j, halved; backward by its autodiff",
            _build_keops,
            available=_keops_available,
        ),
        Provider("cpu", "the fused op, C++/OpenMP", _build_cpu, devices=("cpu",), available=_cpu_available),
        Provider("triton", "the fused op, Triton", _build_triton, devices=("cuda",), available=_triton_available),
        Provider("cuda", "the fused op, CUDA C++", _build_cuda, devices=("cuda",), available=_cuda_available),
    ]
    return {p.name: p for p in providers}
