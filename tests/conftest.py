"""Tolerances of the tests, stated once, and the helpers that apply them.

float64: kernel and reference both compute in float64. For k > 8 the kernel
  forms d2 of pairs with d2 >= 2^-8 in the gram form h_i + h_j - 2 u_i.u_j,
  which rounds to about 4 eps64 = 9e-16 absolute: at most 2.3e-13 relative;
  exponents s <= 2 and the angle's derivatives at most triple that (for
  k <= 8 it uses coordinate differences, which round less). Hence 1e-12, for
  the energy relative to (|E| + number of pairs) (each pair's f is O(1) in
  these tests, and log energies mix signs, so |E| alone can be tiny) and for
  the gradient relative to max |g|. Measured worst over the test matrix: 2e-13.
float32 (and float16/bfloat16, which are computed in float32): the issue's
  accuracy contract against the float64 evaluation of the same input:
  energy 1e-6 relative, gradient 1e-3 of max |g|. Measured worst: 1.1e-7 and
  4.2e-5 (clusters of near points). A 16-bit gradient is additionally rounded
  to its dtype on return: 2^-11 (float16) and 2^-8 (bfloat16) of max |g| are
  added for that.
float64, ill-conditioned pairs: a pair at chord d (or its mirror, in half
  space, at chord d') is known from the input only to ~4.4e-16 / d relative:
  each normalized coordinate rounds to 1.1e-16, and backends form ||x|| in
  different orders, so two correct float64 evaluations of the same input
  differ by that much in d, times (s + 2) in f and its gradient. Tests of such
  pairs (test_pair_math_contract) widen the float64 bound by
  ill_conditioned(d, s) (measured: 5.2e-12 at d' = 6.3e-5, s = 3.5).
The gradient scale is max(max |g|, 1): with the O(1) inputs of these tests one
pair adds O(1) terms to a row's gradient, and rounding is relative to those
terms even where they cancel to much less (one point in half space: only
eps / (|x|^2 + eps) ~ 1e-4 of them survives).
"""

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

# Without a GPU the Triton backend runs on CPU tensors under Triton's
# interpreter (the variable is read when triton is imported, which the
# backend does on first use); TRITON_INTERPRET=0 turns its tests off.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import comhe_kernels  # noqa: E402

# The shared op tests take the Triton backend on CPU tensors only on request:
# under the interpreter their 623 triton-cpu cases took ~12 minutes (2-core
# Zen 4 at load 7-8), tests/test_triton.py's own matrix (the same kinds,
# sizes, dtypes and adversarial rows, at sizes the interpreter affords) 2.
# On CUDA every shared test runs the Triton backend.
SHARED_TESTS_INTERPRETED = os.environ.get("COMHE_SHARED_TESTS_INTERPRETED", "0") not in ("", "0")

ENERGY_TOL = {torch.float64: 1e-12, torch.float32: 1e-6, torch.float16: 1e-6, torch.bfloat16: 1e-6}
GRAD_TOL = {torch.float64: 1e-12, torch.float32: 1e-3, torch.float16: 1e-3 + 2**-11, torch.bfloat16: 1e-3 + 2**-8}

# The GPU backends' tensor-core modes (precision=...): (energy relative, gradient
# of max |g|). auto, ieee and tf32x3 meet the float32 contract. tf32 and bf16
# round u to 10 and 7 mantissa bits before the products (and W in the
# gradient's): worst in a CPU emulation of the Triton kernel's arithmetic
# (N = 2048-8192, k = 16-32, random points and planted close pairs)
# 2.1e-6 / 1.3e-3 (tf32) and 1.2e-5 / 7.9e-3 (bf16); these bounds are 5x that.
PRECISION_TOL = {
    "auto": (1e-6, 1e-3),
    "ieee": (1e-6, 1e-3),
    "tf32x3": (1e-6, 1e-3),
    "tf32": (1e-5, 6.5e-3),
    "bf16": (6e-5, 4e-2),
}


