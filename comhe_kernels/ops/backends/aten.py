"""The C++ extension's kernels, one torch op per energy with a kernel per
dispatch key: "cpu" (csrc/cpu, C++/OpenMP) and "cuda" (csrc/cuda, CUDA C++).

Each is available where the extension loaded AND a kernel of that op is
registered for its dispatch key, so that a build without csrc/cuda (or
without one of its ops) reports exactly what is missing.
"""

from __future__ import annotations

import torch

from ... import _extension
from .._autograd import OpFunctions
from .._registry import Backend, constant_for_compile, register


@constant_for_compile
def _extension_error():
    """The extension's load status; torch.compile takes it as a constant
    instead of tracing the loader (file hashing, a possible build)."""
    return _extension.load()


def _unavailable(dispatch_key: str, op: str, device_type: str) -> str | None:
    error = _extension_error()
    if error is not None:
        return f"the C++ extension did not load: {error}"
    if not torch._C._dispatch_has_kernel_for_dispatch_key(f"comhe::{op}", dispatch_key):
        return f"this build of the extension has no {dispatch_key} kernel of comhe::{op}"
    if device_type == "cuda" and not torch.cuda.is_available():
        return "no CUDA device"
    return None


def _load():
    error = _extension.load()
    if error is not None:
        raise RuntimeError(f"the C++ extension did not load: {error}")
    return OpFunctions(torch.ops.comhe.hyperspherical_energy.default, torch.ops.comhe.cross_energy.default)


register(
    Backend(
        "cpu",
        devices=("cpu", "meta"),
        unavailable=lambda op, device_type: _unavailable("CPU", op, device_type),
        load=_load,
        auto_rank=0,
        summary="the fused op, C++/OpenMP (csrc/cpu)",
    )
)
register(
    Backend(
        "cuda",
        devices=("cuda",),
        unavailable=lambda op, device_type: _unavailable("CUDA", op, device_type),
        load=_load,
        # after triton (rank 1) until a GPU run shows it faster on a case
        # (issue 18); no GPU has run it yet (docs/cuda.md)
        auto_rank=2,
        summary="the fused op, CUDA C++ (csrc/cuda)",
        precisions=("auto", "ieee", "tf32x3", "tf32", "bf16"),
    )
)
