"""CUDA-specific checks of backend "cuda" (csrc/cuda): streams, the device
guard, bit-identical results, every precision mode against its bound, and
spot checks at N = 65536. The op tests themselves (every kind, reduction,
adversarial input, bad input) run on CUDA through the backend fixture of
tests/conftest.py. Everything here is skipped without a GPU and a build of
the extension with its CUDA kernels (the reason says which is missing).
"""

import pytest
import torch

import comhe_kernels
from comhe_kernels.ops import _registry

from conftest import assert_energy_close, assert_grad_close

_WHY = _registry.unavailable("cuda", "hyperspherical_energy", "cuda")
pytestmark = [pytest.mark.cuda, pytest.mark.skipif(_WHY is not None, reason=f"backend 'cuda': {_WHY}")]

# Bounds of the tensor-core modes on these inputs (relative energy, gradient
# over max |g|): provisional until the first GPU run measures them
# (csrc/tests/test_cuda_kernels.cu states the same ones). "auto", "ieee" and
# "tf32x3" meet the float32 contract (conftest's tolerances).
MODE_BOUNDS = {"tf32": (2e-4, 1e-2), "bf16": (2e-3, 5e-2)}


def _energy_and_grad(x, power=1, **kwargs):
    x = x.detach().clone().requires_grad_()
    e = comhe_kernels.hyperspherical_energy(x, power, reduction="sum", backend="cuda", **kwargs)
    (g,) = torch.autograd.grad(e, x)
    return e.detach(), g


def _points(n, k, seed=0, device="cuda", dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)


def test_build_info_names_cuda():
    info = comhe_kernels.build_info()
    assert "cuda" in info and info["cuda"] == torch.version.cuda, info


@pytest.mark.parametrize("k", [3, 40])
def test_bit_identical_run_to_run(k):
    x = _points(3000, k, seed=1)
    e1, g1 = _energy_and_grad(x, half_space=True)
    e2, g2 = _energy_and_grad(x, half_space=True)
    assert torch.equal(e1, e2) and torch.equal(g1, g2)


@pytest.mark.parametrize("k", [3, 40])
def test_current_stream(k):
    """The kernels run on the current stream: on a side stream, the result is
    complete once that stream is synchronized, and equals the default stream's."""
    x = _points(2000, k, seed=2)
    e_ref, g_ref = _energy_and_grad(x)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        e, g = _energy_and_grad(x)
    side.synchronize()
    assert torch.equal(e, e_ref) and torch.equal(g, g_ref)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
@pytest.mark.parametrize("k", [3, 40])
def test_device_guard(k):
    """Tensors on cuda:1 while cuda:0 is current: the kernels run on cuda:1."""
    x0 = _points(1500, k, seed=3, device="cuda:0")
    e0, g0 = _energy_and_grad(x0)
    with torch.cuda.device(0):
        e1, g1 = _energy_and_grad(x0.to("cuda:1"))
    assert e1.device == torch.device("cuda:1") and g1.device == torch.device("cuda:1")
    assert torch.equal(e1.cpu(), e0.cpu()) and torch.equal(g1.cpu(), g0.cpu())


@pytest.mark.parametrize("k", [12, 40, 256])
@pytest.mark.parametrize("precision", ["auto", "ieee", "tf32x3", "tf32", "bf16"])
def test_precision_modes(precision, k):
    """Every mode against its bound (the float32 contract for auto, ieee and
    tf32x3), float64 as the reference, close pairs included."""
    x = _points(1200, k, seed=4)
    x[1::50] = x[0] + 1e-3 * x[1::50]  # near duplicates of row 0: the refined pairs
    e, g = _energy_and_grad(x, precision=precision)
    e_ref, g_ref = _energy_and_grad(x.double())
    pairs = 1200 * 1199 // 2
    if precision in MODE_BOUNDS:
        tol_e, tol_g = MODE_BOUNDS[precision]
        assert abs(e.item() - e_ref.item()) <= tol_e * (abs(e_ref.item()) + pairs)
        assert (g.double() - g_ref).abs().max().item() <= tol_g * max(g_ref.abs().max().item(), 1.0)
    else:
        assert_energy_close(e.cpu(), e_ref.cpu(), torch.float32, pairs)
        assert_grad_close(g.cpu(), g_ref.cpu(), torch.float32)


def test_float64_rejects_tensor_core_modes():
    with pytest.raises(ValueError, match="float64"):
        comhe_kernels.hyperspherical_energy(_points(10, 20, dtype=torch.float64), backend="cuda", precision="tf32")


@pytest.mark.parametrize("k", [3, 32])
def test_large_n_spot_check(k):
    """N = 65536 in float32 (the default precision): the energy against the
    float64 kernel, the gradient of sampled rows against the float64
    reference of that row against all others (the cross-set energy of
    x_i and the rest, whose gradient in x_i is the op's)."""
    n = 65536
    x = _points(n, k, seed=5)
    e, g = _energy_and_grad(x)
    e64, _ = _energy_and_grad(x.double())
    assert_energy_close(e.cpu(), e64.cpu(), torch.float32, n * (n - 1) // 2)
    scale = None
    for i in (0, 1, 12345, n - 1):
        xi = x[i : i + 1].double().cpu().requires_grad_()
        rest = torch.cat([x[:i], x[i + 1 :]]).double().cpu()
        ei = comhe_kernels.cross_energy(xi, rest, 1, reduction="sum", backend="reference")
        (gi,) = torch.autograd.grad(ei, xi)
        scale = gi.abs().max().item() if scale is None else max(scale, gi.abs().max().item())
        err = (g[i].double().cpu() - gi[0]).abs().max().item()
        assert err <= 1e-3 * max(scale, 1.0), (i, err, scale)


def test_cross_energy_large_spot_check():
    x, y = _points(20000, 3, seed=6), _points(30000, 3, seed=7)
    e = comhe_kernels.cross_energy(x, y, 1, reduction="sum", backend="cuda")
    e64 = comhe_kernels.cross_energy(x.double(), y.double(), 1, reduction="sum", backend="cuda")
    assert_energy_close(e.cpu(), e64.cpu(), torch.float32, 20000 * 30000)


def test_opcheck_cuda():
    x = _points(50, 5, seed=8).reshape(2, 25, 5)
    torch.library.opcheck(torch.ops.comhe.hyperspherical_energy.default, (x, "chordal", 1.0, False, 1e-4, 1e-4, True))
    y = _points(30, 5, seed=9).reshape(2, 15, 5)
    torch.library.opcheck(torch.ops.comhe.cross_energy.default, (x, y, "angular", 1.0, True, 1e-4, 1e-4, True))


def test_nan_names_the_row_on_cuda():
    x = _points(40, 40, seed=10).reshape(2, 20, 40)
    x[1, 7, 3] = float("nan")
    with pytest.raises(ValueError, match=r"set 1, row 7"):
        torch.ops.comhe.hyperspherical_energy(x, "chordal", 1.0, False, 1e-4, 1e-4, True)
