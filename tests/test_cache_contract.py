"""The record contract (README "Records that cannot go stale"), attacked the way users change things.

``log_prob(x)`` never returns a value computed before a change of the parameters, buffers or ``x``,
however the change was made; ``log_prob`` of the model's own sample costs no inverse and, for surjective
and stochastic layers, scores the path that made it; importing pyro_nf changes nothing in torch or Pyro.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
import threading
import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from cases import CASES, make, parts

import pyro_nf as nf
from pyro_nf.transforms import ActNorm, BatchNorm

ARCHITECTURES = ["realnvp", "maf", "iaf", "glow", "nsf_coupling", "nsf_autoregressive"]


def _model(name, dim=2, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    small = {k: v for k, v in (("num_layers", 2), ("hidden_dims", (16,))) if k in nf.flows.options(name)}
    flow = nf.build(name, dim, **small).to(dtype)
    with torch.no_grad():  # off the identity: a fresh flow would hide stale values
        for p in flow.parameters():
            p.add_(0.3 * torch.randn_like(p))
    for m in flow.modules():
        if isinstance(m, ActNorm):
            m.initialized.fill_(True)
    return flow, nf.transformed(flow)


def _fresh_log_prob(model, value):
    return model.log_prob(value.detach().clone())


def _count_inverses(flow):
    calls = []
    for part in parts(flow):
        original = part._inverse_with_ladj
        part._inverse_with_ladj = lambda v, _f=original: calls.append(1) or _f(v)
    return calls


# ----------------------------------------------------------------------------- updates that move no version counter
@pytest.mark.parametrize("mode", ["fused", "foreach", "plain"])  # capturable=True needs CUDA
@pytest.mark.parametrize("name", ARCHITECTURES)
def test_training_on_one_data_tensor_with_any_optimizer(name, mode):
    """The issue's first reproduction: fused Adam, the same data tensor at every step."""
    x = nf.datasets.two_moons(256, seed=0)
    flow, model = _model(name)
    options = {"fused": {"fused": True}, "foreach": {"foreach": True}, "plain": {"foreach": False}}[mode]
    opt = torch.optim.Adam(flow.parameters(), lr=1e-2, **options)
    losses = []
    for _ in range(3):
        loss = -model.log_prob(x).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        with torch.no_grad():
            torch.testing.assert_close(model.log_prob(x), _fresh_log_prob(model, x))
    assert len(set(losses)) == 3


def test_data_edited_through_dot_data_is_seen():
    x = nf.datasets.two_moons(256, seed=0)
    _, model = _model("realnvp")
    with torch.no_grad():
        a = model.log_prob(x)
        x.data.add_(1)
        b = model.log_prob(x)
    assert not torch.equal(a, b)
    torch.testing.assert_close(b, _fresh_log_prob(model, x))


def _edits():
    """Ways users change parameters; each takes (flow, other_flow_state_dict)."""

    def fused_step(flow, _):
        params = [p for p in flow.parameters()]
        for p in params:
            p.grad = torch.randn_like(p)
        torch.optim.Adam(params, lr=0.1, fused=True).step()

    def dot_data(flow, _):
        for p in flow.parameters():
            p.data.add_(0.05)  # an EMA or weight surgery: no version bump

    def copy_no_grad(flow, _):
        with torch.no_grad():
            for p in flow.parameters():
                p.copy_(p * 1.1)

    def inference_mode(flow, _):
        with torch.inference_mode():
            for p in flow.parameters():
                p.mul_(0.9)

    def load_state_dict(flow, other):
        flow.load_state_dict(other)

    def numpy_view(flow, _):
        for p in flow.parameters():
            p.detach().numpy()[...] += 0.05

    return {f.__name__: f for f in (fused_step, dot_data, copy_no_grad, inference_mode, load_state_dict, numpy_view)}


EDITS = _edits()


@pytest.mark.parametrize("edit", sorted(EDITS))
@pytest.mark.parametrize("name", ["realnvp", "iaf", "glow", "planar", "snf", "augmented_realnvp"])
def test_own_sample_scored_after_a_parameter_change_is_not_stale(name, edit):
    flow, model = _model(name, seed=1)
    other = _model(name, seed=2)[0].state_dict()
    s = model.sample((64,))
    before = model.log_prob(s)
    EDITS[edit](flow, other)
    after = model.log_prob(s)
    if CASES.get(f"flow:{name}") is not None and CASES[f"flow:{name}"].random_density:
        # a random path: it must still not be the recorded value of the old parameters
        assert not torch.equal(after, before)
    else:
        assert not torch.equal(after, before)
        torch.testing.assert_close(after, _fresh_log_prob(model, s), rtol=1e-4, atol=1e-4)


