"""ContinuousFlow (FFJORD): the trace estimators, the log-det of the whole ODE map, the solver's bookkeeping
(NFE), the adjoint, RNODE regularisation, and a short fit on two moons."""

from __future__ import annotations

import copy
import math
import pickle

import pytest
import torch
from cases import perturb

import pyro_nf as nf
from pyro_nf.surjections import Augment
from pyro_nf.transforms import ContinuousFlow
from pyro_nf.transforms.continuous import default_tolerance, last_nfe, regularization


def layer(dim=3, dtype=torch.float64, seed=0, **kwargs):
    torch.manual_seed(seed)
    return perturb(ContinuousFlow(dim, (16, 16), **kwargs).to(dtype), seed=seed)


def test_starts_at_the_identity():
    flow = ContinuousFlow(3, (8,))
    z = torch.randn(10, 3)
    x, ladj = flow.forward_and_ladj(z)
    assert torch.equal(x, z) and torch.equal(ladj, torch.zeros(10))


def test_random_start_is_a_valid_flow_off_the_identity():
    """``zero_init=False`` (also through ``nf.build``): the field starts random, the layer is not the identity,
    and its round trip and log-det (against autograd's Jacobian) hold from the first call."""
    torch.manual_seed(1)
    flow = nf.build("ffjord", 2, hidden_dims=(16,), zero_init=False).double().eval()
    z = torch.randn(6, 2, dtype=torch.float64)
    x, ladj = flow.forward_and_ladj(z)
    assert (x - z).abs().max() > 1e-3
    torch.testing.assert_close(flow.inv(x), z, rtol=1e-6, atol=1e-6)
    jacobians = torch.stack([torch.autograd.functional.jacobian(flow, row.unsqueeze(0)).squeeze() for row in z])
    torch.testing.assert_close(ladj, torch.linalg.slogdet(jacobians).logabsdet, rtol=1e-6, atol=1e-6)
    with pytest.raises(TypeError, match="ContinuousFlow: zero_init must be a bool"):
        ContinuousFlow(2, zero_init=1)


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased_for_the_exact_log_det(probe):
    """The mean of many Hutchinson estimates (one probe per copy of the same point, fixed along each
    solve) matches the exact integrated trace within a few standard errors; single estimates vary."""
    exact = layer(trace="exact").eval()
    estimator = copy.deepcopy(exact)
    estimator.trace, estimator.probe = "hutchinson", probe
    z = torch.randn(4, 3, dtype=torch.float64)
    _, reference = exact.forward_and_ladj(z)
    copies = 2000
    torch.manual_seed(1)
    _, estimates = estimator.forward_and_ladj(z.expand(copies, 4, 3).clone())
    mean, se = estimates.mean(0), estimates.std(0) / math.sqrt(copies)
    assert (estimates.std(0) > 1e-3).all(), "Hutchinson's estimates should vary with the probe"
    assert ((mean - reference).abs() < 4 * se + 1e-9).all(), (mean, reference, se)


def test_log_det_matches_the_jacobian_of_the_whole_ode_map():
    """log|det dx/dz| from the integrated exact trace against the Jacobian of the solver's map: by autograd
    through the solver, and by central finite differences of the uncached map."""
    flow = layer(dim=4, T=1.5).eval()
    z = torch.randn(4, dtype=torch.float64)
    x, ladj = flow.forward_and_ladj(z)
    jac = torch.autograd.functional.jacobian(lambda v: flow.forward_and_ladj(v)[0], z)
    torch.testing.assert_close(ladj, torch.linalg.slogdet(jac).logabsdet, rtol=1e-9, atol=1e-9)
    h = 1e-5
    with torch.no_grad():
        columns = [(flow._call(z + h * e) - flow._call(z - h * e)) / (2 * h) for e in torch.eye(4, dtype=z.dtype)]
    fd = torch.stack(columns, -1)
    torch.testing.assert_close(fd, jac, rtol=1e-6, atol=1e-6)
    assert abs(ladj.item()) > 0.05, "the test needs a map away from volume-preserving"


