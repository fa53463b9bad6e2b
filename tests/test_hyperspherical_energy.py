"""The fused op against the reference: every variant, ragged and adversarial
inputs, autograd, torch.library checks, torch.compile, bad input, accuracy.

Tolerances live in conftest.py (one table per dtype, with the reasoning).
"""

import math
import subprocess
import sys
import time
import warnings

import pytest
import torch
from conftest import (
    adversarial_rows,
    assert_energy_close,
    assert_grad_close,
    child_env,
    cross_energy_and_grad,
    energy_and_grad,
    ill_conditioned,
    reference_cross_energy_and_grad,
    reference_energy_and_grad,
    results_per_thread_count,
)

import comhe_kernels
from comhe_kernels import hyperspherical_energy, num_cross_pairs, num_pairs

POWERS = [0, 1, 2, 0.5, 3.5, "a0", "a1", "a2", "a1.5"]
RAGGED_N = [1, 2, 3, 19, 97, 1025]


def run(backend, x, *args, **kwargs):
    """The public op on the backend's device (kwargs "backend" is the case's name); the result on the CPU."""
    return hyperspherical_energy(backend.on(x), *args, backend=backend.name, **kwargs).cpu()


def op(x, kind="chordal", s=1.0, half=False, eps=1e-4, delta=1e-4, grad=True):
    comhe_kernels._extension.load()
    return torch.ops.comhe.hyperspherical_energy(x, kind, s, half, eps, delta, grad)


# ---- the op equals the reference ---------------------------------------------


@pytest.mark.parametrize("power", POWERS)
@pytest.mark.parametrize("half_space", [False, True])
@pytest.mark.parametrize("n", RAGGED_N)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matches_reference(power, half_space, n, dtype, fused_backend):
    k = 3 if n > 100 else 5
    x = torch.randn(2, n, k, dtype=dtype)
    kw = dict(half_space=half_space, reduction="none")
    e, g = energy_and_grad(x, power, backend=fused_backend, **kw)
    e_ref, g_ref = reference_energy_and_grad(x, power, **kw)
    assert e.dtype == dtype and g.dtype == dtype
    assert_energy_close(e, e_ref, dtype, num_pairs(n, half_space))
    assert_grad_close(g, g_ref, dtype)


@pytest.mark.parametrize("k", [1, 2, 4, 7, 8, 9, 16, 33, 70])
@pytest.mark.parametrize("power", [1, "a2"])
def test_every_coordinate_path(k, power, fused_backend):
    """k <= 8 takes the fused one-pass path (3, 4 and 8 wide), larger k the tile
    GEMMs (the row side on the transposed weight tile)."""
    x = torch.randn(3, 150, k, dtype=torch.float64)
    for half_space in (False, True):
        e, g = energy_and_grad(x, power, half_space=half_space, reduction="none", backend=fused_backend)
        e_ref, g_ref = reference_energy_and_grad(x, power, half_space=half_space, reduction="none")
        assert_energy_close(e, e_ref, torch.float64, num_pairs(150, half_space))
        assert_grad_close(g, g_ref, torch.float64)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("batched", [False, True])
def test_reductions(reduction, batched, fused_backend):
    x = torch.randn(3, 40, 6, dtype=torch.float64) if batched else torch.randn(40, 6, dtype=torch.float64)
    for half_space in (False, True):
        e = run(fused_backend, x, 2, half_space=half_space, reduction=reduction)
        e_ref = comhe_kernels.reference.hyperspherical_energy(x, 2, half_space=half_space, reduction=reduction)
        assert e.shape == e_ref.shape == ((3,) if batched and reduction == "none" else ())
        assert_energy_close(e, e_ref, torch.float64, num_pairs(40, half_space))


def test_reductions_relate():
    """mean = sum / (B * pairs); none = per-set sums; the sets are independent."""
    x = torch.randn(4, 33, 5, dtype=torch.float64)
    none = hyperspherical_energy(x, 1, reduction="none")
    total = hyperspherical_energy(x, 1, reduction="sum")
    mean = hyperspherical_energy(x, 1, reduction="mean")
    torch.testing.assert_close(total, none.sum(), rtol=1e-14, atol=0)
    torch.testing.assert_close(mean, total / (4 * num_pairs(33)), rtol=1e-14, atol=0)
    for b in range(4):
        torch.testing.assert_close(hyperspherical_energy(x[b], 1, reduction="sum"), none[b], rtol=1e-14, atol=0)


# ---- layouts ------------------------------------------------------------------


