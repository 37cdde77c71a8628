import math

import pytest
import torch

import pyro_nf as nf
from pyro_nf import datasets, infer, targets


def test_fit_density_lowers_the_nll():
    torch.manual_seed(0)
    data = datasets.two_moons(1000, seed=0)
    flow = nf.build("realnvp", 2, num_layers=4, hidden_dims=(32, 32))
    before = infer.nll(flow, data)
    history = infer.fit_density(flow, data, steps=150, eval_every=50, lr=3e-3, seed=0, progress=False)
    after = infer.nll(flow, data)
    assert after < before - 0.5
    assert len(history.val_nll) == 3 and all(math.isfinite(v) for v in history.train_nll)
    assert history.wall_time > 0 and history.best_step in history.steps


def test_fit_density_moves_data_to_the_model_dtype_and_stops_early():
    flow = nf.build("nice", 2, num_layers=2, hidden_dims=(8,)).double()
    data = datasets.two_moons(300, seed=0)  # float32 data, float64 model
    history = infer.fit_density(nf.transformed(flow), data, steps=400, eval_every=10, patience=2,
                                lr=5e-2, schedule=None, seed=0, progress=False)
    assert history.steps[-1] <= 400
    if history.stopped_early:
        assert history.steps[-1] < 400


def test_fit_density_rejects_bad_data():
    flow = nf.build("realnvp", 2, num_layers=1)
    data = torch.randn(50, 2)
    data[3, 1] = float("nan")
    with pytest.raises(ValueError, match=r"fit_density: data has NaN or infinite values \(rows \[3\]\)"):
        infer.fit_density(flow, data, steps=1, progress=False)
    with pytest.raises(ValueError, match=r"fit_density: expected data of shape \(N, 2\), got \(50, 3\)"):
        infer.fit_density(flow, torch.randn(50, 3), steps=1, progress=False)
    with pytest.raises(ValueError, match="steps must be a positive int"):
        infer.fit_density(flow, torch.randn(50, 2), steps=0, progress=False)
    with pytest.raises(TypeError, match="expected a TransformedDistribution or a flow"):
        infer.fit_density("realnvp", torch.randn(50, 2))


# --------------------------------------------------------------------------- fit_target
def test_fit_density_of_a_flow_checks_its_data_once_not_every_batch(monkeypatch):
    """A flow (not a distribution) passed to fit_density or nll is wrapped without per-batch validation: the data
    are checked once up front, and no step reads a batch back to the host for it (a GPU synchronisation); a bad
    row is still refused, by the check up front."""
    calls = []
    for cls in (nf.FlowDistribution, nf.StandardNormal):
        original = cls._validate_sample
        monkeypatch.setattr(cls, "_validate_sample", lambda self, v, _o=original: calls.append(1) or _o(self, v))
    flow = nf.build("realnvp", 2, num_layers=2, hidden_dims=(8,))
    data = datasets.two_moons(512, seed=0)
    infer.fit_density(flow, data, steps=5, batch_size=64, progress=False)
    infer.nll(flow, data)
    assert calls == []
    wrapped = infer.common._as_distribution(flow)  # the base's finiteness read is off too
    assert wrapped._validate_args is False and wrapped.base_dist._validate_args is False
    bad = data.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="fit_density"):
        infer.fit_density(flow, bad, steps=1, progress=False)


def test_fit_target_lowers_the_loss_and_cleans_the_param_store():
    import pyro

    pyro.clear_param_store()
    mine = pyro.param("fit_target_0$$$mine", torch.ones(2))  # a user's entry that looks like ours
    target = targets.load("U2")
    flow = nf.build("planar", 2, num_layers=4)
    history = infer.fit_target(flow, target, steps=150, lr=2e-2, num_particles=64, annealing=None, seed=0,
                               progress=False)
    assert history.steps == list(range(1, 151)) and history.beta == [1.0] * 150
    assert all(math.isfinite(v) for v in history.loss) and history.wall_time > 0
    first, last = sum(history.loss[:20]) / 20, history.final_loss(20)
    assert last < first - 0.3
    # the negative ELBO is bounded below by -log Z (in expectation)
    assert last > -target.exact_log_normalizer() - 0.1
    # the fit registered under a prefix nobody used and removed its entries afterwards
    store = pyro.get_param_store()
    assert history.param_prefix != "fit_target_0" and list(store.keys()) == ["fit_target_0$$$mine"]
    assert store["fit_target_0$$$mine"] is mine
    assert not flow.training


