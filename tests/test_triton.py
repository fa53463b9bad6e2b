"""The Triton backend (comhe_kernels/triton) against the reference.

Without a GPU these run on CPU tensors under Triton's interpreter
(TRITON_INTERPRET=1, set by conftest.py): the kernels' own code, in numpy,
with tl.dot in IEEE float32 whatever the precision mode (the tensor-core
roundings are GPU tests, marked cuda). The interpreter's cost is per
operation, so the sets are small; some tests shrink its tiles to 16 x 16
so that hot (unmasked) tiles, masked ones and the float64 flush between
column chunks all occur.

Tolerances live in conftest.py.
"""

import math

import pytest
import torch
from conftest import (
    PRECISION_TOL,
    adversarial_rows,
    assert_energy_close,
    assert_grad_close,
    cross_energy_and_grad,
    energy_and_grad,
    reference_cross_energy_and_grad,
    reference_energy_and_grad,
)

import comhe_kernels
from comhe_kernels import cross_energy, hyperspherical_energy, num_cross_pairs, num_pairs
from comhe_kernels.ops import _registry

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if "triton" not in comhe_kernels.available_backends("hyperspherical_energy", DEVICE):
    pytest.skip(
        f"the Triton backend does not run on {DEVICE} here: "
        f"{_registry.unavailable('triton', 'hyperspherical_energy', DEVICE)}",
        allow_module_level=True,
    )

from comhe_kernels.triton import hyperspherical_energy as kernels  # noqa: E402
from comhe_kernels.triton import ops  # noqa: E402

INTERPRETED = DEVICE == "cpu"
# On a GPU this whole file is CUDA tests (benchmarks/gpu_check.sh runs pytest -m cuda)
pytestmark = [pytest.mark.cuda] if DEVICE == "cuda" else []
POWERS = [0, 1, 2, 3.5, "a0", "a1", "a1.5", "g2"]


@pytest.fixture
def small_tiles(monkeypatch):
    """16 x 16 tiles under the interpreter: hot and masked tiles, several chunks of FLUSH column tiles."""
    if INTERPRETED:
        monkeypatch.setattr(kernels, "INTERPRETER_TILE", 16)


@pytest.fixture
def medium_tiles(monkeypatch):
    """32 x 32 tiles under the interpreter: hot tiles in sets of 96 to 256 points, at a quarter of the 16's cost."""
    if INTERPRETED:
        monkeypatch.setattr(kernels, "INTERPRETER_TILE", 32)


def run(x, *args, **kwargs):
    return energy_and_grad(x, *args, backend=_case(), **kwargs)


def _case():
    from conftest import BackendCase

    return BackendCase("triton", DEVICE)


# ---- the pair math: two points at chosen distances ---------------------------------------
# (the shared test_pair_math_contract runs the Triton backend on CUDA; here the
# six distances go in one batched call per case, 44 calls instead of 528)

# chord distances d of the two points (d^2 = 2 - 2 cos), coincident to antipodal
DISTANCES = [0.0, 1e-6, 1e-3, 1.0, 2 - 1e-7, 2.0]


def _two_points(d: float, k: int) -> torch.Tensor:
    """Two unit vectors at chord distance d, turned by a fixed rotation into k dimensions."""
    theta = 2 * math.asin(min(d / 2, 1.0))
    p = torch.zeros(2, k, dtype=torch.float64)
    p[0, 0], p[1, 0], p[1, 1] = 1.0, math.cos(theta), math.sin(theta)
    q, _ = torch.linalg.qr(torch.randn(k, k, dtype=torch.float64, generator=torch.Generator().manual_seed(k)))
    return p @ q


@pytest.mark.parametrize("power", [0, 1, 2, 0.5, 3.5, "a0", "a1", "a2", "a1.5", "g2", "g0.5"])
@pytest.mark.parametrize("half_space", [False, True])
@pytest.mark.parametrize("k", [3, 12])
def test_pair_math_contract(power, half_space, k):
    """The Triton transcription of the pair math (pair_energy.py) against the
    reference: sets of two points at the chosen distances, one set each, the
    difference form (k = 3) and the gram path (k = 12), energy and gradient in float64."""
    x = torch.stack([_two_points(d, k) for d in DISTANCES])
    kw = dict(half_space=half_space, reduction="none", eps=1e-4)
    e, g = run(x, power, **kw)
    e_ref, g_ref = reference_energy_and_grad(x, power, **kw)
    assert_energy_close(e, e_ref, torch.float64, num_pairs(2, half_space))
    assert_grad_close(g, g_ref, torch.float64)