def test_strided_inputs(fused_backend):
    """The op reads any strides. The views are taken of a leaf on the
    backend's device, so that they reach the op as they are (a clone of a
    non-dense view would be contiguous); the gradient is checked through
    the view, and the no-graph path on the view itself."""
    base0 = torch.randn(3, 90, 14, dtype=torch.float64)
    views = {
        "every other row and column": lambda b: b[:, ::2, ::3],
        "transposed storage": lambda b: b.transpose(1, 2).contiguous().transpose(1, 2),
        "batch stride 0": lambda b: b[:1].expand(3, 90, 14),
        "sliced set": lambda b: b[1:, 5:77, 2:9],
    }
    kw = dict(half_space=True, reduction="none")
    for name, view in views.items():
        base = fused_backend.on(base0).requires_grad_()
        x = view(base)
        assert name == "transposed storage" or not x.is_contiguous()
        e = hyperspherical_energy(x, "a1", backend=fused_backend.name, **kw)
        (g,) = torch.autograd.grad(e.sum(), base)
        e_direct, g_direct = comhe_kernels.hyperspherical_energy_and_grad(x.detach(), "a1", backend=fused_backend.name, **kw)
        base_ref = base0.clone().requires_grad_()
        e_ref = comhe_kernels.reference.hyperspherical_energy(view(base_ref).contiguous(), "a1", **kw)
        (g_ref,) = torch.autograd.grad(e_ref.sum(), base_ref)
        assert_energy_close(e.cpu(), e_ref, torch.float64, num_pairs(x.shape[1], True)), name
        assert_energy_close(e_direct.cpu(), e_ref, torch.float64, num_pairs(x.shape[1], True)), name
        assert_grad_close(g.cpu(), g_ref, torch.float64)
        _, g_view_ref = reference_energy_and_grad(view(base0).contiguous(), "a1", **kw)
        assert_grad_close(g_direct.cpu(), g_view_ref, torch.float64)


def test_batched_equals_separate_calls(fused_backend):
    x = torch.randn(5, 70, 3)
    together = run(fused_backend, x, 1, reduction="none")
    for b in range(5):
        assert run(fused_backend, x[b], 1, reduction="sum") == together[b]


@pytest.mark.parametrize("k", [3, 20])
def test_result_independent_of_thread_count(k):
    """The schedule depends on N and the core count only, so every sum is formed
    in the same order. N = 2850: 45 tiles in an odd number of super-tiles on any
    core count (15 on up to 5 cores, 23 or 45 on more: a bye in every round);
    3 threads: more than this machine's cores, so threads wait for each other's
    tasks."""
    x = torch.randn(2, 2850, k)
    results = results_per_thread_count(lambda: energy_and_grad(x, 1, reduction="none"))
    for e, g in results[1:]:
        assert torch.equal(e, results[0][0]) and torch.equal(g, results[0][1])


# ---- adversarial inputs --------------------------------------------------------