def test_fit_target_two_fits_in_one_process_both_learn():
    import pyro

    pyro.clear_param_store()
    target = targets.load("U1")
    flows = [nf.build("planar", 2, num_layers=2) for _ in range(2)]
    base = torch.distributions.Independent(torch.distributions.Normal(torch.zeros(2), torch.ones(2)), 1)
    # a Pyro TransformedDistribution, then a plain torch one
    models = [nf.transformed(flows[0]), torch.distributions.TransformedDistribution(base, flows[1])]
    for flow, model in zip(flows, models):
        before = [p.detach().clone() for p in flow.parameters()]
        history = infer.fit_target(model, target, steps=5, num_particles=8, progress=False)
        assert all(not torch.equal(a, b) for a, b in zip(before, flow.parameters()))
        assert len(history.loss) == 5
    assert list(pyro.get_param_store().keys()) == []


def test_fit_target_annealing_schedule_and_float64():
    target = targets.load("U1")
    flow = nf.build("radial", 2, num_layers=2).double()
    history = infer.fit_target(flow, target, steps=12, num_particles=8, annealing=(0.2, 0.5), progress=False)
    assert history.beta[0] == pytest.approx(0.2) and history.beta[5] == pytest.approx(1.0)
    assert all(b == 1.0 for b in history.beta[5:]) and all(math.isfinite(v) for v in history.loss)
    history = infer.fit_target(flow, target, steps=4, num_particles=8, annealing=(0.01, 100), schedule=None,
                               progress=False)
    assert history.beta == pytest.approx([0.01, 0.02, 0.03, 0.04])
    assert next(flow.parameters()).dtype == torch.float64


def test_fit_target_rejects_bad_arguments():
    flow = nf.build("planar", 2, num_layers=1)
    target = targets.load("U1")
    with pytest.raises(ValueError, match=r"fit_target: the target's event shape \(3,\) differs from the flow's \(2,\)"):
        infer.fit_target(flow, dist_normal(3), steps=1, progress=False)
    with pytest.raises(TypeError, match="target must be a \\(Pyro\\) distribution"):
        infer.fit_target(flow, "U1", steps=1, progress=False)
    with pytest.raises(ValueError, match="annealing start beta must lie in"):
        infer.fit_target(flow, target, annealing=(0.0, 10), progress=False)
    with pytest.raises(ValueError, match="anneal_steps must be a positive int or a fraction"):
        infer.fit_target(flow, target, annealing=(0.1, 0), progress=False)
    with pytest.raises(ValueError, match="annealing must be None or"):
        infer.fit_target(flow, target, annealing=0.1, progress=False)
    with pytest.raises(ValueError, match="num_particles must be a positive int"):
        infer.fit_target(flow, target, num_particles=0, progress=False)


def dist_normal(dim, loc=0.0, scale=1.0, dtype=torch.float32):
    import pyro.distributions as dist

    return dist.Normal(torch.full((dim,), loc, dtype=dtype), scale).to_event(1)


# --------------------------------------------------------------------------- diagnostics
def _identity_model(dtype=torch.float64):
    """A flow that starts exactly at the identity: q = N(0, I)."""
    return nf.transformed(nf.build("realnvp", 2, num_layers=2, hidden_dims=(4,)).to(dtype))


def test_diagnostics_are_exact_when_the_model_is_the_target():
    target = targets.GaussianMixture([[0.0, 0.0]], 1.0, [3.0])  # exp(-U) = 3 N(0, I): log Z = log 3
    model = _identity_model()
    assert abs(infer.reverse_kl(model, target, 5000)) < 1e-10
    assert infer.effective_sample_size(model, target, 5000) == pytest.approx(1.0, abs=1e-10)
    log_z, se = infer.importance_log_normalizer(model, target, 5000)
    assert log_z == pytest.approx(math.log(3.0), abs=1e-10) and se < 1e-10


def test_diagnostics_match_closed_forms():
    """q = N(0, I) against p = N(mu, s^2 I) (times 2): KL, ESS and log Z in closed form."""
    mu, s = torch.tensor([0.3, -0.2], dtype=torch.float64), 0.8
    target = targets.GaussianMixture(mu[None], s, [2.0])
    model = _identity_model()
    kl = float((math.log(s) + (1 + mu**2) / (2 * s**2) - 0.5).sum())
    a = 1 / s**2 - 0.5  # E_q[(p/q)^2] per dimension, p normalised
    second = torch.exp(mu**2 / (s**4 * a) - mu**2 / s**2) * math.sqrt(math.pi / a) / (math.sqrt(2 * math.pi) * s**2)
    ess = float(1 / second.prod())
    torch.manual_seed(0)
    assert infer.reverse_kl(model, target, 40000, batch_size=7000) == pytest.approx(kl, abs=0.01)
    assert infer.reverse_kl(model, target, 40000, log_normalizer=0.0) == pytest.approx(kl - math.log(2), abs=0.01)
    assert infer.effective_sample_size(model, target, 40000) == pytest.approx(ess, abs=0.02)
    log_z, se = infer.importance_log_normalizer(model, target, 40000)
    assert 0 < se < 0.01 and abs(log_z - math.log(2.0)) < 5 * se
    # a plain (normalised) Pyro distribution: log Z = 0
    normal = dist_normal(2, 0.3, s, torch.float64)
    assert infer.reverse_kl(model, normal, 20000) == pytest.approx(2 * (math.log(s) + 1.09 / (2 * s**2) - 0.5),
                                                                  abs=0.02)


