"""The reference backend: comhe_kernels.reference, plain PyTorch and autograd.

Always available, on any device; O(N^2) memory. The oracle of the tests, the
naive baseline of the benchmark and the fallback of "auto" where no fused
backend runs.
"""

from __future__ import annotations

import torch

from ... import reference
from ..._spec import check_finite
from .._registry import Backend, register


class _Functions:
    @staticmethod
    def energy(x, spec):
        return reference.per_set_energy(x, spec) + check_finite(x).to(x.dtype)

    @staticmethod
    def energy_and_grad(x, spec):
        with torch.enable_grad():
            xg = x.detach().requires_grad_()
            energy = _Functions.energy(xg, spec)
            (grad,) = torch.autograd.grad(energy.sum(), xg)
        return energy.detach(), grad

    @staticmethod
    def cross(x, y, spec):
        guard = check_finite(x, "x") + check_finite(y, "y")
        return reference.cross_per_set_energy(x, y, spec) + guard.to(x.dtype)

    @staticmethod
    def cross_and_grad(x, y, spec):
        with torch.enable_grad():
            xg, yg = x.detach().requires_grad_(), y.detach().requires_grad_()
            energy = _Functions.cross(xg, yg, spec)
            gx, gy = torch.autograd.grad(energy.sum(), (xg, yg), allow_unused=True)
        return energy.detach(), _zeros_if_none(gx, x), _zeros_if_none(gy, y)


def _zeros_if_none(g, like):
    return torch.zeros_like(like) if g is None else g


register(
    Backend(
        "reference",
        devices=None,
        unavailable=lambda op, device_type: None,
        load=lambda: _Functions,
        summary="plain PyTorch (comhe_kernels.reference), autograd, O(N^2) memory",
    )
)