@pytest.mark.parametrize("power", POWERS)
@pytest.mark.parametrize("half_space", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_close_antipodal_and_zero_rows(power, half_space, dtype, fused_backend):
    x = adversarial_rows(60, 4, dtype)
    e, g = energy_and_grad(x, power, half_space=half_space, reduction="sum", backend=fused_backend)
    e_ref, g_ref = reference_energy_and_grad(x, power, half_space=half_space, reduction="sum")
    assert torch.isfinite(e) and torch.isfinite(g).all()
    assert_energy_close(e, e_ref, dtype, num_pairs(60, half_space))
    assert_grad_close(g, g_ref, dtype)


def test_eps_zero_conventions(backend):
    """eps = 0: a zero row has cosine 0 with everything and gradient 0; exact
    duplicates make the chordal energy infinite (gradient undefined, NaN) and
    the angular one finite (its subgradient at theta = 0 is 0)."""
    x = torch.randn(10, 3, dtype=torch.float64)
    x[0] = 0
    e, g = energy_and_grad(x, 1, eps=0.0, reduction="sum", backend=backend)
    e_ref, g_ref = reference_energy_and_grad(x, 1, eps=0.0, reduction="sum")
    assert_energy_close(e, e_ref, torch.float64, 45)
    assert_grad_close(g, g_ref, torch.float64)
    assert torch.equal(g[0], torch.zeros(3, dtype=torch.float64))
    x[1] = x[2]
    e, g = energy_and_grad(x, 1, eps=0.0, reduction="sum", backend=backend)
    assert e == math.inf and torch.isnan(g[1]).all() and torch.isfinite(g[3:]).all()
    e, g = energy_and_grad(x, "a1", eps=0.0, reduction="sum", backend=backend)
    e_ref, g_ref = reference_energy_and_grad(x, "a1", eps=0.0, reduction="sum")
    assert torch.isfinite(e) and torch.isfinite(g).all()
    assert_energy_close(e, e_ref, torch.float64, 45)
    assert_grad_close(g, g_ref, torch.float64)


def test_one_coordinate(fused_backend):
    """k = 1: every pair coincident or antipodal; the angle is 0 or pi exactly."""
    x = torch.randn(2, 41, 1, dtype=torch.float64)
    for power in (1, "a1", "a0"):
        for eps in (1e-4, 0.0):
            e, g = energy_and_grad(x, power, half_space=True, eps=eps, reduction="none", backend=fused_backend)
            e_ref, g_ref = reference_energy_and_grad(x, power, half_space=True, eps=eps, reduction="none")
            assert_energy_close(e, e_ref, torch.float64, num_pairs(41, True))
            if torch.isfinite(e).all():
                assert_grad_close(g, g_ref, torch.float64)


def test_scale_invariance_with_huge_rows(backend):
    """With eps = 0 the energy depends on directions only, even for rows whose
    squared norm overflows float64 (and, below, float32)."""
    x = torch.randn(30, 5, dtype=torch.float64)
    scaled = x * torch.logspace(-150, 200, 30, dtype=torch.float64)[:, None]
    e = run(backend, x, 1, eps=0.0, reduction="sum")
    e_scaled = run(backend, scaled, 1, eps=0.0, reduction="sum")
    torch.testing.assert_close(e_scaled, e, rtol=1e-13, atol=0)


@pytest.mark.parametrize("dtype, largest", [(torch.float32, 1e25), (torch.float32, 3e38), (torch.float64, 1e300)])
def test_huge_rows_with_eps(dtype, largest, backend):
    """A row far beyond sqrt(max) of its dtype has u = x/|x| and a = 0 to
    working precision; the reference had overflowed ||x||^2 there (one float32
    row x 1e25 gave 0.925 instead of 0.871, with non-finite gradients)."""
    x = torch.randn(40, 4, dtype=torch.float64)
    big = x.clone()
    big[7] *= largest / big[7].abs().max()
    expected_x = x.clone()
    expected_x[7] *= 1e6  # a = 1e-4 / (|x|^2 + 1e-4) is already ~1e-16 here: the same energy
    e, g = energy_and_grad(big.to(dtype), 1, half_space=True, reduction="mean", backend=backend)
    e_ref, _ = reference_energy_and_grad(expected_x, 1, half_space=True, reduction="mean")
    assert torch.isfinite(g).all()
    assert_energy_close(e, e_ref, dtype, num_pairs(40, True))
    assert g[7].abs().max() <= 1e-10 * g.abs().max()  # d/dx of a direction: 1/|x| small


def test_empty_and_single_point_sets(backend):
    for n in (0, 1):
        x = torch.randn(2, n, 3, requires_grad=True)
        e = run(backend, x, 1, reduction="none")
        assert e.tolist() == [0.0, 0.0]
        assert run(backend, x, 1, reduction="mean").item() == 0.0
        e.sum().backward()
        assert x.grad.shape == x.shape and not x.grad.any()
    # half-space with one point: the single pair (u, -u), d^2 = 4 - 2a
    x = torch.randn(1, 3, dtype=torch.float64)
    a = 1e-4 / (x.square().sum() + 1e-4)
    e = run(backend, x, 1, half_space=True, reduction="sum")
    torch.testing.assert_close(e, (4 - 2 * a) ** -0.5, rtol=1e-15, atol=0)
    assert num_pairs(1, True) == 1 and num_pairs(0, True) == 0 and num_pairs(1) == 0


def test_empty_batch(backend):
    x = torch.randn(0, 5, 3)
    assert run(backend, x, 1, reduction="none").shape == (0,)
    assert run(backend, x, 1, reduction="sum").item() == 0.0


# ---- known configurations -----------------------------------------------------


def _icosahedron():
    phi = (1 + 5**0.5) / 2
    v = []
    for a in (-1.0, 1.0):
        for b in (-1.0, 1.0):
            v += [(0, a, b * phi), (a, b * phi, 0), (b * phi, 0, a)]
    return torch.tensor(v, dtype=torch.float64)


def test_known_configurations(backend):
    def energy(x, power=1):
        return run(backend, x, power, eps=0.0, reduction="sum").item()

    assert energy(_icosahedron()) == pytest.approx(49.165253058, rel=1e-10)
    assert energy(torch.tensor([[0.0, 0, 1], [0, 0, -3]])) == pytest.approx(0.5, rel=1e-15)
    for k in (2, 3, 7, 20):
        # regular simplex: k+1 points with cosine -1/k, d^2 = 2 + 2/k
        simplex = torch.eye(k + 1, dtype=torch.float64) - 1 / (k + 1)
        d2 = 2 + 2 / k
        assert energy(simplex) == pytest.approx((k + 1) * k / 2 * d2**-0.5, rel=1e-13)
        assert energy(simplex, 0) == pytest.approx(-(k + 1) * k / 2 * 0.5 * math.log(d2), rel=1e-13)
        assert energy(simplex, "a2") == pytest.approx(
            (k + 1) * k / 2 * (math.acos(-1 / k) / math.pi + 1e-4) ** -2, rel=1e-12
        )
        # cross-polytope: 2k points, k antipodal pairs (d^2 = 4), the rest orthogonal (d^2 = 2)
        cross = torch.cat([torch.eye(k, dtype=torch.float64), -torch.eye(k, dtype=torch.float64)])
        orth = num_pairs(2 * k) - k
        assert energy(cross, 2) == pytest.approx(k / 4 + orth / 2, rel=1e-13)


def test_half_space_is_the_doubled_set(backend):
    """half_space=True equals the full-space energy of the 2N rows [x; -x]."""
    x = torch.randn(2, 57, 6, dtype=torch.float64)
    for power in (1, 0, "a1"):
        half = run(backend, x, power, half_space=True, reduction="none")
        doubled = run(backend, torch.cat([x, -x], dim=1), power, reduction="none")
        torch.testing.assert_close(half, doubled, rtol=1e-12, atol=0)


def test_original_code_conventions(backend):
    """The original MHE formulas, transcribed: power 0 is -log(d^2) there
    (squared_log=True), powers 1 and 2 are (d^2)^(-1/2) and (d^2)^-1, the
    angular ones use arccos(c)/pi + 1e-4; energies are means over pairs."""
    w = torch.randn(20, 9, dtype=torch.float64)
    w_hat = w / torch.sqrt(w.square().sum(1, keepdim=True) + 1e-4)
    c = w_hat @ w_hat.T
    i, j = torch.triu_indices(20, 20, 1)
    c = c[i, j]
    d2 = 2 - 2 * c
    theta = torch.arccos(c) / math.pi
    expected = {
        0: -torch.log(d2).mean(),
        1: d2.pow(-0.5).mean(),
        2: d2.pow(-1).mean(),
        "a0": -torch.log(theta + 1e-4).mean(),
        "a1": (theta + 1e-4).pow(-1).mean(),
        "a2": (theta + 1e-4).pow(-2).mean(),
    }
    for power, value in expected.items():
        got = run(backend, w, power, squared_log=True)
        torch.testing.assert_close(got, value, rtol=1e-12, atol=0)
    torch.testing.assert_close(
        run(backend, w, 0, squared_log=True), 2 * run(backend, w, 0), rtol=1e-15, atol=0
    )


# ---- dtypes ---------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_16_bit_inputs(dtype, backend):
    """Computed in float32 from the exact 16-bit values; the gradient comes back in x's dtype."""
    x = torch.randn(2, 300, 8).to(dtype)
    e, g = energy_and_grad(x, 1, half_space=True, reduction="none", backend=backend)
    assert e.dtype == torch.float32 and g.dtype == dtype
    e_ref, g_ref = reference_energy_and_grad(x, 1, half_space=True, reduction="none")
    assert_energy_close(e, e_ref, dtype, num_pairs(300, True))
    assert_grad_close(g, g_ref, dtype)


# ---- autograd, torch.library, torch.compile -----------------------------------


@pytest.mark.parametrize("power", POWERS)
@pytest.mark.parametrize("half_space", [False, True])
@pytest.mark.parametrize("eps", [1e-4, 0.0])
def test_gradcheck(power, half_space, eps, backend):
    x = torch.randn(2, 11, 3, dtype=torch.float64, requires_grad=True)
    fn = lambda t: run(backend, t, power, half_space=half_space, eps=eps, reduction="none")
    assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-7, rtol=1e-6)