def test_sample_edited_in_place_inside_inference_mode_is_not_stale():
    _, model = _model("iaf")
    with torch.inference_mode():
        s = model.sample((32,))
        first = model.log_prob(s)
        s.add_(0.5)  # an inference tensor: no version counter at all
        second = model.log_prob(s)
    assert not torch.equal(first, second)
    with torch.inference_mode():
        torch.testing.assert_close(second, model.log_prob(s.clone()), rtol=1e-5, atol=1e-5)


def test_sample_edited_through_a_numpy_view_is_not_stale():
    _, model = _model("iaf")
    s = model.sample((32,))
    first = model.log_prob(s)
    np.asarray(s.numpy())[...] += 0.5
    second = model.log_prob(s)
    assert not torch.equal(first, second)
    torch.testing.assert_close(second, _fresh_log_prob(model, s), rtol=1e-5, atol=1e-5)


def test_replacing_a_parameter_or_switching_mode_retires_the_record():
    flow, model = _model("realnvp")
    s = model.sample((16,))
    layer = flow.parts[0]
    last = layer.conditioner.net[-1]
    last.bias = torch.nn.Parameter(last.bias.detach() + 1.0)
    torch.testing.assert_close(model.log_prob(s), _fresh_log_prob(model, s))
    bn_flow = nf.build("realnvp", 2, num_layers=2, batch_norm=True).eval()
    bn_model = nf.transformed(bn_flow)
    s = bn_model.sample((64,))
    bn_flow.train()  # batch statistics now: a different map
    torch.testing.assert_close(bn_model.log_prob(s), _fresh_log_prob(bn_model, s))


# ----------------------------------------------------------------------------- what the record is for
@pytest.mark.parametrize("name", ["iaf", "realnvp", "nsf_autoregressive"])
def test_log_prob_of_own_sample_runs_no_inverse(name):
    flow, model = _model(name)
    calls = _count_inverses(flow)
    s = model.rsample((32,))
    lp = model.log_prob(s)
    assert calls == []
    lp.sum().backward()  # the sample's graph is usable, as SVI needs
    assert all(p.grad is not None for p in flow.parameters())


@pytest.mark.parametrize("case_id", sorted(CASES))
def test_a_sample_without_gradients_is_recorded_exactly_where_that_pays(case_id):
    """``sample()`` (no gradients) records its pair only where an inverse would cost more than a pass or give
    another value (``cheap_inverse`` false somewhere in the flow); where it does not record, ``log_prob`` of the
    sample computes the inverse and equals what the record would have said (the log-det of the pair)."""
    case = CASES[case_id]
    dim = max(3, case.min_dim)
    flow = make(case_id, dim, dtype=torch.float64).eval()
    if nf.flows.is_positive(parts(flow)[0].domain):
        pytest.skip("needs a positive base")
    model = nf.transformed(flow)
    cheap = all(part.cheap_inverse for part in parts(flow))
    assert cheap == flow._cheap_inverse()
    if any(not part.bijective for part in parts(flow)) or any(isinstance(part, nf.transforms.Planar)
                                                              for part in parts(flow)):
        assert not cheap  # a random path or a Newton inverse: the record is needed or pays
    torch.manual_seed(5)
    with torch.no_grad():
        s = model.sample((16,))
    assert (flow.__dict__.get("_record") is None) == cheap
    calls = _count_inverses(flow)
    with torch.no_grad():
        computed = model.log_prob(s)
    assert (len(calls) > 0) == cheap
    torch.manual_seed(5)
    recorded = model.log_prob(model.rsample((16,)))  # with gradients: always from the record
    torch.testing.assert_close(computed, recorded.detach(), rtol=1e-6, atol=1e-6)


def test_constant_buffers_name_real_buffers_and_only_those_go_unwatched():
    """``constant_buffers`` (structure fixed at construction, not copied by the records' guard) names buffers that
    exist on every module of every registered architecture that declares it; every other parameter and buffer is
    watched, so editing a parameter's contents in place still retires the record."""
    from pyro_nf.base import module_state

    seen = set()
    for name in nf.names():
        flow = nf.build(name, 4)
        watched = {id(t) for t in module_state(flow)[0]}
        for module in flow.modules():
            constant = getattr(type(module), "constant_buffers", ())
            for buffer in constant:
                assert buffer in module._buffers, (name, type(module).__name__, buffer)
                assert id(module._buffers[buffer]) not in watched
                seen.add((type(module).__name__, buffer))
            for tensor in (*module._parameters.values(), *(b for n, b in module._buffers.items() if n not in constant)):
                assert tensor is None or id(tensor) in watched
    assert {("MaskedLinear", "mask"), ("MADE", "order"), ("AffineCoupling", "merge_index")} <= seen


