"""Per-family tests: the math and the errors of each layer beyond the shared suite."""

import math

import pytest
import torch

import pyro_nf as nf
from pyro_nf.nn import MLP, coupling_mask
from pyro_nf.transforms import (
    ActNorm,
    AdditiveCoupling,
    Affine,
    AffineConstant,
    AffineCoupling,
    BatchNorm,
    Coupling,
    InvertibleLinear,
    LeakyReLU,
    Permutation,
    PReLU,
)


def test_mlp_starts_at_zero_and_takes_context():
    net = MLP(3, 4, (8, 8), context_features=2)
    out = net(torch.randn(5, 3), torch.randn(5, 2))
    assert out.shape == (5, 4) and torch.equal(out, torch.zeros(5, 4))
    out = net(torch.randn(7, 5, 3), torch.randn(5, 2))  # the context broadcasts
    assert out.shape == (7, 5, 4)
    with pytest.raises(ValueError, match="context"):
        net(torch.randn(5, 3))
    with pytest.raises(ValueError, match="hidden_dims"):
        MLP(3, 4, (8, -1))
    with pytest.raises(ValueError, match="activation"):
        MLP(3, 4, activation="nope")


def test_coupling_masks():
    assert coupling_mask(4).tolist() == [False, False, True, True]
    assert coupling_mask(4, flip=True).tolist() == [True, True, False, False]
    assert coupling_mask(5, "alternate").tolist() == [False, True, False, True, False]
    with pytest.raises(ValueError, match="dim >= 2"):
        coupling_mask(1)
    with pytest.raises(ValueError, match="AffineCoupling: mask must transform some"):
        AffineCoupling(3, mask=[1, 1, 1])
    with pytest.raises(ValueError, match="AffineCoupling: mask has 2 entries but input_dim is 3"):
        AffineCoupling(3, mask=[0, 1])
    with pytest.raises(ValueError, match="0/1"):
        AdditiveCoupling(3, mask=[0, 2, 1])


def test_coupling_starts_as_identity_and_leaves_identity_part():
    layer = AffineCoupling(4, (8,))
    x = torch.randn(10, 4)
    torch.testing.assert_close(layer(x), x)
    torch.testing.assert_close(layer.log_abs_det_jacobian(x, layer(x)), torch.zeros(10))
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(torch.randn_like(p))
    y = layer(x)
    torch.testing.assert_close(y[:, :2], x[:, :2])
    assert not torch.allclose(y[:, 2:], x[:, 2:])
    assert layer.mask.tolist() == [False, False, True, True]


def test_affine_scale_is_soft_clamped():
    transformer = Affine(3, scale_bound=1.5)
    raw = torch.tensor([[[0.0, 0.0, 0.0], [100.0, -100.0, 0.1]]])  # (batch, [shift, raw scale], coordinate)
    _, log_scale = transformer(torch.zeros(1, 3), raw)
    assert log_scale.abs().max() <= 1.5 + 1e-6
    assert math.isclose(log_scale[0, 2].item(), 1.5 * math.tanh(0.1 / 1.5), rel_tol=1e-6)
    with pytest.raises(ValueError, match="scale_bound"):
        Affine(3, scale_bound=0.0)
    with pytest.raises(ValueError, match="scale_bound"):
        Affine(3, scale_bound=float("inf"))
    assert not list(transformer.parameters())  # the default bound is fixed


@pytest.mark.parametrize("shift", ["data", "latent"])
def test_affine_shift_sides(shift):
    transformer = Affine(2, shift=shift)
    x = torch.tensor([[1.0, -2.0]])
    params = torch.tensor([[[0.5, -1.0], [0.3, 0.0]]])  # (batch, [shift, raw scale], coordinate)
    y, log_scale = transformer(x, params)
    t, s = params[0, 0], 2 * torch.tanh(params[0, 1] / 2)
    expected = x * s.exp() + t if shift == "data" else (x + t) * s.exp()
    torch.testing.assert_close(y, expected)
    torch.testing.assert_close(transformer.inverse(y, params)[0], x)
    torch.testing.assert_close(log_scale, s.expand(1, 2))
    with pytest.raises(ValueError, match="AffineCoupling: Affine: shift must be one of"):
        AffineCoupling(4, shift="middle")


