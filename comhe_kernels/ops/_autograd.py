"""Autograd, forward-mode AD, vmap and fake kernels of the fused energy ops.

A leaf module (it imports only torch), shared by every backend whose kernels
are torch ops with the schemas of csrc/ops.cpp:

    hyperspherical_energy(x, kind, s, half_space, eps, delta, compute_grad, precision) -> (energy, grad)
    cross_energy(x, y, kind, s, half_space, eps, delta, compute_grad, precision) -> (energy, grad_x, grad_y)

energy is the (B,) float64 per-set sums; the gradients are computed in the
same pass (the kernels have them for the price of the energy), so backward
and the JVP are products with saved tensors: no second kernel call.

``OpFunctions(energy_op, cross_op)`` turns such a pair of ops into what a
backend of the registry provides (energy, energy_and_grad, cross,
cross_and_grad); ``register_python_side(energy_op, cross_op)`` gives the ops
themselves fake kernels (torch.compile, meta tensors), autograd formulas (for
callers of torch.ops.comhe.* and torch.library.opcheck) and vmap rules
(mapping the vmapped dim into the op's set dim B: one call, not a loop).
"""

from __future__ import annotations

import torch

_SECOND_DERIVATIVE = (
    "comhe_kernels: the fused energy ops have no second derivative (a gradient of their gradient, "
    "e.g. backward with create_graph=True followed by another backward, or a Hessian); "
    "use backend='reference' for that"
)


