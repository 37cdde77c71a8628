"""How the fit loops fail: non-finite steps, sizes, data with gradients, clipping and seeds (issue 15)."""

import math

import pytest
import torch

import pyro_nf as nf
from pyro_nf import datasets, infer, targets


def _state(flow):
    return [p.detach().clone() for p in flow.parameters()]


def _equal(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


def _finite(flow):
    return all(torch.isfinite(p).all() for p in flow.parameters())


def test_data_with_requires_grad_is_detached():
    data = datasets.two_moons(200, seed=0).requires_grad_()
    val = datasets.two_moons(50, seed=1).requires_grad_()
    flow = nf.build("realnvp", 2, num_layers=2, hidden_dims=(8,))
    history = infer.fit_density(flow, data, validation=val, steps=3, eval_every=1, batch_size=64, progress=False)
    assert len(history.val_nll) == 3 and data.grad is None and val.grad is None


@pytest.mark.parametrize("name", ["maf", "iaf"])
def test_fit_density_at_a_huge_learning_rate_stops_with_finite_parameters(name):
    """At lr=1 the gradients overflow while the loss is still finite: the step is refused, not taken."""
    data = datasets.two_moons(500, seed=0)
    flow = nf.build(name, 2)
    with pytest.raises(infer.FitDivergedError, match=r"fit_density: the (gradient norm|loss) became (inf|nan) at "
                                                     r"step \d+ \(lr 1, .*\); try a smaller lr \(now 1; e\.g\. 0\.1\)"
                                                     r"; the model keeps its parameters from before that step"
                       ) as caught:
        infer.fit_density(flow, data, steps=200, lr=1.0, validation=0, seed=0, progress=False)
    error = caught.value
    assert isinstance(error, RuntimeError) and error.lr == 1.0 and error.step > 1
    assert error.quantity in ("loss", "gradient norm") and not math.isfinite(error.value)
    assert _finite(flow) and not flow.training
    assert math.isfinite(infer.nll(flow, data))


class _FailAt:
    """Wraps a model's log_prob: from training call ``at`` on, a NaN loss (or ``error``). Records the
    parameters seen at each training call."""

    def __init__(self, model, flow, at, error=None):
        self.log_prob, self.flow, self.at, self.error = model.log_prob, flow, at, error
        self.calls, self.seen = 0, []
        model.log_prob = self

    def __call__(self, value):
        out = self.log_prob(value)
        if not torch.is_grad_enabled():  # validation, in nll
            return out
        self.calls += 1
        self.seen.append(_state(self.flow))
        if self.calls >= self.at:
            if self.error is not None:
                raise self.error
            return out * math.nan
        return out


def test_divergence_without_validation_keeps_the_last_finite_parameters():
    flow = nf.build("realnvp", 2, num_layers=2, hidden_dims=(8,))
    model = nf.transformed(flow)
    spy = _FailAt(model, flow, at=7)
    with pytest.raises(infer.FitDivergedError, match="the loss became nan at step 7") as caught:
        infer.fit_density(model, datasets.two_moons(300, seed=0), steps=50, lr=1e-2, validation=0, progress=False)
    assert caught.value.step == 7 and caught.value.quantity == "loss"
    assert _equal(spy.seen[-1], flow.parameters()) and not _equal(spy.seen[0], flow.parameters())
    assert not flow.training


@pytest.mark.parametrize("patience", [None, 50])
@pytest.mark.parametrize("error", [None, KeyboardInterrupt()])
def test_any_failure_restores_the_best_validated_parameters(monkeypatch, patience, error):
    flow = nf.build("realnvp", 2, num_layers=2, hidden_dims=(8,))
    model = nf.transformed(flow)
    evaluations = []
    nll = infer.nll
    monkeypatch.setattr(infer.density, "nll", lambda m, d, **kw: evaluations.append((nll(m, d, **kw), _state(flow))) or
                        evaluations[-1][0])
    _FailAt(model, flow, at=23, error=error)
    expected = infer.FitDivergedError if error is None else KeyboardInterrupt
    with pytest.raises(expected) as caught:
        infer.fit_density(model, datasets.two_moons(300, seed=0), steps=50, lr=5e-2, eval_every=5,
                          patience=patience, schedule=None, progress=False)
    assert len(evaluations) == 4  # steps 5, 10, 15, 20
    best_value, best_state = min(evaluations, key=lambda e: e[0])
    assert _equal(best_state, flow.parameters()) and not flow.training
    if error is None:
        assert "restored to its best validated parameters (step" in str(caught.value)
        assert f"validation NLL {best_value:.4f}" in str(caught.value)


def test_too_few_points_for_the_split_is_a_clear_error_before_training(monkeypatch):
    flow = nf.build("realnvp", 2, num_layers=1, hidden_dims=(4,))
    monkeypatch.setattr(infer.density, "_density_loop", lambda *a, **k: pytest.fail("trained"))
    five = torch.randn(5, 2)
    with pytest.raises(ValueError, match=r"validation=0.1 of 5 points rounds to 0 validation points; at least 1 "
                                         r"is needed: give at least 6 points"):
        infer.fit_density(flow, five, progress=False)
    with pytest.raises(ValueError, match=r"rounds to 0 validation points \(patience needs validation points\)"):
        infer.fit_density(flow, five, patience=3, progress=False)
    with pytest.raises(ValueError, match="patience needs validation points, but validation=0 holds none out"):
        infer.fit_density(flow, five, validation=0, patience=3, progress=False)
    with pytest.raises(ValueError, match="patience needs validation points, but the validation tensor has 0 rows"):
        infer.fit_density(flow, five, validation=torch.empty(0, 2), patience=3, progress=False)
    with pytest.raises(ValueError, match="validation=0.9 of 1 points leaves 0 training points; at least 1"):
        infer.fit_density(flow, five[:1], validation=0.9, progress=False)
    with pytest.raises(ValueError, match="patience must be a positive int"):
        infer.fit_density(flow, five, patience=0, progress=False)
    with pytest.raises(ValueError, match="clip_grad must be a positive finite number or None"):
        infer.fit_density(flow, five, clip_grad=0.0, progress=False)
    with pytest.raises(ValueError, match="nll: no data points"):
        infer.nll(flow, torch.empty(0, 2))


def test_six_points_and_no_validation_train():
    flow = nf.build("realnvp", 2, num_layers=1, hidden_dims=(4,))
    history = infer.fit_density(flow, torch.randn(6, 2), steps=2, eval_every=1, patience=1, progress=False)
    assert len(history.val_nll) >= 1
    history = infer.fit_density(flow, torch.randn(3, 2), steps=2, validation=0, progress=False)
    assert history.val_nll == [] and len(history.train_nll) == 1


def test_clip_grad_is_a_global_norm_clip_in_both_loops(monkeypatch):
    calls = []
    clip = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_",
                        lambda params, max_norm, *a, **k: calls.append((len(list(params)), max_norm)) or
                        clip(params, max_norm, *a, **k))
    flow = nf.build("realnvp", 2, num_layers=2, hidden_dims=(8,))
    n = len(list(flow.parameters()))
    infer.fit_density(flow, torch.randn(64, 2), steps=2, clip_grad=3.0, validation=0, progress=False)
    infer.fit_target(flow, targets.load("U1"), steps=2, num_particles=8, clip_grad=5.0, progress=False)
    assert calls == [(n, 3.0)] * 2 + [(n, 5.0)] * 2
    calls.clear()
    infer.fit_target(flow, targets.load("U1"), steps=2, num_particles=8, clip_grad=None, progress=False)
    assert calls == []
    with pytest.raises(ValueError, match="fit_target: clip_grad must be a positive finite number or None"):
        infer.fit_target(flow, targets.load("U1"), clip_grad=-1.0, progress=False)


