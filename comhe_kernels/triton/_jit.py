"""How the kernels' helpers are compiled.

Under TRITON_INTERPRET=1 the interpreter runs a kernel as Python, and every
call of a nested @triton.jit function re-patches triton.language for it
(~4 ms per call on the 2-core CI machine, 30 ms per tile of the small-k
kernel): there the helpers are the plain functions, which the running
kernel calls with the same, already patched, triton.language. On a GPU they
are @triton.jit functions, inlined into the kernels. Same source either way.
"""

import os

import triton
import triton.language as tl


def interpreting() -> bool:
    """TRITON_INTERPRET=1: kernels run on CPU tensors, in Python (tests only: slow)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def helper(fn):
    return fn if interpreting() else triton.jit(fn)


# Reductions through tl.reduce with triton.language's own combine functions:
# what tl.sum / tl.min / tl.max compile to, without their @jit wrapper (a
# nested call, see above); the interpreter maps these combines to numpy.
@helper
def tsum(x, axis):
    return tl.reduce(x, axis, tl.standard._sum_combine)


@helper
def tmin(x):
    return tl.reduce(x, None, tl.standard._elementwise_min)


@helper
def tmax(x):
    return tl.reduce(x, None, tl.standard._elementwise_max)
