r"""Monotone elementwise maps ("transformers" in the autoregressive-flow literature).

A transformer maps each coordinate ``x_i`` to ``y_i = tau(x_i; theta_i)`` with parameters
``theta_i`` produced by a conditioner (a coupling or autoregressive network). Keeping it apart
from the structure means one :class:`~pyro_nf.transforms.coupling.Coupling` class serves
NICE, RealNVP and spline coupling alike.

Interface: ``params_per_dim`` parameters per coordinate, laid out as ``params[..., i, k]``;
``forward(x, params) -> (y, log dy/dx)`` and ``inverse(y, params) -> (x, log dy/dx)``, the
log-derivatives elementwise (the caller sums them).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..nn import soft_clamp


class ScalarTransformer(nn.Module):
    params_per_dim: int

    def forward(self, x, params):  # pragma: no cover - interface
        raise NotImplementedError

    def inverse(self, y, params):  # pragma: no cover - interface
        raise NotImplementedError


class Shift(ScalarTransformer):
    r"""Additive (volume-preserving) transformer of NICE (Dinh et al., 2014).

    .. math:: y = x + t, \qquad x = y - t, \qquad \log|dy/dx| = 0.
    """

    params_per_dim = 1

    def forward(self, x, params):
        shift = params[..., 0]
        return x + shift, torch.zeros_like(x)

    def inverse(self, y, params):
        shift = params[..., 0]
        return y - shift, torch.zeros_like(y)


class Affine(ScalarTransformer):
    r"""Affine transformer of RealNVP (Dinh et al., 2017) with a stabilised log-scale.

    With raw conditioner outputs ``(t, r)`` and a learnable bound ``c`` per coordinate,

    .. math::
        s = e^{c}\tanh(r / e^{c}),\qquad y = x\,e^{s} + t,\qquad
        x = (y - t)\,e^{-s},\qquad \log|dy/dx| = s.

    The soft clamp keeps ``|s| < e^c`` so a single step cannot blow up the scale, while the
    bound itself is learned (as in the Flax tutorial of seed 002). ``c`` starts at
    ``log(scale_bound)``.
    """

    params_per_dim = 2

    def __init__(self, num_dims: int, scale_bound: float = 2.0):
        super().__init__()
        if not scale_bound > 0:
            raise ValueError(f"Affine: scale_bound must be positive, got {scale_bound!r}")
        self.log_bound = nn.Parameter(torch.full((num_dims,), math.log(scale_bound)))

    def _log_scale(self, raw):
        return soft_clamp(raw, self.log_bound.exp())

    # ``unbind``, not two ``select``s: its backward is one ``stack``, where each select's backward
    # fills a zero tensor of the whole parameter shape
    def forward(self, x, params):
        shift, raw = params.unbind(-1)
        log_scale = self._log_scale(raw)
        return x * log_scale.exp() + shift, log_scale

    def inverse(self, y, params):
        shift, raw = params.unbind(-1)
        log_scale = self._log_scale(raw)
        return (y - shift) * torch.exp(-log_scale), log_scale