def test_last_nfe_is_recorded_and_follows_the_tolerance():
    flow = layer().eval()
    z = torch.randn(32, 3, dtype=torch.float64)
    assert flow.last_nfe == 0
    flow.forward_and_ladj(z)
    tight = flow.last_nfe
    assert tight > 0 and last_nfe(nf.Flow([flow])) == tight
    flow.atol = flow.rtol = 1e-5
    flow.forward_and_ladj(z)
    assert 0 < flow.last_nfe < tight
    assert flow.last_backward_nfe == 0  # no adjoint solve ran


def test_default_tolerances_by_dtype():
    assert default_tolerance(torch.float64) <= 1e-10 < default_tolerance(torch.float32) <= 1e-5
    flow = ContinuousFlow(2, atol=1e-4)
    assert flow.atol == 1e-4 and flow.rtol is None


@pytest.mark.parametrize("trace", ["exact", "hutchinson"])
def test_adjoint_gives_the_gradients_of_direct_backprop(trace):
    """odeint_adjoint (solving the adjoint ODE backwards) and backpropagation through the solver's steps give
    the same gradients, to the parameters and to the input, with the same Hutchinson probe."""
    direct = layer(trace=trace).train()
    adjoint = copy.deepcopy(direct)
    adjoint.adjoint = True
    x = torch.randn(16, 3, dtype=torch.float64)
    grads = []
    for flow in (direct, adjoint):
        data = x.clone().requires_grad_(True)
        torch.manual_seed(3)  # the same probe for both
        z, ladj = flow.inverse_and_ladj(data)
        loss = (0.5 * z.square().sum(-1) - ladj).mean()  # -log p(x) up to a constant
        loss.backward()
        grads.append([data.grad] + [p.grad for p in flow.parameters()])
    for g_direct, g_adjoint in zip(*grads):
        torch.testing.assert_close(g_adjoint, g_direct, rtol=1e-6, atol=1e-8)
    assert adjoint.last_backward_nfe > 0


def test_rnode_regularisers_are_recorded_non_negative_and_trainable():
    """Kinetic energy and Jacobian Frobenius norm of the last solve: per sample, non-negative, the exact
    Frobenius norm unbiasedly estimated by Hutchinson, and minimising them shortens the paths and the solve."""
    flow = layer(kinetic=1.0, jacobian=1.0, trace="exact").train()
    assert flow.kinetic_energy is None and regularization(flow) == 0.0
    z = torch.randn(64, 3, dtype=torch.float64)
    flow.forward_and_ladj(z)
    kinetic, frobenius = flow.kinetic_energy, flow.jacobian_frobenius
    assert kinetic.shape == frobenius.shape == (64,)
    assert (kinetic >= 0).all() and (frobenius >= 0).all() and kinetic.dtype == torch.float64
    # the density direction integrates backwards in time, and reports the same positive integrals
    x, _ = flow.forward_and_ladj(z)
    flow.inverse_and_ladj(x.clone())
    torch.testing.assert_close(flow.kinetic_energy, kinetic, rtol=1e-6, atol=1e-8)
    estimator = copy.deepcopy(flow)
    estimator.trace = "hutchinson"
    torch.manual_seed(0)
    estimator.forward_and_ladj(z[:4].expand(1000, 4, 3).clone())
    estimates = estimator.jacobian_frobenius
    se = estimates.std(0) / math.sqrt(1000)
    assert ((estimates.mean(0) - frobenius[:4]).abs() < 4 * se + 1e-9).all()

    flow.eval()
    flow.forward_and_ladj(z)
    energy_before, nfe_before = flow.kinetic_energy.mean().item(), flow.last_nfe
    flow.train()
    optimizer = torch.optim.Adam(flow.parameters(), lr=0.02)
    for _ in range(15):
        flow.forward_and_ladj(z)
        loss = regularization(flow)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    flow.eval()
    flow.forward_and_ladj(z)
    assert flow.kinetic_energy.mean().item() < 0.5 * energy_before
    assert flow.last_nfe <= nfe_before