# ---- the matrix: kinds x half-space x sizes x dtypes ---------------------------------

# (N, k): every N of the issue with a k of the small path (<= 8) and of the
# gram path, and every k of the issue
SHAPES = [(1, 3), (2, 1), (3, 7), (19, 40), (97, 3), (130, 7), (19, 129)]


@pytest.mark.parametrize("power", POWERS)
@pytest.mark.parametrize("half_space", [False, True])
@pytest.mark.parametrize("n, k", SHAPES)
def test_matches_reference_float64(power, half_space, n, k):
    x = torch.randn(2, n, k, dtype=torch.float64)
    kw = dict(half_space=half_space, reduction="none")
    e, g = run(x, power, **kw)
    e_ref, g_ref = reference_energy_and_grad(x, power, **kw)
    assert_energy_close(e, e_ref, torch.float64, num_pairs(n, half_space))
    assert_grad_close(g, g_ref, torch.float64)


@pytest.mark.parametrize("power", POWERS)
@pytest.mark.parametrize("half_space", [False, True])
@pytest.mark.parametrize("n, k", [(97, 3), (19, 40), (3, 7)])
def test_matches_reference_float32(power, half_space, n, k):
    x = torch.randn(2, n, k)
    kw = dict(half_space=half_space, reduction="none")
    e, g = run(x, power, **kw)
    e_ref, g_ref = reference_energy_and_grad(x, power, **kw)
    assert e.dtype == torch.float32 and g.dtype == torch.float32
    assert_energy_close(e, e_ref, torch.float32, num_pairs(n, half_space))
    assert_grad_close(g, g_ref, torch.float32)


@pytest.mark.parametrize("power", [1, 2.5, "a1", "g1"])
@pytest.mark.parametrize("half_space", [False, True])
@pytest.mark.parametrize("k", [3, 24])
def test_hot_and_masked_tiles(power, half_space, k, small_tiles):
    """64 points in 16 x 16 tiles: 12 hot tiles (the gram form and tl.dot for
    k = 24, the small path's unmasked pairs for k = 3) besides the diagonal
    ones, and a near-duplicate and a near-antipode that mask two more."""
    x = torch.randn(2, 64, k, dtype=torch.float64)
    x[0, 40] = x[0, 3] + 1e-7
    x[1, 50] = -x[1, 9] * (1 + 1e-9)
    kw = dict(half_space=half_space, reduction="none")
    for dtype in (torch.float64, torch.float32):
        e, g = run(x.to(dtype), power, **kw)
        e_ref, g_ref = reference_energy_and_grad(x.to(dtype), power, **kw)
        assert_energy_close(e, e_ref, dtype, num_pairs(64, half_space))
        assert_grad_close(g, g_ref, dtype)


def test_many_column_chunks(small_tiles):
    """N = 300 in 16-point tiles: 19 column tiles, three chunks of FLUSH between float64 flushes."""
    x = torch.randn(1, 300, 3, dtype=torch.float64)
    e, g = run(x, 1, reduction="none")
    e_ref, g_ref = reference_energy_and_grad(x, 1, reduction="none")
    assert_energy_close(e, e_ref, torch.float64, num_pairs(300))
    assert_grad_close(g, g_ref, torch.float64)


