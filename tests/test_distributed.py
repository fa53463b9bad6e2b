"""comhe_kernels.distributed against one process: the sharded energy over 2 and
3 gloo processes on the CPU (every kind, half-space, reductions, batched,
uneven rows with empty ranks, 16-bit input, a subgroup), its errors on every rank
(disagreeing arguments, a NaN row, a rank that stalls or fails: bounded
time), the replicated split under DDP, and the plans' pair coverage.

Process start-up dominates (about 5 s per world on 2 cores), so each world
size is one spawn that runs every check and saves its results; the tests
then compare them with the single-process op here. Tolerances: conftest.py
(the float64 row: the union's energy is a different summation order of the
same float64 pair terms, so it is within the same bound as the op).
"""

from __future__ import annotations

import datetime
import os
import time
import traceback
import zlib
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import assert_energy_close, assert_grad_close

import comhe_kernels
from comhe_kernels import distributed, num_pairs
from comhe_kernels.distributed._plan import plan
from comhe_kernels.distributed.replicated import block_bounds

# (backend, world size): gloo on the CPU; NCCL where two GPUs are present (a draft until one runs it).
WORLDS = [
    pytest.param(("gloo", 2), id="gloo-2ranks"),
    pytest.param(("gloo", 3), id="gloo-3ranks"),
    pytest.param(("nccl", 2), id="nccl-2ranks", marks=[
        pytest.mark.cuda,
        pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices"),
    ]),
]
# Row counts per rank: uneven, with ranks that hold no rows (and a union without pairs).
SIZES = {
    2: [[13, 9], [0, 17], [1, 0], [20, 21], [2, 1], [0, 0]],
    3: [[5, 0, 11], [7, 7, 7], [0, 0, 3], [1, 2, 0], [12, 3, 9], [0, 0, 0]],
}
TIMEOUT = 2.0  # seconds: the bound of the stalled-rank checks


@dataclass(frozen=True)
class Case:
    id: str
    power: object
    half_space: bool = False
    reduction: str = "mean"
    batched: bool = False
    k: int = 5
    sizes: int = 0  # index into SIZES[world]
    squared_log: bool = False
    dtype: torch.dtype = torch.float64

    def kwargs(self) -> dict:
        return dict(power=self.power, half_space=self.half_space, reduction=self.reduction,
                    squared_log=self.squared_log)

    def points(self, world: int) -> tuple[torch.Tensor, list[int]]:
        sizes = SIZES[world][self.sizes]
        g = torch.Generator().manual_seed(zlib.crc32(self.id.encode()))
        shape = (2, sum(sizes), self.k) if self.batched else (sum(sizes), self.k)
        return torch.randn(shape, generator=g, dtype=torch.float64).to(self.dtype), sizes


def _cases() -> list[Case]:
    cases = []
    kinds = [1, 2, 0, 1.5, "a0", "a1", "a2", "g2"]
    for i, power in enumerate(kinds):
        for half_space in (False, True):
            tag = f"{power}-{'half' if half_space else 'full'}"
            cases.append(Case(tag, power, half_space, sizes=(i + half_space) % 5, squared_log=power == 0))
    for reduction in ("mean", "sum", "none"):
        for batched in (False, True):
            cases.append(Case(f"{reduction}-{'batched' if batched else 'one-set'}", 1, True, reduction, batched,
                              sizes=3 if batched else 1))
    cases += [
        Case("gram-path-k20", 1, True, k=20, sizes=4),
        Case("gram-path-k20-a1", "a1", k=20, sizes=0),
        Case("empty-union", 1, True, sizes=5),
        Case("float32", 1, True, dtype=torch.float32, sizes=3),
        Case("bfloat16", "a2", False, "sum", dtype=torch.bfloat16, sizes=4),
    ]
    return cases


CASES = _cases()


def _rows(x: torch.Tensor, sizes: list[int], rank: int) -> torch.Tensor:
    start = sum(sizes[:rank])
    return x[..., start:start + sizes[rank], :]


# ---------------------------------------------------------------- the worker (one process per rank)


