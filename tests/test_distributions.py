"""StandardNormal: the same distribution as Normal(0, 1).to_event(1), cheaper."""

import pyro
import pyro.distributions as dist
import pytest
import torch

import pyro_nf as nf
from pyro_nf.distributions import StandardNormal
from pyro_nf.transforms.normalization import ActNorm


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_pyro_normal(dtype):
    base = StandardNormal(3, dtype=dtype)
    reference = dist.Normal(torch.zeros(3, dtype=dtype), 1.0).to_event(1)
    x = torch.randn(5, 4, 3, dtype=dtype)
    torch.testing.assert_close(base.log_prob(x), reference.log_prob(x))
    torch.testing.assert_close(base.entropy(), reference.entropy())
    assert base.rsample((7, 2)).shape == (7, 2, 3) and base.rsample().dtype == dtype
    assert base.event_shape == (3,) and base.batch_shape == ()
    torch.testing.assert_close(base.mean, reference.mean)
    torch.testing.assert_close(base.variance, reference.variance)


def test_batch_shape_broadcasts_and_expands():
    base = StandardNormal(2, batch_shape=(4,))
    assert base.log_prob(torch.randn(2)).shape == (4,)
    assert base.log_prob(torch.randn(6, 1, 2)).shape == (6, 4)
    assert base.sample((3,)).shape == (3, 4, 2)
    wide = base.expand((5, 4))
    assert isinstance(wide, StandardNormal) and wide.batch_shape == (5, 4) and wide.sample().shape == (5, 4, 2)
    samples = StandardNormal(2).sample((40000,))
    assert samples.mean(0).abs().max() < 0.03 and (samples.var(0) - 1).abs().max() < 0.05


def test_validation_and_errors():
    with pyro.validation_enabled(True):
        with pytest.raises(ValueError):
            StandardNormal(2, validate_args=True).log_prob(torch.tensor([0.0, float("nan")]))
    with pytest.raises(ValueError, match="StandardNormal: dim must be a positive int"):
        StandardNormal(0)


def test_is_the_default_base_of_transformed():
    model = nf.transformed(nf.build("realnvp", 2, num_layers=2).double())
    assert isinstance(model.base_dist, StandardNormal) and model.base_dist.mean.dtype == torch.float64


def test_flow_distribution_checks_cheaply_but_still_refuses_bad_values():
    model = nf.transformed(nf.build("realnvp", 3, num_layers=2, hidden_dims=(8,)))
    assert isinstance(model, nf.FlowDistribution) and isinstance(model, dist.TransformedDistribution)
    with pyro.validation_enabled(True):
        model = nf.transformed(nf.build("realnvp", 3, num_layers=2, hidden_dims=(8,)))
        assert model.log_prob(torch.randn(4, 3)).shape == (4,)
        assert model.log_prob(torch.randn(5, 1, 3)).shape == (5, 1)
        x = torch.randn(4, 3)
        x[1, 2] = float("nan")  # torch's `real` support excludes NaN only, not infinities
        with pytest.raises(ValueError, match="support"):
            model.log_prob(x)
        huge = torch.full((2, 3), 3e38)  # finite values whose sum overflows: the full check accepts them
        # (a layer with no network: a conditioner's product of 3e38 with a zero last layer would be NaN)
        elementwise = nf.transformed(nf.Flow([nf.transforms.AffineConstant(3)]))
        assert elementwise.log_prob(huge).shape == (2,)
        with pytest.raises(ValueError):
            model.log_prob(torch.randn(4, 2))
        base = nf.StandardNormal(3, validate_args=True)
        with pytest.raises(ValueError, match="support"):
            base.log_prob(torch.tensor([0.0, float("nan"), 1.0]))
    positive = nf.transformed(nf.Flow([nf.transforms.Softplus(2)]))  # not R^D: the full check
    with pyro.validation_enabled(True), pytest.raises(ValueError, match="support"):
        positive.log_prob(torch.tensor([[1.0, -1.0]]))


@pytest.mark.parametrize("name", ["realnvp", "maf", "iaf", "glow", "nsf_autoregressive", "planar"])
def test_flow_distribution_walks_each_layer_once_and_agrees_with_torch(name):
    torch.manual_seed(0)
    flow = nf.build(name, 3, num_layers=3).double()
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.2 * torch.randn_like(p))
    model = nf.transformed(flow)
    reference = dist.TransformedDistribution(model.base_dist, flow)  # torch's generic walk
    x = torch.randn(32, 3, dtype=torch.float64)  # ActNorm initialises from at least 16 points
    inverses = []
    for part in flow.parts:
        original = part._inverse_with_ladj
        part._inverse_with_ladj = lambda y, _f=original: inverses.append(1) or _f(y)
    fast = model.log_prob(x.clone())
    assert len(inverses) == len(flow.parts)
    torch.testing.assert_close(fast, reference.log_prob(x.clone()))
    # a sample's density comes from the layers' caches: no inverse runs
    inverses.clear()
    z = model.rsample((4,))
    model.log_prob(z)
    assert inverses == []
    # a composition that is not one chain of pyro_nf layers takes torch's walk, with the same result
    mixed = nf.FlowDistribution(model.base_dist, [flow, dist.transforms.AffineTransform(0.5, 2.0)])
    expected = dist.TransformedDistribution(model.base_dist, [flow, dist.transforms.AffineTransform(0.5, 2.0)])
    torch.testing.assert_close(mixed.log_prob(x.clone()), expected.log_prob(x.clone()))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available on this machine")
