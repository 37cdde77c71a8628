"""Splines (identity at zero, tails, exact inverse) and planar/radial inverses with gradcheck."""

import pytest
import torch

import pyro_nf as nf
from pyro_nf.transforms import Planar, Radial, RationalQuadraticSpline, Spline, SplineCoupling
from pyro_nf.transforms.planar import _solve_monotone


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


def test_planar_u_hat_keeps_it_invertible():
    layer = Planar(3)
    with torch.no_grad():
        layer.w.copy_(torch.tensor([1.0, 0.0, 0.0]))
        layer.u.copy_(torch.tensor([-5.0, 1.0, 0.0]))  # w.u = -5 < -1 would not be invertible
    assert (layer.w @ layer.u_hat()).item() > -1.0
    x = torch.randn(100, 3, dtype=torch.float64) * 3
    layer = layer.double()
    z = layer.inv(x)
    torch.testing.assert_close(layer(z.clone()), x, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.float64, 1e-12)])
def test_planar_inverse_accuracy(dtype, tol):
    torch.manual_seed(0)
    flow = nf.build("planar", 2, num_layers=8).to(dtype)
    x = torch.randn(1024, 2, dtype=dtype) * 2
    z = flow.inv(x)
    assert (flow(z.clone()) - x).abs().max() < tol * 4  # composed over 8 layers
    for layer in flow.parts:  # per layer, to the stated tolerance in the scalar a = w.z
        zi = layer.inv(x)
        xi = layer(zi.clone())
        assert ((xi - x) @ layer.w).abs().max() <= tol * (1 + (x @ layer.w).abs().max())


@pytest.mark.parametrize("layer_class", [Planar, Radial])
def test_inverse_gradients_pass_gradcheck(layer_class):
    """log_prob through the numerical (planar) or closed-form (radial) inverse has the right
    gradients with respect to the parameters and the data."""
    torch.manual_seed(1)
    layer = layer_class(2).double()
    names = [n for n, _ in layer.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for p in layer.parameters()]
    x = torch.randn(5, 2, dtype=torch.float64, requires_grad=True)

    def log_prob(x, *values):
        fresh = layer_class(2).double()
        for name, value in zip(names, values):
            delattr(fresh, name)
            setattr(fresh, name, value)
        z = fresh.inv(x)
        base = -0.5 * (z * z).sum(-1)
        return base - fresh.log_abs_det_jacobian(z, x)

    assert torch.autograd.gradcheck(log_prob, (x, *params))


def test_solver_reports_non_convergence():
    def f_and_slope(a):  # a flat plateau: residual never reaches tolerance within two steps
        return torch.tanh(a), 1 - torch.tanh(a) ** 2

    with pytest.raises(RuntimeError, match="Planar: the inverse did not converge in 2 iterations"):
        _solve_monotone(f_and_slope, torch.tensor([0.999]), torch.tensor([-10.0]), torch.tensor([10.0]),
                        1e-12, 2, "Planar")


def test_planar_and_radial_flows_estimate_densities():
    """Density estimation through the inverses, something Pyro's own Planar/Radial cannot do."""
    from pyro_nf import infer

    torch.manual_seed(0)
    data = torch.randn(512, 2) * torch.tensor([2.0, 0.5]) + torch.tensor([1.0, -1.0])
    for name in ("planar", "radial"):
        flow = nf.build(name, 2, num_layers=4)
        before = infer.nll(flow, data)
        infer.fit_density(flow, data, steps=150, lr=2e-2, seed=0, progress=False)
        assert infer.nll(flow, data) < before - 0.2
