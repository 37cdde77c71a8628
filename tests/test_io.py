"""nf.save / nf.load: every architecture comes back with identical densities, in weights-only files."""

from __future__ import annotations

import pytest
import torch
from cases import perturb

import pyro_nf as nf
from pyro_nf.transforms import ActNorm, BatchNorm

SMALL = (("num_layers", 2), ("hidden_dims", (8, 8)), ("count_bins", 4))


def _built(name, dim=3, dtype=torch.float32, **extra):
    opts = {k: v for k, v in SMALL if k in nf.flows.options(name)}
    torch.manual_seed(0)
    flow = perturb(nf.build(name, dim, **opts, **extra).to(dtype))
    return flow


@pytest.mark.parametrize("name", nf.names())
def test_every_architecture_round_trips(name, tmp_path):
    dim = max(3, nf.flows._get(name).min_dim)
    flow = _built(name, dim).eval()
    path = tmp_path / "model.pt"
    nf.save(nf.transformed(flow), path)
    raw = torch.load(path, weights_only=True)  # no pickled code in the file
    assert raw["architecture"] == name and raw["package_version"] == nf.__version__
    loaded = nf.load(path)
    assert isinstance(loaded, nf.FlowDistribution) and not loaded.transforms[0].training
    x = torch.randn(32, dim).abs() + 0.1
    torch.manual_seed(1)
    expected = nf.transformed(flow).log_prob(x)
    torch.manual_seed(1)
    assert torch.equal(loaded.log_prob(x), expected)


def test_data_dependent_state_and_float64_come_back(tmp_path):
    glow = _built("glow", 2, torch.float64)
    for m in glow.modules():
        if isinstance(m, ActNorm):
            m.initialized.fill_(False)
    nf.transformed(glow).log_prob(torch.randn(64, 2, dtype=torch.float64) * 3 + 1)  # initialises ActNorm
    nf.save(glow, tmp_path / "glow.pt")
    loaded = nf.load(tmp_path / "glow.pt")
    assert all(bool(m.initialized) for m in loaded.transforms[0].modules() if isinstance(m, ActNorm))
    x = torch.randn(16, 2, dtype=torch.float64)
    assert torch.equal(loaded.log_prob(x), nf.transformed(glow.eval()).log_prob(x))

    bn = _built("realnvp", 2, batch_norm=True).train()
    nf.transformed(bn).log_prob(torch.randn(128, 2) * 2 + 3)  # moves the running statistics
    nf.save(bn.eval(), tmp_path / "bn.pt")
    loaded = nf.load(tmp_path / "bn.pt").transforms[0]
    for a, b in zip([m for m in bn.modules() if isinstance(m, BatchNorm)],
                    [m for m in loaded.modules() if isinstance(m, BatchNorm)]):
        assert torch.equal(a.running_mean, b.running_mean) and torch.equal(a.running_var, b.running_var)


def test_standardized_model_keeps_the_data_units(tmp_path):
    flow = _built("realnvp", 2)
    loc, scale = torch.tensor([100.0, -5.0]), torch.tensor([10.0, 0.1])
    model = nf.transformed(nf.flows.standardized(flow, loc, scale).eval())
    nf.save(model, tmp_path / "std.pt")
    loaded = nf.load(tmp_path / "std.pt")
    x = loc + scale * torch.randn(50, 2)
    assert torch.equal(loaded.log_prob(x), model.log_prob(x))
    # densities in the data's units: log p(x) = log p_std((x - loc) / scale) - sum(log scale)
    inner = nf.transformed(flow.eval())
    torch.testing.assert_close(loaded.log_prob(x), inner.log_prob((x - loc) / scale) - scale.log().sum())
    samples = loaded.sample((4000,))
    assert (samples.mean(0) - loc).abs().max() < 5 * scale.max()
    assert all(not p.requires_grad for p in loaded.transforms[0].parts[-1].parameters())


def test_errors_say_what_is_wrong(tmp_path):
    with pytest.raises(ValueError, match="not made by nf.build"):
        nf.save(nf.Flow([nf.transforms.AffineConstant(2)]), tmp_path / "x.pt")
    with pytest.raises(ValueError, match="option energy=.*not a number"):
        nf.save(nf.build("snf", 2, num_layers=1, energy=lambda x: (x * x).sum(-1)), tmp_path / "x.pt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        nf.save(nf.build("realnvp", 2), tmp_path / "missing" / "x.pt")
    path = tmp_path / "old.pt"
    nf.save(nf.build("realnvp", 2, num_layers=2), path)
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["format_version"] = 99
    torch.save(checkpoint, path)
    with pytest.raises(ValueError, match="checkpoint format 99.*reads format 1"):
        nf.load(path)
    torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(ValueError, match="not a pyro_nf checkpoint"):
        nf.load(path)
    nf.save(nf.build("realnvp", 2, num_layers=2), path)
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["options"]["num_layers"] = 3
    torch.save(checkpoint, path)
    with pytest.raises(ValueError, match="do not fit a realnvp"):
        nf.load(path)


def test_conditional_model_round_trips(tmp_path):
    torch.manual_seed(0)
    flow = perturb(nf.build("maf", 2, context_dim=3, num_layers=2, hidden_dims=(8,)))
    nf.save(nf.transformed(flow), tmp_path / "cond.pt")
    loaded = nf.load(tmp_path / "cond.pt")
    assert isinstance(loaded, nf.ConditionalFlowDistribution)
    c, x = torch.randn(10, 3), torch.randn(10, 2)
    assert torch.equal(loaded.condition(c).log_prob(x), nf.transformed(flow.eval()).condition(c).log_prob(x))
