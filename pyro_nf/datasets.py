"""Toy data sets, deterministic given a seed, on the device and dtype you ask for.

Every generator takes ``(n, seed=None, device=None, dtype=None, ...)`` and returns an ``(n, d)`` tensor.
It draws from its own ``torch.Generator`` (seeded with ``seed``, or from the OS when ``seed`` is None;
the global RNG is never touched), computes in float64 and casts at the end (``dtype`` defaults to
``torch.get_default_dtype()``). ``DATASETS`` maps names to generators and ``load(name, n, seed,
device, dtype)`` calls one: "moons", "8gaussians", "checkerboard", "spirals", "pinwheel",
"mixture1d" (the one 1D set) and "mixture2d".
"""

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
    _check_n("gaussian_mixture", n)
    gen = _generator(seed)
    means = torch.as_tensor(means, dtype=torch.float64)
    if means.dim() != 2 or means.shape[0] < 1:
        raise ValueError(f"gaussian_mixture: means must be (k, d), got shape {tuple(means.shape)}")
    k = means.shape[0]
    stds = torch.as_tensor(stds, dtype=torch.float64)
    if stds.dim() > 1 or stds.numel() not in (1, k) or not bool((stds > 0).all()):
        raise ValueError(f"gaussian_mixture: stds must be one positive number or {k} of them, got {stds.tolist()}")
    stds = stds.expand(k)
    weights = torch.full((k,), 1.0 / k, dtype=torch.float64) if weights is None else torch.as_tensor(
        weights, dtype=torch.float64)
    if weights.shape != (k,) or not bool((weights >= 0).all()) or not weights.sum() > 0:
        raise ValueError(f"gaussian_mixture: weights must be {k} non-negative numbers, not all zero, "
                         f"got {weights.tolist()}")
    if n == 0:
        return means.new_zeros(0, means.shape[1]).to(device=device, dtype=dtype or torch.get_default_dtype())
    component = torch.multinomial(weights, n, replacement=True, generator=gen)
    x = means[component] + stds[component, None] * torch.randn(n, means.shape[1], generator=gen, dtype=torch.float64)
    return x.to(device=device, dtype=dtype or torch.get_default_dtype())


def _check_n(name: str, n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"{name}: n must be a non-negative int, got {n!r}")
    return n


def _finish(x: torch.Tensor, device, dtype) -> torch.Tensor:
    return x.to(device=device, dtype=dtype or torch.get_default_dtype())


def circle_means(k: int = 8, radius: float = 2.0) -> torch.Tensor:
    """``k`` points evenly spaced on a circle, the first at ``(radius, 0)``: a float64 ``(k, 2)`` tensor."""
    angles = torch.arange(k, dtype=torch.float64) * (2.0 * math.pi / k)
    return radius * torch.stack([torch.cos(angles), torch.sin(angles)], -1)


#: Parameters shared by :func:`gaussian_mixture_2d` and the ``"mixture"`` target of :mod:`pyro_nf.targets`.
MIXTURE_2D = {
    "means": ((-2.0, 0.0), (1.0, 1.5), (1.0, -1.5)),
    "stds": (0.5, 0.4, 0.3),
    "weights": (0.5, 0.25, 0.25),
}

#: Parameters shared by :func:`eight_gaussians` and the ``"8gaussians"`` target of :mod:`pyro_nf.targets`.
EIGHT_GAUSSIANS = {"radius": 2.0, "std": 0.25}


def eight_gaussians(
    n: int = 1000,
    seed: int | None = None,
    device=None,
    dtype=None,
    *,
    radius: float = EIGHT_GAUSSIANS["radius"],
    std: float = EIGHT_GAUSSIANS["std"],
) -> torch.Tensor:
    """Eight equally weighted isotropic Gaussians (standard deviation ``std``) centred on a circle of
    radius ``radius``, the first centre at ``(radius, 0)``: ``(n, 2)``. The same density is the
    ``"8gaussians"`` target of :mod:`pyro_nf.targets`, which evaluates it exactly."""
    _check_n("eight_gaussians", n)
    return gaussian_mixture(n, means=circle_means(8, radius), stds=std, seed=seed, device=device, dtype=dtype)


