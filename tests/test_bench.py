"""The benchmark CLI (comhe_kernels.bench): arguments, presets, the oracle and
the providers' math in process, the dry run of the GPU preset, and tiny sweeps
end to end through worker processes.

The providers defined here reach the worker processes by reference: the spawn
start method hands this process's sys.path to the worker, which imports this
module by name. The checks below read each row's reason, so a worker that could
not import them would fail these tests instead of passing them by accident.
"""

import csv
import functools
import json
import math
import operator
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import child_env, requires_cpu_kernel

import comhe_kernels
from comhe_kernels.bench import main, presets
from comhe_kernels.bench.cases import SPREAD, BenchOptions, Case, make_inputs
from comhe_kernels.bench.oracle import (
    check_result,
    compute_oracle,
    exact_cross_energy,
    exact_energy,
    exact_grad_rows,
)
from comhe_kernels.bench.providers import (
    Provider,
    Unavailable,
    at_cpu_isa_levels,
    chunked_cross,
    chunked_energy,
    default_providers,
    fused_providers,
    keops_cross,
    keops_energy,
    naive_cross,
    naive_energy,
    package_uniformity,
    pdist_uniformity,
)
from comhe_kernels.bench.report import ROW_FIELDS
from comhe_kernels.bench.runner import Plan, Workers, quantile, run_benchmark, skip_reason
from comhe_kernels.bench.verdicts import FUSED, criterion, evaluate_criteria
from comhe_kernels.bench.worker import reps_for, warm_up
from comhe_kernels.ops import _registry

FAST = ["--gemm-sizes", "256", "--rep-seconds", "0.01", "--warmup-seconds", "0", "--min-reps", "2", "--max-reps", "3"]

# --------------------------------------------------------------------------- fake providers


def _scaled_energy(x, spec, factor):
    return factor * naive_energy(x.double(), spec)


def _build_off_by_1e3(case, options, inputs):
    """A provider whose energy is 0.1% too large: outside every tolerance."""
    return functools.partial(_scaled_energy, spec=case.spec(), factor=1 + 1e-3)


def _build_raises(case, options, inputs):
    def boom(x):
        raise RuntimeError("kernel exploded")

    return boom


def _build_unavailable(case, options, inputs):
    raise Unavailable("needs a device this machine does not have")


WRONG = Provider("wrong", "0.1% off", _build_off_by_1e3)
WRONG_BASELINE = Provider("wrong-baseline", "0.1% off, a naive-math baseline", _build_off_by_1e3, naive_math=True)
RAISES = Provider("raises", "raises", _build_raises)
UNAVAILABLE = Provider("unavailable", "raises Unavailable", _build_unavailable)


def _providers_with(*extra):
    providers = default_providers()
    providers.update({p.name: p for p in extra})
    return providers


