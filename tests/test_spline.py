"""Rational-quadratic splines: identity at zero, identity tails, continuity and monotonicity, errors."""

import pytest
import torch

from pyro_nf.transforms import RationalQuadraticSpline, Spline, SplineCoupling


def test_spline_with_zero_parameters_is_the_identity():
    spline = RationalQuadraticSpline(count_bins=6, bound=2.0)
    x = torch.linspace(-4, 4, 101, dtype=torch.float64)
    y, log_derivative = spline(x, x.new_zeros(101, spline.params_per_dim))
    torch.testing.assert_close(y, x)
    torch.testing.assert_close(log_derivative, torch.zeros_like(x))


def test_spline_tails_are_identity_and_never_nan():
    spline = RationalQuadraticSpline(count_bins=5, bound=1.5)
    params = 3 * torch.randn(7, spline.params_per_dim, dtype=torch.float64)
    x = torch.tensor([-1e6, -10.0, -1.5, -0.3, 0.0, 1.5, 1e6], dtype=torch.float64)
    y, log_derivative = spline(x, params)
    assert torch.isfinite(y).all() and torch.isfinite(log_derivative).all()
    outside = x.abs() > 1.5
    torch.testing.assert_close(y[outside], x[outside])
    assert torch.equal(log_derivative[outside], torch.zeros(int(outside.sum()), dtype=torch.float64))
    x_back, _ = spline.inverse(y, params)
    torch.testing.assert_close(x_back, x, rtol=1e-10, atol=1e-10)


def test_spline_is_continuous_and_monotone_across_knots():
    spline = RationalQuadraticSpline(count_bins=8, bound=3.0)
    params = 2 * torch.randn(1, spline.params_per_dim, dtype=torch.float64).expand(20001, -1)
    x = torch.linspace(-3.5, 3.5, 20001, dtype=torch.float64, requires_grad=True)
    y, log_derivative = spline(x, params)
    (derivative,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(derivative.log(), log_derivative.detach())
    y = y.detach()
    assert (y[1:] > y[:-1]).all()
    assert ((y[1:] - y[:-1]) / (x[1] - x[0])).max() < 1.01 * derivative.max()  # no jumps


def test_spline_errors():
    with pytest.raises(ValueError, match="RationalQuadraticSpline: count_bins must be an int >= 2"):
        RationalQuadraticSpline(count_bins=1)
    with pytest.raises(ValueError, match="bound must be a positive"):
        Spline(2, bound=-1.0)
    with pytest.raises(ValueError, match="SplineCoupling: mask must transform some"):
        SplineCoupling(2, mask=[0, 0])