def test_gradcheck_through_the_wide_path(fused_backend):
    x = torch.randn(1, 70, 20, dtype=torch.float64, requires_grad=True)
    fn = lambda t: run(fused_backend, t, "a2", half_space=True)  # mean: O(1) values for finite differences
    assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-7, rtol=1e-6)


def test_no_silent_second_derivative(fused_backend):
    """The gradient is a saved constant: differentiating it again raises,
    also beside other terms that do have second derivatives (a
    Hessian-vector product), instead of adding a silent zero."""
    x = torch.randn(20, 3, requires_grad=True)
    (g,) = torch.autograd.grad(run(fused_backend, x, 1), x, create_graph=True)
    with pytest.raises(RuntimeError, match="no second derivative"):
        torch.autograd.grad((g * x).sum() + x.pow(3).sum(), x)


def test_forward_only_call_skips_the_gradient():
    x = torch.randn(2, 50, 3)
    energy, grad = op(x, grad=False)
    assert grad.numel() == 0
    energy_g, grad_g = op(x, grad=True)
    assert torch.equal(energy, energy_g) and grad_g.shape == x.shape
    with torch.no_grad():
        assert hyperspherical_energy(x.requires_grad_(), 1).grad_fn is None


@pytest.mark.parametrize(
    "args",
    [
        (torch.randn(2, 37, 3), "chordal", 1.0, False, 1e-4, 1e-4, True),
        (torch.randn(1, 70, 19, dtype=torch.float64), "angular", 2.0, True, 0.0, 1e-4, True),
        (torch.randn(3, 5, 2), "chordal", 0.0, True, 1e-4, 1e-4, False),
        (torch.randn(2, 9, 4, dtype=torch.float64, requires_grad=True), "chordal", 2.0, False, 1e-4, 1e-4, True),
    ],
)
def test_opcheck(args):
    comhe_kernels._extension.load()
    torch.library.opcheck(torch.ops.comhe.hyperspherical_energy.default, args)


def _compile_unsupported(backend):
    if backend.device == "cpu" and backend.name == "triton":
        pytest.skip("torch.compile over a Triton op on CPU tensors fails in fake-tensor tracing: a GPU test")