@pytest.mark.parametrize("bound", [0.5, 1.0, 2.0, 2.5, 50.0, 1e6])
def test_soft_clamp_is_accurate_in_float32(bound):
    raw = torch.linspace(-3 * bound, 3 * bound, 10001, dtype=torch.float64)
    exact = bound * torch.tanh(raw / bound)
    got = nf.nn.soft_clamp(raw.float(), bound).double()
    # a few float32 ulps relative to the value, or absolute near 0 (the sigmoid form's error scales with the
    # bound; wide bounds switch to tanh)
    assert ((got - exact).abs() / exact.abs().clamp(min=1.0)).max() < 4e-7


@pytest.mark.parametrize("dim", [2, 8, 16, 31, 32, 64])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dense_rows_copies_exactly_the_short_strided_rows(dim, dtype):
    """A strided block is made contiguous on the CPU when its rows are under 128 bytes, else passed through; the
    affine transformer's results are identical either way."""
    params = torch.randn(64, 2, dim, dtype=dtype)
    block = params.unbind(-2)[1]
    dense = nf.nn.functional.dense_rows(block)
    short = dim * params.element_size() < 128
    assert (dense is not block) == short and (not short or dense.is_contiguous())
    assert torch.equal(dense, block)
    contiguous = params.unbind(-2)[1].contiguous()
    assert nf.nn.functional.dense_rows(contiguous) is contiguous
    x = torch.randn(64, dim, dtype=dtype)
    layer = Affine(dim)
    y, log_scale = layer(x, params)
    reference = nf.nn.soft_clamp(params[:, 1].clone(), layer.scale_bound)
    eps = torch.finfo(dtype).eps  # vectorised and scalar loops may round a transcendental differently
    torch.testing.assert_close(log_scale, reference, rtol=4 * eps, atol=4 * eps)
    torch.testing.assert_close(y, x * reference.exp() + params[:, 0], rtol=1e-6, atol=1e-6)


def test_custom_conditioner_is_used():
    conditioner = torch.nn.Linear(1, 2)
    layer = Coupling([False, True], Affine(1), conditioner=conditioner)
    assert layer.conditioner is conditioner
    assert set(dict(layer.named_parameters())) >= {"conditioner.weight", "conditioner.bias"}


def test_actnorm_initialises_from_first_density_batch():
    layer = ActNorm(2)
    data = torch.randn(500, 2) * torch.tensor([3.0, 0.5]) + torch.tensor([1.0, -2.0])
    z = layer.inv(data)
    assert layer.initialized
    # median and scaled MAD: the batch comes out standardised up to the sampling error of those estimates
    torch.testing.assert_close(z.median(0).values, torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.std(0, unbiased=False), torch.ones(2), atol=0.15, rtol=0)
    shift = layer.shift.detach().clone()
    layer.inv(data * 10)  # no re-initialisation
    assert torch.equal(layer.shift, shift)
    fresh = ActNorm(2)
    fresh.load_state_dict(layer.state_dict())
    assert fresh.initialized
    fresh.inv(data * 10)
    assert torch.equal(fresh.shift, shift)


def test_actnorm_sampling_direction_first_counts_as_initialised():
    """A layer trained in the sampling direction (SVI) must never be re-initialised by a later log_prob."""
    layer = ActNorm(2)
    layer(torch.randn(4, 2))
    assert layer.initialized and torch.equal(layer.shift, torch.zeros(2))
    layer.inv(torch.randn(100, 2) * 5 + 3)
    assert torch.equal(layer.shift, torch.zeros(2)) and torch.equal(layer.log_scale, torch.zeros(2))