def _expect_error(fn) -> dict:
    """Run ``fn`` and record the exception it must raise (type, message, seconds)."""
    t = time.perf_counter()
    try:
        fn()
    except Exception as e:  # recorded; the test in the parent asserts the type and the message
        return {"type": type(e).__name__, "message": str(e), "seconds": time.perf_counter() - t}
    return {"type": None, "message": "no error", "seconds": time.perf_counter() - t}


def _energy_checks(rank: int, world: int, device: str) -> dict:
    out = {}
    for case in CASES:
        x, sizes = case.points(world)
        x_local = _rows(x, sizes, rank).to(device).requires_grad_()
        e = distributed.hyperspherical_energy(x_local, **case.kwargs())
        e.sum().backward()
        e2, g2 = distributed.hyperspherical_energy_and_grad(x_local.detach(), **case.kwargs())
        with torch.no_grad():
            e3 = distributed.hyperspherical_energy(x_local, **case.kwargs())
        cpu = lambda t: t.detach().cpu()  # noqa: E731
        out[case.id] = {"energy": cpu(e), "grad": cpu(x_local.grad), "energy_and_grad": (cpu(e2), cpu(g2)),
                        "no_grad": cpu(e3)}
    # Only some ranks differentiate: the others still compute the visitors' gradients for them.
    x, sizes = CASES[1].points(world)
    x_local = _rows(x, sizes, rank).to(device).requires_grad_(rank == 0)
    e = distributed.hyperspherical_energy(x_local, **CASES[1].kwargs())
    grad = torch.autograd.grad(e, x_local)[0].cpu() if rank == 0 else None
    out["mixed"] = {"energy": e.detach().cpu(), "grad": grad}
    # First derivatives only, as the op.
    x_local = _rows(x, sizes, rank).to(device).requires_grad_()
    e = distributed.hyperspherical_energy(x_local, 1)
    (g,) = torch.autograd.grad(e, x_local, create_graph=True)
    out["second_derivative"] = _expect_error(lambda: g.sum().backward())
    return out


def _disagreement_checks(rank: int, device: str) -> dict:
    """Each rank but the last passes the good arguments; the last passes the bad one."""
    x = torch.randn(6, 4, dtype=torch.float64, device=device)
    last = rank == dist.get_world_size() - 1
    bad_rows = x.clone()
    bad_rows[4, 1] = float("nan")
    calls = {
        "k": lambda: distributed.hyperspherical_energy(torch.randn(6, 5).to(x) if last else x),
        "dtype": lambda: distributed.hyperspherical_energy(x.float() if last else x),
        "power": lambda: distributed.hyperspherical_energy(x, "a1" if last else 1),
        "half_space": lambda: distributed.hyperspherical_energy(x, 1, half_space=last),
        "ndim": lambda: distributed.hyperspherical_energy(x[None] if last else x),
        "nan": lambda: distributed.hyperspherical_energy(bad_rows if last else x),
        "bad_argument": lambda: distributed.hyperspherical_energy(x, reduction="bogus" if last else "mean"),
    }
    return {name: _expect_error(call) for name, call in calls.items()}


def _subgroup_check(rank: int, device: str):
    """Ranks 0 and 2 of 3 in their own group (group ranks 0 and 1; messages name the global ranks)."""
    sub = dist.new_group([0, 2])  # every rank creates it
    if rank == 1:
        return None
    x = SUBGROUP_POINTS
    x_local = (x[:7] if rank == 0 else x[7:]).to(device).requires_grad_()
    e = distributed.hyperspherical_energy(x_local, "g2", half_space=True, group=sub)
    e.backward()
    return e.detach().cpu(), x_local.grad.cpu()


SUBGROUP_POINTS = torch.randn(16, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)


def _ddp_model() -> torch.nn.Module:
    """Fan-ins 12, 23, 17: with proj_dim 4 the middle layer is projected (the first is the input layer)."""
    torch.manual_seed(0)  # the same weights on every rank and in the parent
    return torch.nn.Sequential(torch.nn.Linear(12, 23), torch.nn.Tanh(), torch.nn.Linear(23, 17), torch.nn.Tanh(),
                               torch.nn.Linear(17, 5)).double()


