"""The compiled path (issue 13): whole losses as one graph, compiled = eager, records and compilation side by side.

Most tests trace with the ``eager`` or ``aot_eager`` backend (dynamo and AOTAutograd, no code generation), which
is what decides graph breaks and recompilations; one test runs inductor on a small flow.
"""

from __future__ import annotations

import threading

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

import pyro_nf as nf
from pyro_nf.compiled import CompiledFlow
from pyro_nf.compiled import compile as nf_compile
from pyro_nf.transforms import Planar

DIM = 4
DENSITY_ARCHS = ["realnvp", "maf", "nsf_coupling"]


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def make(arch: str, dim: int = DIM, seed: int = 0, **options):
    """``nf.transformed`` of a flow moved off the identity (its conditioners' last layers start at zero)."""
    torch.manual_seed(seed)
    flow = nf.build(arch, dim, **options)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return nf.transformed(flow)


def target(x):
    return -0.5 * ((x - 0.5) ** 2).sum(-1)


def grads(model):
    out = [p.grad.clone() for p in model.transforms[0].parameters()]
    model.transforms[0].zero_grad(set_to_none=True)
    return out


def assert_one_graph(fn, *args):
    """``fn`` traces into one graph with no break: by ``torch._dynamo.explain`` and by a counting backend under
    ``fullgraph=True`` (which raises at any break); the compiled call and its backward run."""
    explanation = torch._dynamo.explain(fn)(*args)
    assert (explanation.graph_count, explanation.graph_break_count) == (1, 0), explanation.break_reasons
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("eager")
    torch.compile(fn, backend=counter, fullgraph=True)(*args).backward()
    assert counter.frame_count == 1


@pytest.mark.parametrize("arch", DENSITY_ARCHS)
def test_density_loss_is_one_graph(arch):
    model = make(arch)
    assert_one_graph(lambda x: -model.log_prob(x).mean(), torch.randn(32, DIM))


def test_iaf_reverse_kl_loss_is_one_graph():
    model = make("iaf")
    # as Pyro scores a guide: rsample, then log_prob of the sample (eager reads the record, compiled recomputes it)
    assert_one_graph(lambda: (model.log_prob(x := model.rsample((32,))) - target(x)).mean())
    torch._dynamo.reset()
    assert_one_graph(lambda: (lambda x, log_q: (log_q - target(x)).mean())(*model.rsample_and_log_prob((32,))))


@pytest.mark.parametrize("arch", DENSITY_ARCHS)
def test_compiled_nll_matches_eager(arch):
    model = make(arch)
    fast = nf_compile(model, backend="aot_eager", fullgraph=True)
    x = torch.randn(64, DIM)
    for _ in range(3):  # eager first call, then the compilation, then the compiled code
        loss = fast.nll_loss(x)
        loss.backward()
        compiled_grads = grads(model)
    eager = -model.log_prob(x).mean()
    eager.backward()
    torch.testing.assert_close(loss, eager, rtol=1e-5, atol=1e-5)
    for a, b in zip(compiled_grads, grads(model)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fast.log_prob(x), model.log_prob(x), rtol=1e-5, atol=1e-5)


def test_compiled_reverse_kl_matches_eager():
    model = make("iaf")
    fast = nf_compile(model, backend="aot_eager", fullgraph=True)
    for _ in range(3):
        torch.manual_seed(7)  # the base draw is eager: one seed, the same samples
        loss = fast.reverse_kl_loss(target, 64)
        loss.backward()
        compiled_grads = grads(model)
    torch.manual_seed(7)
    x, log_q = model.rsample_and_log_prob((64,))
    eager = (log_q - target(x)).mean()
    eager.backward()
    torch.testing.assert_close(loss, eager, rtol=1e-5, atol=1e-5)
    for a, b in zip(compiled_grads, grads(model)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    torch.manual_seed(3)
    x_fast, log_q_fast = fast.rsample_and_log_prob((5,))
    torch.manual_seed(3)
    x_eager, log_q_eager = model.rsample_and_log_prob((5,))
    torch.testing.assert_close(x_fast, x_eager)
    torch.testing.assert_close(log_q_fast, log_q_eager)
    assert fast.sample((2, 3)).shape == (2, 3, DIM)


def test_inductor_training_matches_eager():
    """The default backend (kept small: its C++ compilation dominates): three Adam steps compiled and three eager
    from the same start agree."""
    eager_model, model = make("realnvp", num_layers=1, hidden_dims=(16,)), make("realnvp", num_layers=1,
                                                                                hidden_dims=(16,))
    fast = nf_compile(model)
    x = torch.randn(128, DIM)
    losses = []
    for m, loss_fn in ((eager_model, lambda: -eager_model.log_prob(x).mean()), (model, lambda: fast.nll_loss(x))):
        optimizer = torch.optim.Adam(m.transforms[0].parameters(), lr=1e-2)
        for _ in range(3):
            optimizer.zero_grad()
            loss = loss_fn()
            loss.backward()
            optimizer.step()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast.log_prob(x), eager_model.log_prob(x), rtol=1e-4, atol=1e-4)


