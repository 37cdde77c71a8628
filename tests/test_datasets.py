import math

import pytest
import torch

from pyro_nf import datasets


def test_two_moons_is_deterministic_and_shaped():
    a = datasets.two_moons(300, seed=1)
    b = datasets.two_moons(300, seed=1)
    c = datasets.two_moons(300, seed=2)
    assert a.shape == (300, 2) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert datasets.two_moons(10, seed=0, dtype=torch.float64).dtype == torch.float64


def test_nmoons_geometry():
    x, y = datasets.nmoons(200, 2, noise=0.0, translation=(0.25, -0.25), seed=0)
    assert x.shape == (200, 2) and y.tolist() == [0] * 100 + [1] * 100
    # moon 0 is the upper arc centred at (-1, 0) shifted right by 0.5; moon 1 its point reflection
    torch.testing.assert_close((x[:100] - torch.tensor([-0.5, 0.0])).norm(dim=1), torch.ones(100))
    torch.testing.assert_close(x[100:], -x[:100])
    x3, _ = datasets.nmoons(30, 3, noise=0.0, d=3, seed=0)
    assert x3.shape == (30, 3) and torch.equal(x3[:, 2], torch.zeros(30))
    rotated, _ = datasets.nmoons(20, 2, noise=0.0, rotations={(0, 1): math.pi / 2}, seed=0)
    plain, _ = datasets.nmoons(20, 2, noise=0.0, seed=0)
    torch.testing.assert_close(rotated, torch.stack([-plain[:, 1], plain[:, 0]], 1), atol=1e-6, rtol=0)


def test_split_and_errors():
    data = torch.arange(100.0).unsqueeze(1)
    train, val, test = datasets.split(data, (0.8, 0.1, 0.1), seed=0)
    assert (len(train), len(val), len(test)) == (80, 10, 10)
    assert sorted(torch.cat([train, val, test]).flatten().tolist()) == list(range(100))
    with pytest.raises(ValueError, match="sum to 1"):
        datasets.split(data, (0.5, 0.1))
    with pytest.raises(ValueError, match="unknown data set 'spam'; valid names: 8gaussians, checkerboard, "
                       "mixture1d, mixture2d, moons, pinwheel, spirals"):
        datasets.load("spam")


def test_gaussian_mixture():
    x = datasets.gaussian_mixture(4000, means=[[-2.0], [2.0]], stds=0.5, seed=0)
    assert x.shape == (4000, 1)
    assert abs((x > 0).float().mean().item() - 0.5) < 0.05


NAMES = ["moons", "8gaussians", "checkerboard", "spirals", "pinwheel", "mixture1d", "mixture2d"]


def test_registry_names():
    assert sorted(datasets.DATASETS) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_every_data_set_loads_deterministically(name):
    state = torch.get_rng_state()
    a = datasets.load(name, 200, seed=3)
    b = datasets.load(name, 200, seed=3)
    c = datasets.load(name, 200, seed=4)
    assert torch.equal(torch.get_rng_state(), state)  # a local generator; the global RNG is untouched
    d = 1 if name == "mixture1d" else 2
    assert a.shape == (200, d) and a.dtype == torch.float32 and torch.isfinite(a).all()
    assert torch.equal(a, b) and not torch.equal(a, c)
    x64 = datasets.load(name, 200, seed=3, dtype=torch.float64)
    assert x64.dtype == torch.float64
    torch.testing.assert_close(x64.float(), a)  # generated in float64, then cast
    if name != "moons":  # nmoons needs at least one point per moon
        assert datasets.load(name, 0, seed=0).shape == (0, d)


def test_bad_sizes_are_rejected():
    for fn in (datasets.eight_gaussians, datasets.checkerboard, datasets.two_spirals, datasets.pinwheel,
               datasets.gaussian_mixture_1d, datasets.gaussian_mixture_2d):
        with pytest.raises(ValueError, match="n must be a non-negative int"):
            fn(-1, seed=0)
    with pytest.raises(ValueError, match="stds must be one positive number"):
        datasets.gaussian_mixture(10, means=[[0.0], [1.0]], stds=[1.0, 0.0], seed=0)


def _nearest(x, means):
    return torch.cdist(x, means).argmin(1)


