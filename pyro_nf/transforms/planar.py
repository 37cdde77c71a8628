r"""Planar and radial flows (Rezende & Mohamed, 2015), with inverses.

Neither has a closed-form inverse in its paper; pyro_nf gives both one, so they serve as
density estimators (``log_prob`` of fresh data) and not only as variational guides.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .base import FlowTransform


def _solve_monotone(f_and_slope, target, lower, upper, tol: float, max_iter: int, owner: str):
    """Vectorised Newton's method with a bisection safeguard for increasing scalar functions.

    Solves ``f(a) = target`` elementwise, given a bracket ``lower <= a* <= upper``. A Newton
    step that leaves the current bracket is replaced by bisection; the bracket shrinks at
    every step, so the iteration always converges."""
    a = 0.5 * (lower + upper)
    for _ in range(max_iter):
        value, slope = f_and_slope(a)
        residual = value - target
        lower = torch.where(residual < 0, a, lower)
        upper = torch.where(residual > 0, a, upper)
        newton = a - residual / slope
        inside = (newton >= lower) & (newton <= upper)  # NaN compares False: bisect
        step = torch.where(inside, newton, 0.5 * (lower + upper))
        done = ((step - a).abs() <= tol * (1 + a.abs())).all()
        a = step
        if done:
            return a
    raise RuntimeError(
        f"{owner}: the inverse did not converge in {max_iter} iterations "
        f"(largest remaining bracket {float((upper - lower).max()):.3g}); are the inputs finite?"
    )


def _tolerance(dtype) -> float:
    return 1e-13 if dtype == torch.float64 else 2e-7


class Planar(FlowTransform):
    r"""Planar flow (Rezende & Mohamed, 2015):

    .. math::
        x = z + \hat u\,\tanh(w^\top z + b),\qquad
        \log|\det J| = \log\left|1 + (1 - \tanh^2(w^\top z + b))\, w^\top\hat u\right|,

    with ``u_hat = u + (m(w.u) - w.u) w / |w|^2``, ``m(a) = -1 + softplus(a)``, which makes
    ``w.u_hat > -1`` and the map invertible (the paper's appendix).

    **Inverse.** Along ``w`` the map reduces to the scalar equation
    ``a + (w.u_hat) tanh(a + b) = w.x`` for ``a = w.z``, whose left side is strictly increasing;
    the root lies in ``[w.x - |w.u_hat|, w.x + |w.u_hat|]`` and is found by Newton's method with a
    bisection safeguard (to ~1e-13 relative in float64, ~1e-7 in float32), then
    ``z = x - u_hat tanh(a + b)``. Gradients flow by implicit differentiation: one extra
    Newton step taken with autograd on at the converged root has exactly the implicit-function
    derivative.
    """

    def __init__(self, input_dim: int, max_iter: int = 100, cache_size: int = 1):
        super().__init__(input_dim, cache_size=cache_size)
        bound = 1.0 / math.sqrt(input_dim)
        self.u = nn.Parameter(torch.empty(input_dim).uniform_(-bound, bound))
        self.w = nn.Parameter(torch.empty(input_dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.zeros(()))
        self.max_iter = max_iter

    def u_hat(self) -> torch.Tensor:
        wu = self.w @ self.u
        return self.u + (F.softplus(wu) - 1 - wu) * self.w / (self.w @ self.w)

    def _forward_with_ladj(self, z):
        u_hat = self.u_hat()
        h = torch.tanh(z @ self.w + self.bias)
        x = z + h.unsqueeze(-1) * u_hat
        return x, self._log_det(h, u_hat)

    def _log_det(self, h, u_hat):
        return torch.log(torch.abs(1 + (1 - h * h) * (self.w @ u_hat)))

    def _inverse_with_ladj(self, x):
        u_hat = self.u_hat()
        wu = self.w @ u_hat
        target = x @ self.w

        def f_and_slope(a):
            h = torch.tanh(a + self.bias)
            return a + wu * h, 1 + wu * (1 - h * h)

        with torch.no_grad():
            radius = wu.abs()
            a = _solve_monotone(f_and_slope, target, target - radius, target + radius, _tolerance(x.dtype),
                                self.max_iter, "Planar")
        # one differentiable Newton step: exact implicit gradients at the root
        value, slope = f_and_slope(a)
        a = a - (value - target) / slope
        h = torch.tanh(a + self.bias)
        z = x - h.unsqueeze(-1) * u_hat
        return z, self._log_det(h, u_hat)

    def extra_repr(self):
        return f"input_dim={self.input_dim}"


class Radial(FlowTransform):
    r"""Radial flow (Rezende & Mohamed, 2015): with ``r = |z - z_0|``,

    .. math::
        x = z + \beta\,\frac{z - z_0}{\alpha + r},\qquad
        \log|\det J| = (D-1)\log\left(1 + \frac{\beta}{\alpha + r}\right)
                     + \log\left(1 + \frac{\beta}{\alpha + r} - \frac{\beta r}{(\alpha + r)^2}\right),

    with ``alpha = softplus(alpha') > 0`` and ``beta = -alpha + softplus(beta') > -alpha``, the
    invertibility condition.

    **Inverse.** Radii map as ``r_x = r (1 + beta / (alpha + r))``, an increasing function of
    ``r``; so ``r`` is the non-negative root of ``r^2 + (alpha + beta - r_x) r - alpha r_x = 0``,
    taken in its cancellation-free form, and ``z = z_0 + (x - z_0) / (1 + beta / (alpha + r))``.
    Closed form: exact to rounding and differentiable.
    """

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
        return (self.input_dim - 1) * torch.log1p(beta * h) + torch.log1p(beta * h - beta * r * h * h)

    def _forward_with_ladj(self, z):
        alpha, beta = self.alpha_beta()
        diff = z - self.z0
        r = diff.norm(dim=-1)
        x = z + (beta / (alpha + r)).unsqueeze(-1) * diff
        return x, self._log_det(r, alpha, beta)

    def _inverse_with_ladj(self, x):
        alpha, beta = self.alpha_beta()
        diff = x - self.z0
        r_x = diff.norm(dim=-1)
        b = alpha + beta - r_x
        root = torch.sqrt(b * b + 4 * alpha * r_x)
        r = torch.where(b > 0, 2 * alpha * r_x / (b + root), 0.5 * (root - b))
        z = self.z0 + diff / (1 + beta / (alpha + r)).unsqueeze(-1)
        return z, self._log_det(r, alpha, beta)