def child_env(extra_path=()):
    """For a Python child process (run it with cwd outside the repository): the
    package this process imported (installed in CI, the source tree here)
    first on its path, and the extension this process loaded (its JIT cache),
    so that the child loads the library instead of building it. From the
    repository root a child imports the source tree, which has no
    ahead-of-time build, and compiled the kernels: 3 minutes of CI (the
    bench's main-job test, 182 s) and the 120 s timeouts under load."""
    env = dict(os.environ)
    path = [*map(str, extra_path), str(Path(comhe_kernels.__file__).resolve().parents[1]), env.get("PYTHONPATH")]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, path))
    info = comhe_kernels.build_info()
    if info.get("how") == "jit":
        env["COMHE_KERNELS_CACHE"] = str(Path(info["build_dir"]).parent)
    return env


def ill_conditioned(chord: float, s: float) -> float:
    """The float64 bound for a pair at this chord (see the module docstring)."""
    return max(ENERGY_TOL[torch.float64], (s + 2) * 4.4e-16 / chord)


def assert_energy_close(e, e_ref, dtype, pairs, tol=None):
    """|e - e_ref| <= tol (|e_ref| + pairs), elementwise, inf matching inf
    (tol: the dtype's ENERGY_TOL, or ill_conditioned's for float64)."""
    e, e_ref = e.detach().double(), e_ref.detach().double()
    assert e.shape == e_ref.shape
    same_inf = torch.isinf(e) & (e == e_ref)
    err = torch.where(same_inf, torch.zeros_like(e), (e - e_ref).abs())
    bound = (tol or ENERGY_TOL[dtype]) * (e_ref.abs().nan_to_num(posinf=0.0) + max(pairs, 1))
    assert bool((err <= bound).all()), f"energy {e.tolist()} vs reference {e_ref.tolist()} ({dtype})"


def assert_grad_close(g, g_ref, dtype, tol=None):
    """max |g - g_ref| <= tol * max(max |g_ref|, 1) (the metric of the accuracy
    contract; tol: the dtype's GRAD_TOL, or ill_conditioned's for float64)."""
    g, g_ref = g.detach().double(), g_ref.detach().double()
    assert g.shape == g_ref.shape
    scale = max(g_ref.abs().max().item(), 1.0)
    err = (g - g_ref).abs().max().item()
    assert err <= (tol or GRAD_TOL[dtype]) * scale, (
        f"gradient error {err:.3e} vs max |g| {scale:.3e} ({dtype})"
    )


# The CPU kernel's own tests: skipped where the C++ extension did not load
# (both ops come with it)
requires_cpu_kernel = pytest.mark.skipif(
    "cpu" not in comhe_kernels.available_backends("hyperspherical_energy", "cpu"),
    reason="the CPU kernel did not load",
)


def adversarial_rows(n: int, k: int, dtype=torch.float64):
    """n random rows (n >= 12, k >= 2) with rows that break the textbook
    formulas: near and exact duplicates, near and exact antipodes, zero rows,
    tiny and huge rows, two rows 2e-6 apart with one coordinate dominant."""
    x = torch.randn(n, k, dtype=torch.float64)
    x[1] = x[0] + 1e-7
    x[2] = x[0] * (1 + 1e-9)
    x[3] = x[0]
    x[4] = -x[0] + 1e-8
    x[5] = -x[0]
    x[6] = 0
    x[7] = 1e-20
    x[8] = x[9] * 1e12
    x[10:12] = 0
    x[10:12, 0] = 1.0
    x[10, 1], x[11, 1] = 1e-6, -1e-6
    return x.to(dtype)


def results_per_thread_count(fn, counts=(1, 2, 3)):
    """fn() with torch's thread count set to each of counts (3: more than CI's
    cores, so threads wait for each other's tasks), the count restored."""
    threads = torch.get_num_threads()
    try:
        results = []
        for n in counts:
            torch.set_num_threads(n)
            results.append(fn())
        return results
    finally:
        torch.set_num_threads(threads)


@dataclass(frozen=True)
class BackendCase:
    """A registered backend and the device of the tensors it is tested on."""

    name: str
    device: str

    def on(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.device)