def test_wide_rows_split_v_into_chunks():
    """k = 300 > KV_MAX: programs accumulate 256-column chunks of V, the separate epilogue."""
    x = torch.randn(2, 21, 300, dtype=torch.float64)
    assert kernels._plan(300, torch.float64, "chordal", 1.0, "auto").n_vchunks == 2
    for half_space in (False, True):
        kw = dict(half_space=half_space, reduction="none")
        e, g = run(x, "a1", **kw)
        e_ref, g_ref = reference_energy_and_grad(x, "a1", **kw)
        assert_energy_close(e, e_ref, torch.float64, num_pairs(21, half_space))
        assert_grad_close(g, g_ref, torch.float64)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_reductions_and_batches(reduction):
    x = torch.randn(3, 25, 5, dtype=torch.float64)
    for half_space in (False, True):
        e = hyperspherical_energy(x.to(DEVICE), "a2", half_space=half_space, reduction=reduction, backend="triton")
        e_ref = comhe_kernels.reference.hyperspherical_energy(x, "a2", half_space=half_space, reduction=reduction)
        assert_energy_close(e.cpu(), e_ref, torch.float64, num_pairs(25, half_space))
    single = [hyperspherical_energy(x[b].to(DEVICE), 1, reduction="sum", backend="triton") for b in range(3)]
    together = hyperspherical_energy(x.to(DEVICE), 1, reduction="none", backend="triton")
    assert torch.equal(torch.stack(single), together)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_16_bit_inputs(dtype):
    x = torch.randn(2, 40, 12).to(dtype)
    e, g = run(x, 1, half_space=True, reduction="none")
    assert e.dtype == torch.float32 and g.dtype == dtype
    e_ref, g_ref = reference_energy_and_grad(x, 1, half_space=True, reduction="none")
    assert_energy_close(e, e_ref, dtype, num_pairs(40, True))
    assert_grad_close(g, g_ref, dtype)


@pytest.mark.parametrize("power, n, k", [(1, 5, 3), ("a1", 5, 3), ("g2", 5, 3), ("a1", 3, 10)])
def test_gradcheck(power, n, k):
    """Finite differences, a few small cases (the shared gradchecks are too long for the interpreter)."""
    x = torch.randn(1, n, k, dtype=torch.float64, device=DEVICE, requires_grad=True)
    fn = lambda t: hyperspherical_energy(t, power, half_space=True, reduction="none", backend="triton")
    assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("power", [1, "a1"])
def test_cross_gradcheck(power):
    x = torch.randn(1, 2, 3, dtype=torch.float64, device=DEVICE, requires_grad=True)
    y = torch.randn(1, 2, 3, dtype=torch.float64, device=DEVICE, requires_grad=True)
    fn = lambda a, b: cross_energy(a, b, power, half_space=True, reduction="none", backend="triton")
    assert torch.autograd.gradcheck(fn, (x, y), eps=1e-6, atol=1e-7, rtol=1e-6)


# ---- adversarial rows ----------------------------------------------------------------


@pytest.mark.parametrize("power", [1, 2, 0, "a1", "a0", "g2"])
@pytest.mark.parametrize("k", [4, 40])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_coincident_near_antipodal_and_zero_rows(power, k, dtype):
    x = adversarial_rows(40, k, dtype)
    for half_space in (False, True):
        e, g = run(x, power, half_space=half_space, reduction="sum")
        e_ref, g_ref = reference_energy_and_grad(x, power, half_space=half_space, reduction="sum")
        assert torch.isfinite(e) and torch.isfinite(g).all()
        assert_energy_close(e, e_ref, dtype, num_pairs(40, half_space))
        assert_grad_close(g, g_ref, dtype)


def test_eps_zero_coincident_rows_and_the_centre():
    """eps = 0: coincident rows give an infinite chordal energy and NaN in their
    gradient only; a zero row is the centre, with gradient 0."""
    x = torch.randn(12, 5, dtype=torch.float64)
    x[0] = 0
    x[1] = x[2]
    e, g = run(x, 1, eps=0.0, reduction="sum")
    assert e == math.inf and torch.isnan(g[1]).all() and torch.isnan(g[2]).all() and torch.isfinite(g[3:]).all()
    assert torch.equal(g[0], torch.zeros(5, dtype=torch.float64))
    e, g = run(x, "a1", eps=0.0, reduction="sum")
    e_ref, g_ref = reference_energy_and_grad(x, "a1", eps=0.0, reduction="sum")
    assert_energy_close(e, e_ref, torch.float64, num_pairs(12))
    assert_grad_close(g, g_ref, torch.float64)


