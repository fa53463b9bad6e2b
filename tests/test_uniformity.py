"""The uniformity loss (the op's Gaussian kind under a log) against Wang and
Isola's published formula, and MHS against brute force.

Tolerances: float64 1e-10 relative (the op and torch.pdist agree to ~1e-13;
room for the different summation orders at N <= 97). float32: the op's
accuracy contract (conftest.py), carried through the log: the energy's
1e-6 relative error is 1e-6 absolute in L = log(E / pairs), and the
gradient dL/dx = (dE/dx) / E keeps the gradient's 1e-3 of max |g|.
"""

import math

import pytest
import torch
import torch.nn.functional as F

import comhe_kernels
from comhe_kernels.uniformity import min_pairwise_distance, uniformity_loss, wang_isola_uniformity

RTOL = 1e-10


def close(a, b, rtol=RTOL):
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    return bool(((a - b).abs() <= rtol * (b.abs() + 1)).all())


def loss_and_grad(fn, x):
    x = x.detach().clone().requires_grad_()
    loss = fn(x)
    (g,) = torch.autograd.grad(loss.sum(), x)
    return loss.detach(), g


@pytest.mark.parametrize("n,k", [(2, 3), (3, 1), (50, 6), (97, 40)])  # k = 40: the kernel's gram path
@pytest.mark.parametrize("t", [0.5, 2.0, 10.0, 40.0])  # 40: computed in float64
def test_equals_wang_isola_with_eps_0(backend, n, k, t):
    x = backend.on(torch.randn(n, k, dtype=torch.float64))
    loss, g = loss_and_grad(lambda x: uniformity_loss(x, t, eps=0.0, backend=backend.name), x)
    ref, g_ref = loss_and_grad(lambda x: wang_isola_uniformity(x, t), x)
    assert loss.dtype == torch.float64 and loss.shape == ()
    assert close(loss, ref), (loss.item(), ref.item())
    assert close(g, g_ref, 1e-9)


@pytest.mark.parametrize("t", [2.0, 8.0, 50.0])
def test_float32_meets_the_contract(fused_backend, t):
    # t = 50 with d2 ~ 2: exp(-100) = 4e-44 per pair, below float32's normal
    # range, where the float32 formula itself keeps few bits.
    x = torch.randn(300, 24)
    loss, g = loss_and_grad(lambda x: uniformity_loss(fused_backend.on(x), t, eps=0.0), x)
    ref, g_ref = loss_and_grad(lambda x: wang_isola_uniformity(x, t), x.double())
    assert loss.dtype == torch.float32
    assert abs(loss.item() - ref.item()) <= 1e-6 * max(1.0, abs(ref.item()))
    assert (g.double() - g_ref).abs().max() <= 1e-3 * g_ref.abs().max()


def test_default_eps_normalizes_as_the_op():
    x = torch.randn(40, 5, dtype=torch.float64)
    u = x / torch.sqrt(x.square().sum(1, keepdim=True) + 1e-4)
    a = 1e-4 / (x.square().sum(1) + 1e-4)
    d2 = torch.cdist(u, u).square() + a[:, None] + a[None, :]
    iu = torch.triu_indices(40, 40, 1)
    ref = torch.exp(-2 * d2[iu[0], iu[1]]).mean().log()
    assert close(uniformity_loss(x), ref)


def test_batched_sets_are_one_call_and_each_their_own_loss(monkeypatch):
    x = torch.randn(3, 30, 12, dtype=torch.float64)
    shapes = []
    op = comhe_kernels.uniformity.hyperspherical_energy

    def counted(x, *args, **kwargs):
        shapes.append(tuple(x.shape))
        return op(x, *args, **kwargs)

    monkeypatch.setattr(comhe_kernels.uniformity, "hyperspherical_energy", counted)
    loss, g = loss_and_grad(lambda x: uniformity_loss(x, 2.0, eps=0.0), x)
    assert shapes == [(3, 30, 12)] and loss.shape == (3,)
    for b in range(3):
        ref, g_ref = loss_and_grad(lambda x: wang_isola_uniformity(x, 2.0), x[b])
        assert close(loss[b], ref)
        assert close(g[b], g_ref, 1e-9)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_16_bit_input_is_computed_in_float32(dtype):
    x = torch.randn(64, 16).to(dtype)
    loss, g = loss_and_grad(lambda x: uniformity_loss(x, eps=0.0), x)
    ref, g_ref = loss_and_grad(lambda x: uniformity_loss(x, eps=0.0), x.float())
    assert loss.dtype == dtype and g.dtype == dtype
    assert loss == ref.to(dtype)
    assert (g.float() - g_ref).abs().max() <= 2 ** -8 * g_ref.abs().max()


