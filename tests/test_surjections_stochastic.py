"""Surjective (Abs, Augment, Slice) and stochastic (Metropolis, Langevin) layers: the checks of
their math that the shared property suite cannot make (it runs them too)."""

from __future__ import annotations

import math

import pyro.distributions as dist
import pytest
import torch

import pyro_nf as nf
from pyro_nf import targets
from pyro_nf.flows import log_prob_estimate
from pyro_nf.stochastic import AnnealedEnergy, Langevin, Metropolis
from pyro_nf.surjections import Abs, Augment, Slice
from pyro_nf.transforms import AffineConstant, AffineCoupling, InvertibleLinear, Softplus

F64 = torch.float64
KERNELS = [(Metropolis, 0.5), (Langevin, 0.05)]


def _gaussian(loc, scale, offset=0.0):
    """Energy of N(loc, scale^2 I) plus a constant (so Z is not 1), and its log normaliser."""
    loc = torch.as_tensor(loc, dtype=F64)

    def energy(x):
        return 0.5 * (((x - loc) / scale) ** 2).sum(-1) + offset

    return energy, 0.5 * loc.numel() * math.log(2 * math.pi * scale**2) - offset


# --------------------------------------------------------------------------- Markov layers
@pytest.mark.parametrize("kernel, step", KERNELS)
def test_kernel_leaves_its_target_invariant(kernel, step):
    """Start every chain at an exact draw of N(m, s^2 I) and run 20 steps: the points are still
    draws of it (independent chains, so the usual standard errors hold)."""
    torch.manual_seed(0)
    loc, scale, n = torch.tensor([1.0, -2.0], dtype=F64), 0.7, 20000
    energy, _ = _gaussian(loc, scale)
    layer = Metropolis if kernel is Metropolis else Langevin
    layer = layer(2, energy, n_steps=20, step_size=step).double()
    x0 = loc + scale * torch.randn(n, 2, dtype=F64)
    with torch.no_grad():
        x = layer(x0)
    assert 0.2 < float(layer.last_acceptance) < 0.999, "the kernel must move for the check to mean anything"
    assert (x != x0).any(-1).float().mean() > 0.9
    mean_se = scale / math.sqrt(n)
    var_se = scale**2 * math.sqrt(2.0 / (n - 1))
    assert (x.mean(0) - loc).abs().max() < 4 * mean_se
    assert (x.var(0) - scale**2).abs().max() < 4 * var_se


@pytest.mark.parametrize("target_name", ["gaussian", "double_well"])
@pytest.mark.parametrize("kernel, step", KERNELS)
def test_path_weights_estimate_the_normaliser(kernel, step, target_name):
    """Annealed Markov layers from N(0, I) to exp(-U): the mean of the importance weights
    exp(-U(x)) / q(x) of the flow's own samples is Z (Jarzynski / annealed importance sampling),
    within 3 standard errors."""
    torch.manual_seed(1)
    if target_name == "gaussian":
        energy, log_z = _gaussian([1.0, -0.5], 0.7, offset=3.0)
    else:
        well = targets.DoubleWell()
        energy, log_z = well.energy, well.log_normalizer()
    layers = [kernel(2, AnnealedEnergy(energy, (k + 1) / 8), n_steps=5, step_size=step) for k in range(8)]
    model = nf.transformed(nf.Flow(layers).double())
    n = 20000
    with torch.no_grad():
        x = model.rsample((n,))
        w = torch.exp(-energy(x) - model.log_prob(x) - log_z)  # the weights over Z
    se = float(w.std()) / math.sqrt(n)
    assert 0 < se < 0.05
    assert abs(float(w.mean()) - 1.0) < 3 * se, f"mean weight / Z = {float(w.mean()):.4f} +- {se:.4f}"
    assert float(w.std()) > 1e-3, "the weights should vary: the layers did something"


def test_metropolis_ladj_is_the_energy_difference_and_fresh_paths_differ():
    torch.manual_seed(2)
    energy, _ = _gaussian([0.5, 0.5], 1.3)
    layer = Metropolis(2, energy, n_steps=3, step_size=0.8).double()
    x = torch.randn(500, 2, dtype=F64)
    y = layer(x)
    torch.testing.assert_close(layer.log_abs_det_jacobian(x, y), energy(y) - energy(x))
    torch.testing.assert_close(layer.log_abs_det_jacobian(x.clone(), y.clone()), energy(y) - energy(x))
    # the density direction draws a fresh path for a new tensor, the cached one for the same tensor
    model = nf.transformed(layer)
    first = model.log_prob(y)
    assert torch.equal(model.log_prob(y), first)
    assert not torch.equal(model.log_prob(y.clone()), first)