def test_records_and_compiled_calls_side_by_side():
    """Layer records stay on (cache_size=1): eager calls between compiled ones make and read them and cause no
    recompilation; compiled calls neither read nor make them, and see every parameter update."""
    model = make("iaf", num_layers=2)
    flow = model.transforms[0]
    counter = CompileCounterWithBackend("aot_eager")
    fast = nf_compile(model, backend=counter, fullgraph=True)
    optimizer = torch.optim.Adam(fast.parameters(), lr=1e-2)
    x = torch.randn(16, DIM)
    for _ in range(4):
        optimizer.zero_grad()
        fast.nll_loss(x).backward()
        optimizer.step()
        sample = model.rsample((8,))  # eager: makes the flow's record
        record = flow.__dict__["_record"]
        assert record is not None and record.x is sample
        torch.testing.assert_close(fast.log_prob(sample), model.log_prob(sample), rtol=1e-5, atol=1e-5)
        assert flow.__dict__["_record"] is record  # the compiled call did not touch it
    assert counter.frame_count == 2  # nll_loss and log_prob, once each
    with torch.no_grad():
        next(flow.parameters()).add_(0.5)  # in place, no optimizer
    torch.testing.assert_close(fast.nll_loss(x), -model.log_prob(x.clone()).mean(), rtol=1e-5, atol=1e-5)
    assert counter.frame_count == 2


def test_no_recompilation_in_a_fresh_thread():
    """A fresh thread has none of pyro_nf's per-thread call state: compiled code must not guard on it (it once
    recompiled after the first eager call had set it)."""
    model = make("realnvp")
    counter = CompileCounterWithBackend("eager")
    loss = torch.compile(lambda x: -model.log_prob(x).mean(), backend=counter, fullgraph=True)
    x = torch.randn(8, DIM)
    model.log_prob(x)  # eager, in this thread: fills the constants cache (see the next test)
    errors = []

    def work():
        try:
            loss(x)
            model.log_prob(x.clone())  # eager: sets the thread's call state
            loss(x)
        except Exception as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert not errors, errors
    assert counter.frame_count == 1


def test_plain_torch_compile_compiles_once():
    """``torch.compile`` of the loss, with no eager call first, compiles once."""
    import pyro_nf.nn.functional

    pyro_nf.nn.functional._SCALARS.clear()
    model = make("realnvp")
    counter = CompileCounterWithBackend("eager")
    loss = torch.compile(lambda x: -model.log_prob(x).mean(), backend=counter, fullgraph=True)
    x = torch.randn(8, DIM)
    for _ in range(3):
        loss(x)
    assert counter.frame_count == 1


def planar_model(dim: int = DIM):
    """Two Planar layers, one with c = w.u_hat near -1 (the convex case) and one with c > 0."""
    torch.manual_seed(1)
    flow = nf.build("planar", dim, num_layers=2)
    with torch.no_grad():
        for layer, wu in zip(flow.parts, (-3.0, 2.0)):
            assert isinstance(layer, Planar)
            layer.bias.fill_(0.3)
            layer.u.copy_(wu * layer.w / (layer.w @ layer.w) + 0.1 * torch.randn(dim))
    return nf.transformed(flow)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_planar_inverse_is_one_graph_and_matches_eager(dtype):
    model = planar_model()
    model.transforms[0].to(dtype)
    model = nf.transformed(model.transforms[0])
    x = 3 * torch.randn(64, DIM, dtype=dtype)
    counter = CompileCounterWithBackend("aot_eager")
    fast = nf_compile(model, backend=counter, fullgraph=True)  # fullgraph: a graph break would raise
    for _ in range(3):
        loss = fast.nll_loss(x)
        loss.backward()
        compiled_grads = grads(model)
    assert counter.frame_count == 1
    eager = -model.log_prob(x).mean()
    eager.backward()
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(loss, eager, rtol=tol, atol=tol)
    for a, b in zip(compiled_grads, grads(model)):
        torch.testing.assert_close(a, b, rtol=10 * tol, atol=tol)


