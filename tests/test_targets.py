import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO

from pyro_nf import datasets, targets

NAMES = list(targets.TARGETS)
EXACT = {"U2", "U3", "U4", "8gaussians", "mixture"}
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")


@pytest.fixture(scope="module")
def made():
    """One instance per registered name, shared so that cached grids are computed once."""
    return {name: targets.load(name) for name in NAMES}


def _grid(target, n=200):
    """Midpoints of an n x n grid on the target's quadrature box (float64), and the cell area."""
    (x0, x1), (y0, y1) = target.quadrature_bounds
    hx, hy = (x1 - x0) / n, (y1 - y0) / n
    xs = x0 + hx * (torch.arange(n, dtype=torch.float64) + 0.5)
    ys = y0 + hy * (torch.arange(n, dtype=torch.float64) + 0.5)
    return torch.stack(torch.meshgrid(xs, ys, indexing="ij"), -1).reshape(-1, 2), hx * hy


def test_registry_and_load():
    assert set(NAMES) == {"U1", "U2", "U3", "U4", "double_well", "8gaussians", "mixture"}
    for name in NAMES:
        target = targets.load(name)
        assert isinstance(target, targets.EnergyTarget) and isinstance(target, dist.TorchDistribution)
        assert target.batch_shape == () and target.event_shape == (2,)
        assert target.support is dist.constraints.real_vector and not target.has_rsample
        (x0, x1), (y0, y1) = target.bounds
        assert x0 < x1 and y0 < y1
        assert repr(target).startswith(type(target).__name__ + "(")
    with pytest.raises(ValueError, match="unknown target 'spam'; valid names: U1, U2, U3, U4, double_well"):
        targets.load("spam")
    assert targets.load("U1", variant="seed003").variant == "seed003"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", NAMES)
def test_shapes_dtypes_and_energy(made, name, dtype):
    target = made[name]
    gen = torch.Generator().manual_seed(0)
    for shape in [(2,), (5, 2), (3, 4, 2)]:
        z = (2.0 * torch.randn(shape, generator=gen, dtype=torch.float64)).to(dtype)
        log_p = target.log_prob(z)
        assert log_p.shape == shape[:-1] and log_p.dtype == dtype
        assert torch.isfinite(log_p).all()
        assert torch.equal(target.energy(z), -log_p)


