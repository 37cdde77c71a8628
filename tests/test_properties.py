"""The shared property suite: every layer and architecture of ``tests/cases.py``."""

from __future__ import annotations

import io
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from cases import CASES, latent_dim, make, parts, perturb
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam

import pyro_nf as nf

DIM = 3
IDS = sorted(CASES)
BIJECTIONS = [i for i in IDS if CASES[i].kind == "bijection"]
NON_BIJECTIONS = [i for i in IDS if CASES[i].kind != "bijection"]
DTYPES = [torch.float32, torch.float64]
TOL = {torch.float32: 1e-5, torch.float64: 1e-10}


def model_of(flow, batch_shape=(), dtype=None):
    ref = next(iter(flow.parameters()), None)
    if ref is None:  # a parameter-free layer: its floating buffers say the dtype, any buffer the device
        ref = next((b for b in flow.buffers() if b.is_floating_point()), None)
    anywhere = ref if ref is not None else next(iter(flow.buffers()), None)
    dtype = dtype or (ref.dtype if ref is not None else torch.get_default_dtype())
    device = anywhere.device if anywhere is not None else None
    size = flow.base_dim() if isinstance(flow, nf.Flow) else flow.domain_dim
    loc = torch.zeros(*batch_shape, size, dtype=dtype, device=device)
    return dist.TransformedDistribution(dist.Normal(loc, torch.ones_like(loc)).to_event(1), flow)


def dim_for(case_id):
    return max(DIM, CASES[case_id].min_dim)


@pytest.mark.parametrize("sample_shape", [(), (5,), (4, 3)])
@pytest.mark.parametrize("case_id", IDS)
def test_shapes(case_id, sample_shape):
    d = dim_for(case_id)
    flow = make(case_id, d).eval()
    z = torch.randn(*sample_shape, latent_dim(flow, d)).abs()
    x = flow(z)
    assert x.shape == (*sample_shape, d)
    assert flow.log_abs_det_jacobian(z, x).shape == sample_shape
    assert flow.inv(torch.randn(*sample_shape, d)).shape == z.shape
    model = model_of(flow)
    s = model.rsample(sample_shape)
    assert s.shape == (*sample_shape, d)
    assert model.log_prob(s).shape == sample_shape
    assert model.log_prob(torch.randn(*sample_shape, d)).shape == sample_shape


@pytest.mark.parametrize("case_id", IDS)
def test_batch_shape(case_id):
    d = dim_for(case_id)
    flow = make(case_id, d).eval()
    model = model_of(flow, batch_shape=(2,))
    s = model.rsample((5,))
    assert s.shape == (5, 2, d)
    assert model.log_prob(s).shape == (5, 2)
    assert model.log_prob(torch.randn(7, 1, d)).shape == (7, 2)