@pytest.mark.parametrize("dynamic", [False, True])
def test_torch_compile_fullgraph(backend, dynamic):
    """One graph, also with dynamic shapes and symbolic floats (dynamic=True:
    the argument checks must trace on SymFloats), for the reference too (its
    NaN check is an op, not a data-dependent branch)."""
    _compile_unsupported(backend)
    torch._dynamo.reset()  # the code object below is compiled anew for each case, within the recompile limit
    x = backend.on(torch.randn(2, 64, 5)).requires_grad_()

    @torch.compile(fullgraph=True, dynamic=dynamic, backend="aot_eager")
    def loss(t, eps):
        return hyperspherical_energy(t, 2, half_space=True, eps=eps, backend=backend.name) + t.square().mean()

    for eps in (1e-4, 1e-3):  # a second float: the compiled graph takes it as an input or recompiles
        out = loss(x, eps)
        (g,) = torch.autograd.grad(out, x)
        expected = hyperspherical_energy(x, 2, half_space=True, eps=eps, backend=backend.name) + x.square().mean()
        (g_ref,) = torch.autograd.grad(expected, x)
        torch.testing.assert_close(out, expected)
        torch.testing.assert_close(g, g_ref)
    bad = x.detach().clone()
    bad[1, 3, 0] = math.nan
    with pytest.raises(ValueError, match=r"NaN or Inf \(set 1, row 3\)"):
        loss(bad, 1e-4)


def test_forward_mode_and_function_transforms(fused_backend):
    """The fused op's first derivatives in every mode: jvp, jacfwd and
    forward_ad give grad . tangent (they returned zero before), grad, vjp and
    jacrev the gradient, vmap one batched call (no per-sample fallback)."""
    b = fused_backend
    x = b.on(torch.randn(50, 3, dtype=torch.float64))
    t = torch.randn_like(x)
    f = lambda z: hyperspherical_energy(z, 1, half_space=True, reduction="sum", backend=b.name)
    _, g = energy_and_grad(x, 1, half_space=True, reduction="sum", backend=b)
    g = b.on(g)
    directional = (g * t).sum()
    _, tangent = torch.func.jvp(f, (x,), (t,))
    torch.testing.assert_close(tangent, directional, rtol=1e-12, atol=0)
    import torch.autograd.forward_ad as fwad

    with fwad.dual_level():
        torch.testing.assert_close(fwad.unpack_dual(f(fwad.make_dual(x, t))).tangent, directional, rtol=1e-12, atol=0)
    torch.testing.assert_close(torch.func.jacfwd(f)(x), g, rtol=1e-12, atol=0)
    torch.testing.assert_close(torch.func.grad(f)(x), g, rtol=1e-14, atol=0)
    torch.testing.assert_close(torch.func.jacrev(f)(x), g, rtol=1e-14, atol=0)
    _, pullback = torch.func.vjp(f, x)
    torch.testing.assert_close(pullback(torch.ones((), dtype=torch.float64, device=x.device))[0], g, rtol=1e-14, atol=0)
    xs = torch.stack([x, 2 * x + 1, x.flip(0)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a "performance drop" warning: a per-sample loop
        mapped = torch.func.vmap(f)(xs)
        mapped_grad = torch.func.vmap(torch.func.grad(f))(xs)
    torch.testing.assert_close(mapped, torch.stack([f(z) for z in xs]), rtol=1e-14, atol=0)
    torch.testing.assert_close(mapped_grad[0], g, rtol=1e-14, atol=0)


def test_function_transforms_of_the_reference(backend):
    """grad, jacrev and vmap over every backend (the reference's NaN check is an op
    with a vmap rule: a data-dependent branch had stopped vmap)."""
    x = backend.on(torch.randn(40, 4, dtype=torch.float64))
    f = lambda z: hyperspherical_energy(z, "a1", reduction="sum", backend=backend.name)
    _, g = energy_and_grad(x, "a1", reduction="sum", backend=backend)
    torch.testing.assert_close(torch.func.grad(f)(x).cpu(), g, rtol=1e-13, atol=0)
    torch.testing.assert_close(torch.func.jacrev(f)(x).cpu(), g, rtol=1e-13, atol=0)
    xs = torch.stack([x, x * 3, -x])
    torch.testing.assert_close(torch.func.vmap(f)(xs), torch.stack([f(z) for z in xs]), rtol=1e-13, atol=0)
    bad = xs.clone()
    bad[2, 5, 1] = math.inf
    with pytest.raises(ValueError, match="NaN or Inf"):
        torch.func.vmap(f)(bad)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_energy_and_grad_in_one_call(reduction, backend):
    x = torch.randn(3, 45, 6, dtype=torch.float64)
    for power, squared_log in ((0, True), ("a2", False), ("g2", False)):
        kw = dict(half_space=True, reduction=reduction, squared_log=squared_log)
        e, g = energy_and_grad(x, power, backend=backend, **kw)
        e2, g2 = comhe_kernels.hyperspherical_energy_and_grad(backend.on(x), power, backend=backend.name, **kw)
        assert e2.dtype == torch.float64 and g2.dtype == x.dtype and g2.shape == x.shape
        assert_energy_close(e2.cpu(), e, torch.float64, num_pairs(45, True))
        assert_grad_close(g2.cpu(), g, torch.float64)


def test_meta_tensors_give_shapes():
    comhe_kernels._extension.load()
    x = torch.empty(3, 100, 7, device="meta")
    energy, grad = op(x)
    assert energy.shape == (3,) and energy.dtype == torch.float64 and grad.shape == x.shape


# ---- bad input --------------------------------------------------------------------


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: hyperspherical_energy([[1.0, 2.0]]), TypeError, "x must be a torch.Tensor"),
        (lambda: hyperspherical_energy(torch.ones(4, 3, dtype=torch.int64)), TypeError, "x must be a real floating"),
        (lambda: hyperspherical_energy(torch.ones(4, 3, dtype=torch.complex64)), TypeError, "x must be a real floating"),
        (lambda: hyperspherical_energy(torch.ones(4)), ValueError, r"x must have shape \(N, k\)"),
        (lambda: hyperspherical_energy(torch.ones(2, 2, 4, 3)), ValueError, r"x must have shape \(N, k\)"),
        (lambda: hyperspherical_energy(torch.ones(4, 0)), ValueError, "k >= 1"),
        (lambda: hyperspherical_energy(torch.ones(4, 3), power=-1), ValueError, "power must be finite and >= 0"),
        (lambda: hyperspherical_energy(torch.ones(4, 3), power=math.nan), ValueError, "power must be finite"),
        (lambda: hyperspherical_energy(torch.ones(4, 3), power="b2"), ValueError, "power must be a real"),
        (lambda: hyperspherical_energy(torch.ones(4, 3), power=True), TypeError, "power must be a real"),
        (lambda: hyperspherical_energy(torch.ones(4, 3), reduction="avg"), ValueError, "reduction must be one of"),
        (lambda: hyperspherical_energy(torch.ones(4, 3), backend="gpu"), ValueError, "backend must be one of"),
        (lambda: hyperspherical_energy(torch.ones(4, 3), backend="cuda"), ValueError, "needs tensors on cuda"),
        (lambda: hyperspherical_energy(torch.ones(4, 3), eps=-1e-4), ValueError, "eps must be finite and >= 0"),
        (lambda: hyperspherical_energy(torch.ones(4, 3), eps=math.inf), ValueError, "eps must be finite"),
        (lambda: hyperspherical_energy(torch.ones(4, 3), "a1", delta=0.0), ValueError, "delta must be > 0"),
        (lambda: hyperspherical_energy(torch.ones(4, 3), half_space=1), TypeError, "half_space must be a bool"),
    ],
)
def test_bad_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_input_is_an_error(bad, backend):
    """One message for every backend, naming the set and the row."""
    x = torch.randn(2, 30, 3)
    x[1, 17, 2] = bad
    with pytest.raises(ValueError) as info:
        hyperspherical_energy(backend.on(x), 1, backend=backend.name)
    assert str(info.value) == "x contains NaN or Inf (set 1, row 17); the energy is undefined"


