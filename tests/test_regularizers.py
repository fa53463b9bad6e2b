"""The regularizers against hand-written references of the original code:
layer energies, RP batching, the AP objective and steps, Adv ascent, G-CoMHE
groups, layer selection, gradient routing, state, dtypes, devices, DDP,
compile, bad configurations.

Tolerances: float64 throughout, where the op and the references agree to
~1e-13 relative (conftest.py); 1e-10 leaves room for the different
summation orders (N <= 64 here). The float32 AP Gram-identity check uses
1e-5: its three terms are O(N^2/pd) and cancel to the same order.
"""

import copy
import math
import os
import time
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import comhe_kernels
from comhe_kernels import regularizers
from comhe_kernels.projections import angle_preservation_loss, channel_groups, neurons
from comhe_kernels.regularizers import CoMHE, MHE, default_weights, mhe_loss

RTOL = 1e-10


def close(a, b, rtol=RTOL):
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    return bool(((a - b).abs() <= rtol * (b.abs() + 1)).all())


def small_cnn(dtype=torch.float64, seed=0):
    """Input conv (fan-in 18), two projected hidden layers (72, 96 > pd), classifier; 6x6 inputs."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(2, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 24, 3), nn.Flatten(),
        nn.Linear(24 * 4, 48), nn.ReLU(),
        nn.Linear(48, 6),
    ).to(dtype)


def original_energy(weight, power, half_space):
    """The original TF code (wy1iu/MHE _add_thomson_constraint), line by line, in torch."""
    filt = weight.detach().reshape(weight.shape[0], -1).T  # (k, N) as tf.reshape(filt, [-1, n_filt])
    if half_space:
        filt = torch.cat([filt, -filt], dim=1)
    n = filt.shape[1]
    norm = torch.sqrt((filt * filt).sum(0, keepdim=True) + 1e-4)
    inner = (filt.T @ filt) / (norm.T @ norm)
    eye = torch.eye(n, dtype=filt.dtype)
    if power in ("a0", "a1", "a2"):
        acos = torch.acos(inner.clamp(-1, 1)) / math.pi + 1e-4
        final = -torch.log(acos) if power == "a0" else acos.pow(-int(power[1]))
    elif power == 0:
        final = -torch.log(2 - 2 * inner + eye)
    else:
        final = (2 - 2 * inner + eye).pow(-power / 2)
    final = final - torch.tril(final)
    return final.sum() / (n * (n - 1) / 2)


class CountingOp:
    """Wraps the op as seen by the regularizers' energy: records the shape of every call."""

    def __init__(self, monkeypatch):
        self.shapes = []
        op = regularizers.energy.hyperspherical_energy

        def counted(x, *args, **kwargs):
            self.shapes.append(tuple(x.shape))
            return op(x, *args, **kwargs)

        monkeypatch.setattr(regularizers.energy, "hyperspherical_energy", counted)


# ---- MHE: layer energies equal the original code's --------------------------------


@pytest.mark.parametrize("power", [0, 1, 2, "a0", "a1", "a2"])
@pytest.mark.parametrize("half_space", [False, True])
def test_mhe_layer_energies_equal_original_code(power, half_space):
    model = small_cnn()
    reg = MHE(model, power, half_space=half_space)
    total = reg()
    hidden, output = default_weights(power)
    expected_total = 0.0
    for plan in reg.layers:
        module = model[int(plan.name)]
        is_output = plan.name == "7"
        e_ref = original_energy(module.weight, power, half_space and not is_output)
        assert close(reg.last_energies[plan.name], e_ref), (plan.name, power)
        expected_total += (output if is_output else hidden) * e_ref
    assert close(total, expected_total)


def test_default_weights_follow_the_original_table():
    for power in (0, 1, 2, "a0"):
        assert default_weights(power) == (1.0, 10.0)
    for power in ("a1", "a2"):
        assert default_weights(power) == (0.1, 1.0)


def test_mhe_loss_functional_form():
    w = torch.randn(20, 3, 3, 3, dtype=torch.float64)
    assert close(mhe_loss(w, 2, half_space=True), original_energy(w, 2, True))
    # power 0 is the original's -log(d^2) by default, the op's -log(d) on request
    assert close(mhe_loss(w, 0), original_energy(w, 0, False))
    assert close(mhe_loss(w, 0, squared_log=False), original_energy(w, 0, False) / 2)