def checkerboard(
    n: int = 1000,
    seed: int | None = None,
    device=None,
    dtype=None,
    *,
    squares: int = 4,
    size: float = 4.0,
) -> torch.Tensor:
    """Uniform density on the dark cells of a ``squares`` x ``squares`` checkerboard covering
    ``[-size/2, size/2]^2``: ``(n, 2)``. Cell ``(i, j)`` (column ``i`` from the left, row ``j`` from the
    bottom) is dark when ``i + j`` is even, so the bottom-left cell is dark; each dark cell holds the same
    mass and the light cells none."""
    _check_n("checkerboard", n)
    if squares < 1:
        raise ValueError(f"checkerboard: squares must be >= 1, got {squares}")
    gen = _generator(seed)
    cells = torch.tensor([(i, j) for i in range(squares) for j in range(squares) if (i + j) % 2 == 0],
                         dtype=torch.float64)
    pick = torch.randint(len(cells), (n,), generator=gen)
    width = size / squares
    x = (cells[pick] + torch.rand(n, 2, generator=gen, dtype=torch.float64)) * width - size / 2
    return _finish(x, device, dtype)


def two_spirals(
    n: int = 1000,
    seed: int | None = None,
    device=None,
    dtype=None,
    *,
    turns: float = 1.5,
    radius: float = 3.0,
    noise: float = 0.1,
) -> torch.Tensor:
    """Two interleaved Archimedean spirals, point reflections of each other: ``(n, 2)``.

    Arm 0 is ``r(t) (cos t, sin t)`` with ``r(t) = radius * t / T``, ``T = 2 pi turns`` and
    ``t = T sqrt(u)``, ``u ~ U(0, 1)`` (so points are spread about evenly along the arc); arm 1 is its
    negation. Each arm gets half the points (the first one more when ``n`` is odd), in random order;
    isotropic Gaussian noise of standard deviation ``noise`` is added.
    """
    _check_n("two_spirals", n)
    gen = _generator(seed)
    total = 2.0 * math.pi * turns
    t = total * torch.rand(n, generator=gen, dtype=torch.float64).sqrt()
    r = radius * t / total
    x = torch.stack([r * torch.cos(t), r * torch.sin(t)], -1)
    sign = torch.ones(n, dtype=torch.float64)
    sign[(n + 1) // 2:] = -1.0
    x = x * sign[torch.randperm(n, generator=gen)].unsqueeze(-1)
    if noise > 0:
        x = x + noise * torch.randn(n, 2, generator=gen, dtype=torch.float64)
    return _finish(x, device, dtype)


def pinwheel(
    n: int = 1000,
    seed: int | None = None,
    device=None,
    dtype=None,
    *,
    arms: int = 5,
    radial_std: float = 0.3,
    tangential_std: float = 0.1,
    rate: float = 0.25,
    scale: float = 2.0,
) -> torch.Tensor:
    """The pinwheel of Johnson et al. (2016, "Composing graphical models with neural networks"): ``(n, 2)``.

    A point of arm ``k`` starts as ``f = (1 + radial_std * e1, tangential_std * e2)`` (``e`` standard
    normal) and is rotated by the angle ``2 pi k / arms + rate * exp(f1)``, so arms bend more the further
    out they reach; the result is multiplied by ``scale``. The arms get equal numbers of points (up to
    one), in random order.
    """
    _check_n("pinwheel", n)
    if arms < 1:
        raise ValueError(f"pinwheel: arms must be >= 1, got {arms}")
    gen = _generator(seed)
    arm = (torch.arange(n) % arms)[torch.randperm(n, generator=gen)]
    f = torch.randn(n, 2, generator=gen, dtype=torch.float64) * torch.tensor([radial_std, tangential_std],
                                                                            dtype=torch.float64)
    f[:, 0] += 1.0
    angle = arm.to(torch.float64) * (2.0 * math.pi / arms) + rate * torch.exp(f[:, 0])
    c, s = torch.cos(angle), torch.sin(angle)
    x = scale * torch.stack([c * f[:, 0] - s * f[:, 1], s * f[:, 0] + c * f[:, 1]], -1)
    return _finish(x, device, dtype)


def gaussian_mixture_1d(
    n: int = 1000,
    seed: int | None = None,
    device=None,
    dtype=None,
    *,
    means: Sequence[float] = (-2.0, 2.0),
    stds: Sequence[float] | float = 0.5,
    weights: Sequence[float] | None = None,
) -> torch.Tensor:
    """A 1D Gaussian mixture, ``(n, 1)``: scalar ``means``, ``stds`` (one or one per component) and
    ``weights`` (need not sum to one; equal when omitted)."""
    _check_n("gaussian_mixture_1d", n)
    means = torch.as_tensor(means, dtype=torch.float64).reshape(-1, 1)
    return gaussian_mixture(n, means=means, stds=stds, weights=weights, seed=seed, device=device, dtype=dtype)


def gaussian_mixture_2d(
    n: int = 1000,
    seed: int | None = None,
    device=None,
    dtype=None,
    *,
    means: Sequence = MIXTURE_2D["means"],
    stds: Sequence[float] | float = MIXTURE_2D["stds"],
    weights: Sequence[float] | None = MIXTURE_2D["weights"],
) -> torch.Tensor:
    """A 2D isotropic Gaussian mixture, ``(n, 2)``. The defaults (``MIXTURE_2D``: three components of
    unequal weights and widths) are those of the ``"mixture"`` target of :mod:`pyro_nf.targets`."""
    _check_n("gaussian_mixture_2d", n)
    means = torch.as_tensor(means, dtype=torch.float64)
    if means.dim() != 2 or means.shape[-1] != 2:
        raise ValueError(f"gaussian_mixture_2d: means must be (k, 2), got shape {tuple(means.shape)}")
    return gaussian_mixture(n, means=means, stds=stds, weights=weights, seed=seed, device=device, dtype=dtype)


DATASETS = {
    "moons": two_moons,
    "8gaussians": eight_gaussians,
    "checkerboard": checkerboard,
    "spirals": two_spirals,
    "pinwheel": pinwheel,
    "mixture1d": gaussian_mixture_1d,
    "mixture2d": gaussian_mixture_2d,
}


def load(name: str, n: int = 1000, seed: int | None = None, device=None, dtype=None, **options) -> torch.Tensor:
    """A named toy data set (see ``DATASETS``) as an ``(n, d)`` tensor; ``options`` go to its function.

    Example:
        >>> import pyro_nf as nf
        >>> sorted(nf.datasets.DATASETS)[:3], nf.datasets.load("checkerboard", n=500, seed=0).shape
        (['8gaussians', 'checkerboard', 'mixture1d'], torch.Size([500, 2]))
    """
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; valid names: {', '.join(sorted(DATASETS))}")
    return DATASETS[name](n, seed=seed, device=device, dtype=dtype, **options)


def read_file(path, key: str | None = None, dtype=torch.float32) -> torch.Tensor:
    """A user's data file as an ``(N, D)`` tensor: ``.csv`` (comma-separated; a first line that is not all
    numbers is taken as a header), ``.npy``, ``.npz`` (the array ``key``, or its only array) or ``.pt`` (a
    tensor). One-dimensional data become ``(N, 1)``. Rows with NaN or infinite values are an error that
    names them."""
    import os

    import numpy as np

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"read_file: no such file {path!r}")
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".csv":
        with open(path) as handle:
            first = handle.readline()
        try:
            [float(v) for v in first.strip().split(",")]
            skip = 0
        except ValueError:
            skip = 1
        array = np.loadtxt(path, delimiter=",", skiprows=skip, ndmin=2)
    elif suffix == ".npy":
        array = np.load(path, allow_pickle=False)
    elif suffix == ".npz":
        archive = np.load(path, allow_pickle=False)
        names = list(archive.keys())
        if key is None and len(names) != 1:
            raise ValueError(f"read_file: {path} holds arrays {names}; say which one (key=)")
        array = archive[key if key is not None else names[0]]
    elif suffix == ".pt":
        array = torch.load(path, weights_only=True)
        if not isinstance(array, torch.Tensor):
            raise ValueError(f"read_file: {path} does not hold one tensor (got {type(array).__name__})")
        array = array.detach().cpu().numpy()
    else:
        raise ValueError(f"read_file: unknown file type {suffix!r} of {path}; use .csv, .npy, .npz or .pt")
    data = torch.as_tensor(np.asarray(array, dtype=np.float64)).to(dtype)
    if data.dim() == 1:
        data = data.unsqueeze(-1)
    if data.dim() != 2 or data.shape[0] == 0:
        raise ValueError(f"read_file: expected a table of N rows and D columns in {path}, got shape "
                         f"{tuple(data.shape)}")
    bad = (~torch.isfinite(data).all(-1)).nonzero().flatten()
    if bad.numel():
        rows = ", ".join(str(int(r) + 1) for r in bad[:10])
        raise ValueError(f"read_file: {bad.numel()} row(s) of {path} have NaN or infinite values (data rows "
                         f"{rows}{', ...' if bad.numel() > 10 else ''}, counted from 1)")
    return data


def split(data: torch.Tensor, fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int | None = 0):
    """Shuffle the rows and cut them into parts of the given fractions (train, validation, test)."""
    if any(f < 0 for f in fractions) or not math.isclose(sum(fractions), 1.0, abs_tol=1e-9):
        raise ValueError(f"split: fractions must be non-negative and sum to 1, got {tuple(fractions)}")
    n = data.shape[0]
    order = torch.randperm(n, generator=_generator(seed)).to(data.device)
    bounds = [round(sum(fractions[:i]) * n) for i in range(len(fractions) + 1)]
    return tuple(data[order[a:b]] for a, b in zip(bounds[:-1], bounds[1:]))
