"""Conditional flows p(x | c) through Pyro's ConditionalTransformModule: the property suite at fixed contexts on
flows moved off the identity, records keyed on the context, errors, and a conditional Gaussian learned to
its true entropy."""

from __future__ import annotations

import math

import pyro.distributions as dist
import pytest
import torch
from cases import perturb
from test_properties import _integral

import pyro_nf as nf

CONDITIONAL = ["realnvp", "nice", "glow", "maf", "iaf", "nsf_coupling", "nsf_autoregressive"]
SURJECTIVE = ["realnvp_abs", "augmented_realnvp"]  # learned signs / learned q(e | x, c) take the context too
K = 3


def _conditional(name, dim=2, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    opts = {"num_layers": 2, "hidden_dims": (16, 16)}
    if "count_bins" in nf.flows.options(name):
        opts["count_bins"] = 4
    flow = perturb(nf.build(name, dim, context_dim=K, **opts).to(dtype), scale=0.3, seed=seed)
    return flow.eval(), nf.transformed(flow)


@pytest.mark.parametrize("name", CONDITIONAL + SURJECTIVE)
def test_is_pyro_conditional_and_shapes_broadcast(name):
    flow, model = _conditional(name, dtype=torch.float32)
    assert isinstance(flow, dist.conditional.ConditionalTransformModule)
    assert isinstance(model, dist.conditional.ConditionalTransformedDistribution)
    c = torch.randn(5, K)
    conditioned = model.condition(c)
    assert conditioned.batch_shape == (5,) and conditioned.event_shape == (2,)
    x = conditioned.rsample((4,))
    assert x.shape == (4, 5, 2) and conditioned.log_prob(x).shape == (4, 5)
    assert conditioned.log_prob(torch.randn(7, 1, 2)).shape == (7, 5)
    single = model.condition(torch.randn(K))
    assert single.sample((6,)).shape == (6, 2)


@pytest.mark.parametrize("name", CONDITIONAL)
def test_round_trip_and_log_det_at_fixed_contexts(name):
    flow, _ = _conditional(name)
    c = torch.randn(64, K, dtype=torch.float64)
    bound = flow.condition(c)
    z = torch.randn(64, 2, dtype=torch.float64)
    x = bound(z)
    assert not torch.allclose(x, flow.condition(c + 1.0)(z)), "the context must change the map"
    torch.testing.assert_close(bound.inv(x.clone()), z, rtol=1e-10, atol=1e-10)
    for i in range(3):
        one = flow.condition(c[i])
        jac = torch.autograd.functional.jacobian(lambda v, one=one: one(v.clone()), z[i])
        torch.testing.assert_close(one.log_abs_det_jacobian(z[i], one(z[i])), torch.linalg.slogdet(jac).logabsdet,
                                   rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", ["realnvp", "maf", "nsf_coupling"])
def test_density_integrates_to_one_for_each_context(name):
    flow, model = _conditional(name)
    for c in torch.randn(2, K, dtype=torch.float64):
        total, _ = _integral(model.condition(c), 2)
        assert abs(total - 1.0) < 2e-3, f"{name} at context {c.tolist()} integrates to {total}"


@pytest.mark.parametrize("name", CONDITIONAL + SURJECTIVE)
def test_gradients_reach_the_context_and_every_parameter_and_float64_is_kept(name):
    flow, model = _conditional(name)
    flow.train()
    c = torch.randn(8, K, dtype=torch.float64, requires_grad=True)
    lp = model.condition(c).log_prob(torch.randn(8, 2, dtype=torch.float64))
    assert lp.dtype == torch.float64
    lp.sum().backward()
    assert c.grad is not None and c.grad.abs().sum() > 0
    for pname, p in flow.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), f"{name}: no gradient for {pname}"


@pytest.mark.parametrize("name", SURJECTIVE)
def test_surjective_conditionals_score_their_own_path_and_depend_on_the_context(name):
    flow, model = _conditional(name)
    c = torch.randn(32, K, dtype=torch.float64)
    conditioned = model.condition(c)
    s = conditioned.rsample()
    assert torch.equal(conditioned.log_prob(s), conditioned.log_prob(s))
    random_part = flow.parts[-1]
    z = torch.rand(32, random_part.domain_dim, dtype=torch.float64) + 0.1
    x = random_part.condition(c)(z)
    assert not torch.allclose(random_part.condition(c).log_abs_det_jacobian(z, x),
                              random_part.condition(c + 1.0).log_abs_det_jacobian(z, x))


def test_records_key_on_the_context():
    """The same sample scored under another context, or after the context was edited in place, is computed."""
    flow, model = _conditional("iaf")
    c = torch.randn(16, K, dtype=torch.float64)
    conditioned = model.condition(c)
    s = conditioned.sample()
    first = conditioned.log_prob(s)
    torch.testing.assert_close(first, model.condition(c.clone()).log_prob(s.clone()))
    other = model.condition(c + 1.0).log_prob(s)
    assert not torch.allclose(other, first)
    c.data.add_(0.5)  # no version bump
    torch.testing.assert_close(conditioned.log_prob(s), model.condition(c.clone()).log_prob(s.clone()))
    calls = []
    for part in flow.parts:
        original = part._inverse_with_ladj
        part._inverse_with_ladj = lambda v, _f=original, **kw: calls.append(1) or _f(v, **kw)
    fresh = model.condition(c)
    s = fresh.rsample()
    fresh.log_prob(s)
    assert calls == [], "a sample's own density needs no inverse (IAF's takes D passes)"


def test_fit_density_and_nll_take_a_context_and_say_when_it_is_missing():
    flow, model = _conditional("realnvp", dtype=torch.float32)
    x, c = torch.randn(64, 2), torch.randn(64, K)
    with pytest.raises(ValueError, match="the model is conditional.*pass context="):
        nf.infer.fit_density(model, x, steps=1, progress=False)
    with pytest.raises(ValueError, match="64 data rows but 10 context rows"):
        nf.infer.nll(model, x, context=c[:10])
    with pytest.raises(ValueError, match="not conditional"):
        nf.infer.nll(nf.build("realnvp", 2, num_layers=1), x, context=c)
    nf.infer.fit_density(flow, x, context=c, steps=3, batch_size=16, progress=False)
    assert abs(nf.infer.nll(flow, x, context=c) + model.condition(c).log_prob(x).mean().item()) < 1e-4


def test_errors_name_the_layer_and_the_shape():
    flow, model = _conditional("realnvp", dtype=torch.float32)
    with pytest.raises(ValueError, match=r"AffineCoupling: expected a context of shape \(\.\.\., 3\), got \(5, 2\)"):
        model.condition(torch.randn(5, 2))
    with pytest.raises(TypeError, match="float64"):
        model.condition(torch.randn(5, K, dtype=torch.float64))
    with pytest.raises(ValueError, match="planar: this architecture takes no context.*realnvp"):
        nf.build("planar", 2, context_dim=3)
    with pytest.raises(ValueError, match="context_dim must be a non-negative int"):
        nf.transforms.AffineCoupling(2, context_dim=-1)


def test_learns_a_linear_gaussian_conditional_to_its_entropy():
    """x | c ~ N(A c, 0.5^2 I) with 2-D x and 3-D c: the held-out NLL reaches the true conditional entropy
    log(2 pi e 0.25) = 1.452 nats within 0.1, and sample means follow A c."""
    torch.manual_seed(0)
    a = torch.tensor([[1.0, -0.5, 0.3], [0.2, 0.8, -1.0]])

    def simulate(n):
        c = torch.randn(n, K)
        return c, c @ a.T + 0.5 * torch.randn(n, 2)

    c_train, x_train = simulate(8000)
    c_test, x_test = simulate(4000)
    flow = nf.build("maf", 2, context_dim=K, num_layers=3, hidden_dims=(32, 32))
    model = nf.transformed(flow)
    history = nf.infer.fit_density(model, x_train, context=c_train, steps=1200, batch_size=512, lr=3e-3,
                                   eval_every=400, progress=False, seed=0)
    assert len(history.val_nll) == 3 and not flow.training
    with torch.no_grad():
        nll = nf.infer.nll(model, x_test, context=c_test)
        entropy = math.log(2 * math.pi * math.e * 0.25)
        assert abs(nll - entropy) < 0.1, f"held-out NLL {nll:.3f} vs entropy {entropy:.3f}"
        contexts = torch.randn(4, K)
        means = model.condition(contexts).sample((4000,)).mean(0)
        torch.testing.assert_close(means, contexts @ a.T, atol=0.06, rtol=0)


def test_amortised_guide_recipe_in_a_plate_recovers_the_exact_posterior():
    """The README's recipe: q(z | x) a conditional flow inside pyro.plate, trained by SVI over a data set,
    for z ~ N(0, I_2), x | z ~ N(W z, 0.5^2 I_3), whose posterior is Gaussian and known in closed form."""
    import pyro
    from pyro.infer import SVI, Predictive, Trace_ELBO

    pyro.clear_param_store()
    torch.manual_seed(0)
    w = torch.tensor([[1.0, 0.5], [-0.7, 1.0], [0.3, -1.2]])
    sigma = 0.5
    z_true = torch.randn(512, 2)
    data = z_true @ w.T + sigma * torch.randn(512, 3)
    guide_flow = nf.build("iaf", 2, context_dim=3, num_layers=2, hidden_dims=(32, 32))
    q = nf.transformed(guide_flow)

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ w.T, sigma).to_event(1), obs=x)

    def guide(x):
        pyro.module("q", guide_flow)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", q.condition(x))

    svi = SVI(model, guide, pyro.optim.ClippedAdam({"lr": 5e-3, "lrd": 0.999}), Trace_ELBO())
    for _ in range(600):
        idx = torch.randint(0, 512, (128,))
        svi.step(data[idx])
    # exact posterior: precision I + W^T W / sigma^2, mean = cov W^T x / sigma^2
    cov = torch.linalg.inv(torch.eye(2) + w.T @ w / sigma**2)
    held_out = torch.randn(4, 2) @ w.T
    exact_means = held_out @ (cov @ w.T / sigma**2).T
    draws = Predictive(model, guide=guide, num_samples=2000, return_sites=["z"])(held_out)["z"]
    assert draws.shape == (2000, 4, 2)
    torch.testing.assert_close(draws.mean(0), exact_means, atol=0.08, rtol=0)
    torch.testing.assert_close(draws[:, 0].T.cov(), cov, atol=0.03, rtol=0)