# ---- RP ------------------------------------------------------------------------------


def test_rp_equals_mean_of_single_projection_calls(monkeypatch):
    model = small_cnn()
    counter = CountingOp(monkeypatch)
    reg = CoMHE(model, "rp", proj_dim=7, num_proj=5, generator=123)
    reg()
    rp_layers = [p for p in reg.layers if p.mode == "rp"]
    assert [p.name for p in rp_layers] == ["3", "5"]
    # one op call per layer; each rp layer's call is the (pn, N, pd) batch
    assert counter.shapes == [(8, 18), (5, 24, 7), (5, 48, 7), (6, 48)]
    g = torch.Generator().manual_seed(123)
    for plan in rp_layers:  # the same draws, in layer order, one projection at a time
        proj = torch.randn(5, 7, plan.fan_in, generator=g, dtype=torch.float64)
        w = model[int(plan.name)].weight
        singles = [mhe_loss(w, 2, half_space=True, projection=proj[b]) for b in range(5)]
        assert close(reg.last_energies[plan.name], torch.stack(singles).mean())


def test_rp_draws_fresh_projections_and_is_reproducible():
    model = small_cnn()
    a, b = CoMHE(model, "rp", generator=5), CoMHE(model, "rp", generator=5)
    first, again = a(), a()
    assert not close(first, again)  # fresh projections every call
    assert close(b(), first) and close(b(), again)  # same seed, same stream


def test_layers_with_fan_in_at_most_proj_dim_are_not_projected():
    reg = CoMHE(small_cnn(), "rp", proj_dim=72)  # layer "3" has fan-in 72, "5" 96
    assert [(p.name, p.mode) for p in reg.layers] == [("0", "plain"), ("3", "plain"), ("5", "rp"), ("7", "plain")]


# ---- AP --------------------------------------------------------------------------------


@pytest.mark.parametrize("n,k", [(40, 12), (9, 30)])  # N > k and N < k Gram paths
def test_ap_objective_gram_identity_equals_naive_formula(n, k):
    w = torch.randn(n, k, dtype=torch.float64, requires_grad=True)
    p = torch.randn(5, k, dtype=torch.float64, requires_grad=True)
    gram = angle_preservation_loss(w, p)
    # the original: tf.norm(cal(P W) - cal(W)), N x N cosines with eps in the root
    u = w / torch.sqrt((w * w).sum(1, keepdim=True) + 1e-4)
    pw = w @ p.T
    v = pw / torch.sqrt((pw * pw).sum(1, keepdim=True) + 1e-4)
    naive = torch.sqrt(((v @ v.T - u @ u.T) ** 2).sum())
    assert close(gram, naive)
    assert close(angle_preservation_loss(w, p, method="naive"), naive)
    for a, b in zip(torch.autograd.grad(gram, (w, p)), torch.autograd.grad(naive, (w, p))):
        assert close(a, b, 1e-9)
    g32 = angle_preservation_loss(w.detach().float(), p.detach().float())
    assert abs(g32.item() - naive.item()) <= 1e-5 * naive.item()


def test_ap_step_and_lookahead_follow_the_original(monkeypatch):
    model = small_cnn()
    lr = 0.05
    reg = CoMHE(model, "ap", lr=lr, generator=0)
    i = [p.mode for p in reg.layers].index("ap")
    layer = model[int(reg.layers[i].name)]
    p0 = getattr(reg, f"projection_{i}").clone()
    w = neurons(layer.weight)

    # own step: P1 = P0 - lr * grad(||cos(PW) - cos(W)||_F + 2.5e-7 ||P||^2)
    p = p0.clone().requires_grad_()
    (g,) = torch.autograd.grad(angle_preservation_loss(w.detach(), p, method="naive") + 2.5e-7 * p.square().sum(), p)
    p1 = p0 - lr * g
    # lookahead, differentiated through W: P' = P1 - lr * grad_P ||cos(P1 W) - cos(W)||_F
    p = p1.clone().requires_grad_()
    (g,) = torch.autograd.grad(angle_preservation_loss(w, p, method="naive"), p, create_graph=True)
    e_ref = mhe_loss(layer.weight, 2, half_space=True, projection=p1 - lr * g)
    (gw_ref,) = torch.autograd.grad(e_ref, layer.weight)

    e, _ = reg._layer_energy(i, update=True)
    assert close(getattr(reg, f"projection_{i}"), p1)
    assert close(e, e_ref)
    (gw,) = torch.autograd.grad(e, layer.weight)
    assert close(gw, gw_ref, 1e-9)