def test_trace_auto_uses_hutchinson_in_training_in_high_dimension():
    small, large = ContinuousFlow(3, (8,)), ContinuousFlow(12, (8,))
    assert small.train().uses_exact_trace() and large.eval().uses_exact_trace()
    assert not large.train().uses_exact_trace()
    perturb(large)
    z = torch.randn(8, 12)
    torch.manual_seed(0)
    a = large.forward_and_ladj(z)[1]
    torch.manual_seed(1)
    b = large.forward_and_ladj(z)[1]
    assert not torch.allclose(a, b), "a new probe per solve"


def test_float64_is_kept():
    flow = layer(kinetic=0.1, jacobian=0.1, trace="hutchinson", probe="gaussian").train()
    x = torch.randn(5, 3, dtype=torch.float64)
    z, ladj = flow.inverse_and_ladj(x)
    assert z.dtype == ladj.dtype == flow.kinetic_energy.dtype == flow.jacobian_frobenius.dtype == torch.float64
    assert nf.transformed(flow).log_prob(x).dtype == torch.float64


def test_learned_and_fixed_end_time():
    learned = layer(T=0.7)
    torch.testing.assert_close(learned.T, torch.tensor(0.7, dtype=torch.float64), rtol=1e-6, atol=0)
    x = torch.randn(8, 3, dtype=torch.float64)
    z, ladj = learned.inverse_and_ladj(x)
    (z.square().sum() - ladj.sum()).backward()
    assert learned.raw_T.grad is not None and learned.raw_T.grad != 0
    fixed = ContinuousFlow(3, (8,), T=2.0, learn_T=False)
    assert "raw_T" not in dict(fixed.named_parameters()) and "raw_T" in fixed.state_dict()
    assert "T=2 (fixed)" in repr(fixed)


def test_non_finite_input_and_bad_options_name_the_layer():
    flow = layer()
    bad = torch.randn(4, 3, dtype=torch.float64)
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match="ContinuousFlow: the forward input .* non-finite"):
        flow(bad)
    with pytest.raises(ValueError, match="ContinuousFlow: the inverse input .* non-finite"):
        flow.inv(bad)
    for kwargs, word in ((dict(trace="fast"), "trace"), (dict(solver="magic"), "solver"), (dict(T=0.0), "T"),
                         (dict(atol=-1.0), "atol"), (dict(kinetic=-1.0), "kinetic"), (dict(probe="sobol"), "probe")):
        with pytest.raises(ValueError, match=f"ContinuousFlow: .*{word}"):
            ContinuousFlow(2, **kwargs)


def test_solver_failure_names_the_layer():
    flow = layer(max_num_steps=2)
    with pytest.raises(RuntimeError, match=r"ContinuousFlow: the ODE solver \(dopri5\) failed .*max_num_steps"):
        flow(torch.randn(4, 3, dtype=torch.float64))


def test_copies_and_pickles_after_a_training_solve():
    flow = layer(kinetic=0.1).train()
    flow.forward_and_ladj(torch.randn(4, 3, dtype=torch.float64))  # leaves tensors with a graph behind
    for clone in (copy.deepcopy(flow), pickle.loads(pickle.dumps(flow))):
        assert clone.kinetic_energy is None and clone.last_nfe == 0
        z = torch.randn(4, 3, dtype=torch.float64)
        torch.testing.assert_close(clone.forward_and_ladj(z)[0], flow.forward_and_ladj(z)[0])


def test_fixed_step_solver_runs():
    flow = layer(solver="rk4", step_size=0.05).eval()
    z = torch.randn(8, 3, dtype=torch.float64)
    x = flow(z)
    assert flow.last_nfe == 4 * 20
    torch.testing.assert_close(flow.inv(x.clone()), z, rtol=1e-5, atol=1e-5)  # to the discretisation error