def test_neural_posterior_estimation_recipe_matches_the_exact_posterior():
    """Simulation-based inference: train q(theta | x) by maximum likelihood on simulated pairs
    (theta ~ prior, x ~ simulator(theta)); for a linear-Gaussian simulator the posterior is known."""
    torch.manual_seed(1)
    prior = dist.Normal(torch.zeros(2), 1.0).to_event(1)
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]])

    def simulator(theta):
        return theta @ a.T + 0.3 * torch.randn(*theta.shape[:-1], 3)

    theta = prior.sample((6000,))
    x = simulator(theta)
    flow = nf.build("maf", 2, context_dim=3, num_layers=3, hidden_dims=(32, 32))
    posterior = nf.transformed(flow)
    opt = torch.optim.Adam(flow.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 800)
    for _ in range(800):
        idx = torch.randint(0, 6000, (256,))
        loss = -posterior.condition(x[idx]).log_prob(theta[idx]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    flow.eval()
    cov = torch.linalg.inv(torch.eye(2) + a.T @ a / 0.09)
    x_observed = torch.tensor([0.5, 1.0, 1.5])
    exact_mean = cov @ a.T @ x_observed / 0.09
    with torch.no_grad():
        draws = posterior.condition(x_observed).sample((4000,))
    torch.testing.assert_close(draws.mean(0), exact_mean, atol=0.07, rtol=0)
    torch.testing.assert_close(draws.T.cov(), cov, atol=0.02, rtol=0)


def _linear_gaussian():
    """theta ~ N(0, I_2), x = A theta + 0.5 eps (3-D): the posterior is Gaussian with covariance
    S = (I + A^T A / 0.25)^-1 and mean S A^T x / 0.25."""
    a = torch.tensor([[1.0, 0.5], [-0.5, 1.0], [0.3, -0.8]])
    prior = dist.Normal(torch.zeros(2), torch.ones(2)).to_event(1)

    def simulator(theta):
        return theta @ a.T + 0.5 * torch.randn(theta.shape[0], 3)

    precision = torch.eye(2) + a.T @ a / 0.25
    cov = torch.linalg.inv(precision)

    def posterior(x):
        return torch.distributions.MultivariateNormal(x @ a @ cov / 0.25, covariance_matrix=cov)

    return prior, simulator, posterior


def test_fit_posterior_recovers_the_linear_gaussian_posterior():
    prior, simulator, posterior = _linear_gaussian()
    torch.manual_seed(0)
    flow = nf.build("maf", 2, context_dim=3, num_layers=3, hidden_dims=(32, 32))
    history = nf.infer.fit_posterior(flow, prior, simulator, 4000, steps=1500, batch_size=256, lr=3e-3,
                                     progress=False, seed=0)
    assert history.kind == "density" and history.best_val_nll < 1.5
    gen = torch.Generator().manual_seed(1)
    theta = torch.randn(500, 2, generator=gen)
    x = theta @ torch.tensor([[1.0, 0.5], [-0.5, 1.0], [0.3, -0.8]]).T + 0.5 * torch.randn(500, 3, generator=gen)
    q = nf.transformed(flow).condition(x)
    with torch.no_grad():
        gap = (posterior(x).log_prob(theta) - q.log_prob(theta)).mean().item()  # E[KL] + noise, in nats
        drawn = nf.transformed(flow).condition(x[:3]).sample((4000,))  # (4000, 3, 2)
    assert abs(gap) < 0.1, gap
    torch.testing.assert_close(drawn.mean(0), posterior(x[:3]).mean, atol=0.1, rtol=0)


def test_fit_posterior_refuses_what_it_cannot_fit():
    prior, simulator, _ = _linear_gaussian()
    with pytest.raises(TypeError, match="expected a conditional flow"):
        nf.infer.fit_posterior(nf.build("maf", 2), prior, simulator, 10)
    with pytest.raises(ValueError, match=r"simulator returned shape \(10, 3\) for 10 parameter rows; the flow's "
                                         r"context needs \(10, 2\)"):
        nf.infer.fit_posterior(nf.build("maf", 2, context_dim=2), prior, simulator, 10)
    with pytest.raises(ValueError, match="non-finite|NaN"):
        nf.infer.fit_posterior(nf.build("maf", 2, context_dim=3), prior, lambda t: simulator(t) / 0.0 * 0.0, 10)
