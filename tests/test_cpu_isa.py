"""The CPU kernel at each of its ISA levels (csrc/cpu/dispatch.cpp): every
level this CPU can run against the reference with the same tolerances
(conftest.py), the thread-count bit-identity and the forward-only energy per
level, the choice of level (COMHE_CPU_ISA, set_cpu_isa, build_info).

A sharp subset, not the whole suite per level (CI's budget: ~20 s per level
on 2 busy cores): each kind on each of the kernel's coordinate paths (the
small-k path's K = 3, 4, 8 and the gram path), ragged tiles, a near duplicate
and a near antipode for the float64 refinement, both ops. The other levels'
cases in the op tests run at the level chosen at load (the highest here).
"""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import (
    assert_energy_close,
    assert_grad_close,
    child_env,
    ill_conditioned,
    reference_cross_energy_and_grad,
    reference_energy_and_grad,
    requires_cpu_kernel,
    results_per_thread_count,
)

import comhe_kernels
from comhe_kernels import _extension, cross_energy_and_grad, hyperspherical_energy_and_grad, num_cross_pairs, num_pairs

pytestmark = requires_cpu_kernel


def _levels():
    return _extension.cpu_isa()["levels"] if _extension.load() is None else []


@pytest.fixture(params=_levels())
def level(request):
    """The kernel runs request.param for the test (skipped where this CPU cannot)."""
    isa = _extension.cpu_isa()
    if request.param not in isa["runnable"]:
        pytest.skip(f"this CPU cannot run {request.param} (it runs {', '.join(isa['runnable'])})")
    previous = _extension.set_cpu_isa(request.param)
    try:
        yield request.param
    finally:
        _extension.set_cpu_isa(previous)


