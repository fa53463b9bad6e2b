"""MHE and CoMHE regularizers that drop into any PyTorch training loop.

    reg = comhe_kernels.regularizers.CoMHE(model, variant="rp")   # defaults of rmlin/CoMHE
    loss = criterion(model(x), y) + reg()

Every pairwise sum goes through ``comhe_kernels.hyperspherical_energy`` (the
fused op); the projections of RP-CoMHE and the groups of G-CoMHE reach it as
ONE batched (B, N, k) call per layer.

Sources of the defaults (see ../shared/ANCHORS.md and docs/regularizers.md):
  * MHE (Liu et al., NeurIPS 2018; wy1iu/MHE code/architecture.py): every conv
    and FC layer gets the hidden term, the classifier the output term; energy =
    mean over pairs of f(normalized neurons); power 0 is -log(d^2); weights
    hidden/output 1/10 (powers 0, 1, 2, a0) and 0.1/1 (a1, a2).
  * CoMHE (Lin et al., CVPR 2020; rmlin/CoMHE): first layer half-space power 2
    without projection, other hidden layers projected half-space power 2
    weight 1, classifier full-space power 2 weight 10, no projection. RP: pd 40,
    pn 20, fresh N(0, 1) projections every step. AP: pd 30, learned P, one SGD
    step per iteration on ||cos(PW) - cos(W)||_F + L2, lookahead
    P' = P - lr grad. Adv: pd 30, 10 ascent steps on the full-space energy of
    PW, lookahead P' = P + lr grad.
  * G-CoMHE: described in the paper, absent from the code; defined here (see
    ``CoMHE``) as the energies of contiguous input-channel groups.
"""

from __future__ import annotations

import fnmatch
import math
import numbers
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from ._spec import parse_power
from .ops.hyperspherical_energy import hyperspherical_energy
from .projections import angle_preservation_loss, channel_groups, gaussian_projections, neurons, project

__all__ = ["CoMHE", "MHE", "mhe_loss", "default_weights", "VARIANTS", "SUPPORTED_LAYERS"]

VARIANTS = ("mhe", "rp", "ap", "adv", "group")
SUPPORTED_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_PROJ_DIM = {"rp": 40, "ap": 30, "adv": 30}  # the original scripts' --pd defaults
_PROJ_STEPS = {"ap": 1, "adv": 10}  # the original scripts' --iters defaults
# The original adds 1e-3 * l2_regularizer(5e-4)(P) = 1e-3 * 5e-4 * ||P||^2 / 2 to P's loss.
_PROJ_L2 = 1e-3 * 5e-4 / 2
_NUM_GROUPS = 4  # G-CoMHE has no original default; 4 groups of input channels
# Which keyword arguments each variant uses (an argument given to a variant
# that ignores it is an error, so that a typo in the variant cannot go unseen).
_VARIANT_ARGS = {
    "proj_dim": ("rp", "ap", "adv"),
    "num_proj": ("rp",),
    "generator": ("rp", "ap", "adv"),
    "lr": ("ap", "adv"),
    "proj_steps": ("ap", "adv"),
    "proj_l2": ("ap", "adv"),
    "second_order": ("ap",),
    "num_groups": ("group",),
}


def default_weights(power) -> tuple[float, float]:
    """(hidden, output) weights of the original MHE code for ``power``.

    1 and 10 for the chordal powers and "a0"; 0.1 and 1 for the angular Riesz
    powers ("a1", "a2"), whose energies are ~10x larger: (theta + 1e-4)^-1 is
    2 at theta = pi/2 but 1e4 at theta -> 0.
    """
    kind, s = parse_power(power)
    return (0.1, 1.0) if kind == "angular" and s > 0 else (1.0, 10.0)