def test_ap_second_order_term_is_there_and_can_be_switched_off():
    model = small_cnn()
    grads = {}
    for second in (True, False):
        reg = CoMHE(model, "ap", lr=0.5, generator=0, second_order=second, include=["5"],
                    input_layer=None, output_layer=None)
        assert [p.mode for p in reg.layers] == ["ap"]
        model.zero_grad()
        reg().backward()
        grads[second] = model[5].weight.grad.clone()
    assert not close(grads[True], grads[False], 1e-6)


def test_ap_projection_learns_to_preserve_angles():
    model = small_cnn()
    reg = CoMHE(model, "ap", lr=0.1, generator=0)
    i = [p.mode for p in reg.layers].index("ap")
    w = neurons(model[int(reg.layers[i].name)].weight).detach()
    before = angle_preservation_loss(w, getattr(reg, f"projection_{i}"))
    for _ in range(20):
        reg()
    assert angle_preservation_loss(w, getattr(reg, f"projection_{i}")) < before


# ---- Adv -------------------------------------------------------------------------------


def test_adv_steps_increase_the_projected_energy():
    model = small_cnn()
    lr = 0.5
    reg = CoMHE(model, "adv", lr=lr, generator=0)
    adv = [(i, p) for i, p in enumerate(reg.layers) if p.mode == "adv"]
    assert len(adv) == 2
    before = {i: mhe_loss(model[int(p.name)].weight, 2, projection=getattr(reg, f"projection_{i}")) for i, p in adv}
    reg()
    for i, p in adv:
        w = model[int(p.name)].weight
        proj = getattr(reg, f"projection_{i}")
        assert mhe_loss(w, 2, projection=proj) > before[i]  # 10 ascent steps on the full-space energy
        # the network's energy: half-space, at the lookahead P' = P + lr grad E_full(W P^T)
        q = proj.clone().requires_grad_()
        (g,) = torch.autograd.grad(mhe_loss(w.detach(), 2, projection=q), q)
        assert close(reg.last_energies[p.name], mhe_loss(w, 2, half_space=True, projection=proj + lr * g))


# ---- G-CoMHE -------------------------------------------------------------------------


@pytest.mark.parametrize("channels,groups", [(8, 4), (10, 4), (7, 3), (5, 5)])
def test_group_energy_is_the_mean_of_each_group(channels, groups):
    w = torch.randn(12, channels, 3, 3, dtype=torch.float64)
    x = channel_groups(neurons(w), channels, groups)
    assert x.shape[0] == groups
    batched = comhe_kernels.hyperspherical_energy(x, 2, half_space=True)
    blocks = torch.tensor_split(torch.arange(channels), groups)
    singles = [mhe_loss(w[:, b], 2, half_space=True) for b in blocks]  # zero padding changes nothing
    assert close(batched, torch.stack(singles).mean())


def test_group_variant_is_one_call_per_layer(monkeypatch):
    model = small_cnn()
    counter = CountingOp(monkeypatch)
    reg = CoMHE(model, "group", num_groups=3)
    assert [p.groups for p in reg.layers] == [1, 3, 3, 1]
    reg()
    assert counter.shapes == [(8, 18), (3, 24, 27), (3, 48, 32), (6, 48)]


def test_group_count_is_capped_by_the_input_channels():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Conv2d(4, 6, 3), nn.Conv2d(6, 6, 1))
    reg = CoMHE(model, "group", num_groups=8, output_layer=None, input_layer=None)
    assert [(p.mode, p.groups) for p in reg.layers] == [("plain", 1), ("group", 4), ("group", 6)]


# ---- training behaviour -----------------------------------------------------------------