@pytest.mark.parametrize("name", ["realnvp", "glow", "maf", "iaf", "nsf_coupling", "nsf_autoregressive"])
def test_hot_paths_make_no_host_device_synchronisation(name):
    """log_prob of data, its backward and Adam's step, rsample, and rsample_and_log_prob never wait for the
    GPU (torch's sync debug mode raises on a synchronisation). Validation is off (the distribution's, its base's
    and Pyro's): its finiteness check is one read of a sum; ActNorm's first call initialises it and is made
    before. The CPU test below checks the same on the meta device."""
    torch.manual_seed(0)
    flow = nf.build(name, 4, num_layers=2, hidden_dims=(16,)).cuda()
    model = nf.transformed(flow, validate_args=False)
    optimizer = torch.optim.Adam(flow.parameters(), lr=1e-3)
    x = torch.randn(256, 4, device="cuda")
    model.log_prob(x).sum().backward()  # warm-up: ActNorm's data-dependent initialisation
    optimizer.zero_grad()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with pyro.validation_enabled(False):
            loss = -model.log_prob(x.clone()).mean()
            loss.backward()
            optimizer.step()
            model.rsample((64,))
            model.rsample_and_log_prob((64,))
    finally:
        torch.cuda.set_sync_debug_mode(0)


# The documented host reads with validation off: iterations that stop when they converge. Every other
# (architecture, operation) pair must run on the meta device.
HOST_READS = {
    ("planar", "log_prob"): "the Newton inverse stops at convergence",
    ("residual", "log_prob"): "the spectral norm's power iteration stops at convergence",
    ("residual", "rsample"): "the fixed-point inverse stops at convergence",
    ("residual", "rsample_and_log_prob"): "the fixed-point inverse stops at convergence",
    **{(name, op): "the adaptive ODE solver chooses its steps from the error estimate"
       for name in ("ffjord", "augmented_ffjord") for op in ("log_prob", "rsample", "rsample_and_log_prob")},
}
OPERATIONS = ("log_prob", "rsample", "rsample_and_log_prob")


@pytest.mark.parametrize("op", OPERATIONS)
@pytest.mark.parametrize("name", nf.names())
def test_hot_paths_read_no_value_on_the_host(name, op, monkeypatch):
    """What the CUDA test above checks, on any machine, for every registered architecture: on the meta device
    a tensor has a shape and no values, so any host read (``.item()``, ``bool()``, ``.tolist()``: a device sync
    on a GPU) raises, and so does mixing in a tensor a layer made on the CPU. With validation off,
    ``log_prob`` and its backward, ``rsample``, ``rsample_and_log_prob`` and its backward, and Adam's step run
    there, except for the documented iterative layers, which must still fail (so the list stays exact)."""
    torch.manual_seed(0)
    flow = nf.build(name, 4)
    nf.transformed(flow).log_prob(torch.randn(64, 4))  # ActNorm's data-dependent initialisation, on the CPU
    flow.to("meta")
    # ActNorm reads its `initialized` buffer once after a move (the buffer may have been replaced)
    monkeypatch.setattr(ActNorm, "_is_initialized", lambda self: True)

    def run():
        with pyro.validation_enabled(False):
            model = nf.transformed(flow, validate_args=False)
            optimizer = torch.optim.Adam(flow.parameters(), lr=1e-3)
            if op == "log_prob":
                outputs = [model.log_prob(torch.empty(64, 4, device="meta"))]
            elif op == "rsample":
                outputs = [model.rsample((8,))]
            else:
                outputs = list(model.rsample_and_log_prob((8,)))
            assert all(out.device.type == "meta" for out in outputs)
            if any(out.requires_grad for out in outputs):
                sum(out.sum() for out in outputs).backward()
                optimizer.step()

    if (name, op) in HOST_READS:
        with pytest.raises(RuntimeError, match="meta tensors"):
            run()
    else:
        run()


@pytest.mark.parametrize("name", ["realnvp", "maf", "nsf_coupling"])
def test_conditional_hot_paths_read_no_value_on_the_host(name):
    """The same for conditional flows: ``condition(c).log_prob`` and ``rsample`` on the meta device."""
    torch.manual_seed(0)
    flow = nf.build(name, 3, context_dim=2).to("meta")
    context = torch.empty(16, 2, device="meta")
    with pyro.validation_enabled(False):
        model = nf.transformed(flow, validate_args=False).condition(context)
        log_p = model.log_prob(torch.empty(16, 3, device="meta"))
        log_p.sum().backward()
        sample = model.rsample()
    assert log_p.device.type == sample.device.type == "meta" and sample.shape == (16, 3)