def test_eight_gaussians():
    x = datasets.eight_gaussians(8000, seed=0, dtype=torch.float64)
    means = datasets.circle_means(8, 2.0)
    assert means.shape == (8, 2) and torch.allclose(means.norm(dim=1), torch.full((8,), 2.0, dtype=torch.float64))
    k = _nearest(x, means)
    assert (torch.bincount(k, minlength=8) / 8000.0 - 1 / 8).abs().max() < 0.02
    assert abs(float((x - means[k]).std()) - 0.25) < 0.01
    assert datasets.eight_gaussians(10, seed=0, radius=5.0, std=0.1).norm(dim=1).min() > 4.0


def test_checkerboard():
    x = datasets.checkerboard(8000, seed=0, dtype=torch.float64)
    assert x.abs().max() <= 2.0
    i, j = torch.floor(x[:, 0] + 2.0).long(), torch.floor(x[:, 1] + 2.0).long()
    assert ((i + j) % 2 == 0).all()  # only the dark cells, the bottom-left one among them
    counts = torch.bincount(4 * i + j, minlength=16)
    dark = counts[counts > 0]
    assert len(dark) == 8 and (dark / 8000.0 - 1 / 8).abs().max() < 0.02
    y = datasets.load("checkerboard", 1000, seed=0, squares=2, size=2.0)
    assert ((y[:, 0] > 0) == (y[:, 1] > 0)).all()


def test_two_spirals_geometry():
    x = datasets.two_spirals(1001, seed=0, noise=0.0, dtype=torch.float64, turns=1.5, radius=3.0)
    r = x.norm(dim=1)
    assert r.max() <= 3.0 + 1e-12
    # on arm 0 the polar angle is t = 3 pi r / 3 (mod 2 pi); arm 1 is its point reflection (angle + pi)
    phase = torch.remainder(torch.atan2(x[:, 1], x[:, 0]) - 3.0 * math.pi * r / 3.0, 2 * math.pi)
    arm0 = (phase < 1e-6) | (phase > 2 * math.pi - 1e-6)
    arm1 = (phase - math.pi).abs() < 1e-6
    assert (arm0 | arm1).all() and int(arm0.sum()) == 501 and int(arm1.sum()) == 500
    noisy = datasets.two_spirals(2000, seed=0, dtype=torch.float64)
    assert abs(float(noisy.mean(0).norm())) < 0.2 and noisy.norm(dim=1).max() < 3.0 + 6 * 0.1


def test_pinwheel_geometry():
    x = datasets.pinwheel(1000, seed=0, dtype=torch.float64, arms=5, radial_std=0.1, tangential_std=0.0,
                          rate=0.25, scale=2.0)
    r = x.norm(dim=1) / 2.0
    # a point of arm k sits at angle 2 pi k / 5 + 0.25 exp(r), at radius 2 r
    phase = torch.remainder(torch.atan2(x[:, 1], x[:, 0]) - 0.25 * torch.exp(r), 2 * math.pi) * 5 / (2 * math.pi)
    arm = torch.round(phase).long() % 5
    assert (phase - torch.round(phase)).abs().max() < 1e-6
    assert torch.bincount(arm, minlength=5).tolist() == [200] * 5
    default = datasets.pinwheel(5000, seed=0, dtype=torch.float64)
    assert abs(float(default.norm(dim=1).median()) - 2.0) < 0.1


def test_gaussian_mixtures_1d_and_2d():
    x = datasets.gaussian_mixture_1d(8000, seed=0, dtype=torch.float64)
    assert x.shape == (8000, 1)
    assert abs(float((x > 0).double().mean()) - 0.5) < 0.02
    assert abs(float((x.abs() - 2.0).std()) - 0.5) < 0.02
    skewed = datasets.gaussian_mixture_1d(8000, seed=0, means=(0.0, 10.0), stds=(1.0, 0.1), weights=(3.0, 1.0))
    assert abs(float((skewed > 5).float().mean()) - 0.25) < 0.02
    y = datasets.gaussian_mixture_2d(8000, seed=0, dtype=torch.float64)
    means = torch.tensor(datasets.MIXTURE_2D["means"], dtype=torch.float64)
    fractions = torch.bincount(_nearest(y, means), minlength=3) / 8000.0
    assert (fractions - torch.tensor(datasets.MIXTURE_2D["weights"], dtype=torch.float64)).abs().max() < 0.03
    with pytest.raises(ValueError, match=r"means must be \(k, 2\)"):
        datasets.gaussian_mixture_2d(10, seed=0, means=[[0.0], [1.0]])