def test_energy_from_a_distribution_and_annealing():
    target = dist.Normal(torch.tensor([1.0, 2.0]), 0.5).to_event(1)
    layer = Metropolis(2, target)
    x = torch.randn(4, 2)
    torch.testing.assert_close(layer.energy(x), -target.log_prob(x))
    annealed = AnnealedEnergy(target, 0.25)
    start = 0.5 * (x * x).sum(-1)
    torch.testing.assert_close(annealed(x), 0.75 * start - 0.25 * target.log_prob(x))
    assert torch.equal(AnnealedEnergy(target, 0.0)(x), start)
    with pytest.raises(ValueError, match=r"AnnealedEnergy: beta must be in \[0, 1\]"):
        AnnealedEnergy(target, 1.5)


def test_step_size_adapts_towards_the_target_acceptance():
    torch.manual_seed(3)
    energy, _ = _gaussian([0.0, 0.0], 1.0)
    layer = Metropolis(2, energy, n_steps=2, step_size=20.0, adapt_step_size=True).train()
    for _ in range(300):
        layer(torch.randn(256, 2))
    assert layer.step_size < 5.0
    assert abs(float(layer.last_acceptance) - Metropolis.target_acceptance) < 0.15
    frozen = layer.step_size
    layer.eval()(torch.randn(256, 2))
    assert layer.step_size == frozen, "no adaptation in eval mode"


def test_markov_layer_errors_name_the_layer():
    energy, _ = _gaussian([0.0], 1.0)
    for kernel in (Metropolis, Langevin):
        name = kernel.__name__
        for bad in (0.0, -1.0, float("nan"), float("inf")):
            with pytest.raises(ValueError, match=rf"{name}: step_size must be a positive number"):
                kernel(1, energy, step_size=bad)
        with pytest.raises(ValueError, match=rf"{name}: n_steps must be a positive int"):
            kernel(1, energy, n_steps=0)
        with pytest.raises(ValueError, match=rf"{name} is not bijective and needs cache_size=1"):
            kernel(1, energy, cache_size=0)
        with pytest.raises(TypeError, match="energy must be a callable"):
            kernel(1, 3.0)
        wrong_shape = kernel(2, lambda x: x)  # one value per coordinate, not per point
        with pytest.raises(ValueError, match=rf"{name}: the energy must return one value per point, shape \(5,\)"):
            wrong_shape(torch.randn(5, 2))
        nan_energy = kernel(2, lambda x: x.sum(-1) * float("nan"))
        with pytest.raises(ValueError, match=rf"{name}: the energy returned NaN"):
            nan_energy(torch.randn(5, 2))
        with pytest.raises(ValueError, match=rf"{name}: expected forward input of shape \(\.\.\., 2\), got \(5, 3\)"):
            kernel(2, energy)(torch.randn(5, 3))


# --------------------------------------------------------------------------- Abs
def test_abs_with_a_positive_base_is_the_folded_density():
    """A half-normal base through Abs is the standard normal: exact log_prob, no stochasticity."""
    base = dist.HalfNormal(torch.ones(3, dtype=F64)).to_event(1)
    model = nf.transformed(Abs(3).double(), base=base)
    x = torch.randn(100, 3, dtype=F64)
    expected = dist.Normal(torch.zeros(3, dtype=F64), 1.0).to_event(1).log_prob(x)
    torch.testing.assert_close(model.log_prob(x), expected)
    s = model.sample((20000,))
    assert (s < 0).double().mean().sub(0.5).abs() < 0.02, "a fair coin for the signs"


def test_abs_learned_signs_follow_the_classifier():
    torch.manual_seed(4)
    layer = Abs(1, learn_signs=True, hidden_dims=(8,)).double()
    with torch.no_grad():
        layer.sign_logits.net[-1].bias.fill_(2.0)  # p(s = +1 | z) = sigmoid(2)
    z = torch.rand(20000, 1, dtype=F64) + 0.1
    x = layer(z)
    p_plus = torch.sigmoid(torch.tensor(2.0, dtype=F64))
    assert abs(float((x > 0).double().mean()) - float(p_plus)) < 0.015
    expected = -torch.where(x > 0, torch.log(p_plus), torch.log1p(-p_plus)).sum(-1)
    torch.testing.assert_close(layer.log_abs_det_jacobian(z, x), expected)


def test_a_model_that_would_integrate_to_half_is_refused():
    with pytest.raises(ValueError, match=r"Flow: Abs \(layer 1\) needs positive inputs but AffineCoupling"):
        nf.Flow([AffineCoupling(2, (8,)), Abs(2)])
    with pytest.raises(ValueError, match="transformed: the flow starts with Abs.*1/2\\^D"):
        nf.transformed(Abs(2))
    with pytest.raises(ValueError, match="transformed: Abs needs a base on the positive orthant"):
        nf.transformed(Abs(2), base=dist.Normal(torch.zeros(2), 1.0).to_event(1))
    nf.Flow([AffineCoupling(2, (8,)), Softplus(2), Abs(2)])  # the normalised construction


