"""What each layer's energy is taken of: one small object per mode of ``LayerPlan``.

A term turns the layer's neurons W (N, k) into the point sets whose mean
pair energy is the layer's E: W itself, its projections or its channel
groups, (N, k') or (B, N, k') for one batched op call. Terms that learn
(ap, adv) keep their P in a buffer of the regularizer and update it when
called with ``update=True``. ``TERMS[plan.mode]`` is the class of a layer's
term; ``for_layer(plan, reg, index)`` builds it from the regularizer's settings.
"""

from __future__ import annotations

import numbers

import torch

from ..projections import angle_preservation_loss, channel_groups, gaussian_projections, project


class Draws:
    """The random stream of a regularizer: torch's global RNG (None), a
    torch.Generator, or an int seed. A seeded stream follows the model to
    another device by re-seeding there (the stream restarts)."""

    def __init__(self, generator, device: torch.device):
        self.seed, self.generator = None, None
        if isinstance(generator, torch.Generator):
            self.generator = generator
        elif generator is not None:
            if isinstance(generator, bool) or not isinstance(generator, numbers.Integral):
                raise TypeError(f"generator must be an int seed or a torch.Generator, got {type(generator).__name__}")
            self.seed = int(generator)
            self.generator = torch.Generator(device=device).manual_seed(self.seed)

    def on(self, device: torch.device):
        """The generator for draws on ``device`` (None: the global RNG)."""
        g = self.generator
        if g is not None and g.device.type != torch.device(device).type:
            if self.seed is None:
                raise RuntimeError(
                    f"the torch.Generator given is on {g.device} but the model's weights are on {device}: "
                    "pass a generator on the weights' device, or an int seed"
                )
            g = self.generator = torch.Generator(device=device).manual_seed(self.seed)
        return g


def learning_rate(lr) -> float:
    """A float, or an optimizer's current rate (``param_groups[0]["lr"]``), read at every call."""
    return float(lr.param_groups[0]["lr"]) if isinstance(lr, torch.optim.Optimizer) else float(lr)


class Plain:
    """MHE and half-space MHE: the neurons themselves."""

    @classmethod
    def for_layer(cls, plan, reg, index):
        return cls()

    def sets(self, w: torch.Tensor, update: bool) -> torch.Tensor:
        return w


class RandomProjection:
    """RP-CoMHE: W P_b^T for pn fresh P_b ~ N(0, 1) of shape (pd, k), as one (pn, N, pd) tensor."""

    def __init__(self, num_proj: int, proj_dim: int, fan_in: int, draws: Draws):
        self.num_proj, self.proj_dim, self.fan_in, self.draws = num_proj, proj_dim, fan_in, draws

    @classmethod
    def for_layer(cls, plan, reg, index):
        return cls(reg.num_proj, reg.proj_dim, plan.fan_in, reg._draws)

    def sets(self, w: torch.Tensor, update: bool) -> torch.Tensor:
        proj = gaussian_projections(
            self.num_proj, self.proj_dim, self.fan_in, generator=self.draws.on(w.device), device=w.device, dtype=w.dtype
        )
        return project(w, proj)


class ChannelGroups:
    """G-CoMHE: the neurons' contiguous input-channel blocks, as one (G, N, k_g) tensor."""

    def __init__(self, in_channels: int, groups: int):
        self.in_channels, self.groups = in_channels, groups

    @classmethod
    def for_layer(cls, plan, reg, index):
        return cls(plan.in_channels, plan.groups)

    def sets(self, w: torch.Tensor, update: bool) -> torch.Tensor:
        return channel_groups(w, self.in_channels, self.groups)


