r"""Dimension-changing surjections: ``Augment`` (augmented flows) and ``Slice`` (SurVAE)."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..base import FlowTransform, check_context_dim
from ..nn import MLP, soft_clamp

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


class ConditionalGaussian(nn.Module):
    r"""``N(e; mu(c), diag sigma(c)^2)`` over ``size`` coordinates given ``c``; a standard normal
    when ``learned=False``, otherwise ``(mu, log sigma)`` from a zero-initialised
    :class:`~pyro_nf.nn.MLP` of ``c`` (so it starts standard normal), with
    ``log sigma = soft_clamp(raw, log_scale_bound)``: a scale far outside ``e^{\pm 3}`` would make
    the importance weights ``p / q`` of an augmented flow heavy-tailed (too wide) or
    degenerate (too narrow) long before it could fit anything."""

    def __init__(self, context_dim: int, size: int, learned: bool, hidden_dims=(32, 32),
                 log_scale_bound: float = 3.0, extra_context_dim: int = 0):
        super().__init__()
        if not log_scale_bound > 0:
            raise ValueError(f"ConditionalGaussian: log_scale_bound must be positive, got {log_scale_bound!r}")
        self.size = size
        self.log_scale_bound = float(log_scale_bound)
        self.extra_context_dim = extra_context_dim
        self.net = MLP(context_dim, 2 * size, hidden_dims, context_features=extra_context_dim) if learned else None

    def _loc_log_scale(self, context, extra=None):
        if self.net is None:
            zeros = context.new_zeros(*context.shape[:-1], self.size)
            return zeros, zeros
        out = self.net(context, extra) if self.extra_context_dim else self.net(context)
        loc, raw = out.chunk(2, dim=-1)
        return loc, soft_clamp(raw, self.log_scale_bound)

    def sample(self, context, extra=None):
        loc, log_scale = self._loc_log_scale(context, extra)
        return loc + log_scale.exp() * torch.randn_like(loc)

    def log_prob(self, value, context, extra=None):
        loc, log_scale = self._loc_log_scale(context, extra)
        standard = (value - loc) * torch.exp(-log_scale)
        return (-0.5 * standard * standard - log_scale - _HALF_LOG_2PI).sum(-1)


def _check_sizes(owner, input_dim, extra, label):
    for name, value in (("input_dim", input_dim), (label, extra)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{owner}: {name} must be a positive int, got {value!r}")


class Augment(FlowTransform):
    r"""Augmentation (Huang et al., 2020; Nielsen et al., 2020): the flow works in a bigger space.

    * Density direction (inverse): ``x -> z = [x, e]`` with ``e ~ q(e | x)``, a standard normal
      (``learned=False``) or a learned conditional Gaussian.
    * Sampling direction (forward): ``z = [x, e] -> x`` drops ``e``.
    * ``log_abs_det_jacobian(z, x) = log q(e | x)``, deterministic given the pair.

    Then ``log p(z) - log q(e | x)`` is a one-sample lower bound on ``log p(x)`` whose
    exponential is unbiased for ``p(x)``; :func:`pyro_nf.flows.log_prob_estimate` averages
    ``K`` paths for a tighter estimate. ``input_dim`` is the data size; the layer's forward
    input (``domain_dim``) has ``input_dim + augment_dim`` coordinates.
    """

    bijective = False

    def __init__(self, input_dim: int, augment_dim: int, learned: bool = False, hidden_dims=(32, 32),
                 cache_size: int = 1, context_dim: int = 0):
        _check_sizes("Augment", input_dim, augment_dim, "augment_dim")
        super().__init__(input_dim, cache_size=cache_size)
        context_dim = check_context_dim(context_dim, "Augment")
        if context_dim and not learned:
            raise ValueError("Augment: a context only conditions a learned q(e | x, c) (learned=True)")
        self.context_dim = context_dim
        self.augment_dim = augment_dim
        self.noise = ConditionalGaussian(input_dim, augment_dim, learned, hidden_dims, extra_context_dim=context_dim)

    @property
    def domain_dim(self) -> int:
        return self.input_dim + self.augment_dim

    def _forward_with_ladj(self, z, context=None):
        x, e = z.split([self.input_dim, self.augment_dim], dim=-1)
        return x, self.noise.log_prob(e, x, context)

    def _inverse_with_ladj(self, x, context=None):
        e = self.noise.sample(x, context)
        x = x.expand(*e.shape[:-1], -1)
        return torch.cat([x, e], dim=-1), self.noise.log_prob(e, x, context)

    def _ladj(self, z, x, context=None):
        return self.noise.log_prob(z[..., self.input_dim:], x, context)

    def extra_repr(self):
        return f"input_dim={self.input_dim}, augment_dim={self.augment_dim}, learned={self.noise.net is not None}"


class Slice(FlowTransform):
    r"""Slicing (Nielsen et al., 2020), the mirror image of :class:`Augment`.

    * Density direction (inverse): ``x = [z, e] -> z``, dropping ``e``; deterministic.
    * Sampling direction (forward): ``z -> [z, e]`` with ``e ~ p(e | z)`` (standard normal or a
      learned conditional Gaussian).
    * ``log_abs_det_jacobian(z, x) = -log p(e | z)``, so ``log p(x) = log p(z) + log p(e | z)``
      exactly: slicing gives an exact likelihood, a flow on fewer dimensions.

    ``input_dim`` is the size kept (the forward input); the output has
    ``input_dim + slice_dim`` coordinates.
    """

    bijective = False

    def __init__(self, input_dim: int, slice_dim: int, learned: bool = True, hidden_dims=(32, 32),
                 cache_size: int = 1):
        _check_sizes("Slice", input_dim, slice_dim, "slice_dim")
        super().__init__(input_dim, cache_size=cache_size)
        self.slice_dim = slice_dim
        self.decoder = ConditionalGaussian(input_dim, slice_dim, learned, hidden_dims)

    @property
    def codomain_dim(self) -> int:
        return self.input_dim + self.slice_dim

    def _forward_with_ladj(self, z):
        e = self.decoder.sample(z)
        return torch.cat([z, e], dim=-1), -self.decoder.log_prob(e, z)

    def _inverse_with_ladj(self, x):
        z, e = x.split([self.input_dim, self.slice_dim], dim=-1)
        return z, -self.decoder.log_prob(e, z)

    def _ladj(self, z, x):
        return -self.decoder.log_prob(x[..., self.input_dim:], z)

    def extra_repr(self):
        return f"input_dim={self.input_dim}, slice_dim={self.slice_dim}, learned={self.decoder.net is not None}"