@pytest.mark.parametrize("text, kind, s", [("1", "chordal", 1.0), (" 2.5 ", "chordal", 2.5), ("a1", "angular", 1.0),
                                           ("A0", "angular", 0.0), ("g2", "gaussian", 2.0), ("2e-1", "chordal", 0.2)])
def test_power_strings(text, kind, s):
    assert comhe_kernels._spec.parse_power(text) == (kind, s)


@pytest.mark.parametrize("text", ["1_0", "inf", "nan", "0x10", "a", "g", "a-1", "g0", "1 0", ""])
def test_bad_power_strings(text):
    """Decimal numbers only: float() alone took "1_0" as 10 and "inf"."""
    with pytest.raises(ValueError, match="power"):
        comhe_kernels._spec.parse_power(text)


def test_op_level_checks_name_the_argument():
    x = torch.randn(1, 5, 3)
    with pytest.raises(ValueError, match="kind must be 'chordal', 'angular' or 'gaussian'"):
        op(x, kind="euclid")
    with pytest.raises(ValueError, match="x must have shape \\(B, N, k\\)"):
        op(torch.randn(5, 3))
    with pytest.raises(TypeError, match="x must be float32 or float64"):
        op(x.half())
    with pytest.raises(ValueError, match="s must be finite and >= 0"):
        op(x, s=-2.0)
    with pytest.raises(ValueError, match="set 0, row 3"):
        x[0, 3, 0] = math.nan
        op(x)


# ---- the accuracy contract ---------------------------------------------------------


def _with_close_pairs(n, k, dtype):
    """Random points plus planted near-duplicates and near-antipodes, both as
    neighbours (the same tile: the kernels' masked diagonal blocks) and n / 2
    rows apart (different tiles: their full, unmasked blocks)."""
    x = torch.randn(n, k, dtype=torch.float64)
    m, h = n // 50, n // 2
    noise = lambda scale: scale * torch.randn(m, k, dtype=torch.float64)
    x[1 : 2 * m : 2] = x[0 : 2 * m : 2] + noise(1e-5)
    x[2 * m : 4 * m : 2] = -x[2 * m + 1 : 4 * m : 2] + noise(1e-6)
    x[h : h + m] = x[4 * m : 5 * m] + noise(1e-5)
    x[h + m : h + 2 * m] = -x[5 * m : 6 * m] + noise(1e-6)
    return x.to(dtype)