class LearnedProjection:
    """W P'^T for a P (pd, k) that takes its own steps on ``objective`` at every update.

    P lives in the buffer ``buffer`` of the regularizer ``owner`` (so that it
    is in its state_dict and follows its .to()) and moves to the weights'
    device and dtype when the model moved. An update takes ``steps`` steps
    of ``sign`` (-1 descent, +1 ascent) on objective(W, P) - sign * l2 ||P||^2
    with W held fixed, then the energy is taken at the lookahead
    P' = P + sign * lr * grad_P objective(W, P), differentiated through W
    where ``through_w`` (a second-order term in W). Subclasses define
    ``objective(w, p)``, ``sign`` and ``through_w``.
    """

    sign = -1.0
    through_w = False

    def __init__(self, owner, buffer: str, lr, steps: int, l2: float):
        self.owner, self.buffer, self.lr, self.steps, self.l2 = owner, buffer, lr, steps, l2

    @staticmethod
    def register_initial(plan, reg, index: int) -> str:
        """Draws P ~ N(0, 1) (pd, k) on the layer's device and dtype into a new
        buffer of ``reg``; returns the buffer's name."""
        p = next(reg._layer_modules[index].parameters())  # not .weight: that would run a parametrization
        init = torch.randn(reg.proj_dim, plan.fan_in, generator=reg._draws.on(p.device), device=p.device, dtype=p.dtype)
        name = f"projection_{index}"
        reg.register_buffer(name, init)
        return name

    def projection(self, w: torch.Tensor) -> torch.Tensor:
        p = getattr(self.owner, self.buffer)
        if p.device != w.device or p.dtype != w.dtype:
            p = p.to(device=w.device, dtype=w.dtype)
            setattr(self.owner, self.buffer, p)
        return p

    def sets(self, w: torch.Tensor, update: bool) -> torch.Tensor:
        proj = self.projection(w)
        return project(w, self._lookahead(proj, w) if update else proj)

    def _lookahead(self, proj: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        lr, wd = learning_rate(self.lr), w.detach()
        through_w = self.through_w and torch.is_grad_enabled() and w.requires_grad
        with torch.enable_grad():
            for _ in range(self.steps):
                p = proj.detach().requires_grad_()
                (g,) = torch.autograd.grad(self.objective(wd, p) - self.sign * self.l2 * p.square().sum(), p)
                proj.add_(self.sign * lr * g)
            p = proj.detach().requires_grad_()
            (g,) = torch.autograd.grad(self.objective(w if through_w else wd, p), p, create_graph=through_w)
        return proj.detach() + self.sign * lr * g


class AngleProjection(LearnedProjection):
    """AP-CoMHE (rmlin/CoMHE angle_projection): P descends ||cos(W P^T) - cos(W)||_F,
    the lookahead differentiated through W (``second_order``) as the original."""

    def __init__(self, owner, buffer, lr, steps, l2, *, second_order: bool, eps: float, method: str):
        super().__init__(owner, buffer, lr, steps, l2)
        self.through_w, self.eps, self.method = second_order, eps, method

    @classmethod
    def for_layer(cls, plan, reg, index):
        # The reference backend is the naive path everywhere: N x N cosines here too.
        method = "naive" if reg.backend == "reference" else "gram"
        return cls(reg, cls.register_initial(plan, reg, index), reg.lr, reg.proj_steps, reg.proj_l2,
                   second_order=reg.second_order, eps=reg.eps, method=method)

    def objective(self, w, p):
        return angle_preservation_loss(w, p, eps=self.eps, method=self.method)


class AdversarialProjection(LearnedProjection):
    """Adv-CoMHE (rmlin/CoMHE adversarial_projection): P ascends the full-space
    energy of W P^T. The network's gradient takes P' as a constant (first
    order): the original's second-order term would need the op's double
    backward. ``energy`` is the regularizer's at construction: P's objective
    is the whole energy, whatever later computes the network's term."""

    sign = 1.0

    def __init__(self, owner, buffer, lr, steps, l2, *, energy):
        super().__init__(owner, buffer, lr, steps, l2)
        self.energy = energy

    @classmethod
    def for_layer(cls, plan, reg, index):
        return cls(reg, cls.register_initial(plan, reg, index), reg.lr, reg.proj_steps, reg.proj_l2,
                   energy=reg.energy)

    def objective(self, w, p):
        return self.energy(project(w, p), False)


TERMS = {
    "plain": Plain,
    "rp": RandomProjection,
    "ap": AngleProjection,
    "adv": AdversarialProjection,
    "group": ChannelGroups,
}