@pytest.mark.parametrize("case_id", [i for i in sorted(CASES) if CASES[i].kind != "bijection"])
def test_own_sample_of_a_random_layer_scores_the_path_that_made_it(case_id):
    flow = make(case_id, max(3, CASES[case_id].min_dim)).eval()
    model = nf.transformed(flow) if not nf.flows.is_positive(parts(flow)[0].domain) else None
    if model is None:
        pytest.skip("needs a positive base")
    calls = _count_inverses(flow)
    s = model.rsample((32,))
    a, b = model.log_prob(s), model.log_prob(s)
    assert calls == [] and torch.equal(a, b)


def test_plain_pyro_transformed_distribution_works_as_well():
    flow, model = _model("iaf", dim=3)
    plain = dist.TransformedDistribution(nf.StandardNormal(3), flow)
    calls = _count_inverses(flow)
    s = plain.rsample((16,))
    lp = plain.log_prob(s)
    assert calls == []
    torch.testing.assert_close(lp, model.log_prob(s.clone()), rtol=1e-5, atol=1e-5)
    x = torch.randn(16, 3)
    torch.testing.assert_close(plain.log_prob(x), model.log_prob(x), rtol=1e-5, atol=1e-5)
    opt = torch.optim.Adam(flow.parameters(), lr=1e-2, fused=True)
    for _ in range(3):  # Pyro's own identity-keyed cache failed here at the second backward
        loss = -plain.log_prob(x).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_rsample_and_log_prob_agrees_with_the_two_calls():
    flow, model = _model("realnvp", dtype=torch.float64)
    torch.manual_seed(3)
    x, lp = model.rsample_and_log_prob((8,))
    torch.testing.assert_close(lp, model.log_prob(x.clone()))


