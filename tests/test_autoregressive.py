"""MADE and the MAF/IAF layer: masks, the SlowMAF oracle, pass counts, errors."""

import pytest
import torch

import pyro_nf as nf
from pyro_nf.nn import MADE, MLP
from pyro_nf.transforms import AffineAutoregressive, SplineAutoregressive


@pytest.mark.parametrize("order", [None, [2, 0, 3, 1]])
def test_made_is_autoregressive_in_its_order(order):
    torch.manual_seed(0)
    made = MADE(4, (8, 8), params_per_dim=3, order=order, context_dim=2, activation="tanh", zero_init=False)
    context = torch.randn(2)
    jac = torch.autograd.functional.jacobian(lambda v: made(v, context), torch.randn(4))  # (4, 3, 4)
    depends = jac.abs().sum(1) > 0
    rank = torch.empty(4, dtype=torch.long)
    rank[torch.as_tensor(order if order is not None else range(4))] = torch.arange(4)
    allowed = rank[None, :] < rank[:, None]
    assert torch.equal(depends, allowed), "output i must depend on exactly the inputs before i"
    jac_context = torch.autograd.functional.jacobian(lambda c: made(torch.randn(4), c), context)
    assert (jac_context.abs().sum((1, 2)) > 0).all(), "every output sees the context"


def test_made_errors():
    with pytest.raises(ValueError, match="MADE: every hidden layer needs at least input_dim - 1 = 9 units"):
        MADE(10, (16, 8))
    with pytest.raises(ValueError, match=r"MADE: order must be a permutation of 0..2, got \[0, 0, 1\]"):
        MADE(3, order=[0, 0, 1])
    with pytest.raises(ValueError, match=r"AffineAutoregressive: MADE: every hidden layer"):
        AffineAutoregressive(10, (4,))
    with pytest.raises(ValueError, match="AffineAutoregressive: direction must be one of"):
        AffineAutoregressive(3, direction="forward")
    with pytest.raises(ValueError, match="context"):
        MADE(3, context_dim=2)(torch.randn(3))


class SlowMAF(torch.nn.Module):
    """Seed 000's SlowMAF as an oracle: one small network per coordinate, coordinate i
    conditioned explicitly on x[:i]; z_i = (x_i - t_i) * exp(-s_i)."""

    def __init__(self, dim):
        super().__init__()
        self.dim = dim
        self.first = torch.nn.Parameter(torch.randn(2) * 0.3)
        self.nets = torch.nn.ModuleList(MLP(i, 2, (8,), zero_init=False) for i in range(1, dim))

    def params(self, x):
        rows = [self.first.expand(*x.shape[:-1], 2)] + [net(x[..., :i]) for i, net in enumerate(self.nets, 1)]
        return torch.stack(rows, dim=-1)  # (..., 2, D): the affine transformer's param-major layout

    def density_direction(self, x, shift="data"):
        """The oracle: a Python loop over coordinates (seed 000's ``(x - t) e^{-s}``, or ``x e^{-s} - t``
        with the shift on the latent side)."""
        zs, ladj = [], 0.0
        for i in range(self.dim):
            first = self.first if i == 0 else self.nets[i - 1](x[..., :i])
            t, s = first[..., 0], first[..., 1]
            zs.append((x[..., i] - t) * torch.exp(-s) if shift == "data" else x[..., i] * torch.exp(-s) - t)
            ladj = ladj + s
        return torch.stack(zs, -1), ladj


