"""Toy data sets, deterministic given a seed, on the device and dtype you ask for."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def _generator(seed: int | None) -> torch.Generator:
    gen = torch.Generator()
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(int(seed))
    return gen


def _rotation(theta: float) -> torch.Tensor:
    c, s = math.cos(theta), math.sin(theta)
    return torch.tensor([[c, -s], [s, c]], dtype=torch.float64)


def nmoons(
    n: int = 100,
    c: int = 2,
    *,
    noise: float = 0.1,
    d: int = 2,
    translation: Sequence[float] | None = None,
    rotations: dict | None = None,
    shuffle: bool = False,
    seed: int | None = None,
    device=None,
    dtype=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""``c`` interleaved half circles in ``d`` dimensions (seed 000's ``nmoons``).

    Moon ``i`` (``0 <= i < c``) is the arc ``(cos t - 1, sin t)``, ``t`` in ``[0, pi]``,
    rotated by ``-2 pi i / c``, padded with zeros to ``d`` coordinates, and moved by
    ``-end * translation`` (``end`` its last point, the product elementwise). Gaussian noise
    of standard deviation ``noise / d`` is added, then each ``(i, j) -> angle`` entry of
    ``rotations`` rotates coordinates ``i, j``. Returns points ``(n, d)`` and labels ``(n,)``.
    """
    if n < c or c < 1:
        raise ValueError(f"nmoons: need n >= c >= 1, got n={n}, c={c}")
    if d < 2:
        raise ValueError(f"nmoons: d must be >= 2, got {d}")
    gen = _generator(seed)
    translation = torch.zeros(d, dtype=torch.float64) if translation is None else torch.as_tensor(
        translation, dtype=torch.float64)
    if translation.shape != (d,):
        raise ValueError(f"nmoons: translation must have {d} entries, got {tuple(translation.shape)}")
    sizes = [n // c] * c
    sizes[-1] += n - sum(sizes)
    points, labels = [], []
    for i, size in enumerate(sizes):
        t = torch.linspace(0.0, math.pi, size, dtype=torch.float64)
        arc = torch.stack([torch.cos(t) - 1.0, torch.sin(t)])
        arc = _rotation(-i * 2.0 * math.pi / c) @ arc
        arc = torch.cat([arc, torch.zeros(d - 2, size, dtype=torch.float64)])
        direction = -arc[:, -1]
        points.append((arc + (direction * translation)[:, None]).T)
        labels.append(torch.full((size,), i, dtype=torch.long))
    x, y = torch.cat(points), torch.cat(labels)
    if shuffle:
        order = torch.randperm(n, generator=gen)
        x, y = x[order], y[order]
    if noise > 0:
        x = x + torch.randn(x.shape, generator=gen, dtype=torch.float64) * (noise / d)
    for (i, j), theta in (rotations or {}).items():
        x[:, [i, j]] = x[:, [i, j]] @ _rotation(theta).T
    dtype = dtype or torch.get_default_dtype()
    return x.to(device=device, dtype=dtype), y.to(device=device)


def two_moons(n: int = 1000, noise: float = 0.05, seed: int | None = None, device=None, dtype=None) -> torch.Tensor:
    """Seed 000's ``sample_moons``: two moons with ``translation=(0.25, -0.25)``, shuffled, ``(n, 2)``."""
    x, _ = nmoons(n, 2, noise=noise, d=2, translation=(0.25, -0.25), shuffle=True, seed=seed,
                  device=device, dtype=dtype)
    return x


def gaussian_mixture(
    n: int = 1000,
    means: Sequence = ((-2.0,), (2.0,)),
    stds: Sequence[float] | float = 0.5,
    weights: Sequence[float] | None = None,
    seed: int | None = None,
    device=None,
    dtype=None,
) -> torch.Tensor:
    """Samples ``(n, d)`` of an isotropic Gaussian mixture with the given means (``(k, d)``)."""
    gen = _generator(seed)
    means = torch.as_tensor(means, dtype=torch.float64)
    if means.dim() != 2:
        raise ValueError(f"gaussian_mixture: means must be (k, d), got shape {tuple(means.shape)}")
    k = means.shape[0]
    stds = torch.as_tensor(stds, dtype=torch.float64).expand(k)
    weights = torch.full((k,), 1.0 / k, dtype=torch.float64) if weights is None else torch.as_tensor(
        weights, dtype=torch.float64)
    component = torch.multinomial(weights, n, replacement=True, generator=gen)
    x = means[component] + stds[component, None] * torch.randn(n, means.shape[1], generator=gen, dtype=torch.float64)
    return x.to(device=device, dtype=dtype or torch.get_default_dtype())


DATASETS = {"moons": two_moons}


def load(name: str, n: int = 1000, seed: int | None = None, device=None, dtype=None) -> torch.Tensor:
    """A named toy data set (see ``DATASETS``) as an ``(n, d)`` tensor."""
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; valid names: {', '.join(sorted(DATASETS))}")
    return DATASETS[name](n, seed=seed, device=device, dtype=dtype)


def split(data: torch.Tensor, fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int | None = 0):
    """Shuffle the rows and cut them into parts of the given fractions (train, validation, test)."""
    if any(f < 0 for f in fractions) or not math.isclose(sum(fractions), 1.0, abs_tol=1e-9):
        raise ValueError(f"split: fractions must be non-negative and sum to 1, got {tuple(fractions)}")
    n = data.shape[0]
    order = torch.randperm(n, generator=_generator(seed)).to(data.device)
    bounds = [round(sum(fractions[:i]) * n) for i in range(len(fractions) + 1)]
    return tuple(data[order[a:b]] for a, b in zip(bounds[:-1], bounds[1:]))
