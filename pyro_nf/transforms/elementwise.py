r"""Elementwise piecewise-linear layers. For sigmoid, logit, exp and tanh use torch's own
``SigmoidTransform``, ``ExpTransform``, ``TanhTransform`` (they compose with pyro_nf layers)."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.distributions import constraints
from torch.nn import functional as F

from ..base import FlowTransform


def _leaky(x, log_slope):
    """``x`` where ``x >= 0``, ``slope * x`` elsewhere, with its elementwise log-derivative."""
    negative = x < 0
    y = torch.where(negative, x * log_slope.exp(), x)
    return y, torch.where(negative, log_slope, torch.zeros_like(log_slope)).expand_as(x)


class LeakyReLU(FlowTransform):
    r"""Leaky ReLU with a fixed slope ``a > 0`` (the layer of seed 002).

    .. math:: y = \begin{cases} x & x\ge0\\ a x & x<0\end{cases},\qquad
              x = \begin{cases} y & y\ge0\\ y/a & y<0\end{cases},\qquad
              \log|\det J| = \log a\cdot\#\{i: x_i<0\}.
    """

    cheap_inverse = True  # see FlowTransform.cheap_inverse

    def __init__(self, input_dim: int, negative_slope: float = 0.5, cache_size: int = 1):
        super().__init__(input_dim, cache_size=cache_size)
        if not (isinstance(negative_slope, (int, float)) and negative_slope > 0 and math.isfinite(negative_slope)):
            raise ValueError(f"LeakyReLU: negative_slope must be a positive finite number, got {negative_slope!r}")
        self.negative_slope = float(negative_slope)

    def _log_slope(self, like):
        return like.new_tensor(math.log(self.negative_slope))

    def _forward_with_ladj(self, x):
        y, ladj = _leaky(x, self._log_slope(x))
        return y, ladj.sum(-1)

    def _inverse_with_ladj(self, y):
        log_slope = self._log_slope(y)
        x, neg_ladj = _leaky(y, -log_slope)
        return x, -neg_ladj.sum(-1)

    def extra_repr(self):
        return f"input_dim={self.input_dim}, negative_slope={self.negative_slope}"


class PReLU(FlowTransform):
    r"""Parametric ReLU with a learned positive slope per coordinate, ``a_i = e^{\alpha_i}``
    (seed 003's PReLU bijector, made learnable). Same formulas as :class:`LeakyReLU`.
    """

    cheap_inverse = True  # see FlowTransform.cheap_inverse

    def __init__(self, input_dim: int, init_slope: float = 0.5, cache_size: int = 1):
        super().__init__(input_dim, cache_size=cache_size)
        if not (isinstance(init_slope, (int, float)) and init_slope > 0 and math.isfinite(init_slope)):
            raise ValueError(f"PReLU: init_slope must be a positive finite number, got {init_slope!r}")
        self.log_slope = nn.Parameter(torch.full((input_dim,), math.log(init_slope)))

    @property
    def slope(self) -> torch.Tensor:
        return self.log_slope.exp()

    def _forward_with_ladj(self, x):
        y, ladj = _leaky(x, self.log_slope)
        return y, ladj.sum(-1)

    def _inverse_with_ladj(self, y):
        x, neg_ladj = _leaky(y, -self.log_slope)
        return x, -neg_ladj.sum(-1)


class Softplus(FlowTransform):
    r"""Elementwise softplus onto the positive orthant, the natural layer before
    :class:`~pyro_nf.surjections.Abs`:

    .. math:: y = \log(1 + e^{x}),\qquad x = y + \log(1 - e^{-y}),\qquad
              \log|\det J| = \textstyle\sum_i \log\sigma(x_i).
    """

    cheap_inverse = True  # see FlowTransform.cheap_inverse

    codomain = constraints.independent(constraints.positive, 1)

    def _forward_with_ladj(self, x):
        return F.softplus(x), F.logsigmoid(x).sum(-1)

    def _inverse_with_ladj(self, y):
        # y = 0 (the closed boundary) maps to a large negative x rather than -inf and NaN
        y = y.clamp_min(torch.finfo(y.dtype).tiny)
        x = y + torch.log(-torch.expm1(-y))
        return x, F.logsigmoid(x).sum(-1)