def test_diagnostics_follow_the_model_dtype_and_reject_bad_input():
    target = targets.load("U2")
    model32 = nf.transformed(nf.build("planar", 2, num_layers=2))
    flow = model32.transforms[0]
    flow.train()
    value = infer.reverse_kl(model32, target, 1000)
    assert isinstance(value, float) and math.isfinite(value) and flow.training  # mode restored
    assert 0 < infer.effective_sample_size(flow, target, 1000) <= 1
    with pytest.raises(ValueError, match=r"reverse_kl: the target's event shape \(3,\)"):
        infer.reverse_kl(model32, dist_normal(3))
    with pytest.raises(ValueError, match="effective_sample_size: num_samples must be a positive int"):
        infer.effective_sample_size(model32, target, 0)


def test_fit_target_stops_on_a_non_finite_loss():
    import pyro.distributions as dist

    class Broken(dist.TorchDistribution):
        support = dist.constraints.real_vector
        arg_constraints: dict = {}

        def __init__(self):
            super().__init__(event_shape=torch.Size([2]))

        def log_prob(self, value):
            return value.sum(-1) * float("nan")

    flow = nf.build("planar", 2, num_layers=1)
    before = [p.detach().clone() for p in flow.parameters()]
    with pytest.raises(infer.FitDivergedError, match=r"fit_target: the loss became nan at step 1 \(lr 0.02, .*\); "
                                                     r"try a smaller lr") as caught:
        infer.fit_target(flow, Broken(), steps=3, num_particles=4, progress=False)
    assert isinstance(caught.value, RuntimeError) and (caught.value.step, caught.value.quantity) == (1, "loss")
    import pyro

    assert list(pyro.get_param_store().keys()) == []  # cleaned up after the error too
    assert all(torch.equal(a, b) for a, b in zip(before, flow.parameters())) and not flow.training


def test_nll_takes_numpy_and_float64_data_by_one_rule():
    """Data of any array type and dtype are converted to the model's parameters' device and dtype."""
    import numpy as np

    torch.manual_seed(0)
    model = nf.transformed(nf.build("realnvp", 2, num_layers=2))
    x = torch.randn(50, 2)
    expected = infer.nll(model, x)
    assert abs(infer.nll(model, x.numpy().astype(np.float64)) - expected) < 1e-5
    assert abs(infer.nll(model, x.double()) - expected) < 1e-5
    assert abs(infer.nll(model, x.tolist()) - expected) < 1e-5
    with pytest.raises(ValueError, match=r"nll: expected data of shape \(N, 2\)"):
        infer.nll(model, np.zeros((4, 3)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_every_fit_runs_on_the_device_of_the_model(device, dtype):
    """fit_density, nll, fit_target and the diagnostics keep the model's device and dtype (CPU data given)."""
    torch.manual_seed(0)
    flow = nf.build("maf", 2, num_layers=2, hidden_dims=(8,)).to(device=device, dtype=dtype)
    data = nf.datasets.two_moons(300, seed=0)  # float32 on the CPU
    history = infer.fit_density(flow, data, steps=20, batch_size=64, eval_every=10, progress=False, seed=0)
    assert math.isfinite(history.best_val_nll) and math.isfinite(infer.nll(flow, data))
    assert all(p.device.type == device.type and p.dtype == dtype for p in flow.parameters())
    guide = nf.build("iaf", 2, num_layers=2, hidden_dims=(8,)).to(device=device, dtype=dtype)
    target = nf.targets.load("U1")
    history = infer.fit_target(guide, target, steps=10, num_particles=32, progress=False, seed=0)
    assert all(math.isfinite(v) for v in history.loss)
    assert 0 < infer.effective_sample_size(guide, target, 500) <= 1
    assert math.isfinite(infer.reverse_kl(guide, target, 500))
