"""Who computes the energy: the providers the benchmark compares.

Every provider computes the same thing for the ops it has: the sum over
pairs (reduction "sum", over every set; for 16-bit inputs in float32) or the
uniformity loss and, through ``backward()``, the gradient with respect to
every input. The fused providers are the package's backends with a place in
"auto" (ops/_registry.py), one per backend, named as the backend: a backend
that registers appears here. A provider's functions live at module level:
they reach the worker process by reference (pickled by name), so a provider
defined in any importable module, a test's included, can join the registry.
"""

from __future__ import annotations

import functools
import importlib.util
import dataclasses
from dataclasses import dataclass
from typing import Callable

import torch
from torch.utils.checkpoint import checkpoint

from .. import reference, uniformity_loss
from ..uniformity import wang_isola_uniformity
from .._spec import EnergySpec, reduce_cross, reduce_sets, upcast
from ..ops import _registry
from ..ops.cross_energy import cross_energy
from ..ops.hyperspherical_energy import hyperspherical_energy
from .cases import DELTA, EPS, MIB, BenchOptions, Case, point_set

PAIR_SUMS = ("hyperspherical_energy", "cross_energy")


class Unavailable(Exception):
    """The provider cannot run this case here (toolchain, library): the row says "skipped"."""


@dataclass(frozen=True)
class Provider:
    """A way to compute a case's op, and its gradient.

    build(case, options, inputs) returns ``fn(*inputs) -> value`` (a 0-dim
    tensor) after whatever warm-up the provider needs, compilation included
    (it is not run time); it raises Unavailable when the provider cannot run
    here.
    """

    name: str
    summary: str
    build: Callable
    ops: tuple = ("hyperspherical_energy",)
    devices: tuple = ("cpu", "cuda")
    naive_math: bool = False  # a gram-form baseline: timed even when inaccurate (unless --strict)
    available: Callable | None = None  # (op, device) -> None, or why the provider cannot run it here
    extra_bytes: Callable | None = None  # (case, options) -> predicted peak memory beyond the inputs
    fused: bool = False  # one of the package's fused backends
    cpu_isa: str = ""  # the CPU kernel's ISA level the measurement forces (at_cpu_isa_levels); "": as loaded

    def mismatch(self, op: str, device: str) -> str | None:
        """Why the provider never runs such a case (not its op, not its device), or None."""
        if op not in self.ops:
            return f"does not compute {op}"
        if device not in self.devices:
            return f"runs on {'/'.join(self.devices)} tensors only"
        return None

    def unavailable_reason(self, op: str, device: str) -> str | None:
        """None where the provider runs ``op`` on ``device`` here, else why not."""
        why = self.mismatch(op, device) or (self.available(op, device) if self.available is not None else None)
        if why is None and device == "cuda" and not torch.cuda.is_available():
            return "no CUDA device (torch.cuda.is_available() is False)"
        return why


def first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0][:300] if lines else type(e).__name__


def warm_up(fn: Callable, inputs: tuple, case: Case, rows: int | None = 16) -> None:
    """One call on the first rows of every set (all rows if rows is None),
    forward and, for fwd+bwd, backward: loads code pages, starts thread pools
    and fills JIT caches before the measured call. Without it the first call's
    peak resident set included up to 150 MiB of libtorch code faulted in for
    the first time."""
    xs = tuple(
        (t if rows is None else t[..., :rows, :]).detach().clone().requires_grad_(case.backward) for t in inputs
    )
    if case.backward:
        fn(*xs).backward()
    else:
        with torch.no_grad():
            fn(*xs)


def _sets(x: torch.Tensor) -> torch.Tensor:
    """(N, k) or (B, N, k) -> (B, N, k), 16-bit computed in float32."""
    return upcast(x if x.dim() == 3 else x.unsqueeze(0))


# --------------------------------------------------------------------------- the naive code


def naive_energy(x: torch.Tensor, spec: EnergySpec) -> torch.Tensor:
    """The naive code: the reference's per-set sums in the gram form."""
    x3 = _sets(x)
    return reduce_sets(reference.per_set_energy(x3, spec, exact=False), x3.shape[1], spec, "sum", True)


def naive_cross(x: torch.Tensor, y: torch.Tensor, spec: EnergySpec) -> torch.Tensor:
    """The naive cross-set code: the reference's in the gram form."""
    x3, y3 = _sets(x), _sets(y)
    per_set = reference.cross_per_set_energy(x3, y3, spec, exact=False)
    return reduce_cross(per_set, x3.shape[1], y3.shape[1], spec, "sum", True)