def backend_cases(op: str, reference: bool = True) -> list:
    """Every backend that runs ``op`` here: on CPU tensors (cpu, reference, triton
    under TRITON_INTERPRET=1) and, where a GPU is present, on CUDA tensors."""
    devices = ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)
    cases = []
    for device in devices:
        for name in comhe_kernels.available_backends(op, device):
            if name == "reference" and not reference:
                continue
            if name == "triton" and device == "cpu" and not SHARED_TESTS_INTERPRETED:
                continue
            marks = (pytest.mark.cuda,) if device == "cuda" else ()
            cases.append(pytest.param(BackendCase(name, device), id=f"{name}-{device}", marks=marks))
    return cases


# fixture -> (op, whether the reference backend is among its cases)
_BACKEND_FIXTURES = {
    "backend": ("hyperspherical_energy", True),
    "fused_backend": ("hyperspherical_energy", False),
    "cross_backend": ("cross_energy", True),
    "fused_cross_backend": ("cross_energy", False),
}


def pytest_generate_tests(metafunc):
    """The op tests run once per registered backend available here (a BackendCase)."""
    for fixture, (op, reference) in _BACKEND_FIXTURES.items():
        if fixture in metafunc.fixturenames:
            cases = backend_cases(op, reference)
            if not cases:
                cases = [pytest.param(None, marks=pytest.mark.skip(reason=f"no fused backend runs {op} here"))]
            metafunc.parametrize(fixture, cases)


def _backend_kwargs(x, kwargs):
    b = kwargs.get("backend")
    if isinstance(b, BackendCase):
        return b.on(x), dict(kwargs, backend=b.name)
    return x, kwargs


def energy_and_grad(x, *args, **kwargs):
    """The energy and its gradient w.r.t. x through the public API, on the
    device of ``backend`` (a BackendCase or a name); results on the CPU."""
    x, kwargs = _backend_kwargs(x.detach().clone(), kwargs)
    x.requires_grad_()
    e = comhe_kernels.hyperspherical_energy(x, *args, **kwargs)
    (g,) = torch.autograd.grad(e.sum(), x)
    return e.detach().cpu(), g.cpu()


def cross_energy_and_grad(x, y, *args, **kwargs):
    """The cross-set energy and its gradients w.r.t. x and y, as energy_and_grad."""
    b = kwargs.get("backend")
    if isinstance(b, BackendCase):
        x, y, kwargs = b.on(x), b.on(y), dict(kwargs, backend=b.name)
    x, y = x.detach().clone().requires_grad_(), y.detach().clone().requires_grad_()
    e = comhe_kernels.cross_energy(x, y, *args, **kwargs)
    gx, gy = torch.autograd.grad(e.sum(), (x, y))
    return e.detach().cpu(), gx.cpu(), gy.cpu()


def reference_cross_energy_and_grad(x, y, *args, **kwargs):
    """The same through the float64 reference."""
    x, y = x.detach().double().clone().requires_grad_(), y.detach().double().clone().requires_grad_()
    e = comhe_kernels.reference.cross_energy(x, y, *args, **kwargs)
    gx, gy = torch.autograd.grad(e.sum(), (x, y))
    return e.detach(), gx, gy


def reference_energy_and_grad(x, *args, **kwargs):
    """The same through the float64 reference, on the same input values."""
    x = x.detach().double().clone().requires_grad_()
    e = comhe_kernels.reference.hyperspherical_energy(x, *args, **kwargs)
    (g,) = torch.autograd.grad(e.sum(), x)
    return e.detach(), g


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# The slowest files first (the rest in their order): with `-n 2 --dist
# loadfile` (README) each worker takes the next file when it is done, and in
# name order test_triton.py (~250 s of the ~750 s on a 2-core Zen 3, fresh
# caches) came near the end, so one worker ran it alone while the other had
# finished: 424 s against ~380 s for an even split.
_SLOWEST_FILES = ("test_triton.py", "test_bench.py", "test_hyperspherical_energy.py")


def pytest_collection_modifyitems(items):
    def rank(item):
        name = item.path.name
        return _SLOWEST_FILES.index(name) if name in _SLOWEST_FILES else len(_SLOWEST_FILES)

    items.sort(key=rank)  # stable: each file's tests keep their order
