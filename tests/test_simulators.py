"""Simulators with reference posteriors (pyro_nf.simulators): shapes, dtypes and seeds; the Gaussian linear
model's closed-form posterior against a brute-force estimate; the two-moons likelihood against its simulator
and the exact posterior sampler against the likelihood; C2ST and MMD on equal and separated samples."""

from __future__ import annotations

import math

import pytest
import torch

from pyro_nf import simulators as S

SIMULATORS = {
    "two_moons": S.TwoMoons,
    "gaussian_linear": lambda: S.GaussianLinear(3),
    "gaussian_linear_wide": lambda: S.GaussianLinear(2, x_dim=4, prior_loc=0.5, prior_scale=[1.0, 2.0],
                                                     noise_scale=0.3, offset=1.0),
}


def _midpoint_grid(lo, hi, n, dtype=torch.float64):
    edges = torch.linspace(lo, hi, n + 1, dtype=dtype)
    mid = (edges[:-1] + edges[1:]) / 2
    return torch.stack(torch.meshgrid(mid, mid, indexing="ij"), -1).reshape(-1, 2), float(edges[1] - edges[0])


@pytest.mark.parametrize("name", SIMULATORS)
def test_shapes_dtypes_and_seeds(name):
    sim = SIMULATORS[name]()
    theta = sim.sample_prior(7, seed=0)
    assert theta.shape == (7, sim.theta_dim) and theta.dtype == torch.get_default_dtype()
    assert torch.isfinite(sim.prior.log_prob(theta)).all() and sim.prior.event_shape == (sim.theta_dim,)
    assert torch.equal(theta, sim.sample_prior(7, seed=0)) and not torch.equal(theta, sim.sample_prior(7, seed=1))
    x = sim.simulate(theta.double().reshape(7, 1, sim.theta_dim).expand(7, 3, sim.theta_dim), seed=0)
    assert x.shape == (7, 3, sim.x_dim) and x.dtype == torch.float64
    assert not torch.equal(x[:, 0], x[:, 1]), "one independent draw per row"
    gen = torch.Generator().manual_seed(0)
    assert not torch.equal(sim.simulate(theta, gen), sim.simulate(theta, gen)), "a generator is advanced"
    torch.manual_seed(3)
    first = sim.simulate(theta)
    torch.manual_seed(3)
    torch.testing.assert_close(first, sim.simulate(theta))  # seed=None follows the global RNG
    t, xs = sim.sample_joint(5, seed=2, dtype=torch.float64)
    assert t.shape == (5, sim.theta_dim) and xs.shape == (5, sim.x_dim) and xs.dtype == torch.float64
    lik = sim.log_likelihood(t, xs)
    assert lik.shape == (5,) and torch.isfinite(lik).all()
    draws = sim.reference_posterior_samples(xs[0].float(), 11, seed=0)
    assert draws.shape == (11, sim.theta_dim) and draws.dtype == torch.float32
    assert torch.isfinite(sim.prior.log_prob(draws)).all()
    with pytest.raises(ValueError, match=rf"expected theta of shape \(\.\.\., {sim.theta_dim}\), got \(4, 7\)"):
        sim.simulate(torch.zeros(4, 7))
    with pytest.raises(ValueError, match="one observation"):
        sim.reference_posterior_samples(xs, 3)


def test_gaussian_linear_posterior_matches_a_brute_force_estimate():
    """Self-normalised importance sampling with the prior as proposal: E[theta | x] and Cov[theta | x]."""
    sim = SIMULATORS["gaussian_linear_wide"]()
    theta_true, x_obs = sim.observations(2, seed=5, dtype=torch.float64)
    prior_draws = sim.sample_prior(400_000, seed=1, dtype=torch.float64)
    for x in x_obs:
        w = torch.softmax(sim.log_likelihood(prior_draws, x), 0)
        mean = (w[:, None] * prior_draws).sum(0)
        cov = (w[:, None, None] * (prior_draws - mean)[:, :, None] * (prior_draws - mean)[:, None, :]).sum(0)
        exact = sim.posterior(x)
        ess = 1 / (w**2).sum()
        assert ess > 2000, "the brute-force estimate needs enough effective samples"
        torch.testing.assert_close(mean, exact.mean, atol=0.02, rtol=0)
        torch.testing.assert_close(cov, exact.covariance_matrix, atol=0.01, rtol=0)
        draws = sim.reference_posterior_samples(x, 20_000, seed=0)
        torch.testing.assert_close(draws.mean(0), exact.mean, atol=0.02, rtol=0)
    # batched observations give one posterior each; the log density is normalised (a Gaussian's)
    post = sim.posterior(x_obs)
    assert post.batch_shape == (2,) and post.event_shape == (2,)
    torch.testing.assert_close(sim.reference_log_posterior(theta_true, x_obs), post.log_prob(theta_true))