def _naive(case: Case) -> Callable:
    return functools.partial(naive_cross if case.op == "cross_energy" else naive_energy, spec=case.spec())


def _build_reference(case: Case, options: BenchOptions, inputs: tuple):
    fn = _naive(case)
    warm_up(fn, inputs, case)
    return fn


def naive_bytes(case: Case, options: BenchOptions) -> float:
    """Peak of the naive code beyond its inputs: pair matrices of 4 or 8 bytes.

    Measured with this tool in float32, forward and forward+backward alike:
    6.3 matrices at M = 4096 and 8192 (c, d2, d2p, the mask, the masked
    copies, f; autograd keeps most of them), 7.2 at M = 16384 in the core
    op's anchors. The model takes 8.
    """
    return 8.0 * case.element_size * case.matrix_elements


def compiled_bytes(case: Case, options: BenchOptions) -> float:
    """torch.compile fuses the elementwise chain: measured 1.25 pair matrices
    forward+backward and 1.0 forward (float32, M = 4096, 8192). The model takes 2."""
    return 2.0 * case.element_size * case.matrix_elements


def _build_compiled(case: Case, options: BenchOptions, inputs: tuple):
    # A worker that measures several cases (on a GPU) must not reuse the last
    # case's compiled code, nor reach dynamo's recompile limit (8 shapes),
    # after which it would silently run the eager code.
    torch._dynamo.reset()
    fn = torch.compile(_naive(case))
    try:  # compile now, at the case's shape (compiled code is specialized to it)
        warm_up(fn, inputs, case, rows=None)
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
    x3 = _sets(x)
    p, _ = point_set(x3, spec)
    return reduce_sets(_blocks(p, p, spec, block_rows, True), x3.shape[1], spec, "sum", True)


def chunked_cross(x: torch.Tensor, y: torch.Tensor, spec: EnergySpec, block_rows: int) -> torch.Tensor:
    """The naive cross-set code in blocks of x's rows against all of y's points ([v; -v] for the half space)."""
    x3, y3 = _sets(x), _sets(y)
    u, _ = reference.normalize(x3, spec.eps)
    q, _ = point_set(y3, spec)
    per_set = _blocks(u, q, spec, block_rows, False)
    return reduce_cross(per_set, x3.shape[1], y3.shape[1], spec, "sum", True)


def _blocks(p: torch.Tensor, q: torch.Tensor, spec: EnergySpec, block_rows: int, same: bool) -> torch.Tensor:
    total = p.new_zeros(p.shape[0])
    for r0 in range(0, p.shape[1], block_rows):
        args = (p, q, r0, min(p.shape[1], r0 + block_rows), spec, same)
        if torch.is_grad_enabled() and (p.requires_grad or q.requires_grad):
            total = total + checkpoint(_block_energy, *args, use_reentrant=False)
        else:
            total = total + _block_energy(*args)
    return total


def _block_energy(p, q, r0: int, r1: int, spec: EnergySpec, same: bool) -> torch.Tensor:
    """Per-set sums of one block: rows [r0, r1) of p against q's columns
    (same set: the columns j > i only)."""
    c = p[:, r0:r1] @ q[:, r0 if same else 0 :].mT
    d2, d2p = 2 - 2 * c, 2 + 2 * c
    if not same:
        return reference._pair_values(d2, d2p, spec, exact=False).sum((-1, -2))
    upper = torch.ones(c.shape[-2:], dtype=torch.bool, device=c.device).triu(1)  # j > i
    one = c.new_ones(())  # masked entries: a harmless 1, not f(0)
    f = reference._pair_values(torch.where(upper, d2, one), torch.where(upper, d2p, one), spec, exact=False)
    return torch.where(upper, f, 0.0).sum((-1, -2))