def mhe_loss(
    weight: torch.Tensor,
    power=2,
    *,
    half_space: bool = False,
    projection: torch.Tensor | None = None,
    squared_log: bool = True,
    eps: float = 1e-4,
    delta: float = 1e-4,
    backend: str = "auto",
) -> torch.Tensor:
    r"""The MHE loss of one layer weight (functional form of the regularizers).

        W = weight.reshape(out, -1)               (one row per neuron)
        X = W                 (projection None)
          = W P^T             (P of shape (pd, k))
          = W P_b^T, b = 1..B (P of shape (B, pd, k): one batched op call)
        loss = mean over the pairs (and the B sets) of f(x_i / sqrt(||x_i||^2 + eps), ...)

    as ``_add_thomson_constraint`` in wy1iu/MHE and ``_add_thomson_*`` in
    rmlin/CoMHE. ``squared_log=True`` (default) makes power 0 the original's
    -log(d^2); the other powers are unaffected.

    Equivalent to::

        comhe_kernels.hyperspherical_energy(project(neurons(weight), P), power,
            half_space=half_space, reduction="mean", squared_log=squared_log, ...)
    """
    w = neurons(weight)
    x = w if projection is None else project(w, projection)
    return hyperspherical_energy(
        x, power, half_space=half_space, reduction="mean", eps=eps, delta=delta,
        squared_log=squared_log, backend=backend,
    )


@dataclass(frozen=True)
class LayerPlan:
    """What the regularizer does to one layer.

    role: "hidden" or "output" (the classifier). mode: "plain" (energy of the
    neurons themselves), "rp", "ap", "adv" (of their projections) or "group"
    (of their channel groups). groups: the number of G-CoMHE groups (1 if not
    grouped). in_channels: input channels per neuron (in / conv groups).
    """

    name: str
    kind: str
    num_neurons: int
    fan_in: int
    in_channels: int
    role: str
    mode: str
    half_space: bool
    weight: float
    groups: int = 1


def _unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside DDP / DataParallel / torch.compile wrappers,
    so that layer names are the ones the user knows ("fc", not "module.fc")."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):  # torch.compile
            model = model._orig_mod
        else:
            return model