def test_registry_builds_stacked_and_augmented_flows():
    flow = nf.build("ffjord", 3, num_layers=2, hidden_dims=(8,), adjoint=True, trace="exact")
    assert [type(p).__name__ for p in flow.parts] == ["ContinuousFlow", "ContinuousFlow"]
    assert flow.parts[0].adjoint and flow.parts[1].trace == "exact"
    augmented = nf.build("augmented_ffjord", 2, augment_dim=3, hidden_dims=(8,))
    assert isinstance(augmented.parts[-1], Augment) and augmented.parts[0].input_dim == 5
    assert augmented.base_dim() == 5
    regularized = perturb(nf.build("ffjord", 2, num_layers=2, hidden_dims=(8,), kinetic=1.0))
    nf.transformed(regularized).log_prob(torch.randn(16, 2))
    assert last_nfe(regularized) == sum(p.last_nfe for p in regularized.parts)
    total = regularization(regularized)
    torch.testing.assert_close(total, sum(p.kinetic_energy.mean() for p in regularized.parts))
    assert total > 0


def test_fit_density_on_two_moons():
    """A short maximum-likelihood fit with nf.infer.fit_density: one ODE block, hidden (32, 32), 150 Adam steps
    (lr 1e-2, cosine), learned T, float32. Measured on this machine (1 thread, ~13 s): held-out NLL 2.46 at the
    identity, 0.66 after 150 steps."""
    data = nf.datasets.two_moons(1000, seed=0)
    held_out = nf.datasets.two_moons(1000, seed=1)
    torch.manual_seed(0)
    flow = nf.build("ffjord", 2, hidden_dims=(32, 32))
    model = nf.transformed(flow)
    with torch.no_grad():
        before = -model.log_prob(held_out).mean().item()
    history = nf.infer.fit_density(model, data, steps=150, batch_size=256, lr=1e-2, eval_every=75, progress=False,
                                   seed=0)
    assert len(history.val_nll) == 2 and history.val_nll[-1] < history.val_nll[0]
    flow.eval()
    with torch.no_grad():
        after = -model.log_prob(held_out).mean().item()
    assert before > 2.0 and after < 1.0, (before, after)
    assert flow.parts[0].last_nfe > 0


@pytest.mark.parametrize("fit", ["fit_density", "fit_target"])
def test_the_fits_add_the_rnode_term_to_the_loss(fit, monkeypatch):
    """Built with kinetic/jacobian weights, a continuous flow's regularisation is part of what the fit minimises:
    every step reads it and its gradient moves the parameters (the history keeps the data term alone)."""
    reads = []
    original = ContinuousFlow.regularization

    def spy(self):
        value = original.fget(self)
        reads.append(value)
        return value

    monkeypatch.setattr(ContinuousFlow, "regularization", property(spy))

    def train(kinetic):
        torch.manual_seed(0)
        flow = nf.build("ffjord", 2, hidden_dims=(16,), kinetic=kinetic, jacobian=kinetic, rtol=1e-3, atol=1e-3)
        if fit == "fit_density":
            history = nf.infer.fit_density(flow, nf.datasets.two_moons(256, seed=0), steps=5, batch_size=64,
                                           eval_every=1, validation=0, lr=1e-2, progress=False, seed=0)
        else:
            history = nf.infer.fit_target(flow, nf.targets.load("U1"), steps=5, num_particles=64, lr=1e-2,
                                          progress=False, seed=0)
        return flow, history

    plain, plain_history = train(0.0)
    assert reads == []
    regularised, history = train(1.0)
    # (zero at the first step: a fresh flow is the identity, its field zero)
    assert len(reads) == 5 and all(torch.is_tensor(r) and r.requires_grad and r >= 0 for r in reads) and reads[-1] > 0
    assert history.loss[0] == pytest.approx(plain_history.loss[0], rel=1e-5)  # step 1: the same data term
    moved = [not torch.allclose(a, b) for a, b in zip(plain.parameters(), regularised.parameters())]
    assert any(moved)  # the penalty's gradient changed the steps