def chunk_rows(case: Case, options: BenchOptions) -> int:
    columns = case.matrix_elements // (case.b * case.points)
    return max(1, int(options.chunk_mib * MIB // (case.b * columns * case.element_size)))


def _build_chunked(case: Case, options: BenchOptions, inputs: tuple):
    body = chunked_cross if case.op == "cross_energy" else chunked_energy
    fn = functools.partial(body, spec=case.spec(), block_rows=chunk_rows(case, options))
    warm_up(fn, inputs, case)
    return fn


def chunked_bytes(case: Case, options: BenchOptions) -> float:
    """Measured 14 block-sized matrices forward+backward (the recomputed block
    and its gradients) and 6 forward (float32, 16 MiB blocks, M = 4096, 8192).
    The model takes 16 and 8."""
    blocks = 16.0 if case.backward else 8.0
    rows = min(chunk_rows(case, options), case.points)
    return blocks * rows * case.matrix_elements / case.points * case.element_size


# --------------------------------------------------------------------------- pykeops


def keops_energy(x: torch.Tensor, spec: EnergySpec) -> torch.Tensor:
    """The energy as a pykeops LazyTensor reduction, differentiable by its autodiff:
    half the double sum over i != j (see _keops_sums)."""
    x3 = _sets(x)
    u, a = point_set(x3, spec)
    return reduce_sets(0.5 * _keops_sums(u, a, u, a, spec, True), x3.shape[1], spec, "sum", True)


def keops_cross(x: torch.Tensor, y: torch.Tensor, spec: EnergySpec) -> torch.Tensor:
    """The cross energy as a pykeops LazyTensor reduction ([v; -v] for the half space)."""
    x3, y3 = _sets(x), _sets(y)
    u, a = reference.normalize(x3, spec.eps)
    v, b = point_set(y3, spec)
    return reduce_cross(_keops_sums(u, a, v, b, spec, False), x3.shape[1], y3.shape[1], spec, "sum", True)


def _keops_sums(u, a, v, b, spec: EnergySpec, same: bool) -> torch.Tensor:
    """Per-set sums over all (i, j) of f(u_i, v_j) (i != j when u is v), (B,).

    Distances in the difference form d2 = |u_i - v_j|^2 + a_i + b_j, the same
    value as 2 - 2c and exact for close pairs; f is the reference's pair
    function, written with tensor methods so that it builds the KeOps formula.
    a rides along as an extra coordinate of the points, so that autodiff runs
    two reductions (d/du_i, d/dv_j) instead of four: 25% faster
    forward+backward at N = 2048, k = 32. Within one set the diagonal is
    masked by the index difference (|i - j| > 0), and its d2 gets +1 so that
    f stays finite there (a masked inf would give NaN).
    """
    from pykeops.torch import LazyTensor

    k = u.shape[-1]
    p = torch.cat([u, a[..., None]], dim=-1)
    q = torch.cat([v, b[..., None]], dim=-1)
    pi, qj = LazyTensor(p[:, :, None, :]), LazyTensor(q[:, None, :, :])
    ab = pi[k] + qj[k]
    if same:
        idx = torch.arange(p.shape[1], dtype=p.dtype, device=p.device)  # exact in float32 up to 2^24 points
        idx = idx.expand(p.shape[0], -1).contiguous()
        off = (LazyTensor(idx[:, :, None, None]) - LazyTensor(idx[:, None, :, None])).abs().sign()  # 1 off the diagonal
        ab = ab + (1 - off)
    d2 = ((pi[:k] - qj[:k]) ** 2).sum(-1) + ab
    d2p = ((pi[:k] + qj[:k]) ** 2).sum(-1) + ab
    f = reference.pair_energy(d2, d2p, spec)
    if same:
        f = f * off
    return f.sum(dim=2).sum((-1, -2))


def _build_keops(case: Case, options: BenchOptions, inputs: tuple):
    fn = functools.partial(keops_cross if case.op == "cross_energy" else keops_energy, spec=case.spec())
    # KeOps compiles a library per formula (per k and dtype, not per N) on
    # first use, about 10 s each, cached on disk: done here, outside the timing.
    try:
        warm_up(fn, inputs, case)
    except Exception as e:
        raise Unavailable(f"pykeops failed here: {type(e).__name__}: {first_line(e)}") from e
    return fn


def _keops_available(op: str, device: str) -> str | None:
    if importlib.util.find_spec("pykeops") is None:
        return "pykeops is not installed (pip install pykeops)"
    if device == "cuda":
        import pykeops

        if not pykeops.config.gpu_available:
            return "this pykeops build has no GPU support"
    return None


# --------------------------------------------------------------------------- the fused backends


def fused_energy(x: torch.Tensor, case: Case, backend: str) -> torch.Tensor:
    return hyperspherical_energy(
        x, case.power_arg, half_space=case.half_space, reduction="sum", eps=EPS, delta=DELTA, backend=backend
    )


def fused_cross(x: torch.Tensor, y: torch.Tensor, case: Case, backend: str) -> torch.Tensor:
    return cross_energy(
        x, y, case.power_arg, half_space=case.half_space, reduction="sum", eps=EPS, delta=DELTA, backend=backend
    )


def _build_fused(case: Case, options: BenchOptions, inputs: tuple, backend: str):
    fn = functools.partial(fused_cross if case.op == "cross_energy" else fused_energy, case=case, backend=backend)
    warm_up(fn, inputs, case)
    return fn


def _fused_unavailable(backend: str, op: str, device: str) -> str | None:
    return _registry.unavailable(backend, op, device)


def fused_providers() -> list:
    """One provider per registered backend that "auto" may choose, in the registry's order."""
    out = []
    for name, backend in _registry.backends().items():
        if backend.auto_rank is None:
            continue
        devices = tuple(d for d in ("cpu", "cuda") if backend.devices is None or d in backend.devices)
        out.append(
            Provider(
                name,
                backend.summary or f"the fused op, backend {name!r}",
                functools.partial(_build_fused, backend=name),
                ops=PAIR_SUMS,
                devices=devices,
                available=functools.partial(_fused_unavailable, name),
                fused=True,
            )
        )
    return out


def at_cpu_isa_levels(providers: dict, levels: tuple) -> dict:
    """A copy of providers with the fused "cpu" replaced by "cpu@<level>" for
    each ISA level (comhe-bench --cpu-isa): one run compares the levels on the
    same inputs, beside the same GEMM ceiling."""
    out = {}
    for name, provider in providers.items():
        if name != "cpu":
            out[name] = provider
            continue
        for level in levels:
            summary = f"{provider.summary}, its kernel at ISA level {level}"
            out[f"cpu@{level}"] = dataclasses.replace(provider, name=f"cpu@{level}", summary=summary, cpu_isa=level)
    return out


# --------------------------------------------------------------------------- the uniformity loss


def pdist_uniformity(x: torch.Tensor, t: float) -> torch.Tensor:
    """Wang and Isola's published formula (ICML 2020), on unit rows."""
    return wang_isola_uniformity(upcast(x), t)


def _build_pdist(case: Case, options: BenchOptions, inputs: tuple):
    fn = functools.partial(pdist_uniformity, t=case.spec().s)
    warm_up(fn, inputs, case)
    return fn


def pdist_bytes(case: Case, options: BenchOptions) -> float:
    """torch.pdist's N(N-1)/2 distances, then pow, mul and exp, kept by
    autograd or made again by the backward: measured 6.1 such vectors
    forward+backward (float32, N = 2048, 4096). The model takes 7."""
    return 7.0 * case.element_size * case.pairs


def package_uniformity(x: torch.Tensor, t: float) -> torch.Tensor:
    return uniformity_loss(x, t, eps=0.0)


def _build_uniformity(case: Case, options: BenchOptions, inputs: tuple):
    fn = functools.partial(package_uniformity, t=case.spec().s)
    warm_up(fn, inputs, case)
    return fn


# --------------------------------------------------------------------------- all of them


def default_providers() -> dict:
    """name -> Provider, in the order of the tables. run_benchmark and main take
    any such dict: add your own provider to a copy."""
    providers = [
        Provider(
            "reference",
            "the naive code: gram form 2 - 2 U V^T, pair matrices, autograd",
            _build_reference,
            ops=PAIR_SUMS,
            naive_math=True,
            extra_bytes=naive_bytes,
        ),
        Provider(
            "compiled",
            "the naive code under torch.compile",
            _build_compiled,
            ops=PAIR_SUMS,
            naive_math=True,
            extra_bytes=compiled_bytes,
        ),
        Provider(
            "chunked",
            "the naive code in row blocks x columns j >= i, checkpointed (memory bounded)",
            _build_chunked,
            ops=PAIR_SUMS,
            naive_math=True,
            extra_bytes=chunked_bytes,
        ),
        Provider(
            "keops",
            "pykeops LazyTensor sum over i != j, halved; backward by its autodiff",
            _build_keops,
            ops=PAIR_SUMS,
            available=_keops_available,
        ),
        *fused_providers(),
        Provider(
            "pdist",
            "Wang and Isola's formula: torch.pdist(u).pow(2).mul(-t).exp().mean().log(), autograd",
            _build_pdist,
            ops=("uniformity_loss",),
            extra_bytes=pdist_bytes,
        ),
        Provider(
            "uniformity_loss",
            "comhe_kernels.uniformity_loss(x, t, eps=0)",
            _build_uniformity,
            ops=("uniformity_loss",),
        ),
    ]
    return {p.name: p for p in providers}
