"""The Triton backend: comhe_kernels/triton/, the fused op on NVIDIA GPUs.

Triton is imported on first use (load), so the package imports and works
without it. CUDA tensors need a GPU of compute capability 8.0 or newer (the
kernels' tl.dot shapes and float64 products are Ampere's); CPU tensors run
under Triton's interpreter (TRITON_INTERPRET=1, set before triton is
imported: slow, for the tests). Unverified on a GPU so far (docs/triton.md).
"""

from __future__ import annotations

import functools
import importlib.util
import os

import torch

from .._autograd import OpFunctions, register_python_side
from .._registry import Backend, register

MIN_CAPABILITY = (8, 0)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _triton_missing() -> bool:
    return importlib.util.find_spec("triton") is None


def _unavailable(op: str, device_type: str) -> str | None:
    if _triton_missing():
        return "triton is not installed (pip install 'comhe-kernels[gpu]', or pip install triton)"
    if device_type == "cpu":
        if not _interpreting():
            return (
                "CPU tensors run only under the Triton interpreter (TRITON_INTERPRET=1 in the environment "
                "before triton is imported; slow, for tests): use a CUDA tensor"
            )
        return None
    if not torch.cuda.is_available():
        return "no CUDA device"
    cap = torch.cuda.get_device_capability()
    if cap < MIN_CAPABILITY:
        return (
            f"the Triton kernels need a GPU of compute capability >= {MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]} "
            f"(Ampere or newer); {torch.cuda.get_device_name()} is {cap[0]}.{cap[1]}"
        )
    return None


@functools.lru_cache(maxsize=None)
def _load():
    from ...triton import ops

    register_python_side(ops.ENERGY_OP, ops.CROSS_OP)
    return OpFunctions(torch.ops.comhe.hyperspherical_energy_triton.default, torch.ops.comhe.cross_energy_triton.default)


register(
    Backend(
        "triton",
        devices=("cuda", "cpu"),
        unavailable=_unavailable,
        load=_load,
        auto_rank=1,
        summary="the fused op, Triton (comhe_kernels/triton; CPU tensors under TRITON_INTERPRET=1)",
        precisions=("auto", "ieee", "tf32x3", "tf32", "bf16"),
    )
)
