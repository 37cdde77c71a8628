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
    with pytest.raises(ValueError, match="unknown data set 'spam'; valid names: moons"):
        datasets.load("spam")


def test_gaussian_mixture():
    x = datasets.gaussian_mixture(4000, means=[[-2.0], [2.0]], stds=0.5, seed=0)
    assert x.shape == (4000, 1)
    assert abs((x > 0).float().mean().item() - 0.5) < 0.05