def _with_close_pairs(n, k):
    """Random rows plus planted near-duplicates and near-antipodes, neighbours
    and n / 2 rows apart (the conftest contract's construction)."""
    x = torch.randn(n, k, dtype=torch.float64)
    m, h = max(1, n // 50), n // 2
    noise = lambda scale: scale * torch.randn(m, k, dtype=torch.float64)
    x[1 : 2 * m : 2] = x[0 : 2 * m : 2] + noise(1e-5)
    x[2 * m : 4 * m : 2] = -x[2 * m + 1 : 4 * m : 2] + noise(1e-6)
    x[h : h + m] = x[4 * m : 5 * m] + noise(1e-5)
    x[h + m : h + 2 * m] = -x[5 * m : 6 * m] + noise(1e-6)
    return x.float()


@pytest.mark.parametrize(
    "n, k, power, half_space, eps",
    [(256, 3, 1, False, 0.0), (256, 3, 2, True, 1e-4), (256, 3, "a2", False, 1e-4), (160, 32, 1, False, 1e-4),
     (160, 32, 2, True, 0.0)],
)
def test_float32_contract_with_close_pairs(n, k, power, half_space, eps, medium_tiles):
    """The float32 accuracy contract (energy 1e-6, gradient 1e-3 of max |g| of
    the float64 evaluation) with planted close pairs, in hot and masked tiles."""
    x = _with_close_pairs(n, k)
    kw = dict(half_space=half_space, eps=eps, reduction="sum")
    e32, g32 = run(x, power, **kw)
    e64, g64 = reference_energy_and_grad(x, power, **kw)
    assert abs(e32.item() - e64.item()) <= 1e-6 * abs(e64.item())
    assert_grad_close(g32, g64, torch.float32)


# ---- the cross-set op -------------------------------------------------------------------


@pytest.mark.parametrize("power", [1, 0, "a1", "g2", 3.5])
@pytest.mark.parametrize("half_space", [False, True])
@pytest.mark.parametrize("n, m, k", [(1, 1, 3), (19, 97, 3), (130, 7, 40), (3, 2, 129)])
def test_cross_matches_reference(power, half_space, n, m, k):
    x, y = torch.randn(2, n, k, dtype=torch.float64), torch.randn(2, m, k, dtype=torch.float64)
    kw = dict(half_space=half_space, reduction="none")
    e, gx, gy = cross_energy_and_grad(x, y, power, backend=_case(), **kw)
    e_ref, gx_ref, gy_ref = reference_cross_energy_and_grad(x, y, power, **kw)
    assert_energy_close(e, e_ref, torch.float64, num_cross_pairs(n, m, half_space))
    assert_grad_close(gx, gx_ref, torch.float64)
    assert_grad_close(gy, gy_ref, torch.float64)


def test_cross_float32_close_pairs_in_hot_tiles(small_tiles):
    x = torch.randn(48, 20, dtype=torch.float64)
    y = torch.randn(40, 20, dtype=torch.float64)
    y[20] = x[30] + 1e-6
    y[33] = -x[5]
    x, y = x.float(), y.float()
    for half_space in (False, True):
        kw = dict(half_space=half_space, reduction="sum")
        e, gx, gy = cross_energy_and_grad(x, y, 1, backend=_case(), **kw)
        e_ref, gx_ref, gy_ref = reference_cross_energy_and_grad(x, y, 1, **kw)
        assert_energy_close(e, e_ref, torch.float32, num_cross_pairs(48, 40, half_space))
        assert_grad_close(gx, gx_ref, torch.float32)
        assert_grad_close(gy, gy_ref, torch.float32)


# ---- precision modes ------------------------------------------------------------------


@pytest.mark.parametrize("precision", ["auto", "ieee", "tf32x3", "tf32", "bf16"])
@pytest.mark.parametrize("k", [3, 32])
def test_precision_modes_meet_their_bounds(precision, k, medium_tiles):
    """Every mode against its documented bound (conftest PRECISION_TOL; the
    float32 contract for auto, ieee, tf32x3). Under the interpreter tl.dot is
    IEEE float32, so tf32 and bf16 show only their packing (u rounded to 10
    and 7 mantissa bits); k <= 8 has no products in any mode."""
    x = torch.randn(96, k)
    kw = dict(reduction="sum", precision=precision)
    e, g = run(x, 1, **kw)
    e_ref, g_ref = reference_energy_and_grad(x, 1, reduction="sum")
    e_tol, g_tol = PRECISION_TOL[precision]
    assert abs(e.item() - e_ref.item()) <= e_tol * abs(e_ref.item())
    assert (g.double() - g_ref).abs().max().item() <= g_tol * g_ref.abs().max().item()


def test_float64_takes_no_tensor_core_mode():
    x = torch.randn(10, 3, dtype=torch.float64, device=DEVICE)
    with pytest.raises(ValueError, match="float64 input is computed in float64"):
        hyperspherical_energy(x, 1, backend="triton", precision="tf32")


# ---- determinism, large N -----------------------------------------------------------------


def test_bit_identical_run_to_run():
    x = torch.randn(2, 150, 24)
    a = comhe_kernels.hyperspherical_energy_and_grad(x.to(DEVICE), 1, backend="triton", reduction="none")
    b = comhe_kernels.hyperspherical_energy_and_grad(x.to(DEVICE), 1, backend="triton", reduction="none")
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def _sampled_reference(x, rows, power):
    """Energy of the whole set and the gradient of some rows, in float64 row blocks (O(N) memory per block)."""
    spec = comhe_kernels._spec.make_spec(power, False, 1e-4, 1e-4, False)
    x64 = x.double().cpu()
    u, a = comhe_kernels.reference.normalize(x64, 1e-4)
    n = x.shape[0]
    energy = 0.0
    for i0 in range(0, n, 2048):
        ub, ab = u[i0 : i0 + 2048], a[i0 : i0 + 2048]
        d2 = torch.cdist(ub, u, compute_mode="donot_use_mm_for_euclid_dist").square() + ab[:, None] + a[None, :]
        idx = torch.arange(i0, i0 + ub.shape[0])
        d2[idx - i0, idx] = 1.0
        f = comhe_kernels.reference.pair_energy(d2, 4 - d2, spec)
        f[idx - i0, idx] = 0.0
        energy += 0.5 * f.sum().item()
    xr = x64[rows].clone().requires_grad_()
    ur, ar = comhe_kernels.reference.normalize(xr, 1e-4)
    d2 = torch.cdist(ur, u, compute_mode="donot_use_mm_for_euclid_dist").square() + ar[:, None] + a[None, :]
    d2 = torch.where(torch.arange(n)[None, :] == torch.as_tensor(rows)[:, None], torch.ones_like(d2), d2)
    f = comhe_kernels.reference.pair_energy(d2, 4 - d2, spec)
    f = torch.where(torch.arange(n)[None, :] == torch.as_tensor(rows)[:, None], torch.zeros_like(f), f)
    (g,) = torch.autograd.grad(f.sum(), xr)
    return energy, g


@pytest.mark.cuda
@pytest.mark.parametrize("n, k", [(65536, 3), (65536, 32), (262144, 32)])
def test_large_sets_against_float64_on_a_sample_of_rows(n, k):
    """The float32 contract at the issue's sizes, the gradient on 64 sampled rows
    (each row's gradient is its pairs with all N points, so only the other
    rows' float64 matrices are needed)."""
    if DEVICE != "cuda":
        pytest.skip("needs a GPU")
    x = torch.randn(n, k)
    e, g = comhe_kernels.hyperspherical_energy_and_grad(x.cuda(), 1, backend="triton")
    rows = torch.randperm(n)[:64].tolist()
    e_ref, g_ref = _sampled_reference(x, rows, 1)
    assert abs(e.item() - e_ref) <= 1e-6 * abs(e_ref)
    assert (g.cpu()[rows].double() - g_ref).abs().max().item() <= 1e-3 * g_ref.abs().max().item()


# ---- the GPU compiler, without a GPU ----------------------------------------------------

_COMPILE = r"""
import os, sys
os.environ["TRITON_INTERPRET"] = "0"
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from comhe_kernels.triton import hyperspherical_energy as K

ptr = {"U": "*fp32", "ULO": "*fp32", "H": "*fp32", "R64": "*fp64", "A64": "*fp64", "XR": "*fp32", "XC": "*fp32",
       "G": "*fp32", "VB": "*fp32", "AREF": "*fp64", "EPART": "*fp64", "s_bits": "i64", "delta_bits": "i64",
       "tau_bits": "i64"}
flags = dict(KIND=1, POW=1, HALF=True, DIAG=True, ENERGY=True, SELF=True, ESCALE=1.0, GSCALE=2.0, GRAD=True,
             FLUSH_TILES=K.FLUSH)
cases = [(K._small_kernel, dict(flags, K=3), K.SMALL_CONFIGS[0], 90),
         (K._gram_kernel, dict(flags, GRAM_PREC="tf32x3", GRAD_PREC="tf32x3", KC=32, KV=32, SINGLE_KC=True,
                               FUSED=True), K.GRAM_CONFIGS[0], int(sys.argv[1]))]
# the prologue packing u to bfloat16 (the interpreter's float64 -> bfloat16 is 0: _pack goes via float32)
pro = dict(ROUND=0, WANT_H=True, WANT_LO=True, BR=16, KB=32, ONE_CHUNK=True)
c = triton.compile(ASTSource(fn=K._prologue, signature={a: "constexpr" if a in pro else dict(ptr, U="*bf16", X="*fp32",
                   eps_bits="i64").get(a, "i32") for a in K._prologue.arg_names}, constexprs=pro),
                   target=GPUTarget("cuda", int(sys.argv[1]), 32), options=dict(num_warps=4))
assert "cvt.rn.bf16.f32" in c.asm["ptx"]
print("_prologue bf16", sys.argv[1], "ok", True)
for fn, const, cfg, cap in cases:
    const = dict(const, **cfg.kwargs)
    sig = {a: "constexpr" if a in const else ptr.get(a, "i32") for a in fn.arg_names}
    c = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=const), target=GPUTarget("cuda", cap, 32),
                       options=dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages))
    assert c.asm["cubin"], fn.__name__
    print(fn.__name__, cap, "ok", "dot" in c.asm["ttgir"])
"""


# sm_90 only, the H200's: sm_80 adds 20 s with a cold Triton cache (CI's case);
# it compiled too when last checked by hand (docs/triton.md)
@pytest.mark.parametrize("capability", [90])
@pytest.mark.skipif(DEVICE == "cuda", reason="on a GPU every test compiles the kernels")
def test_kernels_compile_for_the_gpu(capability):
    """The interpreter runs the kernels as Python; the GPU compiler is stricter
    (types across branches, layouts, tl.dot shapes). Triton compiles for a
    target without a GPU: the small-k kernel and the gram kernel (tl.dot in
    3xTF32, the angular half-space variant) and the prologue packing to
    bfloat16 to sm_90 / sm_80 machine code."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _COMPILE, str(capability)], capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count(" ok ") == 3, out.stdout


# ---- torch.library, torch.compile, errors ---------------------------------------------------


@pytest.mark.cuda
def test_opcheck_and_compile_on_cuda():
    """torch.compile over a triton_op on CPU tensors fails in fake-tensor tracing: a GPU test."""
    if DEVICE != "cuda":
        pytest.skip("needs a GPU")
    comhe_kernels.ops._registry.resolve("triton", "hyperspherical_energy", "cuda")
    x = torch.randn(2, 70, 19, device="cuda", dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(torch.ops.comhe.hyperspherical_energy_triton.default, (x, "angular", 2.0, True, 1e-4, 1e-4, True))
    y = torch.randn(2, 30, 19, device="cuda", dtype=torch.float64)
    torch.library.opcheck(torch.ops.comhe.cross_energy_triton.default, (x, y, "chordal", 1.0, False, 1e-4, 1e-4, True))
    xs = torch.randn(2, 64, 5, device="cuda", requires_grad=True)

    @torch.compile(fullgraph=True)
    def loss(t):
        return hyperspherical_energy(t, 2, half_space=True, backend="triton") + t.square().mean()

    out = loss(xs)
    (g,) = torch.autograd.grad(out, xs)
    expected = hyperspherical_energy(xs, 2, half_space=True, backend="triton") + xs.square().mean()
    (g_ref,) = torch.autograd.grad(expected, xs)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(g, g_ref)


def test_non_finite_input_names_set_and_row():
    x = torch.randn(2, 30, 3)
    x[1, 17, 2] = math.inf
    with pytest.raises(ValueError, match=r"x contains NaN or Inf \(set 1, row 17\)"):
        hyperspherical_energy(x.to(DEVICE), 1, backend="triton")
    y = torch.randn(2, 5, 3)
    y[0, 4, 0] = math.nan
    with pytest.raises(ValueError, match=r"y contains NaN or Inf \(set 0, row 4\)"):
        cross_energy(torch.randn(2, 7, 3).to(DEVICE), y.to(DEVICE), 1, backend="triton")


def test_op_level_checks_name_the_argument():
    x = torch.randn(1, 5, 3, device=DEVICE)
    op = torch.ops.comhe.hyperspherical_energy_triton
    with pytest.raises(ValueError, match="kind must be 'chordal', 'angular' or 'gaussian'"):
        op(x, "euclid", 1.0, False, 1e-4, 1e-4, True)
    with pytest.raises(ValueError, match=r"x must have shape \(B, N, k\)"):
        op(x[0], "chordal", 1.0, False, 1e-4, 1e-4, True)
    with pytest.raises(TypeError, match="x must be float32 or float64"):
        op(x.half(), "chordal", 1.0, False, 1e-4, 1e-4, True)
    with pytest.raises(ValueError, match="s must be finite and >= 0"):
        op(x, "chordal", -2.0, False, 1e-4, 1e-4, True)
    with pytest.raises(ValueError, match="precision must be one of"):
        op(x, "chordal", 1.0, False, 1e-4, 1e-4, True, "fp8")


def test_unavailable_reasons(monkeypatch):
    """The registry's reasons: triton missing, CPU tensors without the interpreter, an old GPU."""
    from comhe_kernels.ops.backends import triton as backend

    monkeypatch.setattr(backend, "_triton_missing", lambda: True)
    assert "triton is not installed" in backend._unavailable("hyperspherical_energy", "cuda")
    monkeypatch.setattr(backend, "_triton_missing", lambda: False)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert "TRITON_INTERPRET=1" in backend._unavailable("hyperspherical_energy", "cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (7, 5))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla T4")
    assert "compute capability >= 8.0" in backend._unavailable("hyperspherical_energy", "cuda")
    assert "7.5" in backend._unavailable("hyperspherical_energy", "cuda")


def test_empty_sets_and_one_point():
    for n in (0, 1):
        x = torch.randn(2, n, 3, device=DEVICE, requires_grad=True)
        e = hyperspherical_energy(x, 1, reduction="none", backend="triton")
        assert e.tolist() == [0.0, 0.0]
        e.sum().backward()
        assert x.grad.shape == x.shape and not x.grad.any()
    x = torch.randn(1, 3, dtype=torch.float64)
    a = 1e-4 / (x.square().sum() + 1e-4)
    e = hyperspherical_energy(x.to(DEVICE), 1, half_space=True, reduction="sum", backend="triton").cpu()
    torch.testing.assert_close(e, (4 - 2 * a) ** -0.5, rtol=1e-15, atol=0)
    e = cross_energy(torch.randn(0, 3, device=DEVICE), torch.randn(4, 3, device=DEVICE), 1, backend="triton")
    assert e.item() == 0.0


# ---- the prepared GPU call -----------------------------------------------------------------


@pytest.mark.skipif(DEVICE == "cuda", reason="on a GPU, gpu_check.sh itself is the run")
def test_gpu_check_dry_run(tmp_path):
    """benchmarks/gpu_check.sh --dry-run: every step runs on this machine (the GPU
    parts skipped with their reason), within its limits, and leaves at most the
    8 files that a device call brings back, the summary printed last."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from conftest import child_env

    script = Path(__file__).parent.parent / "benchmarks" / "gpu_check.sh"
    env = dict(child_env(), PYTHON=sys.executable)  # the steps run outside the checkout
    out = subprocess.run(["bash", str(script), "--dry-run", str(tmp_path)], capture_output=True, text=True,
                         timeout=600, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    steps = summary["steps"]
    assert set(steps) >= {"device", "pytest-cuda", "accuracy", "cuda-steps", "bench", "thomson"}, steps
    assert all(st["exit"] == 0 for st in steps.values()), steps
    assert summary["ceilings"] == {"skipped": "no GPU (dry run)"}
    assert {r["precision"] for r in summary["accuracy"]} >= {"float64", "auto", "ieee", "tf32"}
    assert all(r.get("within_bound", True) for r in summary["accuracy"]), summary["accuracy"]
    assert summary["thomson"]["energy_decreased"]
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) <= 8, files
    assert "gpu_check summary" in out.stdout.splitlines()[-30:][0] or "gpu_check summary" in out.stdout[-4000:]
