r"""Stochastic layers of stochastic normalizing flows (Wu, Köhler & Noé, 2020).

A layer runs a Markov kernel that keeps ``pi(x) ∝ exp(-U(x))`` invariant, in both directions.
With detailed balance the log path weight of a move ``x -> y`` telescopes to its end points,

.. math:: \text{log\_abs\_det\_jacobian}(x, y) = U(y) - U(x),

so ``log p(y) = log p(x) - U(y) + U(x)``, a deterministic function of the pair; the
randomness lives only in the moves. Chained layers with annealed energies
(:class:`AnnealedEnergy`) give the Jarzynski / annealed-importance-sampling weights, whose
mean is the target's normaliser.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from pyro.distributions import Distribution, is_validation_enabled
from torch import nn

from ..base import FlowTransform


class NegativeLogProb:
    """``U(x) = -log p(x)`` of a distribution, as a picklable callable."""

    def __init__(self, distribution):
        self.distribution = distribution

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return -self.distribution.log_prob(x)

    def __repr__(self) -> str:
        return f"NegativeLogProb({self.distribution!r})"


def as_energy(energy) -> Callable[[torch.Tensor], torch.Tensor]:
    """``U(x)``: a callable as it is, or ``-log_prob`` of a (Pyro or torch) distribution."""
    if isinstance(energy, torch.distributions.Distribution) or isinstance(energy, Distribution):
        return NegativeLogProb(energy)
    if callable(energy):
        return energy
    raise TypeError(f"energy must be a callable U(x) or a distribution, got {type(energy).__name__}")


def standard_normal_energy(x: torch.Tensor) -> torch.Tensor:
    """``U(x) = |x|^2 / 2``, the energy of the standard normal base (up to a constant)."""
    return 0.5 * (x * x).sum(-1)


class AnnealedEnergy(nn.Module):
    r"""Geometric interpolation ``U_beta(x) = (1 - beta) U_0(x) + beta U_1(x)`` between a
    start energy (default: the standard normal's) and a target energy, as annealed
    importance sampling and stochastic normalizing flows use."""

    def __init__(self, target, beta: float, start=None):
        super().__init__()
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"AnnealedEnergy: beta must be in [0, 1], got {beta!r}")
        self.target = as_energy(target)
        self.start = standard_normal_energy if start is None else as_energy(start)
        self.beta = float(beta)

    def forward(self, x):
        if self.beta == 1.0:
            return self.target(x)
        if self.beta == 0.0:
            return self.start(x)
        return (1 - self.beta) * self.start(x) + self.beta * self.target(x)

    def extra_repr(self):
        return f"beta={self.beta:.3g}"


class _MarkovLayer(FlowTransform):
    """Shared machinery: energy checks, step size (fixed or adapted), acceptance statistics."""

    bijective = False
    target_acceptance = 0.5

    def __init__(self, input_dim: int, energy, n_steps: int = 1, step_size: float = 0.1,
                 adapt_step_size: bool = False, cache_size: int = 1):
        super().__init__(input_dim, cache_size=cache_size)
        name = type(self).__name__
        if not isinstance(n_steps, int) or isinstance(n_steps, bool) or n_steps < 1:
            raise ValueError(f"{name}: n_steps must be a positive int, got {n_steps!r}")
        if not (isinstance(step_size, (int, float)) and step_size > 0 and math.isfinite(step_size)):
            raise ValueError(f"{name}: step_size must be a positive number, got {step_size!r}")
        if isinstance(energy, nn.Module):
            self.energy_module = energy  # registered, so .to() and state_dict see its parameters
        self._energy = as_energy(energy)
        self.n_steps = n_steps
        self.adapt_step_size = adapt_step_size
        self.register_buffer("log_step_size", torch.tensor(math.log(step_size)))
        self.last_acceptance = None

    @property
    def step_size(self) -> float:
        return float(self.log_step_size.exp())

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        """``U(x)`` with its shape checked: one value per point, never NaN."""
        u = self._energy(x)
        if not isinstance(u, torch.Tensor) or u.shape != x.shape[:-1]:
            got = tuple(u.shape) if isinstance(u, torch.Tensor) else type(u).__name__
            raise ValueError(
                f"{type(self).__name__}: the energy must return one value per point, shape {tuple(x.shape[:-1])}, "
                f"for input of shape {tuple(x.shape)}; got {got}"
            )
        # a host read (a device sync): checked with Pyro's validation, as distributions check their values; without
        # it a NaN energy makes a NaN acceptance ratio, and the proposal is rejected
        if is_validation_enabled() and torch.isnan(u).any():
            raise ValueError(f"{type(self).__name__}: the energy returned NaN for input of shape {tuple(x.shape)}")
        return u

    def _propose(self, x, u, step):  # -> (proposal, its energy, log acceptance ratio)
        raise NotImplementedError

    def _run(self, x):
        step = self.log_step_size.exp().to(x.dtype)
        u_start = u = self.energy(x)
        accepted = x.new_zeros(())
        for _ in range(self.n_steps):
            proposal, u_proposal, log_ratio = self._propose(x, u, step)
            accept = torch.log(torch.rand_like(u)) < log_ratio  # NaN/-inf ratios reject
            x = torch.where(accept.unsqueeze(-1), proposal, x)
            u = torch.where(accept, u_proposal, u)
            accepted = accepted + accept.to(x.dtype).mean()
        rate = (accepted / self.n_steps).detach()
        self.last_acceptance = rate
        if self.adapt_step_size and self.training:
            with torch.no_grad():  # Robbins-Monro nudge towards the target acceptance rate
                self.log_step_size.add_(0.1 * (rate.to(self.log_step_size) - self.target_acceptance))
        return x, u - u_start

    def _forward_with_ladj(self, x):
        return self._run(x)

    def _inverse_with_ladj(self, y):
        # detailed balance: the reverse kernel is the kernel itself; ladj(x, y) = U(y) - U(x)
        x, u_difference = self._run(y)
        return x, -u_difference

    def _ladj(self, x, y):
        return self.energy(y) - self.energy(x)

    def extra_repr(self):
        return f"input_dim={self.input_dim}, n_steps={self.n_steps}, step_size={self.step_size:.3g}"


class Metropolis(_MarkovLayer):
    r"""Random-walk Metropolis-Hastings layer (Wu et al., 2020): ``n_steps`` moves
    ``y' = x + step_size * xi``, ``xi ~ N(0, I)``, each accepted with probability
    ``min(1, exp(U(x) - U(y')))``, batched over every leading dimension. ``energy`` is any
    callable ``U(x)`` returning one value per point, or a distribution (``U = -log_prob``);
    :class:`AnnealedEnergy` gives the intermediate energies of an annealed flow. With
    ``adapt_step_size`` the step size is nudged towards 23.4% acceptance in training mode.
    ``last_acceptance`` holds the mean acceptance rate of the latest call.
    """

    target_acceptance = 0.234

    def _propose(self, x, u, step):
        proposal = x + step * torch.randn_like(x)
        u_proposal = self.energy(proposal)
        return proposal, u_proposal, u - u_proposal


class Langevin(_MarkovLayer):
    r"""Metropolis-adjusted Langevin layer (MALA): proposals
    ``y' = x - eps grad U(x) + sqrt(2 eps) xi`` with the Metropolis-Hastings correction for the
    asymmetric proposal,

    .. math:: \log\alpha = U(x) - U(y') - \frac{|x - y' + \epsilon\nabla U(y')|^2
              - |y' - x + \epsilon\nabla U(x)|^2}{4\epsilon},

    so detailed balance holds and ``ladj(x, y) = U(y) - U(x)`` as for :class:`Metropolis`.
    Gradients of ``U`` come from autograd; when gradients are being recorded they are taken
    with ``create_graph=True`` so the pathwise gradient through the drift is exact.
    Adaptation targets 57.4% acceptance.
    """

    target_acceptance = 0.574

    def _grad_energy(self, x):
        with torch.enable_grad():
            leaf = x if x.requires_grad else x.detach().requires_grad_(True)
            u = self.energy(leaf)
            (grad,) = torch.autograd.grad(u.sum(), leaf, create_graph=torch.is_grad_enabled() and x.requires_grad)
        return u if x.requires_grad else u.detach(), grad

    def _propose(self, x, u, step):
        u_x, grad_x = self._grad_energy(x)
        proposal = x - step * grad_x + torch.sqrt(2 * step) * torch.randn_like(x)
        u_proposal, grad_proposal = self._grad_energy(proposal)
        forward = proposal - x + step * grad_x
        backward = x - proposal + step * grad_proposal
        log_ratio = u_x - u_proposal - ((backward * backward).sum(-1) - (forward * forward).sum(-1)) / (4 * step)
        return proposal, u_proposal, log_ratio