@pytest.mark.parametrize(
    "n, k, power, half_space, eps",
    [
        (16384, 3, 1, False, 0.0),
        (16384, 3, 1, False, 1e-4),
        (16384, 3, 2, True, 1e-4),
        (16384, 3, 2, True, 0.0),
        (16384, 3, "a2", False, 1e-4),
        (16384, 32, 1, False, 1e-4),
        (4096, 256, 0, True, 1e-4),
        (65536, 3, 1, False, 1e-4),
    ],
)
def test_float32_accuracy_contract(n, k, power, half_space, eps):
    """float32 input: energy within 1e-6 relative and gradient within 1e-3 of max |g|
    of the float64 evaluation of the same input, close pairs included. (The
    float64 evaluation is the kernel in float64, which the tests above tie to
    the reference.)"""
    _assert_float32_contract(_with_close_pairs(n, k, torch.float32), power, half_space, eps)


def _assert_float32_contract(x, power, half_space, eps):
    kw = dict(half_space=half_space, eps=eps, reduction="sum")
    e32, g32 = energy_and_grad(x, power, **kw)
    e64, g64 = energy_and_grad(x.double(), power, **kw)
    assert abs(e32.item() - e64.item()) <= 1e-6 * abs(e64.item())
    assert_grad_close(g32, g64, torch.float32)