def test_actnorm_refuses_small_or_non_finite_first_batches_and_stays_uninitialised():
    layer = ActNorm(3)
    with pytest.raises(ValueError, match="ActNorm: data-dependent initialisation needs at least 16 points.*got 2"):
        layer.inv(torch.randn(2, 3))
    assert not layer.initialized
    bad = torch.randn(64, 3)
    bad[7, 1] = float("inf")
    with pytest.raises(ValueError, match=r"ActNorm: the first batch.*non-finite values in 1 of 64 rows"):
        layer.inv(bad)
    assert not layer.initialized and torch.equal(layer.shift, torch.zeros(3))
    with pytest.raises(ValueError, match="at least 16 points"):
        layer.initialize(torch.randn(1, 3))
    layer.inv(torch.randn(64, 3))
    assert layer.initialized and torch.isfinite(layer.shift).all()


def test_actnorm_init_ignores_one_huge_outlier():
    """One value of 1e30 in the first batch must not set the scale (it left every log_prob at -131.9)."""
    torch.manual_seed(0)
    flow = nf.build("glow", 2, num_layers=2)
    batch = torch.randn(256, 2)
    batch[0, 0] = 1e30
    model = nf.transformed(flow)
    model.log_prob(batch)
    lp = model.log_prob(torch.randn(1000, 2))
    assert lp.std() > 0.3 and lp.mean() > -4.0


def test_batchnorm_uses_batch_statistics_in_training():
    layer = BatchNorm(2, momentum=0.5)
    data = torch.randn(1000, 2) * 2.0 + 3.0
    z = layer.inv(data)
    torch.testing.assert_close(z.mean(0), torch.zeros(2), atol=1e-4, rtol=0)
    torch.testing.assert_close(z.std(0, unbiased=False), torch.ones(2), atol=1e-3, rtol=0)
    torch.testing.assert_close(layer.running_mean, 0.5 * data.mean(0))
    layer.eval()
    z_eval = layer.inv(data.clone())
    assert not torch.allclose(z_eval, z)
    with pytest.raises(ValueError, match="BatchNorm: training mode needs a batch of at least 2"):
        layer.train().inv(torch.randn(1, 2))
    with pytest.raises(ValueError, match="momentum"):
        BatchNorm(2, momentum=0.0)


def test_invertible_linear_weight_and_logdet():
    layer = InvertibleLinear(4).double()
    w = layer.weight()
    torch.testing.assert_close(w @ w.T, torch.eye(4, dtype=torch.float64))  # starts orthogonal
    with torch.no_grad():
        layer.lower.add_(0.3)
        layer.log_diag.add_(0.2)
    w = layer.weight()
    x = torch.randn(6, 4, dtype=torch.float64)
    torch.testing.assert_close(layer(x), x @ w.T)
    ladj = layer.log_abs_det_jacobian(x, layer(x))
    torch.testing.assert_close(ladj, torch.linalg.slogdet(w).logabsdet.expand(6))
    identity = InvertibleLinear(3, init="identity")
    torch.testing.assert_close(identity.weight(), torch.eye(3))
    with pytest.raises(ValueError, match="InvertibleLinear: init"):
        InvertibleLinear(3, init="random")


def test_permutation_checks_its_argument():
    layer = Permutation(3, [2, 0, 1])
    assert layer(torch.tensor([[10.0, 11.0, 12.0]])).tolist() == [[12.0, 10.0, 11.0]]
    with pytest.raises(ValueError, match="Permutation: expected a permutation of 0..2"):
        Permutation(3, [0, 0, 1])