class _FirstOrderOnly(torch.autograd.Function):
    """grad_out * grad, attached to x's graph so that differentiating it again
    raises instead of silently contributing zero (the saved gradient is a
    constant, so a second derivative through it would be incomplete)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(grad_out, grad, x):
        return grad_out.to(grad.dtype).reshape(grad_out.shape + (1, 1)) * grad

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, _):
        raise RuntimeError(_SECOND_DERIVATIVE)


def _first_order(grad_out, grad, x):
    if torch.is_grad_enabled() and x.requires_grad:  # backward with create_graph, functorch's grad
        return _FirstOrderOnly.apply(grad_out, grad, x)
    return grad_out.to(grad.dtype).reshape(grad_out.shape + (1, 1)) * grad


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


class OpFunctions:
    """The four functions of a registry backend, from its two ops.

    Arguments are (B, N, k) tensors of float32/float64 and an EnergySpec; the
    per-set sums come back in float64.
    """

    def __init__(self, energy_op, cross_op=None):
        self.energy_op, self.cross_op = energy_op, cross_op
        self._energy_fn, self._energy_fn_jvp = _energy_function(energy_op)
        if cross_op is not None:
            self._cross_fn, self._cross_fn_jvp = _cross_function(cross_op)

    def energy(self, x, spec):
        # Dynamo cannot trace a custom jvp (it graph-breaks), so compiled code
        # gets the same Function without it; forward AD is an eager feature.
        fn = self._energy_fn if torch.compiler.is_compiling() else self._energy_fn_jvp
        args = (spec.kind, spec.s, spec.half_space, spec.eps, spec.delta, _needs_grad(x), spec.precision)
        energy, _ = fn.apply(x, *args)
        return energy

    def energy_and_grad(self, x, spec):
        args = (spec.kind, spec.s, spec.half_space, spec.eps, spec.delta, True, spec.precision)
        return self.energy_op(x.detach(), *args)

    def cross(self, x, y, spec):
        fn = self._cross_fn if torch.compiler.is_compiling() else self._cross_fn_jvp
        args = (spec.kind, spec.s, spec.half_space, spec.eps, spec.delta, _needs_grad(x, y), spec.precision)
        energy, _, _ = fn.apply(x, y, *args)
        return energy

    def cross_and_grad(self, x, y, spec):
        args = (spec.kind, spec.s, spec.half_space, spec.eps, spec.delta, True, spec.precision)
        return self.cross_op(x.detach(), y.detach(), *args)


def _energy_function(op):
    class _Energy(torch.autograd.Function):
        generate_vmap_rule = True  # through the op's vmap rule (register_python_side)

        @staticmethod
        def forward(x, kind, s, half_space, eps, delta, compute_grad, precision):
            return op(x, kind, s, half_space, eps, delta, compute_grad, precision)

        @staticmethod
        def setup_context(ctx, inputs, output):
            x = inputs[0]
            ctx.args = inputs[1:6]
            ctx.precision = inputs[7]
            ctx.mark_non_differentiable(output[1])
            ctx.save_for_backward(x, output[1])
            ctx.save_for_forward(x, output[1])

        @staticmethod
        def _grad(ctx):
            x, grad = ctx.saved_tensors
            if grad.shape != x.shape:  # the forward skipped it (not expected to be needed)
                grad = op(x, *ctx.args, True, ctx.precision)[1]
            return x, grad

        @staticmethod
        def backward(ctx, grad_energy, _):
            x, grad = _Energy._grad(ctx)
            return _first_order(grad_energy, grad, x), None, None, None, None, None, None, None

    class _EnergyJvp(_Energy):
        @staticmethod
        def jvp(ctx, x_t, *_):
            _, grad = _Energy._grad(ctx)
            return (grad * x_t).sum((-1, -2), dtype=torch.float64), None

    return _Energy, _EnergyJvp


def _cross_function(op):
    class _Cross(torch.autograd.Function):
        generate_vmap_rule = True

        @staticmethod
        def forward(x, y, kind, s, half_space, eps, delta, compute_grad, precision):
            return op(x, y, kind, s, half_space, eps, delta, compute_grad, precision)

        @staticmethod
        def setup_context(ctx, inputs, output):
            x, y = inputs[:2]
            ctx.args = inputs[2:7]
            ctx.precision = inputs[8]
            ctx.mark_non_differentiable(output[1], output[2])
            ctx.save_for_backward(x, y, output[1], output[2])
            ctx.save_for_forward(x, y, output[1], output[2])

        @staticmethod
        def _grads(ctx):
            x, y, gx, gy = ctx.saved_tensors
            if gx.shape != x.shape or gy.shape != y.shape:
                _, gx, gy = op(x, y, *ctx.args, True, ctx.precision)
            return x, y, gx, gy

        @staticmethod
        def backward(ctx, grad_energy, _gx, _gy):
            x, y, gx, gy = _Cross._grads(ctx)
            grads = _first_order(grad_energy, gx, x), _first_order(grad_energy, gy, y)
            return *grads, None, None, None, None, None, None, None

    class _CrossJvp(_Cross):
        @staticmethod
        def jvp(ctx, x_t, y_t, *_):
            _, _, gx, gy = _Cross._grads(ctx)
            jvp = torch.zeros(gx.shape[:1], dtype=torch.float64, device=gx.device)
            if x_t is not None:
                jvp = jvp + (gx * x_t).sum((-1, -2), dtype=torch.float64)
            if y_t is not None:
                jvp = jvp + (gy * y_t).sum((-1, -2), dtype=torch.float64)
            return jvp, None, None

    return _Cross, _CrossJvp


def register_python_side(energy_op: str, cross_op: str | None = None) -> None:
    """Fake kernels, autograd formulas and vmap rules of the two ops, by qualified name."""

    @torch.library.register_fake(energy_op)
    def _fake_energy(x, kind, s, half_space, eps, delta, compute_grad, precision="auto"):
        energy = x.new_empty((x.shape[0],), dtype=torch.float64)
        return energy, x.new_empty(x.shape if compute_grad else (0,))

    def _setup_energy(ctx, inputs, output):
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(inputs[0], output[1])
        ctx.compute_grad = inputs[6]

    def _backward_energy(ctx, grad_energy, _):
        if not ctx.compute_grad:
            raise RuntimeError(f"{energy_op} was called with compute_grad=False; call it with True to differentiate it")
        x, grad = ctx.saved_tensors
        return _first_order(grad_energy, grad, x), None, None, None, None, None, None, None

    torch.library.register_autograd(energy_op, _backward_energy, setup_context=_setup_energy)

    @torch.library.register_vmap(energy_op)
    def _vmap_energy(info, in_dims, x, kind, s, half_space, eps, delta, compute_grad, precision="auto"):
        v = info.batch_size
        args = (kind, s, half_space, eps, delta, compute_grad, precision)
        energy, grad = _call(energy_op, _fold(x, in_dims[0], v), *args)
        grad = grad.unflatten(0, (v, -1)) if compute_grad else grad
        return (energy.unflatten(0, (v, -1)), grad), (0, 0 if compute_grad else None)

    if cross_op is None:
        return

    @torch.library.register_fake(cross_op)
    def _fake_cross(x, y, kind, s, half_space, eps, delta, compute_grad, precision="auto"):
        energy = x.new_empty((x.shape[0],), dtype=torch.float64)
        if not compute_grad:
            return energy, x.new_empty((0,)), y.new_empty((0,))
        return energy, x.new_empty(x.shape), y.new_empty(y.shape)

    def _setup_cross(ctx, inputs, output):
        ctx.mark_non_differentiable(output[1], output[2])
        ctx.save_for_backward(inputs[0], inputs[1], output[1], output[2])
        ctx.compute_grad = inputs[7]

    def _backward_cross(ctx, grad_energy, _gx, _gy):
        if not ctx.compute_grad:
            raise RuntimeError(f"{cross_op} was called with compute_grad=False; call it with True to differentiate it")
        x, y, gx, gy = ctx.saved_tensors
        grads = _first_order(grad_energy, gx, x), _first_order(grad_energy, gy, y)
        return *grads, None, None, None, None, None, None, None

    torch.library.register_autograd(cross_op, _backward_cross, setup_context=_setup_cross)

    @torch.library.register_vmap(cross_op)
    def _vmap_cross(info, in_dims, x, y, kind, s, half_space, eps, delta, compute_grad, precision="auto"):
        v = info.batch_size
        xs, ys = _fold(x, in_dims[0], v), _fold(y, in_dims[1], v)
        energy, gx, gy = _call(cross_op, xs, ys, kind, s, half_space, eps, delta, compute_grad, precision)
        if compute_grad:
            return (energy.unflatten(0, (v, -1)), gx.unflatten(0, (v, -1)), gy.unflatten(0, (v, -1))), (0, 0, 0)
        return (energy.unflatten(0, (v, -1)), gx, gy), (0, None, None)


def _fold(t, dim, size):
    """The vmapped dim into the op's set dim: (V, B, N, k) -> (V B, N, k)."""
    t = t.unsqueeze(0).expand(size, *t.shape) if dim is None else t.movedim(dim, 0)
    return t.flatten(0, 1)


def _call(qualname, *args):
    namespace, name = qualname.split("::")
    return getattr(getattr(torch.ops, namespace), name)(*args)