# --------------------------------------------------------------------------- Augment and Slice
def _gaussian_augmented_model():
    """Base N(0, I_2) through a fixed random linear map onto [x, e], then Augment(1, 1): the
    joint is N(0, A A^T), so p(x) = N(0, (A A^T)_00) exactly."""
    torch.manual_seed(5)
    linear = InvertibleLinear(2).double()
    with torch.no_grad():
        for p in linear.parameters():
            p.add_(0.5 * torch.randn_like(p))
    flow = nf.Flow([linear, Augment(1, 1)])
    jac = torch.autograd.functional.jacobian(lambda v: linear(v.clone()), torch.zeros(2, dtype=F64))
    variance = (jac @ jac.T)[0, 0]
    return nf.transformed(flow), dist.Normal(torch.zeros(1, dtype=F64), variance.sqrt()).to_event(1)


def test_augment_weights_are_unbiased_and_more_paths_tighten_the_bound():
    model, exact = _gaussian_augmented_model()
    x = torch.linspace(-3, 3, 13, dtype=F64).unsqueeze(-1)
    k = 4096
    with torch.no_grad():
        paths = model.log_prob(x.expand(k, 13, 1).clone())  # (k, 13): one path each
    w = (paths - exact.log_prob(x)).exp()  # weight / p(x): mean 1
    se = w.std(0) / math.sqrt(k)
    assert (w.mean(0) - 1).abs().max() < 4 * se.max() and se.max() < 0.05
    one_path = paths.mean(0)
    many_paths = log_prob_estimate(model, x, num_samples=k)
    assert (one_path < exact.log_prob(x)).all(), "one path is a lower bound in expectation (Jensen)"
    assert (many_paths - exact.log_prob(x)).abs().max() < 0.05
    assert ((many_paths - exact.log_prob(x)).abs() < (one_path - exact.log_prob(x)).abs()).all()


def test_augment_and_slice_shapes():
    flow = nf.build("augmented_realnvp", 3, num_layers=2, hidden_dims=(8,), augment_dim=2)
    assert flow.base_dim() == 5 == flow.inverse_shape(torch.Size([3]))[-1]
    assert flow.forward_shape(torch.Size([7, 5])) == (7, 3)
    model = nf.transformed(flow)
    assert model.event_shape == (3,) and model.rsample((4, 2)).shape == (4, 2, 3)
    layer = Slice(2, 3)
    assert layer.forward_shape(torch.Size([2])) == (5,) and layer.inverse_shape(torch.Size([6, 5])) == (6, 2)


def test_slice_likelihood_is_exact():
    torch.manual_seed(6)
    layer = Slice(2, 1, hidden_dims=(8,)).double()
    with torch.no_grad():
        layer.decoder.net.net[-1].bias.copy_(torch.tensor([0.3, -0.2], dtype=F64))
    model = nf.transformed(layer)
    x = torch.randn(50, 3, dtype=F64)
    base = dist.Normal(torch.zeros(2, dtype=F64), 1.0).to_event(1)
    scale = math.exp(3.0 * math.tanh(-0.2 / 3.0))  # the log-scale is soft-clamped to (-3, 3)
    decoder = dist.Normal(torch.tensor([0.3], dtype=F64), scale).to_event(1)
    expected = base.log_prob(x[:, :2]) + decoder.log_prob(x[:, 2:])
    torch.testing.assert_close(model.log_prob(x), expected)
    torch.testing.assert_close(model.log_prob(x.clone()), expected)  # deterministic: no path to draw


def test_surjection_errors_name_the_layer():
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match=r"Augment: augment_dim must be a positive int"):
            Augment(2, bad)
        with pytest.raises(ValueError, match=r"Slice: slice_dim must be a positive int"):
            Slice(2, bad)
    with pytest.raises(ValueError, match=r"Augment: expected inverse input of shape \(\.\.\., 2\), got \(4, 3\)"):
        Augment(2, 1).inv(torch.randn(4, 3))
    with pytest.raises(ValueError, match=r"Augment: expected forward input of shape \(\.\.\., 3\), got \(4, 2\)"):
        Augment(2, 1)(torch.randn(4, 2))
    with pytest.raises(ValueError, match="Abs is not bijective and needs cache_size=1"):
        Abs(2, cache_size=0)
    with pytest.raises(ValueError, match="log_prob_estimate: num_samples must be a positive int"):
        log_prob_estimate(nf.transformed(AffineConstant(1)), torch.zeros(3, 1), num_samples=0)


def test_augmented_flow_trains_by_maximum_likelihood():
    """A short fit with the learned q(e|x) lowers the held-out bound and never yields NaN."""
    from pyro_nf import datasets, infer

    torch.manual_seed(7)
    data = datasets.two_moons(1200, seed=0)
    model = nf.transformed(nf.build("augmented_realnvp", 2, num_layers=4, hidden_dims=(32, 32)))
    before = infer.nll(model, data[:200])
    infer.fit_density(model, data[200:], steps=150, lr=3e-3, progress=False, seed=0)
    after = infer.nll(model, data[:200])
    assert math.isfinite(after) and after < before - 0.1