def _with_near_clusters(n, k, size, d2):
    """Random unit vectors plus, at the start of every other 64-row tile, a
    cluster of `size` points at pairwise squared distance d2 around a centre
    (and one more n / 2 rows on): neighbouring rows with large weights to the
    same points, what the float32 Winograd pairs of the gradient GEMMs must
    scale for (see accumulate_gradient)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, k, dtype=torch.float64, generator=g)
    x = x / x.norm(dim=1, keepdim=True)
    r = math.sqrt(d2 / 2)  # unit directions orthogonal to the centre and nearly to each other
    for c0 in range(0, n // 2, 128):
        p = x[c0].clone()
        q = torch.randn(k, size + 1, dtype=torch.float64, generator=g)
        q = q - p[:, None] * (p @ q)
        q = q / q.norm(dim=0)
        x[c0 : c0 + size] = p + r * q[:, :size].T
        x[c0 + n // 2] = p + r * q[:, size]
    return x.float()


def test_float32_accuracy_near_clusters():
    """The contract with clusters of 8 points just outside the refinement radius
    (d2 = 1.05 2^-8, s = 1, eps = 0: weights ~2000). Unscaled Winograd pairs
    were 2e-2 of max |g| off here; scaled, 4.2e-5 (the plain GEMM: ~5e-5)."""
    _assert_float32_contract(_with_near_clusters(4096, 32, 8, 1.05 / 256), 1, False, 0.0)


# ---- one pair-math contract for every backend ----------------------------------

CONTRACT_POWERS = [0, 1, 2, 0.5, 3.5, "a0", "a1", "a2", "a1.5", "g2", "g0.5"]
# chord lengths d of the two points: coincident, near, far, near-antipodal, antipodal
CONTRACT_CHORDS = [0.0, 1e-6, 1e-3, 1.0, 2 - 1e-9, 2.0]


def _two_points(d, k):
    """Two unit vectors at chord d, turned by a fixed random rotation into k
    dimensions (k > 8 takes the kernels' gram path, k <= 8 the difference form)."""
    theta = 2 * math.asin(d / 2)
    pair = torch.zeros(2, k, dtype=torch.float64)
    pair[0, 0] = 1.0
    pair[1, 0], pair[1, 1] = math.cos(theta), math.sin(theta)
    if d == 2.0:
        pair[1] = -pair[0]
    q, _ = torch.linalg.qr(torch.randn(k, k, dtype=torch.float64, generator=torch.Generator().manual_seed(k)))
    return pair @ q


def _contract_tol(d, power, half_space, dtype):
    """float64: the bound for the closest of the pair and, in half space, its mirror."""
    if dtype != torch.float64:
        return None
    _, s = comhe_kernels._spec.parse_power(power)
    closest = min(d, math.sqrt(max(4 - d * d, 0.0))) if half_space else d
    return ill_conditioned(closest, s) if closest > 0 else None


@pytest.mark.parametrize("k", [3, 12])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_pair_math_contract(k, dtype, fused_backend):
    """Every fused backend's F, dF/dd2, dF/dd2p of every kind agree with the reference
    on a set of two points at chosen distances (each backend writes the pair
    math itself: pair_energy.h for C++ and CUDA, a copy in Triton)."""
    for d in CONTRACT_CHORDS:
        x = _two_points(d, k).to(dtype)
        for power in CONTRACT_POWERS:
            for half_space in (False, True):
                for eps in (0.0, 1e-4):
                    kw = dict(half_space=half_space, eps=eps, reduction="sum")
                    e_ref, g_ref = reference_energy_and_grad(x, power, **kw)
                    e, g = energy_and_grad(x, power, backend=fused_backend, **kw)
                    where = f"d={d} power={power} half_space={half_space} eps={eps}"
                    if not torch.isfinite(e_ref):  # coincident with eps = 0: the chordal energies are infinite
                        assert e == e_ref, where
                        continue
                    tol = _contract_tol(d, power, half_space, dtype)
                    assert_energy_close(e, e_ref, dtype, num_pairs(2, half_space), tol), where
                    assert_grad_close(g, g_ref, dtype, tol), where


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_pair_math_contract_across_sets(dtype, fused_cross_backend):
    """The same for the cross-set op: one point against one point."""
    for d in CONTRACT_CHORDS:
        x = _two_points(d, 5).to(dtype)
        for power in CONTRACT_POWERS:
            for half_space in (False, True):
                kw = dict(half_space=half_space, eps=1e-4, reduction="sum")
                e_ref, gx_ref, gy_ref = reference_cross_energy_and_grad(x[:1], x[1:], power, **kw)
                e, gx, gy = cross_energy_and_grad(x[:1], x[1:], power, backend=fused_cross_backend, **kw)
                tol = _contract_tol(d, power, half_space, dtype)
                assert_energy_close(e, e_ref, dtype, 2, tol), f"d={d} power={power} half_space={half_space}"
                assert_grad_close(gx, gx_ref, dtype, tol)
                assert_grad_close(gy, gy_ref, dtype, tol)


def _cluster_and_antipodes(k, radius):
    """100 float32 rows within ~radius of a direction d, 100 within ~radius of -d."""
    g = torch.Generator().manual_seed(k)
    d = torch.nn.functional.normalize(torch.randn(k, dtype=torch.float64, generator=g), dim=0)
    a = (d + radius / k**0.5 * torch.randn(100, k, dtype=torch.float64, generator=g)).float()
    b = (-d + radius / k**0.5 * torch.randn(100, k, dtype=torch.float64, generator=g)).float()
    return a, b


# Half space: a cluster against its antipodes, whose mirrored pairs are
# near-coincident (angle pi - theta of 1e-3 to 3e-2, above the kernels'
# refinement radius: k = 3, 5 take the difference form, k = 12 the gram form).
# Formed as 1 - theta in float32 the mirrored angle kept only ~1e-8 absolute,
# biased one way: the C++ kernels were 1.1-1.9x the contract off on the cross
# energies of the k = 3, 5 a1 and a1.5 cases, ~0.9x on the single sets; with
# the complement from the same arctangent (atan2_nonneg) <= 0.1x.
MIRROR_CASES = [(3, 4e-3, "a1"), (5, 1e-2, "a1"), (5, 1e-2, "a0"), (5, 3e-2, "a1.5"), (12, 1e-1, "a1")]


@pytest.mark.parametrize("k, radius, power", MIRROR_CASES)
def test_float32_angular_mirror_angle(k, radius, power, fused_backend):
    """The mirrored angle of near-antipodal pairs within one set (see MIRROR_CASES)."""
    x = torch.cat(_cluster_and_antipodes(k, radius))
    kw = dict(half_space=True, reduction="sum")
    e, g = energy_and_grad(x, power, backend=fused_backend, **kw)
    e_ref, g_ref = reference_energy_and_grad(x, power, **kw)
    assert_energy_close(e, e_ref, torch.float32, num_pairs(200, True))
    assert_grad_close(g, g_ref, torch.float32)


@pytest.mark.parametrize("k, radius, power", MIRROR_CASES)
def test_float32_angular_mirror_angle_across_sets(k, radius, power, fused_cross_backend):
    """The same between a cluster and its antipodes as two sets."""
    a, b = _cluster_and_antipodes(k, radius)
    kw = dict(half_space=True, reduction="sum")
    e, ga, gb = cross_energy_and_grad(a, b, power, backend=fused_cross_backend, **kw)
    e_ref, ga_ref, gb_ref = reference_cross_energy_and_grad(a, b, power, **kw)
    assert_energy_close(e, e_ref, torch.float32, num_cross_pairs(100, 100, True))
    assert_grad_close(ga, ga_ref, torch.float32)
    assert_grad_close(gb, gb_ref, torch.float32)


def test_first_call_inside_torch_compile(tmp_path):
    """A fresh process whose first call of the op is compiled (fullgraph)."""
    code = (
        "import torch, comhe_kernels as ck\n"
        "f = torch.compile(lambda x: ck.hyperspherical_energy(x, 1), fullgraph=True, backend='aot_eager')\n"
        "x = torch.randn(50, 8, dtype=torch.float64)\n"
        "assert torch.allclose(f(x), ck.reference.hyperspherical_energy(x, 1), rtol=1e-12, atol=0)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=600, cwd=tmp_path, env=child_env())


def test_a_build_lock_left_by_a_killed_build_does_not_block_the_next(tmp_path):
    """torch's FileBaton leaves its `lock` file when the building process is
    killed, and every later build of that folder then waited forever (a CI run
    stalled 90 minutes on one): the package's flock is released by the OS, and
    under it the leftover file is removed; a live builder still makes the
    next one wait."""
    from comhe_kernels._extension import _build_lock

    (tmp_path / "lock").touch()  # what a killed build leaves
    with _build_lock(tmp_path):
        assert not (tmp_path / "lock").exists()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'w'); "
         "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(1.5)", str(tmp_path / "build.lock")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        start = time.monotonic()
        with _build_lock(tmp_path):
            waited = time.monotonic() - start
    finally:
        holder.wait(timeout=30)
    assert waited > 0.5, waited  # waited for the live holder, then went on
