"""The benchmark CLI (comhe_kernels.bench): arguments, the oracle and the
providers' math in process, and tiny sweeps end to end through worker processes.

The providers defined here reach the worker processes by reference: the spawn
start method hands this process's sys.path to the worker, which imports this
module by name. The checks below read each row's reason, so a worker that could
not import them would fail these tests instead of passing them by accident.
"""

import csv
import functools
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import comhe_kernels
from comhe_kernels.bench import cli, main
from comhe_kernels.bench.cases import BenchOptions, Case, make_points
from comhe_kernels.bench.oracle import (
    check_result,
    compute_oracle,
    exact_energy,
    exact_grad_rows,
)
from comhe_kernels.bench.providers import (
    Provider,
    Unavailable,
    chunked_energy,
    default_providers,
    keops_energy,
    naive_energy,
)
from comhe_kernels.bench.report import ROW_FIELDS, evaluate_criteria
from comhe_kernels.bench.runner import (
    Plan,
    quantile,
    reps_for,
    run_benchmark,
    skip_reason,
    warm_up,
)

FAST = ["--gemm-sizes", "256", "--rep-seconds", "0.01", "--warmup-seconds", "0", "--min-reps", "2", "--max-reps", "3"]

# --------------------------------------------------------------------------- fake providers


def _scaled_energy(x, spec, factor):
    return factor * naive_energy(x.double(), spec)


def _build_off_by_1e3(case, options, x):
    """A provider whose energy is 0.1% too large: outside every tolerance."""
    return functools.partial(_scaled_energy, spec=case.spec(), factor=1 + 1e-3)


def _build_raises(case, options, x):
    def boom(x):
        raise RuntimeError("kernel exploded")

    return boom


def _build_unavailable(case, options, x):
    raise Unavailable("needs a device this machine does not have")


WRONG = Provider("wrong", "0.1% off", _build_off_by_1e3)
WRONG_BASELINE = Provider("wrong-baseline", "0.1% off, a naive-math baseline", _build_off_by_1e3, naive_math=True)
RAISES = Provider("raises", "raises", _build_raises)
UNAVAILABLE = Provider("unavailable", "raises Unavailable", _build_unavailable)


def _registry(*extra):
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


