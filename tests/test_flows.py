"""The registry: names, build, options and their errors, the printed chain."""

import pytest
import torch
from torch.distributions import ComposeTransform

import pyro_nf as nf
from pyro_nf.flows import Flow


def test_names_and_default_builds():
    assert {"nice", "realnvp", "glow"} <= set(nf.names())
    for name in nf.names():
        for dim in (2, 5):
            flow = nf.build(name, dim)
            assert isinstance(flow, Flow) and flow.dim == dim
            assert flow.base_dim() == flow.inverse_shape(torch.Size([dim]))[-1] >= dim
            x = torch.randn(32, dim)  # ActNorm (glow) initialises from at least 16 points
            assert nf.transformed(flow).log_prob(x).shape == (32,)


def test_shared_options():
    flow = nf.build("realnvp", 3, num_layers=3, hidden_dims=(5,))
    assert len(flow.parts) == 3
    assert flow.parts[0].conditioner.hidden_dims == (5,)
    assert len(nf.build("glow", 2, num_layers=2).parts) == 6
    assert len(nf.build("realnvp", 2, num_layers=3, batch_norm=True).parts) == 5
    assert nf.flows.options("realnvp")["num_layers"] == 8


def test_errors_name_the_valid_choices():
    with pytest.raises(ValueError, match="unknown flow architecture 'nope'; valid names: .*realnvp"):
        nf.build("nope", 2)
    with pytest.raises(ValueError, match=r"realnvp: unknown option\(s\) \['layers'\]; valid options: .*num_layers"):
        nf.build("realnvp", 2, layers=3)
    with pytest.raises(ValueError, match="num_layers must be a positive int"):
        nf.build("glow", 2, num_layers=0)
    with pytest.raises(ValueError, match="hidden_dims"):
        nf.build("nice", 2, hidden_dims=(0,))
    with pytest.raises(ValueError, match="realnvp: dim must be an int >= 2"):
        nf.build("realnvp", 1)
    with pytest.raises(ValueError, match="mask must be one of"):
        nf.build("realnvp", 2, mask="checker")


def test_print_shows_the_chain():
    text = repr(nf.build("glow", 2, num_layers=1))
    lines = text.splitlines()
    assert lines[0] == "Flow(name='glow', dim=2, layers=3)"
    assert "Normal(0, I_2)" in lines[1]
    assert [line.strip().split("(")[0] for line in lines[3::2]] == ["ActNorm", "InvertibleLinear", "AffineCoupling"]


def test_transformed_follows_device_and_dtype():
    flow = nf.build("realnvp", 2, num_layers=2).double()
    model = nf.transformed(flow)
    assert model.base_dist.mean.dtype == torch.float64
    assert model.rsample((3,)).dtype == torch.float64


def test_register_adds_an_architecture():
    @nf.flows.register("test-affine", "one affine constant layer")
    def _builder(dim, scale=True):
        return [nf.transforms.AffineConstant(dim, scale=scale)]

    try:
        assert "test-affine" in nf.names()
        assert nf.build("test-affine", 3, scale=False).parts[0].log_scale is None
    finally:
        nf.flows._ARCHITECTURES.pop("test-affine")


def _perturbed(flow, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return flow


@pytest.mark.parametrize("name", ["realnvp", "maf", "iaf", "glow", "nsf_coupling"])
def test_flow_log_det_of_its_own_pair_reads_the_flow_record(name):
    flow = _perturbed(nf.build(name, 4, num_layers=3).double())
    x = torch.randn(32, 4, dtype=torch.float64)
    calls = []
    for part in flow.parts:
        for method in ("_forward_with_ladj", "_inverse_with_ladj", "_ladj"):
            original = getattr(part, method)
            setattr(part, method, lambda *a, _f=original, _m=method: calls.append(_m) or _f(*a))
    z = flow.inv(x)
    calls.clear()
    fast = flow.log_abs_det_jacobian(z, x)
    assert calls == []  # no layer ran again
    reference = ComposeTransform.log_abs_det_jacobian(flow, z, x)  # ComposeTransform's walk
    torch.testing.assert_close(fast, reference)
    # a parameter step makes the cached pairs stale: the flow falls back to recomputing, correctly
    _perturbed(flow, seed=1)
    for part in flow.parts:
        part.clear_cache()
    z2 = flow.inv(x)
    with torch.no_grad():
        next(flow.parameters()).add_(0.1)
    calls.clear()
    stale = flow.log_abs_det_jacobian(z2, x)
    assert calls  # recomputed
    for part in flow.parts:
        part.clear_cache()
    torch.testing.assert_close(stale, ComposeTransform.log_abs_det_jacobian(flow, z2, x))
    # a pair that is not this chain's is not taken from the caches either
    other = torch.randn(32, 4, dtype=torch.float64)
    torch.testing.assert_close(flow.log_abs_det_jacobian(other, flow(other)),
                               ComposeTransform.log_abs_det_jacobian(flow, other, flow(other)))