# CoMHE's variants with settings that give every layer a term; seeded draws, the same on every rank.
DDP_VARIANTS = {
    "mhe": dict(power=1),
    "rp": dict(proj_dim=4, num_proj=3, generator=5),
    "ap": dict(proj_dim=4, lr=0.1, generator=5),
    "adv": dict(proj_dim=4, lr=0.1, proj_steps=2, generator=5, power="a1"),
    "group": dict(num_groups=2, power=0),
}


def _ddp_data():
    return torch.randn(8, 12, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def _ddp_check(rank: int) -> dict:
    """DDP models whose loss adds the regularizer with distributed=True: the
    averaged gradients must be one process's gradients of data loss + regularizer.
    The data are the same on every rank, so the data term's average is one process's."""
    out, keep = {}, []
    for variant, kwargs in DDP_VARIANTS.items():
        model = _ddp_model()
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        reg = comhe_kernels.CoMHE(ddp, variant, distributed=True, **kwargs)
        loss = ddp(_ddp_data()).square().mean() + reg()
        loss.backward()
        out[variant] = {"grads": [p.grad.clone() for p in model.parameters()], "buffers": list(reg.buffers())}
        keep.append(ddp)  # freeing a Reducer can deadlock in torch 2.13 (tests/test_regularizers.py)
    # replicated_energy itself, on weights of a DDP model.
    model = _ddp_model()
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    loss = ddp(_ddp_data()).square().mean()
    for layer, power, half_space in ((model[0], 2, True), (model[4], "a1", False)):
        loss = loss + distributed.replicated_energy(layer.weight, power, half_space=half_space)
    loss.backward()
    out["replicated_energy"] = {"grads": [p.grad.clone() for p in model.parameters()]}
    keep.append(ddp)
    return out


# The Thomson solver's evaluations over the ranks: (sets, points, dim, dtype, power).
THOMSON_CALLS = [(4, 23, 3, torch.float64, 1.0), (2, 10, 5, torch.float32, 0.0), (1, 2, 3, torch.float64, 2.0)]


def _thomson_points(b, n, k, dtype):
    x = torch.randn(b, n, k, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
    return (x / x.norm(dim=-1, keepdim=True)).to(dtype)


def _thomson_check(rank: int, device: str) -> list:
    """Rank 0 evaluates through ShardedEnergyAndGrad while the others serve, for each power."""
    from comhe_kernels.distributed.thomson import ShardedEnergyAndGrad, serve

    out = []
    for b, n, k, dtype, power in THOMSON_CALLS:
        if rank == 0:
            evaluation = ShardedEnergyAndGrad(power)
            energy, grad = evaluation(_thomson_points(b, n, k, dtype).to(device))
            energy2, _ = evaluation(_thomson_points(b, n, k, dtype).to(device))  # a second call, same answer
            evaluation.close()
            out.append((energy.cpu(), grad.cpu(), energy2.cpu()))
        else:
            serve(power, device=device)
    return out


def _thomson_cli_check(rank: int, out_dir: str) -> int:
    """comhe-thomson in processes that a launcher started (as torchrun's: WORLD_SIZE set)."""
    os.environ["WORLD_SIZE"] = str(dist.get_world_size())
    out = os.path.join(out_dir, "thomson12.npy")
    return comhe_kernels.thomson.main(["12", "--quiet", "--restarts", "2", "--patience", "1", "--out", out])


def _stalled_rank_check(rank: int, world: int) -> dict:
    """The last rank never makes the call (it stalls elsewhere): the others must raise within TIMEOUT."""
    x = torch.randn(4, 3, dtype=torch.float64)
    if rank == world - 1:
        time.sleep(TIMEOUT + 3)
        return {"type": "stalled", "message": "", "seconds": 0.0}
    return _expect_error(lambda: distributed.hyperspherical_energy(x, timeout=TIMEOUT))


def _failing_rank_check(rank: int, world: int) -> dict:
    """The last rank raises inside the ring, after the first blocks were passed:
    the others must raise within TIMEOUT (they wait for its gradient and its energy)."""
    x = torch.randn(4, 3, dtype=torch.float64)
    if rank == world - 1:
        from comhe_kernels.ops import hyperspherical_energy as op

        def broken(*args, **kwargs):
            raise RuntimeError("this rank's kernel failed")

        op.hyperspherical_energy_and_grad, original = broken, op.hyperspherical_energy_and_grad
        try:
            result = _expect_error(lambda: distributed.hyperspherical_energy_and_grad(x, timeout=TIMEOUT))
        finally:
            op.hyperspherical_energy_and_grad = original
        time.sleep(TIMEOUT + 3)
        return result
    return _expect_error(lambda: distributed.hyperspherical_energy_and_grad(x, timeout=TIMEOUT))


def _worker(rank: int, world: int, backend: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    device = "cpu"
    if backend == "nccl":
        torch.cuda.set_device(rank)
        device = f"cuda:{rank}"
    results = {}
    try:
        store = os.path.join(out_dir, "store")  # a file store: no port to race other programs for
        dist.init_process_group(backend, init_method=f"file://{store}", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=60))
        results["energy"] = _energy_checks(rank, world, device)
        results["disagree"] = _disagreement_checks(rank, device)
        results["thomson"] = _thomson_check(rank, device)
        if world == 3:
            results["subgroup"] = _subgroup_check(rank, device)
        if backend == "gloo" and world == 2:
            results["thomson_cli"] = _thomson_cli_check(rank, out_dir)
        if backend == "gloo" and world == 2:
            results["ddp"] = _ddp_check(rank)
            results["stalled"] = _stalled_rank_check(rank, world)  # leaves the group unusable: last
        elif backend == "gloo":
            results["failing"] = _failing_rank_check(rank, world)  # the same
    except Exception:
        results["crash"] = traceback.format_exc()
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    # The group's peers may have timed out: leave without the collective teardown.
    os._exit(0)


@pytest.fixture(scope="module", params=WORLDS)
def world(request, tmp_path_factory):
    """(world size, per-rank results) of one spawn running every check."""
    backend, size = request.param
    out_dir = str(tmp_path_factory.mktemp(f"{backend}{size}"))
    ctx = mp.spawn(_worker, args=(size, backend, out_dir), nprocs=size, join=False)
    deadline = time.monotonic() + 300  # a hang fails the tests instead of stalling CI
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"the {size} {backend} workers did not finish in 300 s")
    results = [torch.load(os.path.join(out_dir, f"rank{r}.pt"), weights_only=False) for r in range(size)]
    for r, res in enumerate(results):
        assert "crash" not in res, f"rank {r} crashed:\n{res['crash']}"
    return size, results, out_dir


# ---------------------------------------------------------------- the tests


def _one_process(case: Case, x: torch.Tensor):
    """The energy and gradient of the union through the plain op, in float64."""
    xg = x.double().clone().requires_grad_()
    e = comhe_kernels.hyperspherical_energy(xg, **case.kwargs())
    (g,) = torch.autograd.grad(e.sum(), xg)
    return e.detach(), g


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_energy_and_gradient_equal_one_process(world, case):
    size, results, _ = world
    x, sizes = case.points(size)
    e_ref, g_ref = _one_process(case, x)
    pairs = num_pairs(sum(sizes), case.half_space) * (2 if case.batched else 1)
    for rank in range(size):
        res = results[rank]["energy"][case.id]
        for e in (res["energy"], res["energy_and_grad"][0], res["no_grad"]):
            assert_energy_close(e, e_ref, case.dtype, pairs)
        g_rows = _rows(g_ref, sizes, rank)
        _assert_rows_close(res["grad"], g_rows, case.dtype)
        _assert_rows_close(res["energy_and_grad"][1], g_rows, case.dtype)
        # As the op: 16-bit input is computed in float32, the gradient returned in its dtype.
        assert res["energy"].dtype == comhe_kernels.hyperspherical_energy(x[..., :2, :], 1).dtype
        assert res["grad"].dtype == case.dtype


def _assert_rows_close(g, g_ref, dtype):
    """assert_grad_close, for a rank that may hold no rows."""
    assert g.shape == g_ref.shape
    if g_ref.numel() > 0:
        assert_grad_close(g, g_ref, dtype)


def test_ranks_that_do_not_differentiate_still_serve_the_others(world):
    size, results, _ = world
    case = CASES[1]
    x, sizes = case.points(size)
    e_ref, g_ref = _one_process(case, x)
    for rank in range(size):
        assert_energy_close(results[rank]["energy"]["mixed"]["energy"], e_ref, torch.float64, 1)
    _assert_rows_close(results[0]["energy"]["mixed"]["grad"], _rows(g_ref, sizes, 0), torch.float64)


def test_second_derivative_raises(world):
    for res in world[1]:
        err = res["energy"]["second_derivative"]
        assert err["type"] == "RuntimeError" and "second derivative" in err["message"]


@pytest.mark.parametrize("name", ["k", "dtype", "power", "half_space", "ndim"])
def test_disagreeing_ranks_all_raise(world, name):
    for rank, res in enumerate(world[1]):
        err = res["disagree"][name]
        assert err["type"] == "ValueError", err
        assert f"disagree on {name}" in err["message"], err["message"]


def test_a_nan_row_on_one_rank_raises_on_every_rank(world):
    size, results, _ = world
    for res in results:
        err = res["disagree"]["nan"]
        assert err["type"] == "ValueError"
        assert f"x_local of rank {size - 1} contains NaN or Inf (set 0, row 4)" in err["message"]


def test_a_bad_argument_on_one_rank_raises_on_every_rank(world):
    size, results, _ = world
    for rank, res in enumerate(results):
        err = res["disagree"]["bad_argument"]
        assert err["type"] == "ValueError"
        expected = "reduction must be one of" if rank == size - 1 else f"rank {size - 1} rejected its arguments"
        assert expected in err["message"], err["message"]


def test_a_stalled_or_failing_rank_makes_the_others_raise_in_bounded_time(world):
    size, results, _ = world
    if "stalled" not in results[0] and "failing" not in results[0]:
        pytest.skip("the gloo worlds check it (NCCL's timeouts are its watchdog's)")
    key = "stalled" if size == 2 else "failing"
    for rank in range(size - 1):
        err = results[rank][key]
        assert err["type"] == "RuntimeError", err
        assert "timeout=2 s" in err["message"] and "not usable after this" in err["message"], err["message"]
        assert err["seconds"] < TIMEOUT + 2.0, err
    if key == "failing":
        assert results[size - 1][key]["message"] == "this rank's kernel failed"


@pytest.mark.parametrize("variant", [*DDP_VARIANTS, "replicated_energy"])
def test_ddp_with_the_replicated_split_gives_the_one_process_gradient(world, variant):
    size, results, _ = world
    if "ddp" not in results[0]:
        pytest.skip("the DDP checks run in the 2-rank gloo world")
    model = _ddp_model()
    loss = model(_ddp_data()).square().mean()
    if variant == "replicated_energy":
        loss = loss + comhe_kernels.hyperspherical_energy(model[0].weight, 2, half_space=True)
        loss = loss + comhe_kernels.hyperspherical_energy(model[4].weight, "a1")
    else:
        reg = comhe_kernels.CoMHE(model, variant, **DDP_VARIANTS[variant])
        assert any(p.mode != "plain" for p in reg.layers) or variant == "mhe"
        loss = loss + reg()
    loss.backward()
    for rank in range(size):
        res = results[rank]["ddp"][variant]
        for g, p in zip(res["grads"], model.parameters()):
            assert_grad_close(g, p.grad, torch.float64)
        if variant != "replicated_energy":  # the learned projections moved the same way
            for b, b_ref in zip(res["buffers"], reg.buffers()):
                torch.testing.assert_close(b, b_ref, rtol=0, atol=0)


def test_the_regularizer_checks_its_distributed_setting():
    model = _ddp_model()
    with pytest.raises(TypeError, match="distributed must be a bool or a torch.distributed.ProcessGroup"):
        comhe_kernels.CoMHE(model, "mhe", distributed="yes")
    with pytest.raises(RuntimeError, match="distributed=True needs an initialized"):
        comhe_kernels.CoMHE(model, "mhe", distributed=True)


def test_a_subgroup_of_the_ranks(world):
    size, results, _ = world
    if "subgroup" not in results[0]:
        pytest.skip("the 3-rank worlds check a group of ranks 0 and 2")
    e_ref, g_ref = _one_process(Case("sub", "g2", True), SUBGROUP_POINTS)
    for rank, rows in ((0, slice(0, 7)), (2, slice(7, 16))):
        e, g = results[rank]["subgroup"]
        assert_energy_close(e, e_ref, torch.float64, num_pairs(16, True))
        assert_grad_close(g, g_ref[rows], torch.float64)


def test_the_thomson_evaluation_over_the_ranks_equals_the_op(world):
    size, results, _ = world
    for (b, n, k, dtype, power), (energy, grad, energy2) in zip(THOMSON_CALLS, results[0]["thomson"]):
        x = _thomson_points(b, n, k, dtype)
        e_ref, g_ref = comhe_kernels.hyperspherical_energy_and_grad(x.double(), power, eps=0.0, reduction="none")
        assert energy.dtype == torch.float64 and grad.dtype == dtype and grad.shape == x.shape
        assert_energy_close(energy, e_ref, dtype, num_pairs(n))
        assert_grad_close(grad, g_ref, dtype)
        torch.testing.assert_close(energy2, energy, rtol=0, atol=0)


BEST_12 = 49.165253058  # the icosahedron (../shared/ANCHORS.md)


def test_comhe_thomson_under_a_launcher_solves_on_rank_0(world):
    size, results, out_dir = world
    if "thomson_cli" not in results[0]:
        pytest.skip("the 2-rank gloo world runs it")
    assert [res["thomson_cli"] for res in results] == [0, 0]
    points = np.load(os.path.join(out_dir, "thomson12.npy"))
    assert abs(comhe_kernels.thomson.riesz_energy(points) - BEST_12) < 1e-8


def test_comhe_thomson_nproc_2(tmp_path, capfd):
    """The command line spawns the processes itself."""
    out = tmp_path / "p.npy"
    code = comhe_kernels.thomson.main(["12", "--nproc", "2", "--quiet", "--restarts", "2", "--patience", "1",
                                       "--out", str(out)])
    assert code == 0
    assert abs(comhe_kernels.thomson.riesz_energy(np.load(out)) - BEST_12) < 1e-8
    assert "energy        49.16525305" in capfd.readouterr().out


def test_comhe_thomson_nproc_must_be_positive(capsys):
    with pytest.raises(SystemExit):
        comhe_kernels.thomson.main(["12", "--nproc", "0"])
    assert "--nproc must be >= 1" in capsys.readouterr().err


# ---------------------------------------------------------------- in this process


def test_no_process_group_is_a_clear_error():
    assert not dist.is_initialized()
    x = torch.randn(5, 3)
    for fn in (distributed.hyperspherical_energy, distributed.hyperspherical_energy_and_grad):
        with pytest.raises(RuntimeError, match="needs an initialized torch.distributed process group"):
            fn(x)
    with pytest.raises(RuntimeError, match="needs rank and world_size"):
        distributed.replicated_energy(x)


def test_a_one_rank_world_is_the_plain_op():
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        x = torch.randn(2, 9, 4, dtype=torch.float64, requires_grad=True)
        e = distributed.hyperspherical_energy(x, "a1", half_space=True, reduction="none")
        e_ref, g_ref = _one_process(Case("one", "a1", True, "none"), x.detach())
        torch.testing.assert_close(e, e_ref, rtol=0, atol=0)
        (g,) = torch.autograd.grad(e.sum(), x)
        torch.testing.assert_close(g, g_ref, rtol=0, atol=0)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("world_size", range(1, 9))
def test_the_plans_count_every_pair_once(world_size):
    """Over all ranks, own blocks and visits count each unordered pair of rows
    once (the union's energy), and each rank's rows get the gradient of every
    pair they are in (their own visits, or the visitor's gradient sent back)."""
    g = torch.Generator().manual_seed(world_size)
    sizes = torch.randint(0, 6, (world_size,), generator=g).tolist()
    start = [sum(sizes[:r]) for r in range(world_size + 1)]
    n = start[-1]
    energy = torch.zeros(n, n, dtype=torch.float64)  # energy[i, j]: weight of pair (i, j), i the computing side
    grad = torch.zeros(n, n, dtype=torch.float64)  # grad[i, j]: times pair (i, j)'s gradient reaches row i
    for r in range(world_size):
        own = slice(start[r], start[r + 1])
        energy[own, own] += torch.ones(sizes[r], sizes[r], dtype=torch.float64).triu(1)
        grad[own, own] += 1 - torch.eye(sizes[r], dtype=torch.float64)
        for visit in plan(r, world_size):
            v = visit.visitor
            rows_own, rows_vis = visit.rows(sizes[r], sizes[v])
            i = slice(start[r] + rows_own.start, start[r] + rows_own.stop)
            j = slice(start[v] + rows_vis.start, start[v] + rows_vis.stop)
            energy[i, j] += 1
            grad[i, j] += 1
            grad[j, i] += 1  # the visitor's gradient, sent back
    off = 1 - torch.eye(n, dtype=torch.float64)
    torch.testing.assert_close(energy + energy.T, off, rtol=0, atol=0)
    torch.testing.assert_close(grad, off, rtol=0, atol=0)


@pytest.mark.parametrize("world_size", [2, 3, 4, 7, 8])
def test_the_replicated_split_is_balanced(world_size):
    """With blocks of equal rows every rank computes N^2/(2P) pairs; block sizes that differ by
    a row move a share by at most the N rows it pairs with."""
    n = 96 * world_size + 5
    bounds = block_bounds(n, world_size)
    size = [bounds[r + 1] - bounds[r] for r in range(world_size)]
    counts = []
    for r in range(world_size):
        c = num_pairs(size[r])
        for visit in plan(r, world_size):
            a, b = visit.rows(size[r], size[visit.visitor])
            c += (a.stop - a.start) * (b.stop - b.start)
        counts.append(c)
    assert sum(counts) == num_pairs(n)
    assert max(counts) - min(counts) <= n, counts


@pytest.mark.parametrize("world_size", [2, 3, 4])
@pytest.mark.parametrize("power, half_space, batched", [(1, False, False), (2, True, False), ("a1", True, True),
                                                        ("g2", False, True), (0, False, False)])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_replicated_shares_sum_to_the_energy(world_size, power, half_space, batched, reduction):
    """(1/P) sum_r replicated_energy(rank=r) is the energy and its gradient, as DDP averages it."""
    w = torch.randn((3, 29, 7) if batched else (29, 7), dtype=torch.float64)
    kw = dict(half_space=half_space, reduction=reduction)
    e_ref, g_ref = _one_process(Case("ref", power, half_space, reduction), w)
    total, grad = 0.0, torch.zeros_like(w)
    for r in range(world_size):
        wr = w.clone().requires_grad_()
        e = distributed.replicated_energy(wr, power, rank=r, world_size=world_size, **kw)
        e.backward()
        total, grad = total + e.detach() / world_size, grad + wr.grad / world_size
    assert_energy_close(total, e_ref, torch.float64, num_pairs(29, half_space))
    assert_grad_close(grad, g_ref, torch.float64)


def test_replicated_energy_rejects_bad_ranks():
    w = torch.randn(5, 3)
    with pytest.raises(ValueError, match="0 <= rank < world_size"):
        distributed.replicated_energy(w, rank=2, world_size=2)
    with pytest.raises(ValueError, match="both rank and world_size"):
        distributed.replicated_energy(w, rank=0)
    with pytest.raises(ValueError, match="reduction must be 'mean' or 'sum'"):
        distributed.replicated_energy(w, rank=0, world_size=2, reduction="none")


def test_a_bad_timeout_is_named_in_a_one_rank_world_too():
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        x = torch.randn(4, 3)
        for fn in (distributed.hyperspherical_energy, distributed.hyperspherical_energy_and_grad):
            with pytest.raises(ValueError, match="timeout must be None"):
                fn(x, timeout=-1)
    finally:
        dist.destroy_process_group()