# ----------------------------------------------------------------------------- no global side effects
def test_import_changes_nothing_in_torch_or_pyro():
    code = r"""
import torch, pyro
from torch.nn.modules import module as m
names = [n for n in dir(m) if n.startswith("_global_")]
before = {n: len(getattr(m, n)) for n in names if hasattr(getattr(m, n), "__len__")}
dtype, grad, validation = torch.get_default_dtype(), torch.is_grad_enabled(), pyro.poutine.util.site_is_subsample
import pyro_nf
after = {n: len(getattr(m, n)) for n in before}
assert before == after, (before, after)
assert torch.get_default_dtype() == dtype and torch.is_grad_enabled() == grad
assert pyro.poutine.util.site_is_subsample is validation
assert not any(k.startswith("pyro_nf") for k in pyro.get_param_store().keys())
print("clean")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "clean" in out.stdout, out.stderr


# ----------------------------------------------------------------------------- calls that fail leave no trace
class _Fails(nf.transforms.AffineConstant):
    def _inverse_with_ladj(self, y):
        raise RuntimeError("boom")


def test_a_failing_later_layer_leaves_actnorm_uninitialised():
    actnorm = ActNorm(2)
    flow = nf.Flow([actnorm, _Fails(2)])
    with pytest.raises(RuntimeError, match="boom"):
        nf.transformed(flow).log_prob(torch.randn(64, 2) * 3)
    assert not actnorm.initialized and torch.equal(actnorm.shift, torch.zeros(2))


def test_glow_first_batch_with_inf_raises_and_leaves_no_trace():
    flow = nf.build("glow", 2, num_layers=2)
    model = nf.transformed(flow)
    bad = torch.randn(64, 2)
    bad[3, 0] = float("inf")
    for validation in (True, False):
        with pyro.validation_enabled(validation), pytest.raises(ValueError):
            model.log_prob(bad)
        assert not any(bool(m.initialized) for m in flow.modules() if isinstance(m, ActNorm))
    lp = model.log_prob(torch.randn(64, 2))
    assert torch.isfinite(lp).all()
    assert all(torch.isfinite(m.shift).all() for m in flow.modules() if isinstance(m, ActNorm))


def test_two_points_first_is_refused_not_a_degenerate_init():
    flow = nf.build("glow", 2, num_layers=2)
    model = nf.transformed(flow)
    with pytest.raises(ValueError, match="at least 16 points"):
        model.log_prob(torch.randn(2, 2))
    lp = model.log_prob(torch.randn(500, 2))
    assert lp.mean() > -5


def test_batch_norm_running_statistics_stay_finite():
    flow = nf.build("realnvp", 2, num_layers=3, batch_norm=True).train()
    model = nf.transformed(flow)
    bad = torch.randn(64, 2)
    bad[5, 1] = float("inf")
    with pyro.validation_enabled(True), pytest.raises(ValueError, match="non-finite"):
        model.log_prob(bad)
    with pyro.validation_enabled(False):
        model.log_prob(bad)  # no error asked for: the statistics must still not take the inf in
    for m in flow.modules():
        if isinstance(m, BatchNorm):
            assert torch.isfinite(m.running_mean).all() and torch.isfinite(m.running_var).all()


def test_actnorm_first_call_from_two_threads_commits_one_batch_consistently():
    for _ in range(5):
        layer = ActNorm(2)
        batches = [torch.randn(4000, 2) * (1 + 3 * i) + 5 * i for i in range(2)]
        outputs = [None, None]
        barrier = threading.Barrier(2)

        def run(i, layer=layer, outputs=outputs, barrier=barrier, batches=batches):
            barrier.wait()
            outputs[i] = layer.inv(batches[i])

        threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert layer.initialized
        # whichever thread initialised, both outputs are the inverse under the committed parameters
        for i in range(2):
            expected = (batches[i] - layer.shift) * torch.exp(-layer.log_scale)
            torch.testing.assert_close(outputs[i], expected)


def test_actnorm_trained_as_a_guide_is_not_reinitialised_by_log_prob():
    pyro.clear_param_store()

    def model():
        pyro.sample("z", dist.Normal(torch.tensor([3.0, -2.0]), torch.tensor([0.5, 2.0])).to_event(1))

    guide = nf.infer.AutoFlow(model, flow="glow", num_layers=2)
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), pyro.infer.Trace_ELBO())
    for _ in range(20):
        svi.step()
    actnorms = [m for m in guide.modules() if isinstance(m, ActNorm)]
    assert actnorms and all(bool(m.initialized) for m in actnorms)
    state = {k: v.clone() for k, v in guide.state_dict().items()}
    guide.get_posterior().log_prob(torch.randn(100, 2) * 10)
    assert all(torch.equal(state[k], v) for k, v in guide.state_dict().items())


def test_flow_inv_of_its_own_output_on_a_fresh_glow_round_trips():
    flow = nf.build("glow", 2, num_layers=2)
    x = torch.randn(64, 2) * 3
    z = flow.inv(x)
    torch.testing.assert_close(flow(z.clone()), x, rtol=1e-5, atol=1e-5)
    flow2 = nf.build("glow", 2, num_layers=2)
    z = torch.randn(64, 2)
    torch.testing.assert_close(flow2.inv(flow2(z).clone()), z, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- smaller defects (issue 15, section 6)
def test_with_cache_zero_on_a_random_layer_says_why():
    layer = nf.surjections.Augment(2, 1)
    with pytest.raises(ValueError, match="Augment is not bijective and needs its record"):
        layer.with_cache(0)


def test_snf_double_after_a_float32_call_and_pickling():
    flow = nf.build("snf", 2, num_layers=2, hidden_dims=(8,))
    nf.transformed(flow).log_prob(torch.randn(16, 2))
    flow = flow.double()
    assert nf.transformed(flow).log_prob(torch.randn(16, 2, dtype=torch.float64)).dtype == torch.float64
    restored = pickle.loads(pickle.dumps(flow))
    assert isinstance(restored, nf.Flow)
    target = dist.Normal(torch.zeros(2), torch.ones(2)).to_event(1)
    layer = nf.stochastic.Metropolis(2, energy=target)
    assert isinstance(pickle.loads(pickle.dumps(layer)), nf.stochastic.Metropolis)


def test_nan_in_log_prob_gives_a_short_error():
    _, model = _model("realnvp")
    x = torch.randn(500, 2)
    x[[3, 17], 1] = float("nan")
    with pyro.validation_enabled(True), pytest.raises(ValueError) as info:
        model.log_prob(x)
    text = str(info.value)
    assert "2 of 500 rows" in text and "[3, 17]" in text and len(text) < 400


@pytest.mark.parametrize("name", ["realnvp", "iaf", "glow", "planar"])
def test_jit_trace_elbo_emits_no_tracer_warning(name):
    pyro.clear_param_store()
    flow = nf.build(name, 2, num_layers=2, **({} if name == "planar" else {"hidden_dims": (8,)}))
    for m in flow.modules():
        if isinstance(m, ActNorm):
            m.initialized.fill_(True)

    def model():
        pyro.sample("z", dist.Normal(torch.zeros(2), torch.ones(2)).to_event(1))

    def guide():
        pyro.module("flow", flow)
        pyro.sample("z", nf.transformed(flow))

    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), pyro.infer.JitTrace_ELBO())
    with pyro.validation_enabled(True), warnings.catch_warnings():
        warnings.simplefilter("error", torch.jit.TracerWarning)
        for _ in range(2):
            svi.step()
