"""The cross-set op against the reference and against the one-set op: every
kind, half-space, reductions, ragged and empty sides, close pairs between the
sets, autograd, torch.compile, bad input.

Tolerances live in conftest.py.
"""

import math
import warnings

import pytest
import torch
from conftest import (
    assert_energy_close,
    assert_grad_close,
    cross_energy_and_grad,
    reference_cross_energy_and_grad,
)

import comhe_kernels
from comhe_kernels import cross_energy, hyperspherical_energy, num_cross_pairs

POWERS = [0, 1, 2, 0.5, 3.5, "a0", "a1", "a2", "a1.5", "g2", "g0.5"]
SIZES = [(1, 1), (2, 3), (19, 97), (130, 7), (64, 65)]


@pytest.mark.parametrize("power", POWERS)
@pytest.mark.parametrize("half_space", [False, True])
@pytest.mark.parametrize("n, m", SIZES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matches_reference(power, half_space, n, m, dtype, fused_cross_backend):
    k = 3 if n > 100 else 5
    x, y = torch.randn(2, n, k, dtype=dtype), torch.randn(2, m, k, dtype=dtype)
    kw = dict(half_space=half_space, reduction="none")
    e, gx, gy = cross_energy_and_grad(x, y, power, backend=fused_cross_backend, **kw)
    e_ref, gx_ref, gy_ref = reference_cross_energy_and_grad(x, y, power, **kw)
    assert e.dtype == dtype and gx.dtype == dtype and gy.dtype == dtype
    assert_energy_close(e, e_ref, dtype, num_cross_pairs(n, m, half_space))
    assert_grad_close(gx, gx_ref, dtype)
    assert_grad_close(gy, gy_ref, dtype)


@pytest.mark.parametrize("k", [1, 3, 8, 9, 40, 129])
@pytest.mark.parametrize("power", [1, "a2", "g2"])
def test_the_union_splits_into_sets_and_cross(k, power, cross_backend):
    """E(X u Y) = E(X) + E(Y) + cross(X, Y), and with half_space (the set
    [X; -X; Y; -Y]) E_h(X) + E_h(Y) + 2 cross_h(X, Y): the identity the
    distributed energy is built on, through the same backend."""
    x, y = torch.randn(70, k, dtype=torch.float64), torch.randn(45, k, dtype=torch.float64)
    name = cross_backend.name
    xb, yb = cross_backend.on(x), cross_backend.on(y)
    for half_space in (False, True):
        kw = dict(half_space=half_space, reduction="sum", backend=name)
        whole = hyperspherical_energy(torch.cat([xb, yb]), power, **kw)
        parts = hyperspherical_energy(xb, power, **kw) + hyperspherical_energy(yb, power, **kw)
        parts = parts + (2 if half_space else 1) * cross_energy(xb, yb, power, **kw)
        torch.testing.assert_close(parts.cpu(), whole.cpu(), rtol=1e-12, atol=0)


@pytest.mark.parametrize("power", [1, 2, "a1", "g2"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_close_coincident_and_antipodal_pairs_between_the_sets(power, dtype, fused_cross_backend):
    """y holds near copies, exact copies, near and exact antipodes of rows of x."""
    x = torch.randn(50, 4, dtype=torch.float64)
    y = torch.randn(40, 4, dtype=torch.float64)
    y[0] = x[0] + 1e-7
    y[1] = x[1] * (1 + 1e-9)
    y[2] = -x[2] + 1e-8
    y[3] = -x[3]
    y[4] = x[4]
    y[5] = 0
    x, y = x.to(dtype), y.to(dtype)
    for half_space in (False, True):
        kw = dict(half_space=half_space, reduction="sum")
        e, gx, gy = cross_energy_and_grad(x, y, power, backend=fused_cross_backend, **kw)
        e_ref, gx_ref, gy_ref = reference_cross_energy_and_grad(x, y, power, **kw)
        assert torch.isfinite(e) and torch.isfinite(gx).all() and torch.isfinite(gy).all()
        assert_energy_close(e, e_ref, dtype, num_cross_pairs(50, 40, half_space))
        assert_grad_close(gx, gx_ref, dtype)
        assert_grad_close(gy, gy_ref, dtype)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("batched", [False, True])
def test_reductions(reduction, batched, cross_backend):
    shape = (3,) if batched else ()
    x = torch.randn(*shape, 20, 6, dtype=torch.float64)
    y = torch.randn(*shape, 13, 6, dtype=torch.float64)
    for half_space in (False, True):
        kw = dict(half_space=half_space, backend=cross_backend.name)
        e = cross_energy(cross_backend.on(x), cross_backend.on(y), 2, reduction=reduction, **kw).cpu()
        per_set = cross_energy(cross_backend.on(x), cross_backend.on(y), 2, reduction="none", **kw).cpu()
        assert e.shape == ((3,) if batched and reduction == "none" else ())
        if reduction == "sum":
            torch.testing.assert_close(e, per_set.sum(), rtol=1e-14, atol=0)
        if reduction == "mean":
            pairs = (3 if batched else 1) * num_cross_pairs(20, 13, half_space)
            torch.testing.assert_close(e, per_set.sum() / pairs, rtol=1e-14, atol=0)


def test_cross_is_symmetric():
    x, y = torch.randn(2, 30, 5, dtype=torch.float64), torch.randn(2, 17, 5, dtype=torch.float64)
    for power in (1, "a1", "g2"):
        for half_space in (False, True):
            kw = dict(half_space=half_space, reduction="none")
            torch.testing.assert_close(cross_energy(x, y, power, **kw), cross_energy(y, x, power, **kw), rtol=1e-13, atol=0)


def test_an_empty_side_gives_zero(cross_backend):
    for n, m in ((0, 5), (5, 0), (0, 0)):
        x = cross_backend.on(torch.randn(2, n, 3)).requires_grad_()
        y = cross_backend.on(torch.randn(2, m, 3)).requires_grad_()
        e = cross_energy(x, y, 1, reduction="none", backend=cross_backend.name)
        assert e.tolist() == [0.0, 0.0]
        assert cross_energy(x, y, 1, backend=cross_backend.name).item() == 0.0
        e.sum().backward()
        assert x.grad.shape == x.shape and y.grad.shape == y.shape
        assert not x.grad.any() and not y.grad.any()


def test_gradcheck(cross_backend):
    x = cross_backend.on(torch.randn(2, 9, 4, dtype=torch.float64)).requires_grad_()
    y = cross_backend.on(torch.randn(2, 7, 4, dtype=torch.float64)).requires_grad_()
    for power in (1, "a2", "g1"):
        fn = lambda a, b: cross_energy(a, b, power, half_space=True, reduction="none", backend=cross_backend.name)
        assert torch.autograd.gradcheck(fn, (x, y), eps=1e-6, atol=1e-7, rtol=1e-6)


def test_and_grad_equals_autograd(cross_backend):
    x, y = torch.randn(2, 40, 6, dtype=torch.float64), torch.randn(2, 25, 6, dtype=torch.float64)
    for reduction in ("mean", "sum", "none"):
        kw = dict(half_space=True, reduction=reduction, backend=cross_backend)
        e, gx, gy = cross_energy_and_grad(x, y, "a1", **kw)
        kw["backend"] = cross_backend.name
        e2, gx2, gy2 = comhe_kernels.cross_energy_and_grad(cross_backend.on(x), cross_backend.on(y), "a1", **kw)
        # the same sums, scaled before or after autograd's chain rule: float64 rounding
        assert_energy_close(e2.cpu(), e, torch.float64, num_cross_pairs(40, 25, True))
        assert_grad_close(gx2.cpu(), gx, torch.float64)
        assert_grad_close(gy2.cpu(), gy, torch.float64)


def test_forward_mode_and_function_transforms(fused_cross_backend):
    """jvp (= grad . tangent), jacrev/jacfwd of the fused op, vmap as one call."""
    b = fused_cross_backend
    x, y = b.on(torch.randn(25, 3, dtype=torch.float64)), b.on(torch.randn(18, 3, dtype=torch.float64))
    tx, ty = torch.randn_like(x), torch.randn_like(y)
    f = lambda a, c: cross_energy(a, c, 1, reduction="sum", backend=b.name)
    _, gx, gy = cross_energy_and_grad(x, y, 1, reduction="sum", backend=b)
    gx, gy = b.on(gx), b.on(gy)
    _, tangent = torch.func.jvp(f, (x, y), (tx, ty))
    torch.testing.assert_close(tangent, (gx * tx).sum() + (gy * ty).sum(), rtol=1e-12, atol=0)
    jx, jy = torch.func.jacrev(f, argnums=(0, 1))(x, y)
    torch.testing.assert_close(jx, gx, rtol=1e-14, atol=0)
    torch.testing.assert_close(jy, gy, rtol=1e-14, atol=0)
    torch.testing.assert_close(torch.func.jacfwd(f)(x, y), gx, rtol=1e-12, atol=0)
    xs, ys = torch.stack([x, 2 * x, -x]), torch.stack([y, y, y.flip(0)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "performance drop" warning: the op's own vmap rule
        mapped = torch.func.vmap(f)(xs, ys)
    torch.testing.assert_close(mapped, torch.stack([f(xs[i], ys[i]) for i in range(3)]), rtol=1e-14, atol=0)


def test_torch_compile_fullgraph(cross_backend):
    if cross_backend.device == "cpu" and cross_backend.name == "triton":
        pytest.skip("torch.compile over a Triton op on CPU tensors fails in fake-tensor tracing: a GPU test")
    torch._dynamo.reset()  # the code object below is compiled anew for each case, within the recompile limit
    x = cross_backend.on(torch.randn(30, 5)).requires_grad_()
    y = cross_backend.on(torch.randn(20, 5)).requires_grad_()

    for dynamic in (False, True):

        @torch.compile(fullgraph=True, dynamic=dynamic, backend="aot_eager")
        def loss(a, c):
            return cross_energy(a, c, 2, half_space=True, backend=cross_backend.name) + a.square().mean()

        out = loss(x, y)
        grads = torch.autograd.grad(out, (x, y))
        expected = cross_energy(x, y, 2, half_space=True, backend=cross_backend.name) + x.square().mean()
        grads_ref = torch.autograd.grad(expected, (x, y))
        torch.testing.assert_close(out, expected)
        for g, g_ref in zip(grads, grads_ref):
            torch.testing.assert_close(g, g_ref)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: cross_energy(torch.ones(4, 3), [[1.0]]), TypeError, "y must be a torch.Tensor"),
        (lambda: cross_energy(torch.ones(4, 3), torch.ones(4, 2)), ValueError, "same k"),
        (lambda: cross_energy(torch.ones(2, 4, 3), torch.ones(3, 4, 3)), ValueError, "same number of sets B"),
        (lambda: cross_energy(torch.ones(4, 3), torch.ones(2, 4, 3)), ValueError, r"both be \(N, k\)"),
        (lambda: cross_energy(torch.ones(4, 3), torch.ones(4, 3, dtype=torch.float64)), TypeError, "same dtype"),
        (lambda: cross_energy(torch.ones(4, 3), torch.ones(4, 3, device="meta")), ValueError, "same device"),
        (lambda: cross_energy(torch.ones(4, 3), torch.ones(4, 0)), ValueError, "y must have k >= 1"),
        (lambda: cross_energy(torch.ones(4), torch.ones(4, 3)), ValueError, r"x must have shape \(N, k\)"),
        (lambda: cross_energy(torch.ones(4, 3), torch.ones(4, 3, dtype=torch.int32)), TypeError, "y must be a real"),
        (lambda: cross_energy(torch.ones(4, 3), torch.ones(4, 3), power="g0"), ValueError, "t > 0"),
        (lambda: cross_energy(torch.ones(4, 3), torch.ones(4, 3), reduction="avg"), ValueError, "reduction must be"),
        (lambda: cross_energy(torch.ones(4, 3), torch.ones(4, 3), backend="gpu"), ValueError, "backend must be one of"),
    ],
)
def test_bad_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize("which", ["x", "y"])
def test_non_finite_input_names_the_set(which, cross_backend):
    x, y = torch.randn(2, 30, 3), torch.randn(2, 20, 3)
    (x if which == "x" else y)[1, 7, 2] = math.nan
    with pytest.raises(ValueError, match=f"{which} contains NaN or Inf \\(set 1, row 7\\)"):
        cross_energy(cross_backend.on(x), cross_backend.on(y), 1, backend=cross_backend.name)