@pytest.mark.parametrize(
    "variant,kwargs",
    [("mhe", {}), ("rp", {"generator": 0}), ("ap", {"lr": 0.1}), ("adv", {"lr": 0.1}), ("group", {})],
)
def test_sgd_on_the_regularizer_alone_lowers_every_layer_energy(variant, kwargs):
    model = small_cnn()
    reg = CoMHE(model, variant, **kwargs)
    before = reg.layer_energies()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    for _ in range(10):
        opt.zero_grad()
        reg().backward()
        opt.step()
    after = reg.layer_energies()
    for name in before:
        assert after[name] < before[name], (variant, name, before[name], after[name])


@pytest.mark.parametrize("variant,kwargs", [("rp", {}), ("ap", {"lr": 0.1}), ("adv", {"lr": 0.1}), ("group", {})])
def test_gradients_reach_only_the_selected_weights(variant, kwargs):
    model = small_cnn()
    reg = CoMHE(model, variant, exclude=["5"], **kwargs)
    assert list(reg.parameters()) == []  # learned P are buffers: no optimizer can take them
    reg().backward()
    for name, param in model.named_parameters():
        selected = name in ("0.weight", "3.weight", "7.weight")
        assert (param.grad is not None and bool(param.grad.abs().sum() > 0)) == selected, name
    for buf in reg.buffers():
        assert buf.grad is None and not buf.requires_grad


def test_eval_mode_does_not_update_projections():
    model = small_cnn()
    reg = CoMHE(model, "ap", lr=0.1, generator=0).eval()
    before = [b.clone() for b in reg.buffers()]
    e1, e2 = reg(), reg()
    assert all(torch.equal(a, b) for a, b in zip(before, reg.buffers()))
    assert close(e1, e2)


def test_lr_follows_the_optimizer_schedule():
    model = small_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    reg = CoMHE(model, "ap", lr=opt, generator=0)
    before = [b.clone() for b in reg.buffers()]
    opt.param_groups[0]["lr"] = 0.0
    reg()
    assert all(torch.equal(a, b) for a, b in zip(before, reg.buffers()))  # lr 0: P does not move


# ---- layer selection ---------------------------------------------------------------------


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv1d(3, 8, 3), nn.ReLU(), nn.Conv3d(8, 8, 1))
        self.head = nn.Linear(8, 16)
        self.classifier = nn.Linear(16, 5)
        self.bn = nn.BatchNorm1d(5)


def test_selection_by_name_type_and_roles():
    reg = MHE(Net())
    assert [(p.name, p.role) for p in reg.layers] == [
        ("features.0", "hidden"), ("features.2", "hidden"), ("head", "hidden"), ("classifier", "output")
    ]
    assert [p.half_space for p in reg.layers] == [True, True, True, False]
    reg = MHE(Net(), include=["features"], output_layer=None)
    assert [p.name for p in reg.layers] == ["features.0", "features.2"]
    reg = MHE(Net(), include=[nn.Linear], output_layer="head", layer_weights={"classifier": 0.5})
    assert [(p.name, p.role, p.weight) for p in reg.layers] == [("head", "output", 10.0), ("classifier", "hidden", 0.5)]
    reg = MHE(Net(), exclude=[nn.Conv3d, "classifier"])
    assert [p.name for p in reg.layers] == ["features.0", "head"]
    reg = CoMHE(Net(), "rp", proj_dim=2, input_layer="head")
    assert [p.mode for p in reg.layers] == ["rp", "rp", "plain", "plain"]
    assert [p.layer_type for p in reg.layers] == ["Conv1d", "Conv3d", "Linear", "Linear"]
    planned = regularizers.plan_layers(Net(), "mhe", hidden_weight=1.0, output_weight=10.0)
    assert [(p.name, p.role, type(m).__name__) for p, m in planned] == [
        ("features.0", "hidden", "Conv1d"), ("features.2", "hidden", "Conv3d"), ("head", "hidden", "Linear"),
        ("classifier", "output", "Linear"),
    ]


def test_wrappers_are_looked_through():
    model = Net()
    reg = MHE(torch.compile(model))  # compiled module: names without "_orig_mod."
    assert [p.name for p in reg.layers][-1] == "classifier"
    reg = MHE(nn.DataParallel(model))
    assert [p.name for p in reg.layers][-1] == "classifier"