def test_module_entry_point_and_help():
    # The package's parent on the child's path, however this process found it.
    root = str(Path(comhe_kernels.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    out = subprocess.run(
        [sys.executable, "-m", "comhe_kernels.bench", "--help"], capture_output=True, text=True, timeout=120, env=env
    )
    assert out.returncode == 0, out.stderr
    assert "comhe-bench" in out.stdout and "--preset" in out.stdout and "acceptance" in out.stdout


def test_list_providers_says_why_gpu_backends_do_not_run(capsys):
    assert main(["--list-providers", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "cpu        cpu   runs" in out
    assert "triton     cpu   unavailable: runs on cuda tensors only" in out


# --------------------------------------------------------------------------- planning


def test_plan_orders_by_n_dedupes_and_sets_aside_unavailable_providers():
    groups = (cli.Group(n=(1024, 256), k=(3,)), cli.Group(n=(256,), k=(3,), providers=("cpu",)))
    plan = cli.make_plan(groups, default_providers(), ("cpu",), 0, {}, ("reference", "cpu", "triton"))
    assert [(c.n, name) for c, name in plan.items] == [
        (256, "reference"),
        (256, "cpu"),
        (1024, "reference"),
        (1024, "cpu"),
    ]
    assert plan.not_run == {"triton (cpu)": "runs on cuda tensors only"}


def test_overrides_replace_the_preset_lists():
    plan = cli.make_plan(
        cli.PRESETS["quick"].groups, default_providers(), ("cpu",), 3, {"k": (5,), "dtype": ("float64",)}, ("cpu",)
    )
    assert [(c.n, c.k, c.dtype, c.seed) for c, _ in plan.items] == [(n, 5, "float64", 3) for n in (256, 1024, 4096)]


def test_acceptance_preset_runs_exactly_the_target_cases():
    plan = cli.make_plan(cli.PRESETS["acceptance"].groups, default_providers(), ("cpu",), 0, {}, None)
    got = {(c.n, c.k, c.power, c.dtype, c.mode, name) for c, name in plan.items}
    want = {(16384, k, "1", "float32", "fwd+bwd", p) for k in (3, 32) for p in ("reference", "keops", "cpu")}
    want |= {(16384, 256, "1", "float32", "fwd+bwd", p) for p in ("reference", "cpu")}
    want |= {(65536, k, "1", "float32", "fwd+bwd", p) for k in (3, 32) for p in ("reference", "cpu")}
    if default_providers()["keops"].unavailable_reason("cpu"):
        want = {w for w in want if w[-1] != "keops"}
    assert got == want


def test_skip_reasons_memory_model_and_time_prediction():
    reference = default_providers()["reference"]
    options = BenchOptions(max_memory_bytes=24 * 2**30, max_call_seconds=30)
    reason = skip_reason(reference, Case(65536, 32), options, {})
    assert reason == "needs ~128 GiB (reference's memory model) > 24 GiB (--max-memory-gib)"
    on_gpu = replace(options, max_cuda_memory_bytes=80 * 2**30)  # a CUDA case is held to the GPU's memory
    reason = skip_reason(reference, Case(65536, 32, device="cuda"), on_gpu, {})
    assert reason == "needs ~128 GiB (reference's memory model) > 80 GiB (--max-memory-gib)"
    assert skip_reason(reference, Case(32768, 32, device="cuda"), on_gpu, {}) is None  # 32 GiB
    history = {("reference", Case(2048, 32).series()): (2048, 1.0)}  # 1 s at 2048 points
    assert skip_reason(reference, Case(8192, 32), options, history) is None  # ~16 s
    reason = skip_reason(reference, Case(16384, 32), options, history)
    assert reason == "predicted ~64 s per call (1 s at 2048 points, x N^2) > 30 s (--max-call-seconds)"
    # Another series (here k) has no history: no prediction.
    assert skip_reason(reference, Case(16384, 3), options, history) is None


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
    verdicts = {v["criterion"]: v["verdict"] for v in evaluate_criteria(cli.ACCEPTANCE, rows)}
    assert verdicts["N=16384 k=32: fused >= 40x faster than the reference"] == "PASS"
    assert verdicts["N=16384 k=32: fused >= 30x faster than pykeops"] == "not measured"
    assert verdicts["N=65536: the reference is skipped, with the reason"] == "PASS"
    rows[0]["speedup_vs_reference"] = 39.9
    verdicts = {v["criterion"]: v["verdict"] for v in evaluate_criteria(cli.ACCEPTANCE, rows)}
    assert verdicts["N=16384 k=32: fused >= 40x faster than the reference"] == "FAIL"


# --------------------------------------------------------------------------- the oracle and the providers' math

SPECS = [("1", False), ("0", False), ("2", True), ("1.5", False), ("a0", False), ("a1", True), ("a2", False)]


@pytest.mark.parametrize("power, half", SPECS)
def test_blocked_oracle_matches_the_exact_reference(power, half):
    case = Case(150, 4, power, half, "float64")
    x = make_points(case)
    # Close pairs: the refinement in the difference form must keep full precision.
    x[1] = x[0] + 1e-6
    x64 = x.clone().requires_grad_()
    e = comhe_kernels.reference.hyperspherical_energy(x64, case.power_arg, half_space=half, reduction="sum")
    (g,) = torch.autograd.grad(e, x64)
    got = exact_energy(x, case.spec(), tile=40)  # diagonal, full and ragged tiles
    assert got == pytest.approx(e.item(), rel=1e-12)
    rows = torch.tensor([0, 1, 7, 149])
    torch.testing.assert_close(
        exact_grad_rows(x, case.spec(), rows, chunk=3), g[rows], rtol=1e-10, atol=1e-10 * g.abs().max()
    )


def test_sampled_oracle_is_used_for_large_sets_and_catches_a_wrong_row():
    case = Case(300, 3)
    oracle = compute_oracle(case, BenchOptions(full_check_points=100, check_rows=20))
    assert oracle.rows.numel() == 20 and "20 random rows" in oracle.method
    x = make_points(case).double().requires_grad_()
    e = comhe_kernels.reference.hyperspherical_energy(x, 1, reduction="sum")
    (g,) = torch.autograd.grad(e, x)
    e_err, g_err, passed = check_result(case, oracle, e.item(), g)
    assert passed and e_err < 1e-12 and g_err < 1e-12
    g[oracle.rows[5], 1] += 2e-3 * g.abs().max()
    assert check_result(case, oracle, e.item(), g)[2] is False
    assert check_result(case, oracle, math.nan, g)[0] == math.inf


@pytest.mark.parametrize("power, half", SPECS)
def test_chunked_energy_and_gradient(power, half):
    case = Case(70, 5, power, half, "float64")
    x = make_points(case).requires_grad_()
    e = chunked_energy(x, case.spec(), block_rows=16)
    (g,) = torch.autograd.grad(e, x)
    oracle = compute_oracle(case, BenchOptions())
    e_err, g_err, _ = check_result(case, oracle, e.item(), g)
    assert e_err < 1e-12 and g_err < 1e-10


@pytest.mark.skipif(default_providers()["keops"].unavailable_reason("cpu") is not None, reason="pykeops not installed")
@pytest.mark.parametrize("half", [False, True])
def test_keops_energy_and_gradient(half):
    # s = 1, k = 3, float32: the formulas the end-to-end sweeps compile (cached on disk by pykeops).
    case = Case(90, 3, "1", half)
    x = make_points(case).requires_grad_()
    e = keops_energy(x, case.spec())
    (g,) = torch.autograd.grad(e, x)
    e_err, g_err, passed = check_result(case, compute_oracle(case, BenchOptions()), e.item(), g)
    assert passed, (e_err, g_err)


# --------------------------------------------------------------------------- end to end


def test_tiny_sweep_writes_table_csv_json_and_plot(tmp_path, capsys):
    csv_path, json_path, png_path = tmp_path / "rows.csv", tmp_path / "rows.json", tmp_path / "plot.png"
    argv = ["--n", "40", "80", "--k", "3", "--providers", "reference", "cpu", "--device", "cpu", *FAST]
    argv += ["--csv", str(csv_path), "--json", str(json_path), "--plot", str(png_path)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "median (p20-p80)" in out and "pairs/s" in out and "peak: sgemm on cpu, measured in this run" in out

    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == ROW_FIELDS
        csv_rows = list(reader)
    assert [(r["provider"], r["n"]) for r in csv_rows] == [
        ("reference", "40"),
        ("cpu", "40"),
        ("reference", "80"),
        ("cpu", "80"),
    ]

    doc = json.loads(json_path.read_text())
    assert set(doc) == {"meta", "rows", "criteria"} and doc["criteria"] == []
    meta = doc["meta"]
    for key in (
        "device_names",
        "threads",
        "load_avg_start",
        "omp_wait_policy",
        "torch",
        "git_sha",
        "timestamp",
        "command",
    ):
        assert meta[key] not in (None, ""), key
    assert meta["command"].startswith("comhe-bench --n 40 80") and meta["flop_model"].startswith("2k flops per pair")
    assert meta["peak_gflops"]["cpu/float32"] > 0
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
    assert cpu40["speedup_vs_reference"] == pytest.approx(ref40["time_median_s"] / cpu40["time_median_s"])
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_failing_providers_are_reported_not_timed(tmp_path):
    json_path = tmp_path / "rows.json"
    providers = _registry(WRONG, WRONG_BASELINE, RAISES, UNAVAILABLE)
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
    rows, peaks = run_benchmark(plan, _registry(WRONG_BASELINE), options)
    assert rows[0]["status"] == "failed" and "time_median_s" not in rows[0] and peaks == {}


def test_cases_over_the_memory_budget_are_skipped_with_the_reason(tmp_path):
    json_path = tmp_path / "rows.json"
    argv = ["--n", "2048", "--k", "3", "--providers", "reference", "--max-memory-gib", "0.01"]
    assert main([*argv, *FAST, "--json", str(json_path)]) == 0
    (row,) = json.loads(json_path.read_text())["rows"]
    assert row["status"] == "skipped"
    assert row["reason"] == "needs ~0.125 GiB (reference's memory model) > 0.01 GiB (--max-memory-gib)"