def test_large_t_is_exact_while_some_pair_is_in_range():
    # Two close points (d2 = 0.25) among spread ones (d2 >= 2.5): at t = 600
    # the far pairs' exp(-t d2) underflows to 0, the close pair's (exp(-150))
    # carries the mean, and the loss is its log-sum-exp value.
    theta = torch.tensor([0.0, 0.5, 2.0, 4.0], dtype=torch.float64)
    x = torch.stack([theta.cos(), theta.sin()], 1)
    i, j = torch.triu_indices(4, 4, 1)
    d2 = (x[i] - x[j]).square().sum(1)
    for t in (20.0, 600.0):
        expected = torch.logsumexp(-t * d2, 0) - math.log(6)
        loss, g = loss_and_grad(lambda x: uniformity_loss(x, t, eps=0.0), x)
        assert close(loss, expected), (t, loss.item(), expected.item())
        assert bool(torch.isfinite(g).all())
        loss32 = uniformity_loss(x.float(), t, eps=0.0)  # computed in float64 for t > 16
        assert abs(loss32.item() - expected.item()) <= 1e-6 * abs(expected.item())
    assert wang_isola_uniformity(x.float(), 600.0).item() == -math.inf  # the published formula in float32: log 0


@pytest.mark.parametrize("t", [240.0, 400.0])  # 3 t = 720: subnormal sums; 1200: 0
def test_every_pair_beyond_float64s_exp_range_is_an_error(t):
    theta = torch.tensor([0.0, 2 * math.pi / 3, 4 * math.pi / 3], dtype=torch.float64)
    x = torch.stack([theta.cos(), theta.sin()], 1)  # d2 = 3 for every pair
    near = torch.stack([torch.tensor([0.0, 0.1, 1.0]).cos(), torch.tensor([0.0, 0.1, 1.0]).sin()], 1).double()
    with pytest.raises(ValueError, match="below float64's normal range for every pair of set 1"):
        uniformity_loss(torch.stack([near, x]), t, eps=0.0)
    assert bool(torch.isfinite(uniformity_loss(x, 230.0, eps=0.0)))  # 3 t = 690: in range


def test_gradcheck():
    x = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: uniformity_loss(x, 2.0, eps=0.0), (x,))


def test_bad_input():
    x = torch.randn(10, 3)
    for t in (0, -1.0, math.inf, math.nan, True, "2"):
        with pytest.raises(ValueError, match="t must be a finite number > 0"):
            uniformity_loss(x, t)
    with pytest.raises(ValueError, match="N >= 2"):
        uniformity_loss(x[:1])
    with pytest.raises(ValueError, match="x must have shape"):
        uniformity_loss(x[0])
    with pytest.raises(ValueError, match="eps must be finite and >= 0"):
        uniformity_loss(x, eps=-1.0)
    with pytest.raises(ValueError, match="backend must be one of"):
        uniformity_loss(x, backend="gpu")
    bad = x.clone()
    bad[4, 1] = math.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        uniformity_loss(bad)


@pytest.mark.parametrize("half_space", [False, True])
def test_min_pairwise_distance_equals_brute_force(half_space):
    x = torch.randn(40, 5, dtype=torch.float64, requires_grad=True)
    d = min_pairwise_distance(x, half_space=half_space, eps=0.0, chunk_size=6)
    u = F.normalize(x, dim=1)
    pts = torch.cat([u, -u]) if half_space else u
    dist = torch.cdist(pts, pts) + 10 * torch.eye(len(pts), dtype=x.dtype)
    assert close(d, dist.min())
    (g,) = torch.autograd.grad(d, x)
    assert int((g.abs().sum(1) > 0).sum()) == 2  # the subgradient of a min: the closest pair only


def test_vmap_and_compile_give_the_eager_values():
    x = torch.randn(3, 40, 8, requires_grad=True)
    eager = uniformity_loss(x, 2.0, eps=0.0)
    mapped = torch.vmap(lambda y: uniformity_loss(y, 2.0, eps=0.0))(x)
    compiled = torch.compile(lambda y: uniformity_loss(y, 2.0, eps=0.0), fullgraph=True)(x)
    assert torch.equal(mapped, eager) and torch.equal(compiled, eager)
    (g,) = torch.autograd.grad(compiled.sum(), x)
    (g_eager,) = torch.autograd.grad(eager.sum(), x)
    assert torch.equal(g, g_eager)
