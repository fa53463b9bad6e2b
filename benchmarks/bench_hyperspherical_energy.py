"""The providers of comhe-bench under pytest-benchmark, at small sizes.

    pytest benchmarks --benchmark-only                  # about a minute on 2 cores
    pytest benchmarks --benchmark-only --benchmark-json=out.json

Each benchmark checks its provider against the float64 oracle first (the same
check as comhe-bench): the fused op must pass; the gram-form baselines record
their error in extra_info (in float32 they may legitimately miss the
tolerance for close pairs). For large N, peak memory, GFLOP/s next to the
GEMM peak and the acceptance targets, use the comhe-bench command.
"""

import pytest

from comhe_kernels.bench.cases import BenchOptions, Case, make_inputs
from comhe_kernels.bench.oracle import check_result, compute_oracle
from comhe_kernels.bench.providers import default_providers

PROVIDERS = default_providers()
OPTIONS = BenchOptions()
CASES = [Case(n, k) for n in (512, 2048) for k in (3, 32)]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"N{c.n}-k{c.k}")
@pytest.mark.parametrize("name", ["reference", "chunked", "keops", "cpu"])
def test_energy_and_gradient(benchmark, name, case):
    provider = PROVIDERS[name]
    why = provider.unavailable_reason(case.op, case.device)
    if why is not None:
        pytest.skip(why)
    (x,) = inputs = tuple(t.requires_grad_() for t in make_inputs(case))
    fn = provider.build(case, OPTIONS, inputs)

    def energy_and_grad():
        x.grad = None
        energy = fn(x)
        energy.backward()
        return energy.detach(), (x.grad,)

    energy, grads = energy_and_grad()
    e_err, g_err, passed = check_result(case, compute_oracle(case, OPTIONS), float(energy), grads)
    if not provider.naive_math:
        assert passed, f"{name}: energy error {e_err:.2e}, gradient error {g_err:.2e}"
    benchmark.group = f"N={case.n} k={case.k} float32 fwd+bwd"
    benchmark.extra_info.update(
        pairs=case.pairs, flops=case.flops, energy_rel_err=e_err, grad_rel_err=g_err, passed=passed
    )
    benchmark.pedantic(energy_and_grad, rounds=5, warmup_rounds=1)
