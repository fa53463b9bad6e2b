"""The CPU kernel's own tests (csrc/cpu): the cross-set op on each of the
kernel's code paths, its float32 contract at full size, thread-count
independence, opcheck. The op tests over every backend are in
test_hyperspherical_energy.py and test_cross_energy.py; tolerances in conftest.py.
"""

import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import (
    assert_energy_close,
    assert_grad_close,
    child_env,
    energy_and_grad,
    ill_conditioned,
    reference_cross_energy_and_grad,
    reference_energy_and_grad,
    requires_cpu_kernel,
)

import comhe_kernels
from comhe_kernels import cross_energy_and_grad, num_cross_pairs, num_pairs

pytestmark = requires_cpu_kernel


def cpu_cross(x, y, power, **kw):
    return cross_energy_and_grad(x, y, power, reduction="sum", backend="cpu", **kw)


# k -> the kernel's path: the small-k path's K = 3 (k <= 3), 4, 8 (5 to 8), the
# gram path (k > 8; in float32 with Winograd pairs over k padded to 4)
COORDINATE_PATHS = [1, 2, 3, 4, 5, 8, 9, 12, 40]


@pytest.mark.parametrize("k", COORDINATE_PATHS)
@pytest.mark.parametrize("power, half_space", [(1, False), (2, True), ("a1", True), ("g2", False)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cross_energy_paths_match_reference(k, power, half_space, dtype):
    """Ragged sizes: partial vectors and padded tiles on both sides (67 = 64 + 3
    rows, 130 = 2 x 64 + 2), batched, with a near copy and a near antipode of
    rows of x in y: pairs for the float64 refinement in both paths, at chords
    ~1e-3 that float64 input still determines to 1e-12 (conftest.ill_conditioned)."""
    x = torch.randn(2, 67, k, dtype=torch.float64)
    y = torch.randn(2, 130, k, dtype=torch.float64)
    y[:, 5] = x[:, 66] + 1e-3 * torch.randn(2, k, dtype=torch.float64)
    y[:, 129] = -x[:, 3] + 1e-3 * torch.randn(2, k, dtype=torch.float64)
    x, y = x.to(dtype), y.to(dtype)
    kw = dict(half_space=half_space, reduction="none")
    e, gx, gy = cross_energy_and_grad(x, y, power, backend="cpu", **kw)
    e_ref, gx_ref, gy_ref = reference_cross_energy_and_grad(x, y, power, **kw)
    assert_energy_close(e, e_ref, dtype, num_cross_pairs(67, 130, half_space))
    assert_grad_close(gx, gx_ref, dtype)
    assert_grad_close(gy, gy_ref, dtype)


def _close_pairs_between(n, m, k, exact):
    """x, y random, y holding near copies and near antipodes of rows of x (and
    with exact, exact ones): some in the same tile position as their partner
    (j = i), some far from it (j = i + m / 2), so that both the masked and the
    unmasked vectors of the kernels meet them."""
    x = torch.randn(n, k, dtype=torch.float64)
    y = torch.randn(m, k, dtype=torch.float64)
    c, h = min(n, m) // 50, m // 2
    noise = lambda scale: scale * torch.randn(c, k, dtype=torch.float64)
    y[0:c] = x[0:c] + noise(1e-5)
    y[c : 2 * c] = -x[c : 2 * c] + noise(1e-6)
    y[h : h + c] = x[2 * c : 3 * c] + noise(1e-5)
    y[h + c : h + 2 * c] = -x[3 * c : 4 * c] + noise(1e-6)
    if exact:
        y[h + 2 * c] = x[4 * c]
        y[h + 2 * c + 1] = -x[4 * c + 1]
    return x.float(), y.float()


@pytest.mark.parametrize(
    "k, power, half_space, eps",
    [
        (3, 1, False, 0.0),
        (3, 2, True, 1e-4),
        (3, "a1", True, 1e-4),
        (32, 1, False, 1e-4),
        (32, 2, True, 1e-4),
    ],
)
def test_cross_energy_float32_contract(k, power, half_space, eps):
    """float32 input, N = M = 16384: energy within 1e-6 relative and gradients
    within 1e-3 of max |g| of the float64 evaluation of the same input, close
    and antipodal pairs between the sets included (exact copies too where
    eps > 0 keeps their energy finite)."""
    x, y = _close_pairs_between(16384, 16384, k, exact=eps > 0)
    kw = dict(half_space=half_space, eps=eps)
    e32, gx32, gy32 = cpu_cross(x, y, power, **kw)
    e64, gx64, gy64 = cpu_cross(x.double(), y.double(), power, **kw)
    assert abs(e32.item() - e64.item()) <= 1e-6 * abs(e64.item())
    assert_grad_close(gx32, gx64, torch.float32)
    assert_grad_close(gy32, gy64, torch.float32)


@pytest.mark.parametrize("k", [3, 20])
@pytest.mark.parametrize("n, m", [(2850, 1000), (1000, 2850)])
def test_cross_energy_independent_of_thread_count(k, n, m):
    """45 and 16 tiles: super-tile grids of unequal sides in both orders, so that
    tasks wait for the previous round of the larger set's super-tiles (the
    Latin rectangle of schedule.h); 3 threads: more than this machine's cores."""
    x, y = torch.randn(2, n, k), torch.randn(2, m, k)
    threads = torch.get_num_threads()
    results = []
    try:
        for t in (1, 2, 3):
            torch.set_num_threads(t)
            results.append(cpu_cross(x, y, 1, half_space=True))
    finally:
        torch.set_num_threads(threads)
    for e, gx, gy in results[1:]:
        assert torch.equal(e, results[0][0]) and torch.equal(gx, results[0][1]) and torch.equal(gy, results[0][2])


@pytest.mark.parametrize(
    "args",
    [
        (torch.randn(2, 37, 3), torch.randn(2, 20, 3), "chordal", 1.0, False, 1e-4, 1e-4, True),
        (torch.randn(1, 70, 19, dtype=torch.float64), torch.randn(1, 9, 19, dtype=torch.float64), "angular", 2.0, True,
         0.0, 1e-4, True),
        (torch.randn(3, 5, 2), torch.randn(3, 0, 2), "chordal", 0.0, True, 1e-4, 1e-4, False),
        (torch.randn(2, 9, 4, dtype=torch.float64, requires_grad=True),
         torch.randn(2, 6, 4, dtype=torch.float64, requires_grad=True), "gaussian", 2.0, False, 1e-4, 1e-4, True),
    ],
)
def test_cross_energy_opcheck(args):
    torch.library.opcheck(torch.ops.comhe.cross_energy.default, args)


def test_cross_energy_op_level_checks_name_the_argument():
    op = torch.ops.comhe.cross_energy.default
    x, y = torch.randn(2, 5, 3), torch.randn(2, 4, 3)
    args = ("chordal", 1.0, False, 1e-4, 1e-4, True)
    with pytest.raises(ValueError, match="comhe::cross_energy: y must have shape \\(B, N, k\\)"):
        op(x, y[0], *args)
    with pytest.raises(ValueError, match="the same number of sets B"):
        op(x, y[:1], *args)
    with pytest.raises(ValueError, match="the same k"):
        op(x, y[..., :2], *args)
    with pytest.raises(TypeError, match="the same dtype"):
        op(x, y.double(), *args)
    with pytest.raises(TypeError, match="x must be float32 or float64"):
        op(x.half(), y.half(), *args)
    with pytest.raises(ValueError, match="precision must be 'auto' or 'ieee'"):
        op(x, y, *args, "tf32")
    y[1, 2, 0] = float("inf")
    with pytest.raises(ValueError, match="y contains NaN or Inf \\(set 1, row 2\\)"):
        op(x, y, *args)


@pytest.mark.parametrize("k", [3, 5, 20])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_only_energy_is_the_energy_with_the_gradient(k, dtype):
    """Bitwise, for both ops, every kind, power case and half_space: the pair
    loops compute the derivatives even where the call does not want them, so
    that the compiler forms the same FMAs in the energy (simd::compute_always;
    without it half-space s = 1 and angular energies differed in the last bits
    on every ISA)."""
    x = torch.randn(2, 150, k, dtype=dtype)
    x[:, 1] = x[:, 0] + 1e-6  # a refined pair
    y = torch.randn(2, 70, k, dtype=dtype)
    one, cross = torch.ops.comhe.hyperspherical_energy.default, torch.ops.comhe.cross_energy.default
    for kind, s in [("chordal", 0.0), ("chordal", 1.0), ("chordal", 2.0), ("chordal", 1.5), ("angular", 0.0),
                    ("angular", 1.0), ("angular", 2.0), ("angular", 1.5), ("gaussian", 2.0)]:
        for half_space in (False, True):
            args = (kind, s, half_space, 1e-4, 1e-4)
            assert torch.equal(one(x, *args, False)[0], one(x, *args, True)[0]), (kind, s, half_space)
            assert torch.equal(cross(x, y, *args, False)[0], cross(x, y, *args, True)[0]), (kind, s, half_space)


# The child of test_ctrl_c_interrupts_a_long_call: each op call takes ~15 s
# uninterrupted on the 2 cores of the CI machine (N = 250000, k = 3: 3.1e10 pairs;
# 150000 took 5.4 s here).
_LONG_CALLS = """
import torch, comhe_kernels
comhe_kernels.available_backends("hyperspherical_energy", "cpu")  # loads the ops
x = torch.randn(1, 250000, 3)
calls = [lambda: torch.ops.comhe.hyperspherical_energy.default(x, "chordal", 1.0, False, 1e-4, 1e-4, True),
         lambda: torch.ops.comhe.cross_energy.default(x, x.flip(1), "angular", 1.0, True, 1e-4, 1e-4, False)]
for name, call in zip(["hyperspherical_energy", "cross_energy"], calls):
    print("calling", name, flush=True)
    try:
        call()
        print("finished", name, flush=True)
    except KeyboardInterrupt:
        print("KeyboardInterrupt", name, flush=True)
"""


def test_ctrl_c_interrupts_a_long_call(tmp_path):
    """SIGINT during a long call of either op: KeyboardInterrupt within about a
    second (the kernel asks Python every 0.1 s between tasks of <= 1024 x 1024
    pairs), not when the call ends. One child for both ops (one import)."""
    child = subprocess.Popen([sys.executable, "-c", _LONG_CALLS], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, cwd=tmp_path, env=child_env(),
                             # a CI shell may start background jobs with SIGINT ignored
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        for name in ["hyperspherical_energy", "cross_energy"]:
            assert child.stdout.readline() == f"calling {name}\n", child.poll()
            time.sleep(0.5)  # inside the call
            child.send_signal(signal.SIGINT)
            sent = time.monotonic()
            line = child.stdout.readline()
            assert line == f"KeyboardInterrupt {name}\n", (line, child.poll() and child.stderr.read())
            assert time.monotonic() - sent < 3.0
        child.communicate(timeout=60)
    finally:
        child.kill()
    assert child.returncode == 0


def _clustered(k, dtype):
    """Two sets of 150 rows (3 tiles, the last ragged): set 0 all within ~1e-3
    of one direction (every pair close: the refinement of whole rows), set 1
    half so and half random (rows with a few close pairs: the refinement pair
    by pair). In float64, with the bound of the closest chord (and mirror
    chord: -x of a row is in the set in half space) that the input determines."""
    d = torch.randn(k, dtype=torch.float64)
    x = d / d.norm() + 1e-3 / k**0.5 * torch.randn(2, 150, k, dtype=torch.float64)
    x[1, 75:] = torch.randn(75, k, dtype=torch.float64)
    u = torch.nn.functional.normalize(x, dim=-1)
    chord = min(torch.cdist(u[b], u[b])[torch.triu_indices(150, 150, 1).unbind()].min().item() for b in range(2))
    return x.to(dtype), chord


@pytest.mark.parametrize("k", [1, 3, 5, 12, 40])
@pytest.mark.parametrize("power, half_space", [(1, False), (2, True), ("a1", True), ("g2", False)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_clustered_rows_match_reference(k, power, half_space, dtype):
    """Clustered and collapsed rows (the pathology MHE is there to fix), both
    ops, every path: the small-k path (k <= 8) and the gram path, float64
    refinement of whole rows (close_pairs.h: refine_row) and of single pairs."""
    x, chord = _clustered(k, dtype)
    tol = None
    if dtype == torch.float64 and k > 1:  # k = 1: the points coincide, u = +-1 exactly
        tol = ill_conditioned(chord, 2.0)
    e, g = energy_and_grad(x, power, half_space=half_space, reduction="none", backend="cpu")
    e_ref, g_ref = reference_energy_and_grad(x, power, half_space=half_space, reduction="none")
    assert_energy_close(e, e_ref, dtype, num_pairs(150, half_space), tol)
    assert_grad_close(g, g_ref, dtype, tol)
    y = x.flip(1)[:, :100]  # the cross op: the same clusters, other tile positions
    e, gx, gy = cross_energy_and_grad(x, y, power, half_space=half_space, reduction="none", backend="cpu")
    e_ref, gx_ref, gy_ref = reference_cross_energy_and_grad(x, y, power, half_space=half_space, reduction="none")
    assert_energy_close(e, e_ref, dtype, num_cross_pairs(150, 100, half_space), tol)
    assert_grad_close(gx, gx_ref, dtype, tol)
    assert_grad_close(gy, gy_ref, dtype, tol)


def _compact_sets(k, eps):
    """x: two sets of 200 rows (4 tiles, the last of 8 rows), y: two of 129,
    whose tile pairs are compact (close_pairs.h: every point of both tiles
    within R < 1/4 of one centre), so that they run on delta = u - c: set 0
    collapsed (within ~1e-3 of one direction); set 1 clusters of consecutive
    rows: 64 of radius 1e-3, 64 of 3e-2, the rest the antipodes of the first
    (their tile pairs with the first not compact: the plain path, every pair
    refined), a random row. With eps > 0,
    exact duplicates of rows in their own and in another tile, and between x
    and y. In float64, with the closest chord (or mirror chord) of all rows."""
    n = 329
    d = torch.nn.functional.normalize(torch.randn(3, k, dtype=torch.float64), dim=-1)
    z = torch.empty(2, n, k, dtype=torch.float64)
    z[0] = d[0] + 1e-3 / k**0.5 * torch.randn(n, k, dtype=torch.float64)
    for lo, hi, centre, r in [(0, 64, d[1], 1e-3), (64, 128, d[2], 3e-2), (128, n, -d[1], 1e-3)]:
        z[1, lo:hi] = centre + r / k**0.5 * torch.randn(hi - lo, k, dtype=torch.float64)
    z[1, 199] = torch.randn(k, dtype=torch.float64)
    if eps > 0:
        z[:, 10] = z[:, 3]
        z[:, 150] = z[:, 20]
        z[:, 205] = z[:, 7]
    u = torch.nn.functional.normalize(z, dim=-1)
    iu = torch.triu_indices(n, n, 1).unbind()
    chords = torch.cat([torch.cdist(u[b], s * u[b])[iu] for b in range(2) for s in (1, -1)])
    return z[:, :200], z[:, 200:], chords[chords > 0].min().item()


@pytest.mark.parametrize("k", [1, 3, 5, 12, 40])
@pytest.mark.parametrize(
    "power, half_space", [(0, False), (1, False), (2, True), (1, True), ("a1", True), ("a0", False), ("g2", False)]
)
@pytest.mark.parametrize("eps", [1e-4, 0.0])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_compact_tile_pairs_match_reference(k, power, half_space, eps, dtype):
    """Both ops, every kind, both paths (small-k and gram), batched, against the
    float64 reference: compact tile pairs on delta, the refinement of their
    pairs closer than tau R, exact duplicates (eps > 0), antipodal clusters."""
    x, y, chord = _compact_sets(k, eps)
    x, y = x.to(dtype), y.to(dtype)
    s = 0.0 if power in (0, "a0") else 2.0 if power == 2 else 1.0
    tol = ill_conditioned(chord, s) if dtype == torch.float64 and k > 1 else None
    kw = dict(half_space=half_space, reduction="none", eps=eps)
    e, g = energy_and_grad(x, power, backend="cpu", **kw)
    e_ref, g_ref = reference_energy_and_grad(x, power, **kw)
    ec, gx, gy = cross_energy_and_grad(x, y, power, backend="cpu", **kw)
    ec_ref, gx_ref, gy_ref = reference_cross_energy_and_grad(x, y, power, **kw)
    if eps == 0 and k == 1 and power != "g2" and not str(power).startswith("a"):
        # u = +-1 exactly: coincident points, an infinite energy in both
        assert torch.isinf(e).all() and torch.equal(e, e_ref) and torch.equal(ec, ec_ref)
        return
    assert_energy_close(e, e_ref, dtype, num_pairs(200, half_space), tol)
    assert_grad_close(g, g_ref, dtype, tol)
    assert_energy_close(ec, ec_ref, dtype, num_cross_pairs(200, 129, half_space), tol)
    assert_grad_close(gx, gx_ref, dtype, tol)
    assert_grad_close(gy, gy_ref, dtype, tol)


@pytest.mark.parametrize("k", [3, 20])
@pytest.mark.parametrize("power", [0, 1, 2])
def test_compact_coincident_points_without_eps_are_infinite(k, power):
    """eps = 0: an exact duplicate in a compact tile pair is at distance 0, an
    infinite energy in both paths (float64 refinement), not a large finite one."""
    x, _, _ = _compact_sets(k, 0.0)
    x[:, 10] = x[:, 3]
    for dtype in (torch.float32, torch.float64):
        e = comhe_kernels.hyperspherical_energy(x.to(dtype), power, eps=0.0, reduction="none", backend="cpu")
        assert torch.isinf(e).all() and (e > 0).all(), e


def _bench_inputs(inputs, n, k):
    from comhe_kernels.bench.cases import _draw_set

    return _draw_set(inputs, n, k, torch.Generator().manual_seed(0))


@pytest.mark.parametrize("inputs", ["collapsed", "clusters", "sorted_clusters"])
@pytest.mark.parametrize("k", [3, 32])
@pytest.mark.parametrize("power, half_space, eps", [(1, False, 1e-4), (2, True, 1e-4), (1, False, 0.0), ("a1", True, 1e-4)])
def test_float32_contract_on_collapsed_rows(inputs, k, power, half_space, eps):
    """The benchmark's collapsed and clustered rows (issue 14), N = 4096, and the
    clusters sorted so that their tile pairs are compact: the float32 kernel
    within the contract (energy 1e-6 relative, gradient 1e-3 of max |g|) of its
    float64 evaluation of the same input."""
    x = _bench_inputs("clusters" if inputs == "sorted_clusters" else inputs, 4096, k)
    if inputs == "sorted_clusters":  # row i is in cluster i mod 64
        x = x.view(64, 64, k).transpose(0, 1).reshape(4096, k)
    x = x.float()
    kw = dict(half_space=half_space, eps=eps, reduction="sum", backend="cpu")
    e32, g32 = energy_and_grad(x, power, **kw)
    e64, g64 = energy_and_grad(x.double(), power, **kw)
    assert abs(e32.item() - e64.item()) <= 1e-6 * abs(e64.item())
    assert_grad_close(g32, g64, torch.float32)


@pytest.mark.parametrize("k", [3, 20])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compact_tile_pairs_independent_of_thread_count(k, dtype):
    """Collapsed rows (every tile pair compact), N = 2850 (45 tiles): bitwise the
    same for 1, 2, 3 threads, and the forward-only energy is the energy
    computed with the gradient."""
    x = _bench_inputs("collapsed", 2 * 2850, k).view(2, 2850, k).to(dtype)
    op = torch.ops.comhe.hyperspherical_energy.default
    threads = torch.get_num_threads()
    results = []
    try:
        for t in (1, 2, 3):
            torch.set_num_threads(t)
            results.append(op(x, "angular", 1.0, True, 1e-4, 1e-4, True))
        forward_only, _ = op(x, "angular", 1.0, True, 1e-4, 1e-4, False)
    finally:
        torch.set_num_threads(threads)
    for e, g in results[1:]:
        assert torch.equal(e, results[0][0]) and torch.equal(g, results[0][1])
    assert torch.equal(forward_only, results[0][0])
    for kind, s, half in [("chordal", 1.0, False), ("chordal", 2.0, True), ("gaussian", 2.0, False)]:
        args = (kind, s, half, 1e-4, 1e-4)
        assert torch.equal(op(x, *args, False)[0], op(x, *args, True)[0]), (kind, s, half)