def test_planar_overflowing_input_compiled_as_eager():
    """A finite x whose w.x overflows float32: the rescue computed in the graph (no host check) gives eager's z."""
    layer = planar_model().transforms[0].parts[0]
    x = torch.randn(8, DIM)
    x[:3] = 3e38 * torch.sign(layer.w.detach())  # w.x beyond float32 in its terms
    compiled = torch.compile(layer.inverse_and_ladj, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        z_fast, ladj_fast = compiled(x)
        z_eager, ladj_eager = layer.inverse_and_ladj(x.clone())
    torch.testing.assert_close(z_fast, z_eager, equal_nan=True)
    torch.testing.assert_close(ladj_fast, ladj_eager, equal_nan=True)


def test_glow_actnorm_initialises_on_the_eager_first_call():
    model = make("glow")
    fast = nf_compile(model, backend="aot_eager", fullgraph=True)
    x = 2 + 3 * torch.randn(64, DIM)
    losses = [fast.nll_loss(x) for _ in range(3)]
    torch.testing.assert_close(losses[2], -model.log_prob(x).mean(), rtol=1e-5, atol=1e-5)


def test_batch_norm_statistics_update_inside_the_graph():
    """BatchNorm stages its running statistics; a compiled call commits them inside its one graph, as eager does."""
    twins = [make("realnvp", num_layers=2, batch_norm=True) for _ in range(2)]
    counter = CompileCounterWithBackend("aot_eager")
    fast = nf_compile(twins[0], backend=counter, fullgraph=True)
    for _ in range(4):
        x = 3 + 2 * torch.randn(32, DIM)
        torch.testing.assert_close(fast.nll_loss(x), -twins[1].log_prob(x).mean())
    assert counter.frame_count == 1
    norms = [[p for p in model.transforms[0].parts if type(p).__name__ == "BatchNorm"] for model in twins]
    assert norms[0]
    for a, b in zip(*norms):
        assert a.running_mean.abs().sum() > 0
        torch.testing.assert_close(a.running_mean, b.running_mean)
        torch.testing.assert_close(a.running_var, b.running_var)


def test_compile_accepts_flows_and_refuses_others():
    flow = nf.build("realnvp", 2, num_layers=2)
    assert isinstance(nf_compile(flow, backend="eager"), CompiledFlow)
    assert "CompiledFlow(Flow, backend='eager')" == repr(nf_compile(flow, backend="eager"))
    conditional = nf_compile(nf.build("realnvp", 2, num_layers=2, context_dim=3), backend="eager")
    assert conditional.conditional and not nf_compile(flow, backend="eager").conditional
    with pytest.raises(ValueError, match=r"nll_loss: the flow is conditional \(context_dim=3\); pass context="):
        conditional.nll_loss(torch.randn(4, 2))
    with pytest.raises(ValueError, match=r"expected a context of shape \(\.\.\., 3\), got \(4, 2\)"):
        conditional.rsample((2,), context=torch.randn(4, 2))
    with pytest.raises(ValueError, match="log_prob: context= was given but the flow is not conditional"):
        nf_compile(flow, backend="eager").log_prob(torch.randn(4, 2), context=torch.randn(4, 3))
    with pytest.raises(TypeError, match="expected a pyro_nf flow"):
        nf_compile(torch.nn.Linear(2, 2))
    fast = nf_compile(flow, backend="eager")
    with pytest.raises(ValueError, match="num_samples"):
        fast.reverse_kl_loss(target, 0)
    with pytest.raises(TypeError, match="callable"):
        fast.reverse_kl_loss(3.0, 8)


@pytest.mark.parametrize("arch", DENSITY_ARCHS)
def test_conditional_flow_compiles_once_and_matches_eager(arch):
    """A conditional flow conditioned inside the graph: one graph with no break (``fullgraph=True``) compiled once
    for every new context of the same shape; loss, gradients, density and seeded samples as eager."""
    model = make(arch, context_dim=2)
    counter = CompileCounterWithBackend("aot_eager")
    fast = nf_compile(model, backend=counter, fullgraph=True)
    x = torch.randn(64, DIM)
    for _ in range(4):  # eager first call, then the compilation, then the compiled code for new contexts
        context = torch.randn(64, 2)
        loss = fast.nll_loss(x, context=context)
        loss.backward()
        compiled_grads = grads(model)
    assert counter.frame_count == 1
    eager = -model.condition(context).log_prob(x).mean()
    eager.backward()
    torch.testing.assert_close(loss, eager, rtol=1e-5, atol=1e-5)
    for a, b in zip(compiled_grads, grads(model)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fast.log_prob(x, context), model.condition(context).log_prob(x), rtol=1e-5, atol=1e-5)
    for _ in range(2):
        torch.manual_seed(3)
        x_fast, log_q_fast = fast.rsample_and_log_prob((5,), context=context)
    torch.manual_seed(3)
    x_eager, log_q_eager = model.condition(context).rsample_and_log_prob((5,))
    assert x_fast.shape == (5, 64, DIM)
    torch.testing.assert_close(x_fast, x_eager, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(log_q_fast, log_q_eager, rtol=1e-5, atol=1e-5)


def test_conditional_amortised_reverse_kl_matches_eager():
    """An amortised guide's loss: samples per context row scored against a target of the row, compiled as eager."""
    model = make("iaf", context_dim=1)
    context = torch.linspace(-1, 1, 16).unsqueeze(-1)

    def target(x):
        return -0.5 * ((x - context) ** 2).sum(-1)

    fast = nf_compile(model, backend="aot_eager", fullgraph=True)
    for _ in range(3):
        torch.manual_seed(7)
        loss = fast.reverse_kl_loss(target, 8, context=context)
    torch.manual_seed(7)
    x, log_q = model.condition(context).rsample_and_log_prob((8,))
    assert x.shape == (8, 16, DIM)
    torch.testing.assert_close(loss, (log_q - target(x)).mean(), rtol=1e-5, atol=1e-5)
