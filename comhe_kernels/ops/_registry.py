"""The backends: who computes the energy sums, on which devices.

A backend is one module in comhe_kernels/ops/backends/ that calls
``register(Backend(...))`` when imported; ``import comhe_kernels`` imports
every module there (``discover``), so that torch.compile never traces the
discovery (a first call inside a compiled function had failed on it). Registering is cheap: a backend's kernels (the C++
extension, Triton) load only when ``Backend.load`` is first called, and its
``unavailable`` check says, without loading them where it can, whether it
runs an op on a device type here and if not, why.

``load()`` returns an object with the four functions of the ops (see
ops/_autograd.py for the fused backends' ones):

    energy(x, spec) -> (B,)                     per-set sums of x (B, N, k), differentiable
    energy_and_grad(x, spec) -> ((B,), grad)    the same with the gradient, no autograd graph
    cross(x, y, spec) -> (B,)                   cross sums of x (B, N, k) and y (B, M, k)
    cross_and_grad(x, y, spec) -> ((B,), gx, gy)

"auto" takes, for the tensor's device type, the available backend with the
lowest ``auto_rank``; where there is none, the reference, with a warning.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
import warnings
from dataclasses import dataclass
from typing import Callable

import torch

OPS = ("hyperspherical_energy", "cross_energy")


@dataclass(frozen=True)
class Backend:
    """name: what ``backend=`` takes. devices: the tensor device types it
    accepts (None: any). unavailable(op, device_type): None where it can run
    the op on such tensors now, else the reason. load(): its functions
    (imported on first use). auto_rank: its place in "auto" for each of its
    devices (lower first; None: only when asked for by name). precisions:
    the ``precision`` values it implements (_spec.PRECISIONS)."""

    name: str
    devices: tuple[str, ...] | None
    unavailable: Callable[[str, str], str | None]
    load: Callable[[], object]
    auto_rank: int | None = None
    summary: str = ""
    precisions: tuple[str, ...] = ("auto", "ieee")


_BACKENDS: dict[str, Backend] = {}
_LOADED: dict[str, object] = {}  # name -> the functions of its load(), filled by resolve
_discovered = False
_warned: set = set()


def register(backend: Backend) -> Backend:
    if backend.name in _BACKENDS or backend.name == "auto":
        raise ValueError(f"a backend named {backend.name!r} is already registered")
    _BACKENDS[backend.name] = backend
    return backend


def discover() -> None:
    """Import every backend module of ops/backends/ (once)."""
    global _discovered
    if not _discovered:
        from . import backends as package

        for module in sorted(m.name for m in pkgutil.iter_modules(package.__path__)):
            importlib.import_module(f"{package.__name__}.{module}")
        _discovered = True


def backends() -> dict[str, Backend]:
    """name -> Backend, every registered one."""
    return _BACKENDS


def names() -> tuple[str, ...]:
    """What ``backend=`` accepts: "auto" and every registered backend."""
    return ("auto",) + tuple(backends())


def check_name(backend) -> None:
    if backend not in names():
        raise ValueError(f"backend must be one of {names()}, got {backend!r}")


def unavailable(name: str, op: str, device_type: str) -> str | None:
    """None where backend ``name`` runs ``op`` on ``device_type`` tensors here, else why not."""
    b = backends()[name]
    if b.devices is not None and device_type not in b.devices:
        return f"backend {name!r} takes tensors on {'/'.join(b.devices)} only, not {device_type}"
    return b.unavailable(op, device_type)


def available(op: str, device_type: str) -> list[str]:
    """The backends that run ``op`` on ``device_type`` tensors here, in "auto"'s order, then the rest."""
    names_here = [n for n in backends() if unavailable(n, op, device_type) is None]
    rank = lambda n: (backends()[n].auto_rank is None, backends()[n].auto_rank or 0, n)
    return sorted(names_here, key=rank)


def constant_for_compile(fn):
    """torch.compiler.assume_constant_result, without its import of
    torch._dynamo (3.4 s of the 7 s ``import comhe_kernels`` took on the busy
    2-core machine): the mark it sets, which Dynamo reads when it meets fn."""
    fn._dynamo_marked_constant = True
    return fn


@constant_for_compile
def resolve(backend: str, op: str, device_type: str) -> str:
    """The backend that computes ``op`` for ``backend=`` on ``device_type`` tensors.

    Raises ValueError for an unknown name or a device the backend does not
    take, RuntimeError (with its reason) for one that cannot run here.
    torch.compile takes the answer as a constant instead of tracing the
    checks (they may load the extension). The backend's functions are
    loaded here, so that ``functions`` is a plain lookup.
    """
    name = _resolve(backend, op, device_type)
    if name not in _LOADED:
        _LOADED[name] = backends()[name].load()
    return name


@functools.lru_cache(maxsize=None)
def _resolve(backend: str, op: str, device_type: str) -> str:
    check_name(backend)
    if backend != "auto":
        b = backends()[backend]
        if b.devices is not None and device_type not in b.devices:
            raise ValueError(f"backend {backend!r} needs tensors on {'/'.join(b.devices)}, got {device_type} tensors")
        why = b.unavailable(op, device_type)
        if why is not None:
            raise RuntimeError(f"backend {backend!r} is unavailable for {op}: {why}")
        return backend
    fused = [n for n in available(op, device_type) if backends()[n].auto_rank is not None]
    if fused:
        return fused[0]
    if (op, device_type) not in _warned and device_type != "meta":
        reasons = "; ".join(
            f"{n}: {unavailable(n, op, device_type)}"
            for n, b in backends().items()
            if b.auto_rank is not None and (b.devices is None or device_type in b.devices)
        )
        warnings.warn(
            f"comhe_kernels: no fused backend runs {op} on {device_type} tensors here "
            f"({reasons or 'none is registered for this device'}); using the O(N^2)-memory reference",
            RuntimeWarning,
            stacklevel=4,
        )
        _warned.add((op, device_type))
    return "reference"


def check_precision(name: str, precision: str) -> None:
    supported = backends()[name].precisions
    if precision not in supported:
        raise ValueError(
            f"precision={precision!r} is not implemented by backend {name!r} (it has {supported}); "
            "the tensor-core modes are the GPU backends'"
        )


def functions(name: str):
    """The functions of backend ``name`` (see the module docstring), once
    ``resolve`` has returned that name."""
    return _LOADED[name]


def clear_cache() -> None:
    """Forget the answers of resolve (after a backend's state changed, e.g. in tests)."""
    _resolve.cache_clear()
    _warned.clear()