def test_the_same_seed_gives_the_same_fit_and_leaves_the_global_rng_alone():
    """augmented_realnvp draws inside log_prob and every fit_target step draws particles: the seed covers both."""
    data = datasets.two_moons(200, seed=0)

    def density(seed):
        torch.manual_seed(0)
        flow = nf.build("augmented_realnvp", 2, num_layers=2, hidden_dims=(8,))
        torch.manual_seed(123)
        infer.fit_density(flow, data, steps=5, batch_size=32, eval_every=5, seed=seed, progress=False)
        return _state(flow)

    def target(seed):
        torch.manual_seed(0)
        flow = nf.build("realnvp", 2, num_layers=2, hidden_dims=(8,))
        torch.manual_seed(123)
        infer.fit_target(flow, targets.load("U1"), steps=5, num_particles=8, seed=seed, progress=False)
        return _state(flow)

    torch.manual_seed(123)
    expected = torch.rand(3)  # what the caller's RNG gives next when nothing draws from it
    for fit in (density, target):
        first = fit(7)
        assert torch.equal(torch.rand(3), expected)  # the fit's seed is scoped to the fit
        assert _equal(first, fit(7)) and not _equal(first, fit(8))
    with pytest.raises(TypeError, match="seed must be an int or None"):
        infer.fit_density(nf.build("realnvp", 2, num_layers=1), data, seed=1.5, progress=False)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fit_target_at_a_huge_learning_rate_stops_with_finite_parameters(seed):
    flow = nf.build("realnvp", 2, num_layers=2)
    with pytest.raises(infer.FitDivergedError, match=r"fit_target: the (gradient norm|loss) became (inf|nan) at "
                                                     r"step \d+ \(lr 100, .*\); try a smaller lr \(now 100; e\.g\. "
                                                     r"10\); the flow keeps its parameters from before that step"):
        infer.fit_target(flow, targets.load("U1"), steps=50, lr=100.0, num_particles=16, seed=seed, progress=False)
    assert _finite(flow) and not flow.training