@pytest.mark.parametrize("shift", ["data", "latent"])
def test_maf_agrees_with_the_slow_maf_oracle(shift):
    torch.manual_seed(0)
    dim = 4
    oracle = SlowMAF(dim).double()

    class Conditioner(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.oracle = oracle

        def forward(self, x):
            return self.oracle.params(x)

    # a huge scale bound makes the soft clamp numerically the identity, as SlowMAF has none
    layer = AffineAutoregressive(dim, conditioner=Conditioner(), scale_bound=1e6, shift=shift).double()
    assert AffineAutoregressive(dim).transformer.shift == "latent"  # MAF's default
    assert AffineAutoregressive(dim, direction="iaf").transformer.shift == "data"  # IAF's
    x = torch.randn(10, dim, dtype=torch.float64)
    z_fast = layer.inv(x)
    z_slow, ladj_slow = oracle.density_direction(x, shift)
    torch.testing.assert_close(z_fast, z_slow)
    torch.testing.assert_close(layer.log_abs_det_jacobian(z_fast, x), ladj_slow)
    torch.testing.assert_close(layer(z_slow.clone()), x)  # sequential sampling inverts it


def _count_passes(layer):
    """A list that grows by one at every evaluation of the layer's MADE: a forward call, or one pass of the
    sequential loop's ``repeated`` function."""
    calls = []
    made = layer.conditioner
    made.register_forward_hook(lambda *args: calls.append(1))
    repeated = made.repeated

    def counted(context=None):
        params = repeated(context)

        def one_pass(x, coordinate=None):
            calls.append(1)
            return params(x, coordinate)

        return one_pass

    made.repeated = counted
    return calls


@pytest.mark.parametrize("direction", ["maf", "iaf"])
def test_one_pass_where_the_math_allows(direction):
    dim = 6
    layer = AffineAutoregressive(dim, (16, 16), direction=direction)
    calls = _count_passes(layer)
    z = torch.randn(32, dim)
    x = layer(z)
    assert len(calls) == (1 if direction == "iaf" else dim)
    calls.clear()
    layer.inv(x.clone())
    assert len(calls) == (dim if direction == "iaf" else 1)
    calls.clear()
    layer.log_abs_det_jacobian(z.clone(), x.clone())
    assert len(calls) == 1, "the log-det of any pair costs one pass"


def test_iaf_density_of_its_own_samples_uses_the_cache():
    flow = nf.build("iaf", 5, num_layers=2, hidden_dims=(16, 16))
    model = nf.transformed(flow)
    calls = [_count_passes(layer) for layer in flow.parts]
    x = model.rsample((64,))
    model.log_prob(x)
    assert [len(c) for c in calls] == [1, 1]


def test_spline_autoregressive_starts_at_identity():
    layer = SplineAutoregressive(3, (8, 8), count_bins=5)
    x = torch.randn(10, 3)
    torch.testing.assert_close(layer(x), x)
    torch.testing.assert_close(layer.log_abs_det_jacobian(x, layer(x)), torch.zeros(10))


def test_wide_data_gets_wide_default_hidden_layers():
    flow = nf.build("maf", 100, num_layers=1)
    assert flow.parts[0].conditioner.hidden_dims == (200, 200)


def test_a_made_of_the_wrong_layout_is_refused():
    with pytest.raises(ValueError, match="AffineAutoregressive.*param_major=True"):
        AffineAutoregressive(3, conditioner=MADE(3, (8, 8), 2))
    layer = AffineAutoregressive(3, (8, 8))
    layer.conditioner = MADE(3, (8, 8), 2)  # swapped in after construction
    with pytest.raises(ValueError, match="param_major=True"):
        layer.inv(torch.randn(4, 3))


@pytest.mark.parametrize("context_dim", [0, 3])
@pytest.mark.parametrize("param_major", [False, True])
def test_made_repeated_equals_forward(context_dim, param_major):
    """The sequential passes' MADE (masked weights and context share computed once) is the same function."""
    torch.manual_seed(0)
    made = MADE(5, (16, 16), params_per_dim=3, context_dim=context_dim, zero_init=False, param_major=param_major,
                order=torch.randperm(5))
    x = torch.randn(7, 5, dtype=torch.float64)
    made.double()
    context = torch.randn(7, context_dim, dtype=torch.float64) if context_dim else None
    expected = made(x, context) if context_dim else made(x)
    params = made.repeated(context)
    torch.testing.assert_close(params(x), expected, rtol=1e-12, atol=1e-12)
    for i in range(5):  # one coordinate's rows alone
        one = params(x, torch.tensor([i]))
        torch.testing.assert_close(one, expected[..., :, i:i + 1] if param_major else expected[..., i:i + 1, :],
                                   rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="MADE: expected a context"):
        MADE(5, (16, 16), context_dim=2).repeated(None)
