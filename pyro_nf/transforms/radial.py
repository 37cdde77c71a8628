r"""Radial flow (Rezende & Mohamed, 2015), with a closed-form inverse.

Its paper gives no inverse; the radii map by an increasing function of ``r``, whose inverse is the root of
a quadratic, so pyro_nf gives it one and the layer serves as a density estimator too.
"""

from __future__ import annotations

import math

import torch
from pyro.distributions import is_validation_enabled
from torch import nn
from torch.nn import functional as F

from ..base import FlowTransform, check_finite


def _norm(v: torch.Tensor) -> torch.Tensor:
    """Euclidean norm over the last dimension, scaled by the largest entry so that the squares neither
    overflow nor underflow (finite for every finite ``v`` whose norm is representable)."""
    scale = v.detach().abs().amax(-1, keepdim=True)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return scale.squeeze(-1) * (v / scale).norm(dim=-1)


class Radial(FlowTransform):
    r"""Radial flow (Rezende & Mohamed, 2015): with ``r = |z - z_0|`` and ``h = 1 / (alpha + r)``,

    .. math::
        x = z + \beta h\,(z - z_0),\qquad
        \log|\det J| = (D-1)\log(1 + \beta h) + \log(1 + \beta h - \beta r h^2)
                     = (D-1)\,\mathrm{log1p}(\beta h) + \mathrm{log1p}(\alpha\beta h^2),

    (``1 - r h = alpha h``), with ``alpha = softplus(alpha') > 0`` and
    ``beta = -alpha + softplus(beta') > -alpha``, the invertibility condition.

    **Inverse.** Radii map as ``r_x = r (1 + beta / (alpha + r))``, an increasing function of
    ``r``; so ``r`` is the non-negative root of ``r^2 + (alpha + beta - r_x) r - alpha r_x = 0``,

    .. math::
        r = \frac{2\alpha r_x}{b + \sqrt{b^2 + 4\alpha r_x}}\ (b > 0),\qquad
        r = \tfrac12\left(\sqrt{b^2 + 4\alpha r_x} - b\right)\ (b \le 0),\qquad b = \alpha + \beta - r_x,

    each branch free of cancellation, and ``z = z_0 + (x - z_0) / (1 + beta / (alpha + r))``. Closed
    form: exact to rounding and differentiable.

    **Range.** Norms are taken scaled by the largest entry (no overflow nor underflow of the squares),
    the log-det uses ``1 + beta h - beta r h^2 = 1 + alpha beta h^2`` (no ``inf * 0``), and the inverse
    solves the quadratic for ``r / q`` with ``q = max(|x - z_0|_inf, 1)``, where all its coefficients are
    of order one. So every finite input, up to the largest float, gives a finite ``z``, ``x`` and log-det;
    a radius beyond the range of the dtype comes out as ``r = inf``, where the map is the identity to
    rounding (``beta h = 0``). Input with a NaN or an infinity raises ``ValueError`` in both directions.
    """

    cheap_inverse = True  # see FlowTransform.cheap_inverse

    def __init__(self, input_dim: int, cache_size: int = 1):
        super().__init__(input_dim, cache_size=cache_size)
        bound = 1.0 / math.sqrt(input_dim)
        self.z0 = nn.Parameter(torch.empty(input_dim).uniform_(-bound, bound))
        self.alpha_raw = nn.Parameter(torch.empty(()).uniform_(-bound, bound))
        self.beta_raw = nn.Parameter(torch.empty(()).uniform_(-bound, bound))

    def alpha_beta(self):
        alpha = F.softplus(self.alpha_raw)
        return alpha, -alpha + F.softplus(self.beta_raw)

    def _log_det(self, r, alpha, beta):
        h = 1 / (alpha + r)
        return (self.input_dim - 1) * torch.log1p(beta * h) + torch.log1p(alpha * beta * h * h)

    def _forward_with_ladj(self, z):
        if is_validation_enabled():  # a device sync: checked with Pyro's validation, as distributions are
            check_finite(z, "Radial", "forward input")
        alpha, beta = self.alpha_beta()
        diff = z - self.z0
        r = _norm(diff)
        x = z + (beta / (alpha + r)).unsqueeze(-1) * diff
        return x, self._log_det(r, alpha, beta)

    def _inverse_with_ladj(self, x):
        if is_validation_enabled():
            check_finite(x, "Radial", "inverse input")
        alpha, beta = self.alpha_beta()
        diff = x - self.z0
        # in units of q = max(|x - z0|_inf, 1): the quadratic stays in range for every finite x
        q = diff.detach().abs().amax(-1).clamp(min=1)
        r_x = _norm(diff / q.unsqueeze(-1))
        a_q = alpha / q
        b = (alpha + beta) / q - r_x
        root = torch.sqrt(b * b + 4 * a_q * r_x)
        # b > 0: 2 a r_x / (b + root); |b| keeps the branch not taken finite (and its gradient NaN-free)
        r = q * torch.where(b > 0, 2 * a_q * (r_x / (b.abs() + root)), 0.5 * (root - b))
        # r = inf only for |x - z0| beyond the dtype's range, where the factor below is 1 to rounding
        z = self.z0 + diff / (1 + beta / (alpha + r)).unsqueeze(-1)
        return z, self._log_det(r, alpha, beta)
