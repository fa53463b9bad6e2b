"""The regularizer module: CoMHE (every variant) and MHE."""

from __future__ import annotations

import torch
from torch import nn

from ..distributed.replicated import for_regularizer as distributed_energy
from ._checks import check_bool, nonneg_float, positive_int
from .energy import PairEnergy, default_weights, mhe_loss
from .layers import current_weight, plan_layers, unwrap
from .terms import TERMS, Draws
from ..projections import neurons

VARIANTS = ("mhe", "rp", "ap", "adv", "group")
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
            (0 = log energy), "a0", "a1", "a2" (angular) or "g<t>". Default 2, the
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
        backend: the op's backend: "auto" (fused), a registered one
            (``comhe_kernels.available_backends``), or "reference" (naive
            N x N; also computes AP's objective with N x N matrices).
        distributed: under DDP, True (the default process group) or DDP's
            process group: each rank computes 1/world_size of every layer
            term's pairs, scaled so that DDP's gradient average is the full
            gradient (``comhe_kernels.distributed.replicated_energy``; no
            communication of its own). The value and ``last_energies`` of one
            rank are then world_size x its share, not the energies (their
            average over the ranks is). Pass the same ``generator`` seed on
            every rank, so that the ranks draw the same projections.

    Modes: in ``train()`` mode (the default) ap/adv update P at every call;
    in ``eval()`` mode a call only evaluates E with the current P.
    ``last_energies`` holds the unweighted E_l of the last call;
    ``layer_energies()`` the unprojected energy of every layer.

    The value is a 0-dim tensor in the weights' dtype (16-bit weights: the
    energies are computed in float32, the sum is returned in their dtype).
    Every E_l goes through one function, ``reg.energy(x, half_space)`` (a
    ``PairEnergy``: the op's mean over pairs); replacing it changes how every
    term is computed, not what the variants do.

    The output and input layers are chosen among the selected layers first;
    then layers with a single neuron, which have no pairs (and half-space
    gives the constant pair (w, -w)), are skipped with a warning: a
    one-output head (``Linear(10, 5) -> Linear(5, 1)``) has no output term,
    and the layer before it stays hidden. Learned P live
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
        distributed=False,
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
        # power, eps, delta, squared_log and backend are checked here, not at the first step.
        self.energy = PairEnergy(power, squared_log, eps, delta, backend)
        d_hidden, d_output = default_weights(power)
        self.variant = variant
        self.power, self.squared_log, self.eps, self.delta, self.backend = power, squared_log, eps, delta, backend
        # Settings of the other variants stay None.
        projected, learned = variant in _PROJ_DIM, variant in _PROJ_STEPS
        self.proj_dim = positive_int("proj_dim", _PROJ_DIM[variant] if proj_dim is None else proj_dim) if projected else None
        self.num_proj = positive_int("num_proj", 20 if num_proj is None else num_proj) if variant == "rp" else None
        self.proj_steps = positive_int("proj_steps", _PROJ_STEPS[variant] if proj_steps is None else proj_steps) if learned else None
        self.proj_l2 = nonneg_float("proj_l2", _PROJ_L2 if proj_l2 is None else proj_l2) if learned else None
        self.second_order = check_bool("second_order", True if second_order is None else second_order) if variant == "ap" else None
        num_groups = positive_int("num_groups", _NUM_GROUPS if num_groups is None else num_groups) if variant == "group" else None
        if learned:
            if lr is None:
                raise ValueError(
                    f"variant {variant!r} needs lr: the network's learning rate (a float) or its optimizer "
                    "(the projection takes its own SGD steps at that rate, as in the original code)"
                )
            if not isinstance(lr, torch.optim.Optimizer):
                nonneg_float("lr", lr)
        self.lr = lr

        planned = plan_layers(
            unwrap(model), variant, include=include, exclude=exclude, output_layer=output_layer,
            input_layer=input_layer, layer_weights=layer_weights,
            hidden_weight=nonneg_float("hidden_weight", d_hidden if hidden_weight is None else hidden_weight),
            output_weight=nonneg_float("output_weight", d_output if output_weight is None else output_weight),
            half_space=check_bool("half_space", half_space), proj_dim=self.proj_dim, num_groups=num_groups,
        )
        self.layers = [plan for plan, _ in planned]
        # Plain lists, not submodules: reg.to(), reg.state_dict() and
        # reg.parameters() must not reach into the network.
        self._layer_modules = [module for _, module in planned]
        self._draws = Draws(generator, next(self._layer_modules[0].parameters()).device)
        self._terms = [TERMS[plan.mode].for_layer(plan, self, i) for i, plan in enumerate(self.layers)]
        # After the terms: Adv's P ascends the full energy, the same on every rank.
        self.energy = distributed_energy(self.energy, distributed)
        self.last_energies: dict[str, torch.Tensor] = {}

    def _layer_energy(self, index: int, update: bool) -> tuple[torch.Tensor, torch.dtype]:
        """E of layer ``index`` (updating its learned P if ``update``), and its weight's dtype."""
        w = neurons(current_weight(self._layer_modules[index]))
        return self.energy(self._terms[index].sets(w, update), self.layers[index].half_space), w.dtype

    def forward(self) -> torch.Tensor:
        """sum_l weight_l * E_l (a 0-dim tensor in the weights' dtype)."""
        total, dtype = None, None
        energies = {}
        for i, plan in enumerate(self.layers):
            if plan.weight == 0:
                continue
            e, w_dtype = self._layer_energy(i, update=self.training)
            energies[plan.name] = e.detach()
            total = plan.weight * e if total is None else total + plan.weight * e
            dtype = w_dtype if dtype is None else torch.promote_types(dtype, w_dtype)
        self.last_energies = energies
        if total is None:  # every layer weighted 0
            p = next(self._layer_modules[0].parameters())
            return torch.zeros((), device=p.device, dtype=p.dtype)
        return total.to(dtype)

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
                current_weight(module), power, half_space=hs, squared_log=self.squared_log,
                eps=self.eps, delta=self.delta, backend=self.backend,
            ))
        return out

    # ---- state ------------------------------------------------------------------

    def get_extra_state(self):
        g = self._draws.generator
        return {"generator_state": g.get_state()} if g is not None else {}

    def set_extra_state(self, state) -> None:
        if "generator_state" in state:
            if self._draws.generator is None:
                raise RuntimeError("the checkpoint holds a generator state but this regularizer has no generator")
            self._draws.generator.set_state(state["generator_state"])

    def extra_repr(self) -> str:
        rows = [f"variant={self.variant!r}, power={self.power!r}"]
        for p in self.layers:
            extra = f", groups={p.groups}" if p.mode == "group" else ""
            extra += f", pd={self.proj_dim}" if p.mode in ("rp", "ap", "adv") else ""
            rows.append(
                f"{p.name or '<model>'}: {p.layer_type} N={p.num_neurons} k={p.fan_in} {p.role} {p.mode}"
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