def _weight_shape(module: nn.Module) -> tuple[int, ...]:
    """The weight's shape from the layer's configuration (reading ``.weight``
    of a parametrized layer would run its parametrization, e.g. a power
    iteration of spectral norm, as a side effect)."""
    if isinstance(module, nn.Linear):
        return (module.out_features, module.in_features)
    return (module.out_channels, module.in_channels // module.groups, *module.kernel_size)


def _current_weight(module: nn.Module) -> torch.Tensor:
    """The layer's weight as its forward would use it, in the autograd graph.

    torch.nn.utils.parametrizations (weight_norm, spectral_norm, orthogonal,
    ...) compute it on attribute access. The legacy hook-based
    torch.nn.utils.weight_norm / spectral_norm only refresh ``.weight`` in the
    forward pre-hook, so their hook computes it here (spectral norm without a
    power iteration: the forward pass does those).
    """
    for hook in module._forward_pre_hooks.values():
        if getattr(hook, "name", None) != "weight":
            continue
        if type(hook).__name__ == "WeightNorm":
            return hook.compute_weight(module)
        if type(hook).__name__ == "SpectralNorm":
            return hook.compute_weight(module, do_power_iteration=False)
    return module.weight


def _matches(name: str, pattern: str) -> bool:
    """A name pattern selects a layer by fnmatch ("features.*", "fc?") or as a
    prefix of dotted names ("features" selects "features.0", "features.3")."""
    return fnmatch.fnmatchcase(name, pattern) or name.startswith(pattern + ".")


def _check_selectors(arg: str, entries) -> list:
    if entries is None:
        return []
    if isinstance(entries, (str, type)):
        entries = [entries]
    entries = list(entries)
    for e in entries:
        if isinstance(e, type):
            if not issubclass(e, SUPPORTED_LAYERS):
                raise TypeError(
                    f"{arg}: {e.__name__} is not a supported layer type "
                    f"(supported: {', '.join(t.__name__ for t in SUPPORTED_LAYERS)} and their subclasses)"
                )
        elif not isinstance(e, str):
            raise TypeError(f"{arg} entries must be layer names/patterns (str) or layer types, got {e!r}")
    return entries


def _selected(name: str, module: nn.Module, entries: list) -> bool:
    return any(isinstance(module, e) if isinstance(e, type) else _matches(name, e) for e in entries)


class CoMHE(nn.Module):
    r"""(Compressive) Minimum Hyperspherical Energy regularizer for a model's layers.

    Calling it returns  sum over layers l of  weight_l * E_l,  a scalar to add
    to the training loss. E_l is a mean pairwise energy (``mhe_loss``) of the
    layer's neurons (rows of ``weight.reshape(out, -1)``), computed according
    to the layer's role and the variant:

    ============  =====================================================================
    variant       hidden layers (half-space by default)
    ============  =====================================================================
    "mhe"         E(W): MHE (NeurIPS 2018); every power, angular ones included
    "rp"          mean over b = 1..pn of E(W P_b^T), P_b ~ N(0, 1) of shape (pd, k),
                  fresh every call, all pn sets in ONE batched op call
    "ap"          E(W P'^T), P learned to keep cosines: each call first takes
                  ``proj_steps`` SGD steps on ||cos(PW) - cos(W)||_F + proj_l2 ||P||^2
                  at the network's lr, then P' = P - lr grad_P ||cos(PW) - cos(W)||_F
                  (the original's one-step lookahead, differentiated through W)
    "adv"         E(W P'^T), P adversarial: ``proj_steps`` gradient-ascent steps on
                  the full-space energy E_full(W P^T) - proj_l2 ||P||^2, then
                  P' = P + lr grad_P E_full(W P^T) (first order, see below)
    "group"       G-CoMHE (defined here): the input channels are split into
                  ``num_groups`` contiguous blocks (``channel_groups``); E is the
                  mean over groups of the energy of each group's sub-vectors,
                  all groups in ONE batched op call
    ============  =====================================================================

    The output layer (classifier) always gets the full-space, unprojected
    E(W) with ``output_weight``. In the projected variants (rp, ap, adv,
    group) the input layer, and any hidden layer whose fan-in k <= proj_dim
    (projecting to as many dimensions as it has compresses nothing), get the
    unprojected half-space E(W), as the first layer of the original code
    (whose fan-in 3*3*3 = 27 is below both pd = 30 and 40).

    Deviation from rmlin/CoMHE, Adv: the original differentiates the network's
    energy through the lookahead gradient (a second-order term in W); here
    P' is a constant for the network's gradient, because the fused op has no
    double backward. AP keeps the second-order term (``second_order=True``);
    its objective is plain matrix products.

    Args:
        model: the network (DDP, DataParallel and torch.compile wrappers are
            looked through; layer names are those of the inner module).
        variant: one of ``VARIANTS``.
        power: the energy (``hyperspherical_energy``'s power): a real s >= 0
            (0 = log energy) or "a0", "a1", "a2" (angular). Default 2, the
            power of every CoMHE experiment and of the best half-space MHE run.
        hidden_weight, output_weight: weights of the hidden and output terms;
            None -> ``default_weights(power)`` (1 and 10 for power 2).
        half_space: half-space energy ([w; -w]) for the hidden layers (default
            True, as every CoMHE layer and the best MHE runs). The output
            layer is always full-space.
        include, exclude: layers by name pattern (fnmatch, or a dotted prefix:
            "features" selects "features.0", ...) or by type (Linear,
            Conv1d/2d/3d and subclasses). Default: every supported layer.
        output_layer: "auto" (the last selected nn.Linear, if any), a layer
            name, or None (no output term; every layer is hidden).
        input_layer: the layer the projected variants never project: "auto"
            (the first selected layer in registration order), a name, or None.
        layer_weights: {name: weight} overriding the weight of given layers
            (0 switches a layer off).
        proj_dim: pd, the projected dimension (rp 40, ap/adv 30).
        num_proj: pn, random projections per layer and call (rp; 20).
        num_groups: G-CoMHE groups of input channels (4; fewer when a layer
            has fewer input channels; a layer left with 1 group gets E(W)).
        lr: the learning rate of the projections' steps (ap, adv), the
            network's as in the original: a float, or the network's optimizer
            to follow its schedule (``param_groups[0]["lr"]`` at every call).
        proj_steps: steps on P per call (ap 1, adv 10).
        proj_l2: L2 coefficient on ||P||_F^2 in P's objective (2.5e-7: the
            original's 1e-3 * l2_regularizer(5e-4)).
        second_order: ap only: differentiate the lookahead P' through W
            (True, as the original).
        generator: an int seed or a torch.Generator for every random draw (the
            rp projections, the ap/adv initial P ~ N(0, 1)); None: torch's
            global RNG. A seed makes the run reproducible; the generator's
            state is part of ``state_dict``.
        squared_log: power 0 as the original -log(d^2) (default) or -log(d).
        eps, delta: the op's normalization epsilon and angular offset (1e-4,
            as the original).
        backend: the op's backend: "auto" (fused), "cpu", or "reference"
            (naive N x N; also computes AP's objective with N x N matrices).

    Modes: in ``train()`` mode (the default) ap/adv update P at every call;
    in ``eval()`` mode a call only evaluates E with the current P.
    ``last_energies`` holds the unweighted E_l of the last call;
    ``layer_energies()`` the unprojected energy of every layer.

    Layers with a single neuron have no pairs (and half-space gives the
    constant pair (w, -w)); they are skipped with a warning. Learned P live
    in buffers ``projection_<i>`` for ``reg.layers[i]`` (``state_dict``), not
    parameters, so that no optimizer of the network can update them; they
    follow the weights' device and dtype. Call the regularizer once per
    training step: each call in train mode moves P.
    """

    def __init__(
        self,
        model: nn.Module,
        variant: str = "rp",
        power=2,
        *,
        hidden_weight: float | None = None,
        output_weight: float | None = None,
        half_space: bool = True,
        include=None,
        exclude=None,
        output_layer: str | None = "auto",
        input_layer: str | None = "auto",
        layer_weights: dict | None = None,
        proj_dim: int | None = None,
        num_proj: int | None = None,
        num_groups: int | None = None,
        lr=None,
        proj_steps: int | None = None,
        proj_l2: float | None = None,
        second_order: bool | None = None,
        generator=None,
        squared_log: bool = True,
        eps: float = 1e-4,
        delta: float = 1e-4,
        backend: str = "auto",
    ):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        given = dict(
            proj_dim=proj_dim, num_proj=num_proj, generator=generator, lr=lr, proj_steps=proj_steps,
            proj_l2=proj_l2, second_order=second_order, num_groups=num_groups,
        )
        for arg, value in given.items():
            if value is not None and variant not in _VARIANT_ARGS[arg]:
                raise ValueError(
                    f"{arg} is not used by variant {variant!r} (only by {', '.join(_VARIANT_ARGS[arg])})"
                )
        parse_power(power)  # bad powers fail here, not at the first step
        d_hidden, d_output = default_weights(power)
        self.variant = variant
        self.power = power
        self.squared_log = _check_bool("squared_log", squared_log)
        self.eps, self.delta, self.backend = eps, delta, backend
        # Settings of the other variants stay None.
        projected, learned = variant in _PROJ_DIM, variant in _PROJ_STEPS
        self.proj_dim = _positive_int("proj_dim", _PROJ_DIM[variant] if proj_dim is None else proj_dim) if projected else None
        self.num_proj = _positive_int("num_proj", 20 if num_proj is None else num_proj) if variant == "rp" else None
        self.proj_steps = _positive_int("proj_steps", _PROJ_STEPS[variant] if proj_steps is None else proj_steps) if learned else None
        self.proj_l2 = _nonneg_float("proj_l2", _PROJ_L2 if proj_l2 is None else proj_l2) if learned else None
        self.second_order = _check_bool("second_order", True if second_order is None else second_order) if variant == "ap" else None
        num_groups = _positive_int("num_groups", _NUM_GROUPS if num_groups is None else num_groups) if variant == "group" else None
        if variant in ("ap", "adv"):
            if lr is None:
                raise ValueError(
                    f"variant {variant!r} needs lr: the network's learning rate (a float) or its optimizer "
                    "(the projection takes its own SGD steps at that rate, as in the original code)"
                )
            if not isinstance(lr, torch.optim.Optimizer):
                _nonneg_float("lr", lr)
        self.lr = lr
        hidden_weight = _nonneg_float("hidden_weight", d_hidden if hidden_weight is None else hidden_weight)
        output_weight = _nonneg_float("output_weight", d_output if output_weight is None else output_weight)
        half_space = _check_bool("half_space", half_space)

        root = _unwrap(model)
        self.layers = self._plan(
            root, include, exclude, output_layer, input_layer, layer_weights,
            hidden_weight, output_weight, half_space, num_groups,
        )
        # A plain list, not submodules: reg.to(), reg.state_dict() and
        # reg.parameters() must not reach into the network.
        by_name = dict(root.named_modules())
        self._layer_modules = [by_name[p.name] for p in self.layers]

        first = self._layer_modules[0]
        device, dtype = _current_weight_meta(first)
        self._seed = None
        self._generator = None
        if isinstance(generator, torch.Generator):
            self._generator = generator
        elif generator is not None:
            if isinstance(generator, bool) or not isinstance(generator, numbers.Integral):
                raise TypeError(f"generator must be an int seed or a torch.Generator, got {type(generator).__name__}")
            self._seed = int(generator)
            self._generator = torch.Generator(device=device).manual_seed(self._seed)
        for i, p in enumerate(self.layers):
            if p.mode in ("ap", "adv"):
                init = torch.randn(
                    self.proj_dim, p.fan_in, generator=self._draw_generator(device), device=device, dtype=dtype
                )
                self.register_buffer(_buffer_name(i), init)
        self.last_energies: dict[str, torch.Tensor] = {}

    # ---- layer selection ------------------------------------------------------

    def _plan(self, root, include, exclude, output_layer, input_layer, layer_weights,
              hidden_weight, output_weight, half_space, num_groups) -> list[LayerPlan]:
        include = _check_selectors("include", include)
        exclude = _check_selectors("exclude", exclude)
        layers = [(n, m) for n, m in root.named_modules() if isinstance(m, SUPPORTED_LAYERS)]
        if include:
            for e in include:
                if isinstance(e, str) and not any(_matches(n, e) for n, _ in layers):
                    raise ValueError(f"include: {e!r} matches no Linear/Conv layer of the model")
            layers = [(n, m) for n, m in layers if _selected(n, m, include)]
        layers = [(n, m) for n, m in layers if not _selected(n, m, exclude)]
        for n, m in layers:
            if isinstance(m.weight, nn.parameter.UninitializedParameter):
                raise ValueError(f"layer {n!r} is lazy and not initialized yet: run one forward pass first")
        kept = []
        for n, m in layers:
            if _weight_shape(m)[0] < 2:
                warnings.warn(f"comhe_kernels: skipping layer {n!r}: a single neuron has no pairs", stacklevel=3)
            else:
                kept.append((n, m))
        if not kept:
            raise ValueError(
                "no layer to regularize: the model has no Linear/Conv1d/2d/3d layer with >= 2 neurons "
                "left after include/exclude"
            )
        names = [n for n, _ in kept]

        if output_layer == "auto":
            linears = [n for n, m in kept if isinstance(m, nn.Linear)]
            output_layer = linears[-1] if linears else None
        elif output_layer is not None and output_layer not in names:
            raise ValueError(f"output_layer {output_layer!r} is not one of the selected layers {names}")
        if input_layer == "auto":
            input_layer = names[0]
        elif input_layer is not None and input_layer not in names:
            raise ValueError(f"input_layer {input_layer!r} is not one of the selected layers {names}")
        layer_weights = dict(layer_weights or {})
        for n, w in layer_weights.items():
            if n not in names:
                raise ValueError(f"layer_weights: {n!r} is not one of the selected layers {names}")
            _nonneg_float(f"layer_weights[{n!r}]", w)

        plans = []
        for n, m in kept:
            shape = _weight_shape(m)
            fan_in = math.prod(shape[1:])
            in_channels = shape[1]
            output = n == output_layer
            mode, groups = "plain", 1
            if not output and n != input_layer and self.variant != "mhe":
                if self.variant == "group":
                    groups = min(num_groups, in_channels)
                    mode = "group" if groups >= 2 else "plain"
                    groups = groups if mode == "group" else 1
                elif fan_in > self.proj_dim:
                    mode = self.variant
            weight = output_weight if output else hidden_weight
            plans.append(LayerPlan(
                name=n, kind=type(m).__name__, num_neurons=shape[0], fan_in=fan_in, in_channels=in_channels,
                role="output" if output else "hidden", mode=mode, half_space=half_space and not output,
                weight=float(layer_weights.get(n, weight)), groups=groups,
            ))
        return plans

    # ---- randomness and learned projections ------------------------------------

    def _draw_generator(self, device: torch.device):
        """The generator for draws on ``device``: a seeded one follows the
        model to another device by re-seeding there (the stream restarts)."""
        g = self._generator
        if g is not None and g.device.type != torch.device(device).type:
            if self._seed is None:
                raise RuntimeError(
                    f"the torch.Generator given is on {g.device} but the model's weights are on {device}: "
                    "pass a generator on the weights' device, or an int seed"
                )
            g = self._generator = torch.Generator(device=device).manual_seed(self._seed)
        return g

    def _projection(self, index: int, w: torch.Tensor) -> torch.Tensor:
        """Layer ``index``'s learned P, moved to the weights' device/dtype if the model moved."""
        name = _buffer_name(index)
        p = getattr(self, name)
        if p.device != w.device or p.dtype != w.dtype:
            p = p.to(device=w.device, dtype=w.dtype)
            setattr(self, name, p)
        return p

    def _lr(self) -> float:
        if isinstance(self.lr, torch.optim.Optimizer):
            return float(self.lr.param_groups[0]["lr"])
        return float(self.lr)

    def _energy(self, x: torch.Tensor, half_space: bool) -> torch.Tensor:
        return hyperspherical_energy(
            x, self.power, half_space=half_space, reduction="mean", eps=self.eps, delta=self.delta,
            squared_log=self.squared_log, backend=self.backend,
        )

    def _angle_loss(self, w: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        method = "naive" if self.backend == "reference" else "gram"
        return angle_preservation_loss(w, p, eps=self.eps, method=method)

    def _ap_lookahead(self, index: int, w: torch.Tensor, update: bool) -> torch.Tensor:
        """AP-CoMHE: P's own SGD step(s), then P' = P - lr grad (rmlin/CoMHE angle_projection)."""
        proj = self._projection(index, w)
        if not update:
            return proj
        lr, wd = self._lr(), w.detach()
        through_w = self.second_order and torch.is_grad_enabled() and w.requires_grad
        with torch.enable_grad():
            for _ in range(self.proj_steps):
                p = proj.detach().requires_grad_()
                objective = self._angle_loss(wd, p) + self.proj_l2 * p.square().sum()
                (g,) = torch.autograd.grad(objective, p)
                proj.sub_(lr * g)
            p = proj.detach().requires_grad_()
            (g,) = torch.autograd.grad(self._angle_loss(w if through_w else wd, p), p, create_graph=through_w)
        return proj.detach() - lr * g

    def _adv_lookahead(self, index: int, w: torch.Tensor, update: bool) -> torch.Tensor:
        """Adv-CoMHE: ascent steps on the full-space energy of P W, then
        P' = P + lr grad (rmlin/CoMHE adversarial_projection), W held fixed."""
        proj = self._projection(index, w)
        if not update:
            return proj
        lr, wd = self._lr(), w.detach()
        with torch.enable_grad():
            for _ in range(self.proj_steps):
                p = proj.detach().requires_grad_()
                objective = self._energy(project(wd, p), False) - self.proj_l2 * p.square().sum()
                (g,) = torch.autograd.grad(objective, p)
                proj.add_(lr * g)
            p = proj.detach().requires_grad_()
            (g,) = torch.autograd.grad(self._energy(project(wd, p), False), p)
        return proj.detach() + lr * g

    # ---- evaluation -------------------------------------------------------------

    def _layer_energy(self, index: int, plan: LayerPlan, update: bool) -> torch.Tensor:
        w = neurons(_current_weight(self._layer_modules[index]))
        if plan.mode == "plain":
            x = w
        elif plan.mode == "rp":
            proj = gaussian_projections(
                self.num_proj, self.proj_dim, plan.fan_in,
                generator=self._draw_generator(w.device), device=w.device, dtype=w.dtype,
            )
            x = project(w, proj)
        elif plan.mode == "ap":
            x = project(w, self._ap_lookahead(index, w, update))
        elif plan.mode == "adv":
            x = project(w, self._adv_lookahead(index, w, update))
        else:  # "group"
            x = channel_groups(w, plan.in_channels, plan.groups)
        return self._energy(x, plan.half_space)

    def forward(self) -> torch.Tensor:
        """sum_l weight_l * E_l (a 0-dim tensor in the weights' dtype)."""
        total = None
        energies = {}
        for i, plan in enumerate(self.layers):
            if plan.weight == 0:
                continue
            e = self._layer_energy(i, plan, update=self.training)
            energies[plan.name] = e.detach()
            total = plan.weight * e if total is None else total + plan.weight * e
        self.last_energies = energies
        if total is None:  # every layer weighted 0
            device, dtype = _current_weight_meta(self._layer_modules[0])
            total = torch.zeros((), device=device, dtype=dtype)
        return total

    @torch.no_grad()
    def layer_energies(self, power=None, *, half_space: bool | None = None) -> dict[str, float]:
        """Each layer's unprojected, unweighted energy E(W) (no update of P).

        power: default the regularizer's. half_space: default each layer's own
        (hidden half-space, output full-space); True/False forces it.
        """
        power = self.power if power is None else power
        out = {}
        for module, plan in zip(self._layer_modules, self.layers):
            hs = plan.half_space if half_space is None else half_space
            out[plan.name] = float(mhe_loss(
                _current_weight(module), power, half_space=hs, squared_log=self.squared_log,
                eps=self.eps, delta=self.delta, backend=self.backend,
            ))
        return out

    # ---- state ------------------------------------------------------------------

    def get_extra_state(self):
        return {"generator_state": self._generator.get_state()} if self._generator is not None else {}

    def set_extra_state(self, state) -> None:
        if "generator_state" in state:
            if self._generator is None:
                raise RuntimeError("the checkpoint holds a generator state but this regularizer has no generator")
            self._generator.set_state(state["generator_state"])

    def extra_repr(self) -> str:
        rows = [f"variant={self.variant!r}, power={self.power!r}"]
        for p in self.layers:
            extra = f", groups={p.groups}" if p.mode == "group" else ""
            extra += f", pd={self.proj_dim}" if p.mode in ("rp", "ap", "adv") else ""
            rows.append(
                f"{p.name or '<model>'}: {p.kind} N={p.num_neurons} k={p.fan_in} {p.role} {p.mode}"
                f"{' half-space' if p.half_space else ''} weight={p.weight:g}{extra}"
            )
        return "\n".join(rows)


class MHE(CoMHE):
    """MHE (Liu et al., NeurIPS 2018): ``CoMHE(model, "mhe", power, ...)``.

    The hidden layers get E(W) (half-space unless ``half_space=False``), the
    classifier the full-space E(W) with ``output_weight``; weights default to
    the original's table (``default_weights``).
    """

    def __init__(self, model: nn.Module, power=2, **kwargs):
        super().__init__(model, "mhe", power, **kwargs)


def _buffer_name(index: int) -> str:
    return f"projection_{index}"


def _current_weight_meta(module: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and dtype of a layer's parameters, without evaluating a parametrization."""
    p = next(module.parameters())
    return p.device, p.dtype


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def _nonneg_float(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
    return float(value)


def _check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value
