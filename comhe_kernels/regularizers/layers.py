"""Which layers a regularizer takes, and what each of them gets (``plan_layers``)."""

from __future__ import annotations

import fnmatch
import math
import os
import sys
import warnings
from dataclasses import dataclass

from torch import nn

from ._checks import nonneg_float

SUPPORTED_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass(frozen=True)
class LayerPlan:
    """What the regularizer does to one layer.

    layer_type: the module's class name ("Conv2d", "Linear", ...). role:
    "hidden" or "output" (the classifier). mode: what the energy is taken
    of: "plain" (the neurons themselves), "rp", "ap", "adv" (their
    projections) or "group" (their channel groups). groups: the number of
    G-CoMHE groups (1 if not grouped). in_channels: input channels per neuron
    (in / conv groups).
    """

    name: str
    layer_type: str
    num_neurons: int
    fan_in: int
    in_channels: int
    role: str
    mode: str
    half_space: bool
    weight: float
    groups: int = 1


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside DDP / DataParallel / torch.compile wrappers,
    so that layer names are the ones the user knows ("fc", not "module.fc")."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):  # torch.compile
            model = model._orig_mod
        else:
            return model


def weight_shape(module: nn.Module) -> tuple[int, ...]:
    """The weight's shape from the layer's configuration (reading ``.weight``
    of a parametrized layer would run its parametrization, e.g. a power
    iteration of spectral norm, as a side effect)."""
    if isinstance(module, nn.Linear):
        return (module.out_features, module.in_features)
    return (module.out_channels, module.in_channels // module.groups, *module.kernel_size)


def current_weight(module: nn.Module):
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


def _role_layer(arg: str, value, auto, names: list) -> str | None:
    if value == "auto":
        return auto
    if value is not None and value not in names:
        raise ValueError(f"{arg} {value!r} is not one of the selected layers {names}")
    return value


def _caller_outside_package() -> int:
    """The stacklevel of the first frame outside comhe_kernels/regularizers, for
    a warning raised in its caller: the user's line whether the regularizer
    was built as CoMHE(...), MHE(...) or through plan_layers."""
    here = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.dirname(os.path.abspath(frame.f_code.co_filename)) == here:
        frame, level = frame.f_back, level + 1
    return level


def plan_layers(
    model: nn.Module,
    variant: str,
    *,
    hidden_weight: float,
    output_weight: float,
    half_space: bool = True,
    include=None,
    exclude=None,
    output_layer: str | None = "auto",
    input_layer: str | None = "auto",
    layer_weights: dict | None = None,
    proj_dim: int | None = None,
    num_groups: int | None = None,
) -> list[tuple[LayerPlan, nn.Module]]:
    """The layers of ``model`` a regularizer of ``variant`` takes, each with its plan.

    The candidates are the supported layers of ``include`` (default all) not
    in ``exclude``. The output and input layers are chosen among them first
    ("auto": the last nn.Linear, the first layer), and only then are layers
    with a single neuron (no pairs) skipped with a warning: a one-output
    head (binary classifier, regression) is still the output layer, so the
    hidden layer before it keeps its hidden term. The projected variants
    leave the output and input layers, and layers with fan-in <= proj_dim,
    unprojected ("plain"); G-CoMHE leaves a layer with fewer than 2 input
    channels plain. See ``CoMHE`` for the arguments.
    """
    include = _check_selectors("include", include)
    exclude = _check_selectors("exclude", exclude)
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, SUPPORTED_LAYERS)]
    if include:
        for e in include:
            if isinstance(e, str) and not any(_matches(n, e) for n, _ in layers):
                raise ValueError(f"include: {e!r} matches no Linear/Conv layer of the model")
        layers = [(n, m) for n, m in layers if _selected(n, m, include)]
    layers = [(n, m) for n, m in layers if not _selected(n, m, exclude)]
    for n, m in layers:
        if isinstance(m.weight, nn.parameter.UninitializedParameter):
            raise ValueError(f"layer {n!r} is lazy and not initialized yet: run one forward pass first")
    names = [n for n, _ in layers]
    linears = [n for n, m in layers if isinstance(m, nn.Linear)]
    output_layer = _role_layer("output_layer", output_layer, linears[-1] if linears else None, names)
    input_layer = _role_layer("input_layer", input_layer, names[0] if names else None, names)
    layer_weights = dict(layer_weights or {})
    for n, w in layer_weights.items():
        if n not in names:
            raise ValueError(f"layer_weights: {n!r} is not one of the selected layers {names}")
        nonneg_float(f"layer_weights[{n!r}]", w)

    plans = []
    for n, m in layers:
        shape = weight_shape(m)
        output = n == output_layer
        if shape[0] < 2:
            role = " (the output layer)" if output else ""
            warnings.warn(f"comhe_kernels: skipping layer {n!r}{role}: a single neuron has no pairs",
                          stacklevel=_caller_outside_package())
            continue
        fan_in, in_channels = math.prod(shape[1:]), shape[1]
        mode, groups = "plain", 1
        if not output and n != input_layer and variant != "mhe":
            if variant == "group":
                groups = min(num_groups, in_channels)
                mode, groups = ("group", groups) if groups >= 2 else ("plain", 1)
            elif fan_in > proj_dim:  # projecting to as many dimensions as it has compresses nothing
                mode = variant
        plans.append((LayerPlan(
            name=n, layer_type=type(m).__name__, num_neurons=shape[0], fan_in=fan_in, in_channels=in_channels,
            role="output" if output else "hidden", mode=mode, half_space=half_space and not output,
            weight=float(layer_weights.get(n, output_weight if output else hidden_weight)), groups=groups,
        ), m))
    if not plans:
        raise ValueError(
            "no layer to regularize: the model has no Linear/Conv1d/2d/3d layer with >= 2 neurons "
            "left after include/exclude"
        )
    return plans