def test_gaussian_linear_defaults_and_simulator_moments():
    sim = S.GaussianLinear(3, noise_scale=0.2)
    torch.testing.assert_close(sim.matrix, torch.eye(3, dtype=torch.float64))
    theta = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    x = sim.simulate(theta.expand(50_000, 3), seed=0)
    torch.testing.assert_close(x.mean(0), theta, atol=0.01, rtol=0)
    torch.testing.assert_close(x.std(0), torch.full((3,), 0.2, dtype=torch.float64), atol=0.01, rtol=0)
    # prior N(0, 1), noise 0.2^2, A = I: posterior variance 1 / (1 + 25), mean 25/26 x
    post = sim.posterior(x[0])
    torch.testing.assert_close(post.covariance_matrix, torch.eye(3, dtype=torch.float64) / 26)
    torch.testing.assert_close(post.mean, x[0] * 25 / 26)


def test_two_moons_likelihood_is_the_density_of_its_simulator():
    """For a fixed theta: the likelihood integrates to 1 over x, and the probabilities it gives to 16 cells
    around the crescent match the simulated frequencies."""
    sim = S.TwoMoons()
    theta = torch.tensor([0.3, -0.6], dtype=torch.float64)
    centre = torch.tensor([0.25, 0.0], dtype=torch.float64) + sim._fold(theta)
    grid, h = _midpoint_grid(-0.15, 0.15, 1200)
    lik = sim.log_likelihood(theta, grid + centre).exp()
    assert abs(float(lik.sum() * h * h) - 1.0) < 5e-3
    x = sim.simulate(theta.expand(100_000, 2), seed=0)
    # 4 x 4 cells over the crescent's bounding box [0.05, 0.13] x [-0.13, 0.13] around the centre
    def cells(points):
        rel = points - centre
        i = ((rel[:, 0] - 0.0) / 0.13 * 4).floor().clamp(-1, 4)
        j = ((rel[:, 1] + 0.13) / 0.26 * 4).floor().clamp(-1, 4)
        return (i * 6 + j).long() + 7
    inside_grid = cells(grid + centre)
    expected = torch.zeros(64, dtype=torch.float64).index_add_(0, inside_grid, lik * h * h)
    observed = torch.bincount(cells(x), minlength=64).double() / x.shape[0]
    sd = (expected.clamp_min(1e-4) / x.shape[0]).sqrt()
    assert ((observed - expected).abs() < 5 * sd + 2e-3).all(), (observed - expected).abs().max()


def test_two_moons_reference_posterior_agrees_with_the_likelihood():
    """The exact rejection sampler against quadrature of prior x likelihood on a fine grid: cell probabilities
    on a 10 x 10 grid over the prior's box, the evidence, and a normalised reference log posterior."""
    sim = S.TwoMoons()
    _, x_obs = sim.observations(2, seed=3, dtype=torch.float64)
    grid, h = _midpoint_grid(-1, 1, 1000)
    cell = ((grid + 1) / 0.2).floor().clamp(0, 9).long()
    cell = cell[:, 0] * 10 + cell[:, 1]
    for x in x_obs:
        lik = sim.log_likelihood(grid, x).exp()
        evidence = float(lik.sum() * h * h / 4)
        log_z = sim.log_evidence(x)
        assert abs(float(log_z) - math.log(evidence)) < 0.01
        posterior = torch.zeros(100, dtype=torch.float64).index_add_(0, cell, lik) / lik.sum()
        draws = sim.reference_posterior_samples(x, 40_000, seed=0)
        assert (draws.abs() <= 1).all()
        dcell = ((draws + 1) / 0.2).floor().clamp(0, 9).long()
        observed = torch.bincount(dcell[:, 0] * 10 + dcell[:, 1], minlength=100).double() / draws.shape[0]
        sd = (posterior.clamp_min(1e-4) / draws.shape[0]).sqrt()
        assert ((observed - posterior).abs() < 5 * sd + 2e-3).all(), (observed - posterior).abs().max()
        density = sim.reference_log_posterior(grid, x, log_evidence=log_z).exp()
        assert abs(float(density.sum() * h * h) - 1.0) < 0.01
    assert sim.reference_log_posterior(torch.tensor([1.5, 0.0], dtype=torch.float64), x_obs[0]) == -math.inf


def test_c2st_and_mmd_on_equal_and_separated_samples():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(600, 2, generator=gen), torch.randn(600, 2, generator=gen)
    far = torch.randn(600, 2, generator=gen) + torch.tensor([4.0, 0.0])
    same = S.c2st(a, b, epochs=30)
    assert abs(same - 0.5) < 0.06, same
    assert S.c2st(a, far, epochs=30) > 0.95
    assert S.c2st(a, b, epochs=30) == same, "deterministic given the seed"
    assert abs(S.mmd(a, b)) < 0.01 and S.mmd(a, far) > 0.5
    with pytest.raises(ValueError, match=r"expected two samples \(n, d\) and \(m, d\)"):
        S.c2st(a, torch.randn(10, 3))