# --------------------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--n", "0"], "argument --n: expected a positive integer, got '0'"),
        (["--n", "many"], "argument --n: expected a positive integer"),
        (["--k", "-3"], "argument --k: expected a positive integer"),
        (["--power", "-1"], "argument --power: power must be finite and >= 0"),
        (["--power", "b2"], "argument --power: power must be a real number >= 0, 'a<s>'"),
        (["--dtype", "int8"], "argument --dtype: invalid choice: 'int8'"),
        (["--mode", "bwd"], "argument --mode: invalid choice: 'bwd'"),
        (["--half-space", "maybe"], "argument --half-space: expected yes or no, got 'maybe'"),
        (["--providers", "numpy"], "argument --providers: unknown numpy"),
        (["--min-reps", "5", "--max-reps", "2"], "argument --min-reps: 5 is more than --max-reps 2"),
        (["--plot", "out.jpg"], "argument --plot: expected a file name ending in .png"),
        (["--quick", "--full"], "argument --full: not allowed with argument --quick"),
        (["--rep-seconds", "0"], "argument --rep-seconds: expected a positive number, got '0'"),
        (["--warmup-seconds", "-1"], "argument --warmup-seconds: expected a number >= 0, got '-1'"),
        (["--warmup-seconds", "inf"], "argument --warmup-seconds: expected a number >= 0, got 'inf'"),
    ],
)
def test_argument_errors_name_the_argument(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_help_names_the_presets(capsys):
    # python -m comhe_kernels.bench: test_the_main_job_runs_without_matplotlib_and_pykeops
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    assert "comhe-bench" in out and "--preset" in out and "acceptance" in out and "--dry-run" in out


def test_list_providers_says_why_gpu_backends_do_not_run(capsys):
    assert main(["--list-providers", "--device", "cpu"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert lines["reference"].startswith("reference       cpu   runs hyperspherical_energy, cross_energy. ")
    assert lines["cpu"].startswith(("cpu             cpu   runs", "cpu             cpu   hyperspherical_energy: runs"))
    assert lines["cuda"].startswith("cuda            cpu   unavailable: runs on cuda tensors only. ")
    assert lines["pdist"].startswith("pdist           cpu   runs uniformity_loss. ")


def _fake_backend_unavailable(op, device_type):
    return "fake: no such hardware" if op == "cross_energy" else None


def test_fused_providers_are_the_registered_backends(monkeypatch):
    _registry.backends()  # discovered first, so that the fake one below is added to the full registry
    fake = _registry.Backend("fake", ("cpu", "meta"), _fake_backend_unavailable, load=lambda: None, auto_rank=5)
    monkeypatch.setitem(_registry._BACKENDS, "fake", fake)
    fused = {p.name: p for p in fused_providers()}
    want = [name for name, b in _registry.backends().items() if b.auto_rank is not None]
    assert list(fused) == want and "cpu" in want and "fake" in want and "reference" not in want
    assert default_providers()["fake"].fused
    # Devices and availability are the registry's, per op.
    assert fused["fake"].devices == ("cpu",)
    assert fused["fake"].unavailable_reason("hyperspherical_energy", "cpu") is None
    assert fused["fake"].unavailable_reason("cross_energy", "cpu") == "fake: no such hardware"
    assert fused["cuda"].unavailable_reason("hyperspherical_energy", "cpu") == "runs on cuda tensors only"


# --------------------------------------------------------------------------- planning


def test_plan_orders_by_n_dedupes_and_sets_aside_unavailable_providers():
    groups = (presets.Group(n=(1024, 256), k=(3,)), presets.Group(n=(256,), k=(3,), providers=("cpu",)))
    plan = presets.make_plan(groups, default_providers(), ("cpu",), 0, {}, ("reference", "cpu", "cuda", "pdist"))
    assert [(c.n, name) for c, name in plan.items] == [
        (256, "reference"),
        (256, "cpu"),
        (1024, "reference"),
        (1024, "cpu"),
    ]
    # pdist computes another op: left out without a word.
    assert plan.not_run == {"cuda (cpu)": "runs on cuda tensors only"}


def test_overrides_replace_the_preset_lists():
    plan = presets.make_plan(
        presets.PRESETS["quick"].groups, default_providers(), ("cpu",), 3, {"k": (5,), "dtype": ("float64",)}, ("cpu",)
    )
    quick_n = presets.PRESETS["quick"].groups[0].n
    assert [(c.n, c.k, c.dtype, c.seed) for c, _ in plan.items] == [(n, 5, "float64", 3) for n in quick_n]
    cross = presets.make_plan(
        (presets.CUSTOM_DEFAULT,), default_providers(), ("cpu",), 0, {"op": ("cross_energy",), "n": (64,)}, ("chunked",)
    )
    assert [(c.op, c.n, c.m) for c, _ in cross.items] == [("cross_energy", 64, 64)]  # M = N by default
    with pytest.raises(ValueError, match="uniformity_loss takes one set"):
        overrides = {"op": ("uniformity_loss",), "half_space": (True,)}
        presets.make_plan((presets.CUSTOM_DEFAULT,), default_providers(), ("cpu",), 0, overrides, None)


def test_acceptance_preset_runs_exactly_the_target_cases():
    plan = presets.make_plan(presets.PRESETS["acceptance"].groups, default_providers(), ("cpu",), 0, {}, None)
    got = {(c.op, c.n, c.k, c.power, c.dtype, c.mode, c.inputs, name) for c, name in plan.items}
    e, f32, both = "hyperspherical_energy", "float32", "fwd+bwd"
    want = {(e, 16384, k, "1", f32, both, "random", p) for k in (3, 32) for p in ("reference", "keops", "cpu")}
    want |= {(e, 16384, 256, "1", f32, both, "random", p) for p in ("reference", "cpu")}
    want |= {(e, 65536, k, "1", f32, both, "random", p) for k in (3, 32) for p in ("reference", "cpu")}
    want |= {(e, 8192, k, "1", f32, both, i, "cpu") for k in (1, 3, 32) for i in ("random", "collapsed", "clusters")}
    want |= {
        ("uniformity_loss", n, k, "g2", f32, both, "random", p)
        for n in (4096, 16384)
        for k in (32, 128)
        for p in ("pdist", "uniformity_loss")
    }
    if default_providers()["keops"].unavailable_reason(e, "cpu"):
        want = {w for w in want if w[-1] != "keops"}
    assert got == want
    # Every criterion names a case of the preset.
    for c in presets.PRESETS["acceptance"].criteria:
        fields = dict(c.where)
        assert any(all(getattr(case, f) == v for f, v in fields.items()) for case, _ in plan.items), c.text


def test_skip_reasons_memory_model_and_time_prediction():
    reference = default_providers()["reference"]
    options = BenchOptions(max_memory_bytes=24 * 2**30, max_call_seconds=30)
    reason = skip_reason(reference, Case(65536, 32), options, {})
    assert reason == "needs ~128 GiB (reference's memory model) > 24 GiB (--max-memory-gib)"
    on_gpu = replace(options, max_cuda_memory_bytes=80 * 2**30)  # a CUDA case is held to the GPU's memory
    reason = skip_reason(reference, Case(65536, 32, device="cuda"), on_gpu, {})
    assert reason == "needs ~128 GiB (reference's memory model) > 80 GiB (--max-memory-gib)"
    assert skip_reason(reference, Case(32768, 32, device="cuda"), on_gpu, {}) is None  # 32 GiB
    # The batch's memory is B sets' matrices: 20 x 8 x 512^2 x 4 bytes.
    assert skip_reason(reference, Case(512, 40, b=20), replace(options, max_memory_bytes=0.15 * 2**30), {})
    history = {("reference", Case(2048, 32).series()): (Case(2048, 32).pairs, 1.0)}  # 1 s at 2048 points
    assert skip_reason(reference, Case(8192, 32), options, history) is None  # ~16 s
    reason = skip_reason(reference, Case(16384, 32), options, history)
    assert reason == "predicted ~64 s per call (1 s for 2.1e+06 pairs, x pairs) > 30 s (--max-call-seconds)"
    # Another series (here k, or the inputs) has no history: no prediction.
    assert skip_reason(reference, Case(16384, 3), options, history) is None
    assert skip_reason(reference, Case(16384, 32, inputs="collapsed"), options, history) is None


def test_quantile_and_reps():
    assert quantile([4.0, 1.0, 3.0, 2.0, 5.0], 0.2) == pytest.approx(1.8)
    assert quantile([4.0, 1.0, 3.0, 2.0, 5.0], 0.5) == 3.0
    options = BenchOptions(min_reps=3, max_reps=20, rep_seconds=2.0)
    assert reps_for(10.0, options) == 3 and reps_for(0.5, options) == 4 and reps_for(1e-5, options) == 20


def test_warm_up_runs_until_its_time_is_spent():
    calls = []
    call = lambda: calls.append(time.sleep(0.01))  # at least 10 ms each
    start = time.perf_counter()
    assert warm_up(call, 0.0, 0.05) == len(calls) <= 5 and time.perf_counter() - start >= 0.05
    assert warm_up(call, 0.05, 0.05) == 0  # the checked call took the whole warm-up time
    assert warm_up(call, 0.0, 0.0) == 0


def test_criteria_verdicts():
    rows = [
        {"n": 16384, "k": 32, "provider": "cpu", "status": "ok", "speedup_vs_reference": 41.0, "time_median_s": 0.2},
        {"n": 65536, "k": 32, "provider": "reference", "status": "skipped", "reason": "needs ~128.0 GiB"},
    ]
    acceptance = presets.PRESETS["acceptance"].criteria
    verdicts = {v["criterion"]: v["verdict"] for v in evaluate_criteria(acceptance, rows)}
    assert verdicts["N=16384 k=32: fused >= 40x faster than the reference"] == "PASS"
    assert verdicts["N=16384 k=32: fused >= 30x faster than pykeops"] == "not measured"
    assert verdicts["N=65536: the reference is skipped, with the reason"] == "PASS"
    rows[0]["speedup_vs_reference"] = 39.9
    verdicts = {v["criterion"]: v["verdict"] for v in evaluate_criteria(acceptance, rows)}
    assert verdicts["N=16384 k=32: fused >= 40x faster than the reference"] == "FAIL"


def test_criteria_on_inputs_and_every_fused_backend():
    rows = [
        {"n": 8192, "k": 3, "inputs": "random", "provider": "cpu", "fused": True, "status": "ok"},
        {"n": 8192, "k": 3, "inputs": "collapsed", "provider": "cpu", "fused": True, "time_vs_random": 3.5},
        {"n": 8192, "k": 3, "inputs": "collapsed", "provider": "gpu1", "fused": True, "time_vs_random": 1.5},
    ]
    c = criterion("k=3 collapsed: {fused} within 3x", FUSED, "time_vs_random", 3.0, n=8192, k=3, inputs="collapsed")
    verdicts = {v["criterion"]: (v["value"], v["verdict"]) for v in evaluate_criteria((c,), rows)}
    assert verdicts == {"k=3 collapsed: cpu within 3x": (3.5, "FAIL"), "k=3 collapsed: gpu1 within 3x": (1.5, "PASS")}


# --------------------------------------------------------------------------- inputs

def test_inputs_collapsed_and_clustered_rows():
    x = make_inputs(Case(500, 8, inputs="collapsed", dtype="float64"))[0]
    u = x / x.norm(dim=-1, keepdim=True)
    assert (u @ u[0]).min() > math.cos(2.1 * SPREAD)  # every row within SPREAD of one direction
    x = make_inputs(Case(640, 8, inputs="clusters", dtype="float64"))[0]
    u = x / x.norm(dim=-1, keepdim=True)
    near = (u @ u.T) > math.cos(2.1 * SPREAD)
    assert near.sum(1).tolist() == [10] * 640  # 64 clusters of 10 near points, far from each other
    x = make_inputs(Case(8, 1, inputs="collapsed"))[0]  # k = 1: every row the same sign, every pair close
    assert bool((x > 0).all()) or bool((x < 0).all())
    # Seeded and rounded from float64: the same values in every process; batched and cross inputs.
    a, b = make_inputs(Case(30, 5, seed=4)), make_inputs(Case(30, 5, seed=4))
    assert torch.equal(a[0], b[0]) and a[0].dtype == torch.float32
    x, y = make_inputs(Case(30, 5, op="cross_energy", m=7, b=3))
    assert x.shape == (3, 30, 5) and y.shape == (3, 7, 5)


# --------------------------------------------------------------------------- the oracle and the providers' math

SPECS = [
    ("1", False), ("0", False), ("2", True), ("1.5", False), ("a0", False), ("a1", True), ("a2", False), ("g2", True)
]  # fmt: skip


@pytest.mark.parametrize("power, half", SPECS)
@pytest.mark.parametrize("inputs", ["random", "collapsed"])
def test_tiled_oracle_matches_the_exact_reference(power, half, inputs):
    case = Case(150, 4, power, half, "float64", inputs=inputs)
    x = make_inputs(case)[0]
    # Close pairs: the refinement in the difference form must keep full precision.
    x[1] = x[0] + 1e-6
    x64 = x.clone().requires_grad_()
    e = comhe_kernels.reference.hyperspherical_energy(x64, case.power_arg, half_space=half, reduction="sum")
    (g,) = torch.autograd.grad(e, x64)
    got = exact_energy(x, case.spec(), tile=40)  # diagonal, full and ragged tiles; collapsed: whole tiles by cdist
    assert got == pytest.approx(e.item(), rel=1e-12)
    rows = torch.tensor([0, 1, 7, 149])
    torch.testing.assert_close(
        exact_grad_rows(x, case.spec(), rows, chunk=3), g[rows], rtol=1e-10, atol=1e-10 * g.abs().max()
    )


@pytest.mark.parametrize("power, half", [("1", True), ("a1", False)])
def test_tiled_cross_oracle_matches_the_exact_reference(power, half):
    case = Case(90, 4, power, half, "float64", op="cross_energy", m=50, inputs="clusters")
    x, y = (t.clone().requires_grad_() for t in make_inputs(case))
    e = comhe_kernels.reference.cross_energy(x, y, case.power_arg, half_space=half, reduction="sum")
    gx, gy = torch.autograd.grad(e, (x, y))
    assert exact_cross_energy(x, y, case.spec(), tile=32) == pytest.approx(e.item(), rel=1e-12)
    rows = torch.tensor([0, 5, 49])
    tol = dict(rtol=1e-10, atol=1e-10 * gx.abs().max())
    torch.testing.assert_close(exact_grad_rows(x, case.spec(), rows, others=y), gx[rows], **tol)
    torch.testing.assert_close(exact_grad_rows(y, case.spec(), rows, others=x), gy[rows], **tol)


@pytest.mark.parametrize(
    "case",
    [
        Case(300, 3),
        Case(120, 3, "a1", True, b=3),
        Case(200, 4, op="cross_energy", m=130),
        Case(300, 5, "g2", op="uniformity_loss"),
    ],
    ids=["energy", "batched", "cross", "uniformity"],
)
def test_sampled_oracle_is_used_for_large_cases_and_catches_a_wrong_row(case):
    options = BenchOptions(full_check_points=100, check_rows=20)
    oracle = compute_oracle(case, options)
    assert all(r.numel() == 20 for r in oracle.rows) and "20 random rows" in oracle.method
    exact = compute_oracle(case, BenchOptions())  # the exact reference, all rows
    assert "exact reference" in exact.method
    e_err, g_err, passed = check_result(case, oracle, exact.energy, exact.grads)
    assert passed and e_err < 1e-12 and g_err < 1e-12
    grads = tuple(g.clone() for g in exact.grads)
    grads[-1][oracle.rows[-1][5], 1] += 2e-3 * grads[-1].abs().max()
    assert check_result(case, oracle, exact.energy, grads)[2] is False
    assert check_result(case, oracle, math.nan, exact.grads)[0] == math.inf


def test_uniformity_oracle_is_wang_and_isolas_loss():
    case = Case(200, 6, "g2", op="uniformity_loss", dtype="float64")
    oracle = compute_oracle(case, BenchOptions())
    x = make_inputs(case)[0].requires_grad_()
    u = x / x.norm(dim=-1, keepdim=True)
    loss = torch.pdist(u, p=2).pow(2).mul(-2).exp().mean().log()
    (g,) = torch.autograd.grad(loss, x)
    assert oracle.energy == pytest.approx(loss.item(), rel=1e-13)
    torch.testing.assert_close(oracle.grads[0], g, rtol=1e-10, atol=1e-12)


def _provider_errors(fn, case, options=BenchOptions()):
    """A provider function's errors against the oracle: (energy, gradient)."""
    inputs = tuple(t.requires_grad_() for t in make_inputs(case))
    value = fn(*inputs)
    grads = torch.autograd.grad(value, inputs)
    return check_result(case, compute_oracle(case, options), value.item(), grads)[:2]


@pytest.mark.parametrize("power, half", SPECS)
def test_chunked_energy_and_gradient(power, half):
    case = Case(70, 5, power, half, "float64")
    e_err, g_err = _provider_errors(functools.partial(chunked_energy, spec=case.spec(), block_rows=16), case)
    assert e_err < 1e-12 and g_err < 1e-10


@pytest.mark.parametrize(
    "case",
    [Case(40, 5, "a1", True, "float64", b=3), Case(70, 5, "1", True, "float64", op="cross_energy", m=33)],
    ids=["batched", "cross"],
)
def test_naive_and_chunked_batched_and_cross(case):
    cross = case.op == "cross_energy"
    for fn in (naive_cross if cross else naive_energy, chunked_cross if cross else chunked_energy):
        kwargs = {} if fn in (naive_cross, naive_energy) else {"block_rows": 16}
        e_err, g_err = _provider_errors(functools.partial(fn, spec=case.spec(), **kwargs), case)
        assert e_err < 1e-12 and g_err < 1e-10, fn.__name__


@pytest.mark.parametrize("n", [300, 1500])  # the pdist formula; the public loss at both of its chunkings
def test_uniformity_providers(n):
    case = Case(n, 16, "g2", op="uniformity_loss")
    for fn in (pdist_uniformity, package_uniformity):
        e_err, g_err = _provider_errors(functools.partial(fn, t=2.0), case)
        assert e_err < 1e-6 and g_err < 1e-4, fn.__name__


KEOPS_MISSING = default_providers()["keops"].unavailable_reason("hyperspherical_energy", "cpu")


@pytest.mark.skipif(KEOPS_MISSING is not None, reason=str(KEOPS_MISSING))
@pytest.mark.parametrize("half", [False, True])
def test_keops_energy_and_gradient(half):
    # s = 1, k = 3, float32: the formulas the end-to-end sweeps compile (cached on disk by pykeops).
    case = Case(90, 3, "1", half, b=2 if half else 1)
    e_err, g_err = _provider_errors(functools.partial(keops_energy, spec=case.spec()), case)
    assert e_err < 1e-5 and g_err < 1e-3, (e_err, g_err)


@pytest.mark.skipif(KEOPS_MISSING is not None, reason=str(KEOPS_MISSING))
def test_keops_cross_energy_and_gradient():
    case = Case(90, 3, "1", True, op="cross_energy", m=40)
    e_err, g_err = _provider_errors(functools.partial(keops_cross, spec=case.spec()), case)
    assert e_err < 1e-5 and g_err < 1e-3, (e_err, g_err)


# --------------------------------------------------------------------------- worker processes


def test_cuda_tasks_share_a_worker_until_one_fails(tmp_path):
    # The device name only picks the policy: these tasks (builtins, so that the
    # workers need not import this module) run on the CPU.
    workers = Workers(str(tmp_path))
    try:
        first, _ = workers.run("cuda", "pid", os.getpid, (), 120)
        assert workers.run("cuda", "pid", os.getpid, (), 120) == (first, None)
        failed, error = workers.run("cuda", "a CUDA error, say", operator.truediv, (1, 0), 120)
        assert error is None and failed == {"status": "failed", "reason": "ZeroDivisionError: division by zero"}
        again, _ = workers.run("cuda", "pid", os.getpid, (), 120)
        assert again != first  # a fresh process after the failure
        cpu, _ = workers.run("cpu", "pid", os.getpid, (), 120)
        assert cpu not in (first, again) and not any(w.process.pid == cpu and w.alive for w in [workers.cuda])
        assert workers.run("cuda", "pid", os.getpid, (), 120)[0] == again  # a CPU task's process ends with it
    finally:
        workers.close()
    assert "ZeroDivisionError: division by zero" in "".join(p.read_text() for p in workers.logs())


# --------------------------------------------------------------------------- end to end


def test_tiny_sweep_writes_table_csv_json_and_plot(tmp_path, capsys, monkeypatch):
    # The build's lowest ISA level, forced for the workers: the rows and the
    # table must name the level the kernel ran at, not the CPU's best.
    lowest = comhe_kernels.build_info()["cpu_isa"]["levels"][0]
    monkeypatch.setenv("COMHE_CPU_ISA", lowest)
    csv_path, json_path, png_path = tmp_path / "rows.csv", tmp_path / "rows.json", tmp_path / "plot.png"
    argv = ["--n", "40", "--k", "3", "--providers", "reference", "cpu", "--device", "cpu", *FAST]
    argv += ["--csv", str(csv_path), "--json", str(json_path), "--plot", str(png_path), "--out", str(tmp_path / "out")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "median (p20-p80)" in out and "pairs/s" in out and "ceiling on cpu, measured in this run: float32" in out
    assert f"CPU kernel at {lowest}" in out
    # --out: what was printed (without the progress bar), the same rows, the workers' output.
    files = {p.name: p for p in (tmp_path / "out").iterdir()}
    assert sorted(files) == ["custom_cpu.csv", "custom_cpu.json", "custom_cpu.log", "custom_cpu.txt"]
    assert files["custom_cpu.csv"].read_text() == csv_path.read_text()
    text = files["custom_cpu.txt"].read_text()
    assert text.startswith("comhe-bench --n 40") and "median (p20-p80)" in text and "wrote " + str(png_path) in text
    assert "=== cpu N=40 k=3" in files["custom_cpu.log"].read_text()

    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == ROW_FIELDS
        csv_rows = list(reader)
    assert [(r["provider"], r["n"]) for r in csv_rows] == [("reference", "40"), ("cpu", "40")]

    doc = json.loads(json_path.read_text())
    assert set(doc) == {"meta", "rows", "criteria"} and doc["criteria"] == []
    meta = doc["meta"]
    for key in (
        "device_names",
        "threads",
        "load_avg_start",
        "omp_wait_policy",
        "torch",
        "timestamp",
        "command",
    ):
        assert meta[key] not in (None, ""), key
    # The commit of the checkout the package was imported from; none for a
    # package installed outside one (a virtual environment elsewhere).
    package_dir = Path(comhe_kernels.__file__).resolve().parent
    in_checkout = subprocess.run(["git", "rev-parse", "HEAD"], cwd=package_dir, capture_output=True).returncode == 0
    assert bool(meta["git_sha"]) == in_checkout, meta["git_sha"]
    assert meta["command"].startswith("comhe-bench --n 40 --k 3") and meta["flop_model"].startswith("2k flops per pair")
    assert meta["ceilings"]["cpu/float32"] > 0
    for row in doc["rows"]:
        assert set(row) == set(ROW_FIELDS)
        assert row["status"] == "ok", row["reason"]
        assert row["energy_rel_err"] < 1e-5 and row["grad_rel_err"] < 1e-3
        assert 0 < row["time_p20_s"] <= row["time_median_s"] <= row["time_p80_s"]
        assert row["reps"] >= 2 and row["peak_extra_bytes"] >= 0
        assert row["pairs"] == comhe_kernels.num_pairs(row["n"]) and row["gflops"] > 0
        assert row["omp_wait_policy"] and row["git_sha"] == meta["git_sha"]
        assert row["device_name"] == meta["device_names"]["cpu"]
        assert f"--providers {row['provider']} --n {row['n']} --k 3" in row["command"]
    ref40, cpu40 = doc["rows"][0], doc["rows"][1]
    assert cpu40["cpu_isa"] == lowest and ref40["cpu_isa"] is None  # the reference does not run the kernel
    assert cpu40["speedup_vs_reference"] == pytest.approx(ref40["time_median_s"] / cpu40["time_median_s"])
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@requires_cpu_kernel
def test_cpu_isa_levels_in_one_run(tmp_path, capsys):
    """--cpu-isa: one cpu@LEVEL row per level, each run at that level, each
    against the same reference; a level the CPU cannot run is an argument error."""
    runnable = comhe_kernels.build_info()["cpu_isa"]["runnable"]
    levels = list(dict.fromkeys([runnable[0], runnable[-1]]))
    json_path = tmp_path / "rows.json"
    argv = ["--n", "40", "--k", "3", "--providers", "reference", "cpu", "--device", "cpu", *FAST]
    assert main([*argv, "--cpu-isa", *levels, "--json", str(json_path)]) == 0
    rows = json.loads(json_path.read_text())["rows"]
    assert [r["provider"] for r in rows] == ["reference", *(f"cpu@{level}" for level in levels)]
    for row, level in zip(rows[1:], levels):
        assert row["status"] == "ok" and row["cpu_isa"] == level
        assert row["speedup_vs_reference"] == pytest.approx(rows[0]["time_median_s"] / row["time_median_s"])
    if len(levels) > 1:
        assert "ISA" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main([*argv, "--cpu-isa", "avx1024"])
    assert e.value.code == 2 and "argument --cpu-isa: avx1024 not runnable here" in capsys.readouterr().err


@requires_cpu_kernel
def test_a_forced_level_ends_with_its_measurement():
    """The worker serves the next measurement at the level it had before."""
    runnable = comhe_kernels.build_info()["cpu_isa"]["runnable"]
    providers = {**default_providers(), **at_cpu_isa_levels(default_providers(), (runnable[0],))}
    case = Case(40, 3)
    plan = Plan(items=[(case, f"cpu@{runnable[0]}"), (case, "cpu")])
    options = BenchOptions(min_reps=1, max_reps=1, rep_seconds=0.0, warmup_seconds=0.0, gemm_sizes=())
    rows, _ = run_benchmark(plan, providers, options)
    assert [r["cpu_isa"] for r in rows] == [runnable[0], os.environ.get("COMHE_CPU_ISA") or runnable[-1]]


def test_criteria_judge_each_isa_level():
    rows = [
        {"n": 16384, "k": 256, "provider": "cpu@avx2", "status": "ok", "time_median_s": 1.2},
        {"n": 16384, "k": 256, "provider": "cpu@avx512", "status": "ok", "time_median_s": 0.9},
    ]
    acceptance = presets.PRESETS["acceptance"].criteria
    verdicts = {v["criterion"]: v["verdict"] for v in evaluate_criteria(acceptance, rows)}
    assert verdicts["N=16384 k=256: fused under 1.0 s (cpu@avx2)"] == "FAIL"
    assert verdicts["N=16384 k=256: fused under 1.0 s (cpu@avx512)"] == "PASS"


def test_failing_providers_are_reported_not_timed(tmp_path):
    json_path = tmp_path / "rows.json"
    providers = _providers_with(WRONG, WRONG_BASELINE, RAISES, UNAVAILABLE)
    argv = ["--n", "48", "--k", "4", "--device", "cpu", "--json", str(json_path), *FAST]
    argv += ["--providers", "wrong", "wrong-baseline", "raises", "unavailable", "cpu"]
    assert main(argv, providers=providers) == 0
    rows = {r["provider"]: r for r in json.loads(json_path.read_text())["rows"]}

    wrong = rows["wrong"]
    assert wrong["status"] == "failed" and "outside the tolerance" in wrong["reason"]
    assert wrong["energy_rel_err"] == pytest.approx(1e-3, rel=1e-3)
    assert wrong["time_median_s"] is None and wrong["reps"] is None and wrong["peak_extra_bytes"] is None

    # The same error in a gram-form baseline: timed, and labelled with its error.
    baseline = rows["wrong-baseline"]
    assert baseline["status"] == "inaccurate" and baseline["time_median_s"] > 0
    assert baseline["energy_rel_err"] == pytest.approx(1e-3, rel=1e-3)

    assert rows["raises"]["status"] == "failed" and rows["raises"]["reason"] == "RuntimeError: kernel exploded"
    assert rows["unavailable"]["status"] == "skipped"
    assert rows["unavailable"]["reason"] == "needs a device this machine does not have"
    assert rows["cpu"]["status"] == "ok" and rows["cpu"]["time_median_s"] > 0


def test_strict_does_not_time_failing_baselines():
    plan = Plan(items=[(Case(32, 3), "wrong-baseline")])
    options = BenchOptions(strict=True, gemm_sizes=(), rep_seconds=0.01, warmup_seconds=0)
    rows, peaks = run_benchmark(plan, _providers_with(WRONG_BASELINE), options)
    assert rows[0]["status"] == "failed" and "time_median_s" not in rows[0] and peaks == {}


def test_cases_over_the_memory_budget_are_skipped_with_the_reason(tmp_path):
    json_path = tmp_path / "rows.json"
    argv = ["--n", "2048", "--k", "3", "--providers", "reference", "--max-memory-gib", "0.01"]
    assert main([*argv, *FAST, "--json", str(json_path)]) == 0
    (row,) = json.loads(json_path.read_text())["rows"]
    assert row["status"] == "skipped"
    assert row["reason"] == "needs ~0.125 GiB (reference's memory model) > 0.01 GiB (--max-memory-gib)"


def test_gpu_preset_dry_run_walks_every_step(tmp_path, capsys):
    # What benchmarks/gpu_check.sh runs, without measuring: on a machine
    # without a GPU every CUDA item is planned, and says why it would be skipped.
    argv = ["--preset", "gpu", "--dry-run", "--max-memory-gib", "125", "--out", str(tmp_path)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu_cuda.csv", "gpu_cuda.json", "gpu_cuda.txt"]
    assert (tmp_path / "gpu_cuda.txt").read_text().splitlines()[0] == "comhe-bench " + " ".join(argv)
    doc = json.loads((tmp_path / "gpu_cuda.json").read_text())
    assert doc["meta"]["dry_run"] is True and doc["meta"]["ceilings"] == {}
    rows = {(r["provider"], r["b"], r["n"], r["k"]): r for r in doc["rows"]}
    assert all(r["status"] == "dry run" and r["device"] == "cuda" and r["time_median_s"] is None for r in doc["rows"])
    fused = [
        name
        for name, b in _registry.backends().items()
        if b.auto_rank is not None and (b.devices is None or "cuda" in b.devices)
    ]
    providers = ("reference", "compiled", "keops", *fused)
    for n in (4096, 16384, 65536, 262144):
        for k in (3, 32, 256, 512):
            assert {p for p, b_, n_, k_ in rows if (b_, n_, k_) == (1, n, k)} == set(providers)
    assert {p for p, b, n, k in rows if (b, n, k) == (20, 512, 40)} == set(providers)  # the RP-CoMHE batch
    assert rows[("reference", 1, 100000, 512)]["reason"].startswith("would be skipped: needs ~298 GiB")
    assert rows[("reference", 1, 65536, 3)]["reason"] == (
        "would be skipped: needs ~128 GiB (reference's memory model) > 125 GiB (--max-memory-gib)"
    )
    assert rows[("compiled", 1, 65536, 32)]["reason"] == "would run: needs ~32 of 125 GiB (compiled's memory model)"
    assert rows[(fused[0], 1, 262144, 512)]["reason"] == "would run"
    if not torch.cuda.is_available():
        assert "not run here: reference (cuda): no CUDA device" in out
        assert "would measure the ceilings on cuda: float32, tf32, bfloat16 matmul (8192^3)" in out
    assert all(v["verdict"] == "not measured" for v in doc["criteria"]) and doc["criteria"]


def test_the_main_job_runs_without_matplotlib_and_pykeops(tmp_path, monkeypatch, capsys):
    # A base install: rich and torch, neither matplotlib nor pykeops. The
    # sitecustomize below hides both from the command and the workers it spawns.
    hide = 'import sys\nsys.modules["matplotlib"] = sys.modules["pykeops"] = None\n'
    (tmp_path / "sitecustomize.py").write_text(hide)
    argv = ["--n", "64", "--k", "3", "--providers", "keops", "cpu", "--device", "cpu", *FAST]
    out = subprocess.run([sys.executable, "-m", "comhe_kernels.bench", *argv], capture_output=True, text=True,
                         timeout=300, cwd=tmp_path, env=child_env(extra_path=[tmp_path]))
    assert out.returncode == 0, out.stderr
    assert "not run: keops (cpu): pykeops is not installed (pip install pykeops)" in out.stdout
    assert any(line.startswith("│ cpu ") and line.rstrip(" │").endswith("ok") for line in out.stdout.splitlines())
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(SystemExit) as exit_info:
        main(["--n", "64", "--plot", str(tmp_path / "x.png")])
    assert exit_info.value.code == 2
    assert "argument --plot: needs matplotlib: pip install matplotlib" in capsys.readouterr().err
