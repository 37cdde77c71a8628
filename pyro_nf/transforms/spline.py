r"""Monotone rational-quadratic splines (Durkan, Bekasov, Murray & Papamakarios, 2019).

On ``[-B, B]`` the map is a monotone piecewise rational-quadratic function with ``K`` bins
(knots ``(x_k, y_k)``, derivatives ``d_k > 0`` at the knots, ``d_0 = d_K = 1``); outside it
is the identity, so the tails join smoothly and no input is ever out of range. In bin ``k``
with ``w = x_{k+1} - x_k``, ``h = y_{k+1} - y_k``, ``s = h / w`` and ``xi = (x - x_k) / w``:

.. math::
    y = y_k + \frac{h\,[s\,\xi^2 + d_k\,\xi(1-\xi)]}{s + (d_{k+1} + d_k - 2s)\,\xi(1-\xi)},\qquad
    \frac{dy}{dx} = \frac{s^2\,[d_{k+1}\xi^2 + 2s\,\xi(1-\xi) + d_k(1-\xi)^2]}
                         {[s + (d_{k+1} + d_k - 2s)\,\xi(1-\xi)]^2}.

The inverse solves the quadratic ``a xi^2 + b xi + c = 0`` with
``a = h(s - d_k) + (y - y_k)(d_{k+1} + d_k - 2s)``, ``b = h d_k - (y - y_k)(d_{k+1} + d_k - 2s)``,
``c = -s (y - y_k)``, through the cancellation-free root ``xi = 2c / (-b - sqrt(b^2 - 4ac))``.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ..base import FlowTransform
from ..nn import check_coupling_mask, coupling_mask
from .coupling import Coupling
from .scalar import ScalarTransformer


class RationalQuadraticSpline(ScalarTransformer):
    r"""The spline as a transformer for coupling and autoregressive layers.

    Takes ``3K - 1`` unconstrained parameters per coordinate: ``K`` bin widths, ``K`` bin
    heights (softmax, with a floor ``min_bin_width`` / ``min_bin_height`` as a fraction of
    ``2B``) and ``K - 1`` interior derivatives (``min_derivative + softplus``). All-zero
    parameters give the identity map, so zero-initialised conditioners start at the identity.
    """

    def __init__(self, count_bins: int = 8, bound: float = 3.0, min_bin_width: float = 1e-3,
                 min_bin_height: float = 1e-3, min_derivative: float = 1e-3):
        super().__init__()
        if not isinstance(count_bins, int) or count_bins < 2:
            raise ValueError(f"RationalQuadraticSpline: count_bins must be an int >= 2, got {count_bins!r}")
        if not (isinstance(bound, (int, float)) and bound > 0 and math.isfinite(bound)):
            raise ValueError(f"RationalQuadraticSpline: bound must be a positive number, got {bound!r}")
        for label, value in (("min_bin_width", min_bin_width), ("min_bin_height", min_bin_height)):
            if not 0 <= value * count_bins < 1:
                raise ValueError(f"RationalQuadraticSpline: {label} * count_bins must be in [0, 1), got {value!r}")
        if not 0 <= min_derivative < 1:
            raise ValueError(f"RationalQuadraticSpline: min_derivative must be in [0, 1), got {min_derivative!r}")
        self.count_bins, self.bound = count_bins, float(bound)
        self.min_bin_width, self.min_bin_height, self.min_derivative = min_bin_width, min_bin_height, min_derivative
        # softplus(0 + offset) = 1 - min_derivative, so zero parameters give unit derivatives
        self._derivative_offset = math.log(math.expm1(1.0 - min_derivative))

    @property
    def params_per_dim(self) -> int:
        return 3 * self.count_bins - 1

    def _knots(self, raw, minimum):
        fractions = minimum + (1 - minimum * self.count_bins) * torch.softmax(raw, dim=-1)
        knots = F.pad(torch.cumsum(fractions, dim=-1), (1, 0))
        knots = 2 * self.bound * knots - self.bound
        # pin the ends exactly to [-B, B]
        return torch.cat([torch.full_like(knots[..., :1], -self.bound), knots[..., 1:-1],
                          torch.full_like(knots[..., :1], self.bound)], dim=-1)

    def _spline(self, params):
        k = self.count_bins
        # one split: its backward is one concatenation, where three slices would each zero-fill a
        # params-sized gradient
        widths, heights, derivatives = params.split([k, k, k - 1], dim=-1)
        xs = self._knots(widths, self.min_bin_width)
        ys = self._knots(heights, self.min_bin_height)
        inner = self.min_derivative + F.softplus(derivatives + self._derivative_offset)
        ones = torch.ones_like(inner[..., :1])
        return xs, ys, torch.cat([ones, inner, ones], dim=-1)

    @staticmethod
    def _gather(t, index):
        return torch.gather(t, -1, index).squeeze(-1)

    def _bin(self, knots, v):
        index = torch.searchsorted(knots[..., 1:-1].contiguous(), v.unsqueeze(-1).contiguous(), right=True)
        return index

    def _apply_spline(self, v, params, inverse: bool):
        inside = (v >= -self.bound) & (v <= self.bound)
        v_in = v.clamp(-self.bound, self.bound)
        xs, ys, ds = self._spline(params)
        index = self._bin(ys if inverse else xs, v_in)
        x_k, x_k1 = self._gather(xs, index), self._gather(xs, index + 1)
        y_k, y_k1 = self._gather(ys, index), self._gather(ys, index + 1)
        d_k, d_k1 = self._gather(ds, index), self._gather(ds, index + 1)
        w, h = x_k1 - x_k, y_k1 - y_k
        s = h / w
        curvature = d_k1 + d_k - 2 * s
        if inverse:
            dy = v_in - y_k
            a = h * (s - d_k) + dy * curvature
            b = h * d_k - dy * curvature
            c = -s * dy
            discriminant = (b * b - 4 * a * c).clamp_min(0)
            xi = (2 * c) / (-b - torch.sqrt(discriminant))
            out = xi * w + x_k
        else:
            xi = (v_in - x_k) / w
        xi = xi.clamp(0, 1)
        one_minus = 1 - xi
        denominator = s + curvature * xi * one_minus
        if not inverse:
            out = y_k + h * (s * xi * xi + d_k * xi * one_minus) / denominator
        log_derivative = (
            2 * torch.log(s) + torch.log(d_k1 * xi * xi + 2 * s * xi * one_minus + d_k * one_minus * one_minus)
            - 2 * torch.log(denominator)
        )
        out = torch.where(inside, out, v)
        log_derivative = torch.where(inside, log_derivative, torch.zeros_like(log_derivative))
        return out, log_derivative

    def forward(self, x, params):
        return self._apply_spline(x, params, inverse=False)

    def inverse(self, y, params):
        return self._apply_spline(y, params, inverse=True)


class Spline(FlowTransform):
    r"""Elementwise rational-quadratic spline with its own learned knots (one spline per
    coordinate, no conditioner); identity outside ``[-bound, bound]``. See
    :class:`RationalQuadraticSpline` for the formulas. Starts as the identity."""

    cheap_inverse = True  # see FlowTransform.cheap_inverse

    def __init__(self, input_dim: int, count_bins: int = 8, bound: float = 3.0, cache_size: int = 1):
        super().__init__(input_dim, cache_size=cache_size)
        self.transformer = RationalQuadraticSpline(count_bins, bound)
        self.spline_params = nn.Parameter(torch.zeros(input_dim, self.transformer.params_per_dim))

    def _forward_with_ladj(self, x):
        y, ladj = self.transformer(x, self.spline_params.expand(*x.shape, -1))
        return y, ladj.sum(-1)

    def _inverse_with_ladj(self, y):
        x, ladj = self.transformer.inverse(y, self.spline_params.expand(*y.shape, -1))
        return x, ladj.sum(-1)

    def extra_repr(self):
        return f"input_dim={self.input_dim}, count_bins={self.transformer.count_bins}, bound={self.transformer.bound}"


class SplineCoupling(Coupling):
    r"""Rational-quadratic spline coupling layer (Durkan et al., 2019): the coupling structure
    of :class:`~pyro_nf.transforms.coupling.Coupling` with a
    :class:`RationalQuadraticSpline` transformer, ``y_B = RQS(x_B; theta(x_A))``.
    ``mask=None`` transforms the second half."""

    def __init__(self, input_dim: int, hidden_dims=(64, 64), count_bins: int = 8, bound: float = 3.0,
                 mask=None, activation="relu", conditioner=None, cache_size: int = 1, context_dim: int = 0):
        mask = coupling_mask(input_dim) if mask is None else check_coupling_mask(mask, input_dim, "SplineCoupling")
        super().__init__(mask, RationalQuadraticSpline(count_bins, bound), conditioner, hidden_dims, activation,
                         cache_size, context_dim)

    def extra_repr(self):
        return super().extra_repr() + f", count_bins={self.transformer.count_bins}"


def spline_coupling(input_dim: int, hidden_dims=(64, 64), count_bins: int = 8, bound: float = 3.0,
                    flip: bool = False, **kwargs) -> SplineCoupling:
    """Pyro-style factory for :class:`SplineCoupling`."""
    return SplineCoupling(input_dim, hidden_dims, count_bins, bound, mask=coupling_mask(input_dim, flip=flip),
                          **kwargs)