def test_parametrized_weights_get_the_gradient():
    model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.Flatten(), nn.Linear(6, 4), nn.Linear(4, 3))
    torch.nn.utils.parametrizations.weight_norm(model[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the legacy API is deprecated
        torch.nn.utils.weight_norm(model[2])
    reg = MHE(model)
    e = reg()
    assert close(reg.last_energies["0"], original_energy(model[0].weight, 2, True), 1e-6)
    e.backward()
    for name in ("0.parametrizations.weight.original0", "0.parametrizations.weight.original1",
                 "2.weight_g", "2.weight_v", "3.weight"):
        assert dict(model.named_parameters())[name].grad is not None, name


# ---- state, dtype ---------------------------------------------------------------------------


def test_state_dict_roundtrip_continues_identically():
    for variant, kw in (("ap", {"lr": 0.1}), ("rp", {})):
        model = small_cnn()
        a = CoMHE(model, variant, generator=3, **kw)
        a()
        b = CoMHE(model, variant, generator=99, **kw)
        b.load_state_dict(a.state_dict())
        assert close(a(), b()), variant


def test_projections_follow_the_model_dtype():
    model = small_cnn(torch.float32)
    reg = CoMHE(model, "ap", lr=0.1)
    assert reg().dtype == torch.float32
    model.double()
    e = reg()
    assert e.dtype == torch.float64 and all(b.dtype == torch.float64 for b in reg.buffers())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("variant,kwargs", [("mhe", {}), ("rp", {"generator": 0}), ("ap", {"lr": 0.1, "generator": 0})])
def test_a_16_bit_model_gets_its_dtype(dtype, variant, kwargs):
    model = small_cnn(torch.float32).to(dtype)
    reg = CoMHE(model, variant, **kwargs)
    e = reg()
    assert e.dtype == dtype and bool(torch.isfinite(e))
    e.backward()
    assert all(p.weight.grad.dtype == dtype for p in (model[0], model[3], model[5], model[7]))
    if variant == "mhe":  # the energies are computed in float32 from the 16-bit weights
        model32 = copy.deepcopy(model).float()
        assert close(e, MHE(model32)().to(dtype).float(), 0.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_projections_follow_the_model_device():
    model = small_cnn(torch.float32)
    reg = CoMHE(model, "ap", lr=0.1, generator=0)
    model.cuda()
    assert reg().device.type == "cuda" and all(b.is_cuda for b in reg.buffers())


# ---- bad configurations -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(variant="pca"), ValueError, "variant must be one of"),
        (dict(variant="rp", proj_dim=0), ValueError, "proj_dim must be >= 1"),
        (dict(variant="rp", num_proj=0), ValueError, "num_proj must be >= 1"),
        (dict(variant="ap"), ValueError, "needs lr"),
        (dict(variant="adv", lr=-1.0), ValueError, "lr must be finite and >= 0"),
        (dict(variant="mhe", proj_dim=10), ValueError, "proj_dim is not used by variant 'mhe'"),
        (dict(variant="rp", lr=0.1), ValueError, "lr is not used by variant 'rp'"),
        (dict(variant="mhe", power=-1), ValueError, "power must be finite"),
        (dict(variant="mhe", include=["nope"]), ValueError, "'nope' matches no Linear/Conv layer"),
        (dict(variant="mhe", include=[nn.BatchNorm1d]), TypeError, "not a supported layer type"),
        (dict(variant="mhe", exclude=[nn.Linear, nn.Conv1d, nn.Conv3d]), ValueError, "no layer to regularize"),
        (dict(variant="mhe", output_layer="bn"), ValueError, "output_layer 'bn' is not one of"),
        (dict(variant="mhe", layer_weights={"head": -1}), ValueError, "layer_weights\\['head'\\]"),
        (dict(variant="rp", generator=1.5), TypeError, "generator must be an int seed"),
        # the op's settings fail here, not at the first call
        (dict(variant="mhe", eps=-1e-4), ValueError, "eps must be finite and >= 0"),
        (dict(variant="rp", eps=float("nan")), ValueError, "eps must be finite and >= 0"),
        (dict(variant="rp", backend="gpu"), ValueError, "backend must be one of"),
        (dict(variant="mhe", power="a1", delta=0.0), ValueError, "delta must be > 0"),
        (dict(variant="mhe", squared_log=1), TypeError, "squared_log must be a bool"),
    ],
)
def test_bad_configurations_raise_clear_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        CoMHE(Net(), **kwargs)


def test_single_neuron_layers_are_skipped_after_the_output_layer_is_chosen():
    # A one-output head is still the output layer (skipped: no pairs); the layer before it stays hidden.
    model = nn.Sequential(nn.Linear(10, 5), nn.ReLU(), nn.Linear(5, 1))
    with pytest.warns(UserWarning, match="skipping layer '2' \\(the output layer\\)") as caught:
        reg = MHE(model)
    assert {w.filename for w in caught} == {__file__}  # the warning points at the user's line
    with pytest.warns(UserWarning) as caught:
        CoMHE(model)
    assert {w.filename for w in caught} == {__file__}
    assert [(p.name, p.role, p.half_space, p.weight) for p in reg.layers] == [("0", "hidden", True, 1.0)]
    assert close(reg(), original_energy(model[0].weight, 2, True))
    with pytest.warns(UserWarning, match="skipping layer '0': a single"):
        reg = MHE(nn.Sequential(nn.Linear(4, 1), nn.Linear(1, 6)))
    assert [(p.name, p.role) for p in reg.layers] == [("1", "output")]
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="no layer to regularize"):
        MHE(nn.Linear(4, 1))