def test_leaky_relu_formulas():
    layer = LeakyReLU(2, negative_slope=0.2)
    x = torch.tensor([[-1.0, 2.0], [-3.0, -4.0]])
    y = layer(x)
    torch.testing.assert_close(y, torch.tensor([[-0.2, 2.0], [-0.6, -0.8]]))
    torch.testing.assert_close(layer.log_abs_det_jacobian(x, y), torch.tensor([1.0, 2.0]) * math.log(0.2))
    torch.testing.assert_close(layer.inv(y.clone()), x)
    with pytest.raises(ValueError, match="LeakyReLU: negative_slope must be a positive"):
        LeakyReLU(2, negative_slope=0.0)
    with pytest.raises(ValueError, match="PReLU: init_slope"):
        PReLU(2, init_slope=-1.0)
    assert torch.allclose(PReLU(2, init_slope=0.25).slope, torch.tensor(0.25))


def test_constructor_errors_name_the_layer():
    with pytest.raises(ValueError, match="AffineConstant: at least one of scale and shift"):
        AffineConstant(2, scale=False, shift=False)
    with pytest.raises(ValueError, match="ActNorm: input_dim must be a positive int"):
        ActNorm(0)
    with pytest.raises(ValueError, match="BatchNorm: eps"):
        BatchNorm(2, eps=-1.0)


def test_with_cache_refuses_to_copy():
    layer = AffineConstant(2)
    assert layer.with_cache(1) is layer
    with pytest.raises(NotImplementedError, match="AffineConstant: build it with cache_size=0"):
        layer.with_cache(0)


def test_cache_size_zero_recomputes_every_time():
    layer = AffineConstant(2, cache_size=0)
    z = torch.randn(3, 2)
    x = layer(z)
    assert layer.inv(x) is not z
    torch.testing.assert_close(layer.inv(x), z)


def test_grad_mode_switch_invalidates_cache():
    """A pair computed under no_grad must not be reused when gradients are wanted."""
    flow = nf.build("realnvp", 2, num_layers=2)
    model = nf.transformed(flow)
    x = torch.randn(8, 2)
    with torch.no_grad():
        model.log_prob(x)
    loss = -model.log_prob(x).mean()
    loss.backward()
    assert any(p.grad is not None for p in flow.parameters())


def test_deepcopy_and_pickle_drop_the_cache():
    import copy
    import pickle

    flow = nf.build("glow", 2, num_layers=1)
    flow(torch.randn(32, 2))  # records a pair with its graph
    clone = copy.deepcopy(flow)
    restored = pickle.loads(pickle.dumps(flow))
    x = torch.randn(5, 2)
    torch.testing.assert_close(nf.transformed(clone).log_prob(x), nf.transformed(flow).log_prob(x))
    torch.testing.assert_close(nf.transformed(restored).log_prob(x), nf.transformed(flow).log_prob(x))


def test_replacing_a_parameter_or_submodule_invalidates_cache():
    """The stamp's list of tensors is kept between calls; assigning a new parameter (or a new
    conditioner) deep inside the layer must still make the cached pair stale."""
    from pyro_nf.transforms import AffineAutoregressive

    layer = AffineAutoregressive(3, hidden_dims=(8, 8), direction="iaf")
    z = torch.randn(4, 3)
    x = layer(z)
    assert layer.inv(x) is z  # read from the cache
    last = layer.conditioner.net[-1]
    last.bias = torch.nn.Parameter(torch.randn_like(last.bias))
    fresh = layer.inv(x)
    assert fresh is not z
    torch.testing.assert_close(layer(fresh), x)  # the sequential inverse under the new parameters
    x2 = layer(z)
    cached_ladj = layer.log_abs_det_jacobian(z, x2)
    layer.conditioner = type(layer.conditioner)(3, (8, 8), 2, param_major=True)
    with torch.no_grad():
        layer.conditioner.net[-1].bias.normal_()
    new_ladj = layer.log_abs_det_jacobian(z, x2)
    torch.testing.assert_close(new_ladj, layer._ladj(z, x2))
    assert not torch.allclose(new_ladj, cached_ladj)