@pytest.mark.parametrize("state", ["perturbed", "trained"])
@pytest.mark.parametrize("case_id", BIJECTIONS)
def test_round_trip(case_id, dtype, device, state):
    d = dim_for(case_id)
    flow = make(case_id, d, dtype, trained=state == "trained", device=device).eval()
    z = torch.randn(64, d, dtype=dtype, device=device)
    x = flow(z)
    assert flow.inv(x) is z, "the cached inverse of the layer's own output must be its input"
    z_again = flow.inv(x.clone())  # a clone bypasses the cache: a real inverse
    tol = TOL[dtype]
    torch.testing.assert_close(z_again, z, rtol=tol, atol=tol)
    y = torch.randn(64, d, dtype=dtype, device=device)
    torch.testing.assert_close(flow(flow.inv(y).clone()), y, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case_id", [i for i in NON_BIJECTIONS if CASES[i].kind == "surjection"])
def test_surjection_right_inverse(case_id, dtype):
    """Abs and Slice: inverse(forward(z)) == z; Augment: forward(inverse(x)) == x; the cache
    returns the very path that was drawn."""
    d = dim_for(case_id)
    flow = make(case_id, d, dtype).eval()
    tol = TOL[dtype]
    z = torch.randn(64, latent_dim(flow, d), dtype=dtype)
    x = flow(z)
    assert flow.inv(x) is z
    x = torch.randn(64, d, dtype=dtype)
    z = flow.inv(x)
    assert flow(z) is x
    if CASES[case_id].exact == "inverse_after_forward":
        z = torch.randn(64, latent_dim(flow, d), dtype=dtype)
        torch.testing.assert_close(flow.inv(flow(z).clone()), z, rtol=tol, atol=tol)
    else:
        torch.testing.assert_close(flow(flow.inv(x.clone()).clone()), x, rtol=tol, atol=tol)


@pytest.mark.parametrize("state", ["perturbed", "trained"])
@pytest.mark.parametrize("case_id", BIJECTIONS)
def test_ladj_matches_autograd_jacobian(case_id, state, device):
    d = dim_for(case_id)
    flow = make(case_id, d, torch.float64, trained=state == "trained", device=device).eval()
    for _ in range(3):
        z = torch.randn(d, dtype=torch.float64, device=device)
        jac = torch.autograd.functional.jacobian(lambda v: flow(v.clone()), z)
        expected = torch.linalg.slogdet(jac).logabsdet
        x = flow(z)
        torch.testing.assert_close(flow.log_abs_det_jacobian(z, x), expected, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(flow.log_abs_det_jacobian(z.clone(), x.clone()), expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("state", ["perturbed", "trained"])
@pytest.mark.parametrize("case_id", IDS)
def test_inverse_ladj_matches_forward_ladj(case_id, state, device):
    """The log-det recorded by the density direction is the forward one at the recovered point."""
    d = dim_for(case_id)
    flow = make(case_id, d, torch.float64, trained=state == "trained", device=device).eval()
    # A composition's log-det of a bare pair re-runs the intermediate layers, so with random
    # layers inside only each layer's own pair determines its log-det: check layer by layer.
    layers = [flow] if CASES[case_id].kind == "bijection" else parts(flow)
    for layer in layers:
        x = torch.randn(16, layer.codomain_dim if hasattr(layer, "codomain_dim") else d, dtype=torch.float64,
                        device=device)
        if nf.flows.is_positive(layer.codomain):
            x = x.abs()
        z = layer.inv(x)
        cached = layer.log_abs_det_jacobian(z, x)
        recomputed = layer.log_abs_det_jacobian(z.clone(), x.clone())
        torch.testing.assert_close(cached, recomputed, rtol=1e-10, atol=1e-10)


def _integral(model, dim, paths=1):
    """Integral of the model's density over a box that holds all of 20000 samples, and its Monte
    Carlo standard error (0 when ``log_prob`` is deterministic).

    Midpoint rule on a grid uniform in ``u`` per axis, ``x = sinh(u)^3``: cells are tiny near 0,
    where surjections and elementwise layers put their kinks and their steepest densities
    (Softplus before Abs: ``p(x) ~ N(log x) / x``, which a uniform grid resolves only as O(1/n)),
    and wider in the tails. 0 is a cell edge, so jumps at 0 (LeakyReLU, Abs) fall on edges, not
    on nodes. With ``paths > 1`` each density is the mean of ``exp(log_prob)`` over that many
    random paths (unbiased), and the error is ``sqrt(sum_i cell_i^2 var_i / paths)`` from the
    per-node sample variances.
    """
    with torch.no_grad():
        half_width = max(6.0, 1.1 * model.sample((20000,)).abs().max().item())
        n = {1: 2000, 2: 300 if paths == 1 else 200}[dim]  # even: 0 is an edge
        u_max = math.asinh(half_width ** (1 / 3))
        du = 2 * u_max / n
        u = -u_max + du * (torch.arange(n, dtype=torch.float64) + 0.5)
        axis, cell = torch.sinh(u) ** 3, 3 * torch.sinh(u) ** 2 * torch.cosh(u) * du
        grid = torch.stack(torch.meshgrid(*[axis] * dim, indexing="ij"), -1).reshape(-1, dim)
        volume = torch.stack(torch.meshgrid(*[cell] * dim, indexing="ij"), -1).reshape(-1, dim).prod(-1)
        total, variance = 0.0, 0.0
        for chunk, vol in zip(grid.split(2**16 // paths), volume.split(2**16 // paths)):
            # one batched call: scoring the same tensor twice would reuse its cached path
            density = model.log_prob(chunk.expand(paths, *chunk.shape).clone()).exp()  # (paths, chunk)
            total += (density.mean(0) * vol).sum().item()
            if paths > 1:
                variance += (density.var(0) / paths * vol**2).sum().item()
        return total, math.sqrt(variance)


@pytest.mark.parametrize("case_id", IDS)
def test_density_integrates_to_one(case_id):
    """Quadrature to 2e-3; for random densities (Augment, stochastic layers), the mean over 32
    paths must also lie within 4 standard errors, and the error must be small enough (< 0.02)
    for the check to mean something."""
    case = CASES[case_id]
    paths = 32 if case.random_density else 1
    for d in sorted({max(d, case.min_dim) for d in case.density_dims}):
        flow = make(case_id, d, torch.float64).eval()
        total, se = _integral(model_of(flow, dtype=torch.float64), d, paths=paths)
        assert se < 0.02, f"{case_id} in {d}D: the Monte Carlo error {se:.3g} is too large for a check"
        assert abs(total - 1.0) < 2e-3 + 4 * se, f"{case_id} in {d}D integrates to {total} (standard error {se:.2g})"


@pytest.mark.parametrize("case_id", IDS)
def test_float64_in_float64_out(case_id, device):
    d = dim_for(case_id)
    flow = make(case_id, d, torch.float64, device=device).eval()
    model = model_of(flow, dtype=torch.float64)
    s = model.rsample((4,))
    assert s.dtype == torch.float64
    assert model.log_prob(s).dtype == torch.float64
    fresh = torch.randn(4, d, dtype=torch.float64, device=device)
    assert model.log_prob(fresh).dtype == torch.float64 and s.device.type == device.type
    z = flow.inv(fresh)
    assert z.dtype == torch.float64 and flow.log_abs_det_jacobian(z, fresh).dtype == torch.float64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available on this machine")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case_id", IDS)
def test_cuda(case_id, dtype):
    d = dim_for(case_id)
    cpu = make(case_id, d, dtype).eval()
    gpu = make(case_id, d, dtype).eval().cuda()
    model = model_of(gpu)
    x = torch.randn(32, d, dtype=dtype)
    lp = nf.transformed(gpu).log_prob(x.cuda())
    assert lp.device.type == "cuda" and lp.dtype == dtype
    torch.testing.assert_close(lp.cpu(), model_of(cpu).log_prob(x), rtol=1e-4, atol=1e-4)
    assert model.rsample((8,)).device.type == "cuda"


@pytest.mark.parametrize("case_id", IDS)
def test_gradients_reach_every_parameter(case_id, device):
    d = dim_for(case_id)
    flow = make(case_id, d, device=device).train()
    if next(iter(flow.parameters()), None) is None:
        pytest.skip("the layer has no parameters")
    model_of(flow).log_prob(torch.randn(128, d, device=device)).sum().backward()
    for name, p in flow.named_parameters():
        assert p.grad is not None, f"{case_id}: no gradient reaches {name}"
        assert torch.isfinite(p.grad).all(), f"{case_id}: non-finite gradient for {name}"
        assert p.grad.abs().sum() > 0, f"{case_id}: zero gradient for {name}"


@pytest.mark.parametrize("case_id", IDS)
def test_state_dict_round_trip(case_id, device):
    d = dim_for(case_id)
    source = make(case_id, d, seed=1, device=device).eval()
    target = make(case_id, d, seed=2, perturbed=False, device=device).eval()
    buffer = io.BytesIO()
    torch.save(source.state_dict(), buffer)
    buffer.seek(0)
    target.load_state_dict(torch.load(buffer))
    x = torch.randn(32, d, device=device)
    torch.manual_seed(5)  # the same random path for stochastic layers
    expected = model_of(source).log_prob(x)
    torch.manual_seed(5)
    assert torch.equal(model_of(target).log_prob(x.clone()), expected)


@pytest.mark.parametrize("case_id", IDS)
def test_repr(case_id):
    flow = make(case_id, dim_for(case_id))
    text = repr(flow)
    for part in parts(flow):
        line = repr(part)
        assert "\n" not in line and line.startswith(type(part).__name__)
        assert line in text


@pytest.mark.parametrize("case_id", IDS)
def test_svi_guide(case_id, device):
    """The flow as a variational guide in Pyro SVI: a few steps run and move the parameters."""
    pyro.clear_param_store()
    d = dim_for(case_id)
    flow = make(case_id, d, device=device)
    data = torch.randn(d, device=device) + 1.0

    def model():
        z = pyro.sample("z", dist.Normal(torch.zeros(d, device=device), torch.ones(d, device=device)).to_event(1))
        pyro.sample("obs", dist.Normal(z, 1.0).to_event(1), obs=data)

    def guide():
        pyro.module("flow", flow)
        pyro.sample("z", nf.transformed(flow))

    before = [p.detach().clone() for p in flow.parameters()]
    svi = SVI(model, guide, Adam({"lr": 1e-2}), Trace_ELBO())
    losses = [svi.step() for _ in range(3)]
    assert all(math.isfinite(v) for v in losses)
    after = list(flow.parameters())
    assert all(not torch.equal(a, b) for a, b in zip(after, before)) or not before


@pytest.mark.parametrize("case_id", IDS)
def test_no_stale_cache_in_a_training_loop(case_id, device):
    """Scoring the same data tensor object at every step must see the new parameters
    (Pyro's identity-keyed cache fails here with 'backward through the graph a second time')."""
    d = dim_for(case_id)
    flow = make(case_id, d, device=device).train()
    model = model_of(flow)
    data = torch.randn(64, d, device=device)
    params = list(flow.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-2) if params else None
    losses = []
    for _ in range(3):
        loss = -model.log_prob(data).mean()
        losses.append(loss.item())
        if optimizer is None:
            continue
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if not CASES[case_id].random_density:
            with torch.no_grad():
                torch.testing.assert_close(model.log_prob(data), model.log_prob(data.clone()))
    if params:
        assert losses[0] != losses[1] != losses[2]


@pytest.mark.parametrize("case_id", BIJECTIONS)
def test_clone_bypasses_both_caches(case_id, monkeypatch):
    d = dim_for(case_id)
    flow = make(case_id, d).eval()
    calls = {"forward": 0, "inverse": 0}
    recomputed = []
    for part in parts(flow):
        monkeypatch.setattr(part, "_ladj", lambda z, x, original=part._ladj: recomputed.append(1) or original(z, x))
        for name, key in (("_forward_with_ladj", "forward"), ("_inverse_with_ladj", "inverse")):
            original = getattr(part, name)

            def counted(v, original=original, key=key):
                calls[key] += 1
                return original(v)

            monkeypatch.setattr(part, name, counted)
    n = len(parts(flow))
    z = torch.randn(8, d)
    x = flow(z)
    assert calls == {"forward": n, "inverse": 0}
    assert flow.inv(x) is z
    ladj = flow.log_abs_det_jacobian(z, x)
    assert calls == {"forward": n, "inverse": 0}, "cached pair: neither the inverse nor the conditioner reruns"
    x_clone = x.clone()
    z2 = flow.inv(x_clone)
    assert calls["inverse"] == n
    ladj2 = flow.log_abs_det_jacobian(z2, x_clone)  # a fresh pair from the inverse: its log-det is cached too
    assert calls == {"forward": n, "inverse": n}
    torch.testing.assert_close(ladj2, ladj, rtol=1e-4, atol=1e-4)
    assert not recomputed
    torch.testing.assert_close(flow.log_abs_det_jacobian(z.clone(), x.clone()), ladj)
    # a layer recomputes a bare pair's log-det with _ladj, a Flow by walking forward from z
    assert recomputed or calls["forward"] == 2 * n, "a cloned pair must recompute its log-det"


@pytest.mark.parametrize("case_id", IDS)
def test_in_place_parameter_change_invalidates_cache(case_id):
    d = dim_for(case_id)
    flow = make(case_id, d).eval()
    params = list(flow.parameters())
    if not params:
        pytest.skip("the layer has no parameters")
    z = torch.randn(8, latent_dim(flow, d)).abs()
    x = flow(z)
    with torch.no_grad():
        for p in params:
            p.add_(0.1)
    assert flow(z) is not x


@pytest.mark.parametrize("case_id", IDS)
def test_bad_input_names_layer_and_shape(case_id):
    d = dim_for(case_id)
    flow = make(case_id, d)
    first = type(parts(flow)[0]).__name__
    last = type(parts(flow)[-1]).__name__
    k = latent_dim(flow, d)
    with pytest.raises(ValueError, match=rf"{first}.*\(\.\.\., {k}\).*\(5, {k + 1}\)"):
        flow(torch.randn(5, k + 1))
    with pytest.raises(ValueError, match=rf"{last}.*\(5, {d + 1}\)"):
        flow.inv(torch.randn(5, d + 1))
    if next(iter(flow.parameters()), None) is not None:
        with pytest.raises(TypeError, match=r"float64.*float32"):
            flow(torch.randn(5, k, dtype=torch.float64))
    with pytest.raises(TypeError, match=first):
        flow(torch.ones(5, k, dtype=torch.long))
    with pytest.raises(ValueError, match="support|finite|nan|NaN"):
        bad = torch.randn(5, d)
        bad[2, 0] = float("nan")
        with pyro.validation_enabled(True):
            model_of(flow).log_prob(bad)


def test_every_layer_class_has_a_case():
    """Registering a layer means adding it to tests/cases.py: check none is missing."""
    import inspect

    import pyro_nf.stochastic as stochastic
    import pyro_nf.surjections as surjections
    import pyro_nf.transforms as transforms

    classes = {
        name for package in (transforms, surjections, stochastic) for name, obj in vars(package).items()
        if inspect.isclass(obj) and issubclass(obj, nf.transforms.FlowTransform)
        and obj is not nf.transforms.FlowTransform and not name.startswith("_")
    }
    assert {"Abs", "Augment", "Slice", "Metropolis", "Langevin", "Planar"} <= classes
    covered = {type(p).__name__ for cid in CASES for p in parts(make(cid, dim_for(cid), perturbed=False))}
    covered |= {CASES[cid].id.split("-")[0] for cid in CASES}
    assert classes <= covered, f"layers without a property-suite case: {sorted(classes - covered)}"


def test_perturb_moves_every_layer_off_the_identity():
    for case_id in BIJECTIONS:
        d = dim_for(case_id)
        flow = make(case_id, d).eval()
        z = torch.randn(16, d)
        if case_id.startswith("Permutation") and d > 1:
            continue
        assert not torch.allclose(flow(z), z), f"{case_id} is still the identity after perturb()"


def test_perturb_is_deterministic():
    a = perturb(AffineCouplingFactory(), seed=3)
    b = perturb(AffineCouplingFactory(), seed=3)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def AffineCouplingFactory():
    torch.manual_seed(0)
    return nf.transforms.AffineCoupling(2, (8,))


@pytest.mark.parametrize("case_id", NON_BIJECTIONS)
def test_log_prob_of_own_sample_reads_the_cached_path(case_id):
    """rsample then log_prob of that very tensor scores the path that made it: computing it
    again from the cached pair gives the same value, and the layers refuse cache_size=0."""
    d = dim_for(case_id)
    flow = make(case_id, d).eval()
    model = model_of(flow)
    x = model.rsample((32,))
    first = model.log_prob(x)
    torch.testing.assert_close(model.log_prob(x), first)
    for part in parts(flow):
        if not part.bijective:
            with pytest.raises(ValueError, match=rf"{type(part).__name__} is not bijective and needs cache_size=1"):
                type(part).__init__(part.__class__.__new__(part.__class__), **_init_args(part), cache_size=0)


def _init_args(part):
    """Constructor arguments that rebuild ``part`` (enough of them for the cache check)."""
    import inspect

    params = inspect.signature(type(part).__init__).parameters
    args = {}
    for name in params:
        if name in ("self", "cache_size"):
            continue
        if hasattr(part, name):
            args[name] = getattr(part, name)
        elif name == "energy":
            args[name] = part._energy
    return args