@pytest.mark.parametrize("name", NAMES)
def test_float32_agrees_with_float64(made, name):
    target = made[name]
    (x0, x1), (y0, y1) = target.bounds
    z = torch.rand(500, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    z = z * torch.tensor([x1 - x0, y1 - y0], dtype=torch.float64) + torch.tensor([x0, y0], dtype=torch.float64)
    torch.testing.assert_close(target.log_prob(z.float()).double(), target.log_prob(z), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_bad_input_raises_naming_target_and_shape(made, name):
    target = made[name]
    cls = type(target).__name__
    with pytest.raises(ValueError, match=rf"{cls}: expected points of shape \(\.\.\., 2\), got shape \(5, 3\)"):
        target.log_prob(torch.zeros(5, 3))
    with pytest.raises(ValueError, match=rf"{cls}: .*got shape \(\)"):
        target.energy(torch.tensor(0.0))
    with pytest.raises(ValueError, match=rf"{cls}: expected a floating-point tensor"):
        target.log_prob(torch.zeros(5, 2, dtype=torch.long))


@pytest.mark.parametrize("name", NAMES)
def test_log_normalizer_default_grid_is_converged(made, name):
    target = made[name]
    log_z = target.log_normalizer()
    assert math.isfinite(log_z)
    assert target.log_normalizer() == log_z and target._log_z == log_z  # cached on the instance
    nx, ny = target.quadrature_resolution
    finer = target.log_normalizer(resolution=(2 * nx, 2 * ny))
    assert abs(log_z - finer) < 1e-6
    exact = target.exact_log_normalizer()
    assert (exact is not None) == (name in EXACT)
    if exact is not None:
        assert abs(log_z - exact) < 1e-6
    # a coarser grid or a box that cuts off mass gives a different answer: the defaults are not idle
    (x0, x1), (y0, y1) = target.quadrature_bounds
    quarter = ((x0 / 4, x1 / 4), (y0 / 4, y1 / 4))
    assert target.log_normalizer(bounds=quarter, resolution=(nx, ny)) < log_z - 1e-3
    assert abs(target.log_normalizer(resolution=(nx // 16, ny // 16)) - log_z) > 1e-9


def test_exact_log_normalizers():
    assert targets.U2().exact_log_normalizer() == pytest.approx(math.log(2 * math.pi * 4 * 0.4))
    assert targets.U3(envelope=2.0).exact_log_normalizer() == pytest.approx(math.log(2 * math.pi * 2 * 0.7))
    assert targets.U4().exact_log_normalizer() == pytest.approx(math.log(2 * math.pi * 4 * 0.75))
    assert targets.U3(envelope=2.0).log_normalizer() == pytest.approx(math.log(2 * math.pi * 2 * 0.7), abs=1e-6)
    mixture = targets.GaussianMixture([[0.0, 0.0], [3.0, 1.0], [-1.0, 2.0]], [0.3, 1.0, 0.5], [2.0, 3.0, 5.0])
    assert mixture.exact_log_normalizer() == pytest.approx(math.log(10.0))
    assert mixture.log_normalizer() == pytest.approx(math.log(10.0), abs=1e-6)
    assert targets.EightGaussians().exact_log_normalizer() == pytest.approx(0.0)


@pytest.mark.parametrize("name", NAMES)
def test_samples_match_the_density(made, name):
    """Sample moments against moments of the normalised density on a grid (within 5 standard errors)."""
    target = made[name]
    pyro.set_rng_seed(0)
    x = target.sample((20000,))
    assert x.shape == (20000, 2) and x.dtype == torch.get_default_dtype()
    x = x.double()
    points, _ = _grid(target, 300)
    p = torch.softmax(target.log_prob(points), 0)

    def features(z):
        return torch.stack([z[:, 0], z[:, 1], z[:, 0] ** 2, z[:, 1] ** 2, z[:, 0] * z[:, 1], z.norm(dim=1)], -1)

    expected = (p[:, None] * features(points)).sum(0)
    f = features(x)
    se = f.std(0) / math.sqrt(len(x))
    assert ((f.mean(0) - expected).abs() < 5 * se + 1e-3).all(), (f.mean(0), expected, se)


@pytest.mark.parametrize("name", NAMES)
def test_sample_shapes_dtype_and_seed(made, name):
    target = made[name]
    assert target.sample().shape == (2,)
    assert target.sample((3,)).shape == (3, 2)
    assert target.sample((2, 3)).shape == (2, 3, 2)
    assert target.sample((0,)).shape == (0, 2)
    pyro.set_rng_seed(3)
    a = target.sample((5,))
    pyro.set_rng_seed(3)
    assert torch.equal(a, target.sample((5,)))
    assert targets.load(name, dtype=torch.float64).sample((4,)).dtype == torch.float64


def test_paper_formulas_at_a_point():
    z1, z2 = 1.3, -0.7
    z = torch.tensor([z1, z2], dtype=torch.float64)
    w1 = math.sin(2 * math.pi * z1 / 4)
    w2 = 3 * math.exp(-0.5 * ((z1 - 1) / 0.6) ** 2)
    w3 = 3 / (1 + math.exp(-(z1 - 1) / 0.3))
    r = math.hypot(z1, z2)
    u1 = 0.5 * ((r - 2) / 0.4) ** 2 - math.log(math.exp(-0.5 * ((z1 - 2) / 0.6) ** 2)
                                               + math.exp(-0.5 * ((z1 + 2) / 0.6) ** 2))
    u1_seed = 0.5 * ((r - 4) / 0.4) ** 2 - math.log(math.exp(-0.5 * ((z1 - 2) / 0.8) ** 2)
                                                    + math.exp(-0.5 * ((z1 + 2) / 0.8) ** 2))
    u2 = 0.5 * ((z2 - w1) / 0.4) ** 2
    u3 = -math.log(math.exp(-0.5 * ((z2 - w1) / 0.35) ** 2) + math.exp(-0.5 * ((z2 - w1 + w2) / 0.35) ** 2))
    u4 = -math.log(math.exp(-0.5 * ((z2 - w1) / 0.4) ** 2) + math.exp(-0.5 * ((z2 - w1 + w3) / 0.35) ** 2))
    envelope = 0.5 * (z1 / 4) ** 2
    assert float(targets.U1().energy(z)) == pytest.approx(u1, rel=1e-12)
    assert float(targets.U1(variant="seed003").energy(z)) == pytest.approx(u1_seed, rel=1e-12)
    for cls, u in [(targets.U2, u2), (targets.U3, u3), (targets.U4, u4)]:
        assert float(cls(envelope=None).energy(z)) == pytest.approx(u, rel=1e-12)
        assert float(cls().energy(z)) == pytest.approx(u + envelope, rel=1e-12)
    u_dw = -0.5 * z1 - 6 * z1**2 + z1**4 + 0.5 * z2**2
    assert float(targets.DoubleWell().energy(z)) == pytest.approx(u_dw, rel=1e-12)


def test_u1_variants():
    paper, seed = targets.U1(), targets.U1(variant="seed003")
    assert paper.bounds == ((-4.0, 4.0), (-4.0, 4.0)) and seed.bounds[0][1] > paper.bounds[0][1]
    assert paper.log_normalizer() != pytest.approx(seed.log_normalizer(), abs=0.1)
    with pytest.raises(ValueError, match="U1: unknown variant 'wide'; valid variants: paper, seed003"):
        targets.U1(variant="wide")


def test_waves_without_envelope_are_improper():
    target = targets.U2(envelope=None)
    assert torch.isfinite(target.log_prob(torch.tensor([[100.0, 0.0]]))).all()
    assert target.exact_log_normalizer() is None
    with pytest.raises(ValueError, match="no log normaliser: .*not integrable"):
        target.log_normalizer()
    with pytest.raises(ValueError, match="no samples"):
        target.sample((3,))
    with pytest.raises(ValueError, match="U3: envelope must be positive or None"):
        targets.U3(envelope=0.0)


def test_double_well():
    target = targets.DoubleWell()
    x = torch.linspace(-5.0, 5.0, 200001, dtype=torch.float64)
    u = -0.5 * x - 6 * x**2 + x**4
    log_z = float(torch.logsumexp(-u, 0)) + math.log(float(x[1] - x[0])) + 0.5 * math.log(2 * math.pi)
    assert target.log_normalizer() == pytest.approx(log_z, abs=1e-6)
    # two wells, the right one holding most of the mass
    pyro.set_rng_seed(1)
    s = target.sample((20000,)).double()
    right = float(torch.softmax(-u, 0)[x > -0.04].sum())
    assert abs(float((s[:, 0] > -0.04).double().mean()) - right) < 0.015
    assert ((s[:, 0].abs() - 1.73).abs() < 0.6).double().mean() > 0.95
    shallow = targets.DoubleWell(a=0.0, b=-1.0, c=0.25, d=4.0)
    assert shallow.log_normalizer() == pytest.approx(shallow.log_normalizer(resolution=1000), abs=1e-6)
    with pytest.raises(ValueError, match="DoubleWell: needs c > 0 and d > 0"):
        targets.DoubleWell(c=0.0)


def test_mixture_is_pyros_mixture():
    means = torch.tensor([[0.0, 0.0], [3.0, 1.0], [-1.0, 2.0]], dtype=torch.float64)
    stds = torch.tensor([0.3, 1.0, 0.5], dtype=torch.float64)
    weights = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    target = targets.GaussianMixture(means, stds, weights)
    reference = dist.MixtureSameFamily(dist.Categorical(weights),
                                       dist.Normal(means, stds[:, None].expand(3, 2)).to_event(1))
    z = torch.randn(50, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 2
    torch.testing.assert_close(target.log_prob(z), reference.log_prob(z))
    assert target.sample((4,)).dtype == torch.float64  # follows the means tensor
    with pytest.raises(ValueError, match=r"GaussianMixture: means must have shape \(K, 2\), got \(3,\)"):
        targets.GaussianMixture([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="stds must be one positive number or 2"):
        targets.GaussianMixture([[0.0, 0.0], [1.0, 1.0]], [1.0, -1.0])
    with pytest.raises(ValueError, match="weights must be 2 non-negative numbers"):
        targets.GaussianMixture([[0.0, 0.0], [1.0, 1.0]], 1.0, [0.0, 0.0])


@pytest.mark.parametrize("name, data", [("8gaussians", "8gaussians"), ("mixture", "mixture2d")])
def test_mixture_targets_match_their_data_sets(name, data):
    target = targets.load(name)
    pyro.set_rng_seed(0)
    a = target.log_prob(target.sample((4000,)).double())
    b = target.log_prob(datasets.load(data, 4000, seed=0, dtype=torch.float64))
    se = math.sqrt((a.var() + b.var()) / 4000)
    assert abs(float(a.mean() - b.mean())) < 5 * se
    if name == "8gaussians":
        torch.testing.assert_close(target.means, datasets.circle_means(8, 2.0))


@pytest.mark.parametrize("name", NAMES)
def test_gradients_are_finite(made, name):
    z = torch.cat([torch.zeros(1, 2), torch.randn(9, 2, generator=torch.Generator().manual_seed(0))])
    z.requires_grad_(True)
    made[name].log_prob(z).sum().backward()
    assert torch.isfinite(z.grad).all()


def test_pyro_model_elbo_bound_and_importance_sampling():
    target = targets.U1()
    with pyro.poutine.trace() as tracer:
        with pyro.plate("n", 5):
            pyro.sample("z", target)
    site = tracer.trace.nodes["z"]
    assert site["value"].shape == (5, 2) and site["fn"].log_prob(site["value"]).shape == (5,)

    def model():
        with pyro.plate("n", 1):
            pyro.sample("z", target)

    def guide():
        with pyro.plate("n", 1):
            pyro.sample("z", dist.Normal(torch.zeros(2), 2.0 * torch.ones(2)).to_event(1))

    pyro.set_rng_seed(0)
    elbo = -Trace_ELBO(num_particles=1000, vectorize_particles=True).loss(model, guide)
    assert elbo < target.log_normalizer()
    # importance sampling with the same proposal recovers log Z
    proposal = dist.Normal(torch.zeros(2, dtype=torch.float64), 2.0).to_event(1)
    x = proposal.sample((20000,))
    log_w = target.log_prob(x) - proposal.log_prob(x)
    assert float(log_w.logsumexp(0)) - math.log(len(x)) == pytest.approx(target.log_normalizer(), abs=0.05)


def test_validation_rejects_nan():
    target = targets.U2(validate_args=True)
    with pytest.raises(ValueError):
        target.log_prob(torch.tensor([[float("nan"), 0.0]]))


@CUDA
@pytest.mark.parametrize("name", NAMES)
def test_cuda(made, name):
    target = made[name]
    for dtype in (torch.float32, torch.float64):
        z = torch.randn(100, 2, dtype=dtype, generator=torch.Generator().manual_seed(0))
        out = target.log_prob(z.cuda())
        assert out.device.type == "cuda" and out.dtype == dtype
        torch.testing.assert_close(out.cpu(), target.log_prob(z))
    x = targets.load(name, device="cuda").sample((7,))
    assert x.device.type == "cuda" and x.shape == (7, 2)