def test_lazy_layers_need_a_forward_pass_first():
    with pytest.raises(ValueError, match="run one forward pass first"):
        MHE(nn.Sequential(nn.LazyLinear(4), nn.Linear(4, 3)))


def test_no_supported_layer():
    with pytest.raises(ValueError, match="no layer to regularize"):
        MHE(nn.Sequential(nn.ReLU()))


def test_every_layer_term_goes_through_reg_energy():
    # The one function a split of the pairs (e.g. over data-parallel ranks) replaces;
    # the adversarial P's own ascent keeps the energy it was built with.
    reg = CoMHE(small_cnn(), "adv", lr=0.1, generator=0)
    calls = []
    whole = reg.energy

    def counted(x, half_space):
        calls.append((tuple(x.shape), half_space))
        return whole(x, half_space)

    reg.energy = counted
    reg()
    assert calls == [((8, 18), True), ((24, 30), True), ((48, 30), True), ((6, 48), False)]


# ---- DDP and torch.compile ----------------------------------------------------------------------


def _ddp_worker(rank, world, path, out):
    torch.distributed.init_process_group("gloo", init_method=f"file://{path}", rank=rank, world_size=world)
    model = nn.parallel.DistributedDataParallel(small_cnn(torch.float32))
    reg = CoMHE(model, "ap", lr=0.1, generator=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    torch.manual_seed(rank)  # different data on each rank
    for _ in range(3):
        x, y = torch.randn(4, 2, 6, 6), torch.randint(0, 6, (4,))
        loss = F.cross_entropy(model(x), y) + reg()
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.save({"params": [p.detach() for p in model.parameters()], "P": list(reg.buffers())}, f"{out}.{rank}")
    torch.distributed.barrier()
    # Exit without tearing DDP down: in torch 2.13 freeing the Reducer joins
    # gloo's worker threads while holding the GIL, and a worker that still
    # frees a finished allreduce needs the GIL: a deadlock seen once in ~10
    # CI runs. Everything this test checks is saved above.
    os._exit(0)


def test_ddp_ranks_stay_in_sync(tmp_path):
    import torch.multiprocessing as mp

    ctx = mp.spawn(_ddp_worker, args=(2, str(tmp_path / "store"), str(tmp_path / "state")), nprocs=2, join=False)
    deadline = time.monotonic() + 300  # a hang fails the test instead of stalling CI
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("DDP workers did not finish in 300 s")
    r0, r1 = (torch.load(tmp_path / f"state.{r}") for r in (0, 1))
    for a, b in zip(r0["params"] + r0["P"], r1["params"] + r1["P"]):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-7)


def test_torch_compile_gives_the_eager_values():
    model = small_cnn()
    eager = CoMHE(model, "rp", generator=7)
    compiled = torch.compile(CoMHE(model, "rp", generator=7))
    for _ in range(2):
        assert close(compiled(), eager())