# k -> the path: small-k K = 3 (k <= 3), 4, 8 (5 to 8), gram (k > 8)
@pytest.mark.parametrize("k", [3, 4, 7, 20])
@pytest.mark.parametrize("power, half_space", [(1, False), (2, True), ("a1", True), ("g2", False)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_level_matches_reference(level, k, power, half_space, dtype):
    """N = 131 = 2 x 64 + 3: a partial tile; batched; a near duplicate and a
    near antipode (chords ~1e-3) for the refinement of close pairs."""
    x = torch.randn(2, 131, k, dtype=torch.float64)
    x[:, 7] = x[:, 100] + 1e-3 * torch.randn(2, k, dtype=torch.float64)
    x[:, 130] = -x[:, 2] + 1e-3 * torch.randn(2, k, dtype=torch.float64)
    x = x.to(dtype)
    kw = dict(half_space=half_space, reduction="none")
    e, g = hyperspherical_energy_and_grad(x, power, backend="cpu", **kw)
    e_ref, g_ref = reference_energy_and_grad(x, power, **kw)
    assert_energy_close(e, e_ref, dtype, num_pairs(131, half_space))
    assert_grad_close(g, g_ref, dtype)


@pytest.mark.parametrize("k", [3, 7, 20])
@pytest.mark.parametrize("power, half_space", [(1, False), ("a1", True)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_level_compact_tile_pairs_match_reference(level, k, power, half_space, dtype):
    """Collapsed rows, N = 131: every tile pair compact (close_pairs.h), its
    pairs on delta = u - c, an exact duplicate (eps > 0) refined in float64."""
    d = torch.nn.functional.normalize(torch.randn(k, dtype=torch.float64), dim=0)
    x = d + 1e-3 / k**0.5 * torch.randn(2, 131, k, dtype=torch.float64)
    x[:, 7] = x[:, 100]
    u = torch.nn.functional.normalize(x, dim=-1)
    chord = min(torch.pdist(u[b])[torch.pdist(u[b]) > 0].min().item() for b in range(2))
    tol = ill_conditioned(chord, 1.0) if dtype == torch.float64 else None
    x = x.to(dtype)
    kw = dict(half_space=half_space, reduction="none")
    e, g = hyperspherical_energy_and_grad(x, power, backend="cpu", **kw)
    e_ref, g_ref = reference_energy_and_grad(x, power, **kw)
    assert_energy_close(e, e_ref, dtype, num_pairs(131, half_space), tol)
    assert_grad_close(g, g_ref, dtype, tol)


@pytest.mark.parametrize("k", [3, 20])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_level_cross_matches_reference(level, k, dtype):
    x = torch.randn(2, 67, k, dtype=dtype)
    y = torch.randn(2, 130, k, dtype=dtype)
    kw = dict(half_space=True, reduction="none")
    e, gx, gy = cross_energy_and_grad(x, y, 1, backend="cpu", **kw)
    e_ref, gx_ref, gy_ref = reference_cross_energy_and_grad(x, y, 1, **kw)
    assert_energy_close(e, e_ref, dtype, num_cross_pairs(67, 130, True))
    assert_grad_close(gx, gx_ref, dtype)
    assert_grad_close(gy, gy_ref, dtype)


@pytest.mark.parametrize("k", [3, 20])
def test_level_independent_of_thread_count(level, k):
    """As test_hyperspherical_energy's, at each level: N = 2850, 45 tiles in an
    odd number of super-tiles; 3 threads, more than CI's cores. And the
    forward-only energy is the energy computed with the gradient, bitwise."""
    x = torch.randn(2, 2850, k)
    results = results_per_thread_count(
        lambda: torch.ops.comhe.hyperspherical_energy(x, "chordal", 1.0, False, 1e-4, 1e-4, True)
    )
    forward_only, _ = torch.ops.comhe.hyperspherical_energy(x, "chordal", 1.0, False, 1e-4, 1e-4, False)
    for e, g in results[1:]:
        assert torch.equal(e, results[0][0]) and torch.equal(g, results[0][1])
    assert torch.equal(forward_only, results[0][0])


def test_build_info_reports_the_level():
    isa = comhe_kernels.build_info()["cpu_isa"]
    assert isa["level"] in isa["runnable"] and set(isa["runnable"]) <= set(isa["levels"])
    if not os.environ.get("COMHE_CPU_ISA"):
        assert isa["level"] == isa["runnable"][-1]  # the highest this CPU runs
    if "avx2" in isa["levels"]:
        assert ("avx2" in isa["runnable"]) == ({"avx2", "fma", "bmi2"} <= set(isa["cpu"]))


def test_set_cpu_isa_names_the_levels():
    levels = _extension.cpu_isa()["levels"]
    with pytest.raises(ValueError, match="'avx9' is not an ISA level of this build.*" + ", ".join(levels)):
        _extension.set_cpu_isa("avx9")
    assert _extension.cpu_isa()["level"] in levels  # unchanged


def _in_subprocess(env_isa, code, cwd):
    """The child loads the extension this process loaded (child_env), from outside the tree."""
    env = dict(child_env(), COMHE_CPU_ISA=env_isa)
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def test_environment_forces_the_level(tmp_path):
    """One process: COMHE_CPU_ISA=<the lowest level> is the level it reports
    and runs; the other at a level that does not exist fails its calls with an
    error naming the levels."""
    isa = _extension.cpu_isa()
    lowest = isa["runnable"][0]
    code = (
        "import json, torch, comhe_kernels\n"
        "from comhe_kernels import _extension\n"
        "x = torch.randn(40, 3)\n"
        "try:\n"
        "    comhe_kernels.hyperspherical_energy(x, 1, backend='cpu'); error = ''\n"
        "except RuntimeError as e:\n"
        "    error = str(e)\n"
        "print(json.dumps(dict(_extension.cpu_isa(), call_error=error)))\n"
    )
    good = _in_subprocess(lowest, code, tmp_path)
    assert good.returncode == 0, good.stderr
    report = json.loads(good.stdout.splitlines()[-1])
    assert report["level"] == lowest and report["requested"] == lowest and report["call_error"] == ""
    bad = _in_subprocess("avx9", code, tmp_path)
    assert bad.returncode == 0, bad.stderr
    report = json.loads(bad.stdout.splitlines()[-1])
    assert report["level"] == ""
    assert "COMHE_CPU_ISA=avx9" in report["call_error"]
    assert "its levels are: " + ", ".join(isa["levels"]) in report["call_error"]


# ---- the just-in-time build's lock (_extension._build_lock) ------------------


def test_build_lock_takes_over_a_leftover_and_waits_a_bounded_time(tmp_path, monkeypatch):
    """torch's `lock` file left by a killed build is removed (the next build
    would wait for it forever); a live holder of the flock is waited for
    BUILD_WAIT_SECONDS, then the error names it."""
    import fcntl

    (tmp_path / "lock").write_text("")
    with _extension._build_lock(tmp_path):
        assert not (tmp_path / "lock").exists()
    monkeypatch.setattr(_extension, "BUILD_WAIT_SECONDS", 0.6)
    with open(tmp_path / "build.lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write("4242")
        held.flush()
        with pytest.raises(RuntimeError, match="waited 1 s for process 4242 building the kernels"):
            with _extension._build_lock(tmp_path):
                pass
