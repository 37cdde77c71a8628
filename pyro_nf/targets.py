r"""Unnormalised 2D energy targets as Pyro distributions, with log normalisers for evaluation.

A target is a density known up to a constant, :math:`p(z) = e^{-U(z)} / Z`. Each one here is a
:class:`pyro.distributions.TorchDistribution` with ``event_shape (2,)`` and ``batch_shape ()``:

- ``log_prob(z) = -U(z)`` (**unnormalised**) and ``energy(z) = U(z)``, for points of any leading
  batch shape ``(..., 2)``, computed with torch ops in the dtype and on the device of ``z``;
- ``log_normalizer()``: :math:`\log Z` by midpoint quadrature on a grid in float64 (a float, cached);
  ``exact_log_normalizer()``: the closed form where one exists (else ``None``);
- ``sample(sample_shape)``: reference samples, exact where the density allows it, otherwise from a
  fine grid (see each class); they use the global torch RNG, as Pyro's distributions do;
- ``bounds``: a plotting box ``((x0, x1), (y0, y1))``.

So a target serves as the model of a reverse-KL fit (``pyro.sample("z", target)`` in the model, a flow
in the guide; ``-log_normalizer()`` is then the value the negative ELBO cannot go below), and as the
invariant density ``exp(-U)`` of a stochastic layer.

The energies of Rezende & Mohamed (2015, Table 1), with :math:`w_1 = \sin(2 \pi z_1 / 4)`,
:math:`w_2 = 3 e^{-\frac12 ((z_1 - 1) / 0.6)^2}`, :math:`w_3 = 3\,\sigma((z_1 - 1) / 0.3)`, are
:class:`U1` .. :class:`U4`. ``U2`` .. ``U4`` as printed do not bound :math:`z_1` and are not integrable;
here they carry a Gaussian envelope in :math:`z_1` (see :class:`U2`). :class:`DoubleWell` is the 2D double
well of Wu, Köhler & Noé (2020), :class:`GaussianMixture` / :class:`EightGaussians` are mixtures whose
normaliser is known exactly. ``TARGETS`` maps names to classes and ``load(name, **options)`` builds one.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from pyro.distributions import TorchDistribution, constraints

from . import datasets

__all__ = [
    "DoubleWell",
    "EightGaussians",
    "EnergyTarget",
    "GaussianMixture",
    "TARGETS",
    "U1",
    "U2",
    "U3",
    "U4",
    "load",
]

Bounds = tuple[tuple[float, float], tuple[float, float]]

_CHUNK = 1 << 20  # grid points evaluated at once


def _pair(resolution) -> tuple[int, int]:
    if isinstance(resolution, int):
        resolution = (resolution, resolution)
    nx, ny = (int(r) for r in resolution)
    if nx < 1 or ny < 1:
        raise ValueError(f"resolution must be positive, got {resolution}")
    return nx, ny


def _float64(x) -> torch.Tensor:
    """A float64 CPU copy of a tensor or a (nested) sequence of numbers."""
    if torch.is_tensor(x):
        return x.detach().to(device="cpu", dtype=torch.float64)
    return torch.as_tensor(x, dtype=torch.float64)


def _midpoints(lo: float, hi: float, n: int) -> tuple[torch.Tensor, float]:
    if not hi > lo:
        raise ValueError(f"bounds must be increasing, got ({lo}, {hi})")
    h = (hi - lo) / n
    return lo + h * (torch.arange(n, dtype=torch.float64) + 0.5), h


class EnergyTarget(TorchDistribution):
    """Base class of the 2D energy targets: subclasses implement ``_energy`` (and may override ``_sample``).

    ``device`` and ``dtype`` only say where and in which dtype ``sample`` returns its points (default:
    CPU and ``torch.get_default_dtype()`` at call time); ``log_prob`` and ``energy`` always follow
    their input.
    """

    arg_constraints: dict = {}
    support = constraints.real_vector
    has_rsample = False
    #: plotting box ((x0, x1), (y0, y1))
    bounds: Bounds = ((-4.0, 4.0), (-4.0, 4.0))
    #: box and number of midpoints per axis of the default quadrature (and of the sampling grid)
    quadrature_bounds: Bounds = ((-6.0, 6.0), (-6.0, 6.0))
    quadrature_resolution: tuple[int, int] = (600, 600)
    #: cells per axis of the grid ``sample`` draws from, for targets sampled from a grid
    sampling_resolution: tuple[int, int] = (1024, 1024)

    def __init__(self, *, device=None, dtype=None, validate_args=None):
        self._sample_device = torch.device("cpu") if device is None else torch.device(device)
        self._sample_dtype = dtype
        self._log_z: float | None = None
        self._grid_cdf = None
        super().__init__(batch_shape=torch.Size(), event_shape=torch.Size([2]), validate_args=validate_args)

    # -- to implement -------------------------------------------------------------------------------
    def _energy(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _sample(self, n: int) -> torch.Tensor:
        """``n`` reference points, float64 on the CPU, ``(n, 2)``. Default: from the grid."""
        return self._grid_sample(n)

    def exact_log_normalizer(self) -> float | None:
        """The exact log Z where a closed form exists, else ``None``."""
        return None

    def _improper_reason(self) -> str | None:
        """Why the density has no normaliser, or ``None`` when it has one."""
        return None

    # -- public -------------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return type(self).__name__

    def _check(self, z) -> None:
        if not torch.is_tensor(z):
            raise ValueError(f"{self.name}: expected a tensor of points of shape (..., 2), got {type(z).__name__}")
        if z.dim() == 0 or z.shape[-1] != 2:
            raise ValueError(f"{self.name}: expected points of shape (..., 2), got shape {tuple(z.shape)}")
        if not z.is_floating_point():
            raise ValueError(f"{self.name}: expected a floating-point tensor, got dtype {z.dtype}")

    def energy(self, z: torch.Tensor) -> torch.Tensor:
        """The energy ``U(z)``, shape ``z.shape[:-1]``, in ``z``'s dtype and on its device."""
        self._check(z)
        return self._energy(z)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """The **unnormalised** log density ``-U(z)``; subtract ``log_normalizer()`` to normalise."""
        self._check(value)
        if self._validate_args:
            self._validate_sample(value)
        return -self._energy(value)

    def _require_proper(self, what: str) -> None:
        reason = self._improper_reason()
        if reason is not None:
            raise ValueError(f"{self!r} has no {what}: {reason}")

    def log_normalizer(self, resolution=None, bounds: Bounds | None = None) -> float:
        """``log Z = log ∫ exp(-U(z)) dz`` by the midpoint rule on a grid, in float64 with ``logsumexp``.

        ``resolution`` is the number of cells per axis (an int or a pair), ``bounds`` the box
        ``((x0, x1), (y0, y1))``; the defaults (``quadrature_resolution``, ``quadrature_bounds``) are chosen
        per target so that the box holds all but a negligible fraction of the mass (below 1e-9) and the
        cells resolve the narrowest feature several times over (midpoint sums of smooth, decaying
        integrands converge very fast). For every registered target the default value agrees with a grid
        of twice the resolution, and with the exact value where one exists, to about 1e-12 nats; the tests
        hold it to 1e-6, well inside 1e-3. The default-resolution value is computed once and cached.
        """
        default = resolution is None and bounds is None
        if default and self._log_z is not None:
            return self._log_z
        self._require_proper("log normaliser")
        log_density, cell = self._log_density_grid(resolution or self.quadrature_resolution,
                                                   bounds or self.quadrature_bounds)
        value = float(torch.logsumexp(log_density.reshape(-1), 0)) + math.log(cell)
        if default:
            self._log_z = value
        return value

    def sample(self, sample_shape=()) -> torch.Tensor:
        """Reference samples of shape ``sample_shape + (2,)``, drawn with the global torch RNG."""
        self._require_proper("samples")
        shape = torch.Size(sample_shape)
        with torch.no_grad():
            x = self._sample(shape.numel())
        dtype = self._sample_dtype or torch.get_default_dtype()
        return x.reshape(shape + (2,)).to(device=self._sample_device, dtype=dtype)

    def __repr__(self) -> str:
        return f"{self.name}({self._repr_args()})"

    def _repr_args(self) -> str:
        return ""

    # -- grids --------------------------------------------------------------------------------------
    def _log_density_grid(self, resolution, bounds: Bounds) -> tuple[torch.Tensor, float]:
        """``-U`` at the cell midpoints, float64 ``(nx, ny)`` (``[i, j]`` is x cell i, y cell j), and the
        cell area."""
        nx, ny = _pair(resolution)
        (x0, x1), (y0, y1) = bounds
        xs, hx = _midpoints(float(x0), float(x1), nx)
        ys, hy = _midpoints(float(y0), float(y1), ny)
        rows = max(1, _CHUNK // ny)
        parts = []
        for start in range(0, nx, rows):
            gx, gy = torch.meshgrid(xs[start:start + rows], ys, indexing="ij")
            parts.append(-self._energy(torch.stack([gx, gy], -1)))
        log_density = torch.cat(parts)
        if torch.isnan(log_density).any():
            raise ValueError(f"{self!r}: the energy is NaN somewhere on the grid {bounds}")
        return log_density, hx * hy

    def _grid_sample(self, n: int) -> torch.Tensor:
        """Inverse CDF over the cells of the ``sampling_resolution`` grid on ``quadrature_bounds``
        (cell probability proportional to the density at its midpoint), then a uniform position inside
        the cell. The grid's CDF is computed once and cached."""
        if self._grid_cdf is None:
            log_density, _ = self._log_density_grid(self.sampling_resolution, self.quadrature_bounds)
            cdf = torch.cumsum(torch.softmax(log_density.reshape(-1), 0), 0)
            self._grid_cdf = cdf
        cdf = self._grid_cdf
        nx, ny = _pair(self.sampling_resolution)
        (x0, x1), (y0, y1) = self.quadrature_bounds
        u = torch.rand(n, dtype=torch.float64) * cdf[-1]
        index = torch.searchsorted(cdf, u, right=True).clamp_(max=cdf.numel() - 1)
        cell = torch.stack([index // ny, index % ny], -1).to(torch.float64)
        jitter = torch.rand(n, 2, dtype=torch.float64)
        size = torch.tensor([(x1 - x0) / nx, (y1 - y0) / ny], dtype=torch.float64)
        low = torch.tensor([x0, y0], dtype=torch.float64)
        return low + (cell + jitter) * size


# ------------------------------------------------------------------------------------------------
# Rezende & Mohamed (2015), Table 1
# ------------------------------------------------------------------------------------------------


def _w1(z1: torch.Tensor) -> torch.Tensor:
    return torch.sin(0.5 * math.pi * z1)  # sin(2 pi z1 / 4)


def _w2(z1: torch.Tensor) -> torch.Tensor:
    return 3.0 * torch.exp(-0.5 * ((z1 - 1.0) / 0.6) ** 2)


def _w3(z1: torch.Tensor) -> torch.Tensor:
    return 3.0 * torch.sigmoid((z1 - 1.0) / 0.3)


class U1(EnergyTarget):
    r"""The ring with two modes of Rezende & Mohamed (2015), Table 1:

    .. math::

        U_1(z) = \frac12 \left(\frac{\lVert z \rVert - 2}{0.4}\right)^2
                 - \log\left(e^{-\frac12 \left(\frac{z_1 - 2}{0.6}\right)^2}
                           + e^{-\frac12 \left(\frac{z_1 + 2}{0.6}\right)^2}\right)

    (``variant="paper"``, the default): a ring of radius 2 whose mass gathers near ``(±2, 0)``.

    ``variant="seed003"`` is the form printed in seed document 003 (notes reproducing the paper), **not**
    the paper's: ``(‖z‖ - 4) / 0.4`` and ``0.8`` in place of ``0.6``, a ring of radius 4 whose mass
    gathers in four bumps around ``(±2, ±3.46)``, joined by a faint ring (4% to 9% of the peak
    density). It is offered only to compare with those notes.

    Integrable as it stands. ``sample`` draws from the grid (``_grid_sample``: 1024 x 1024 cells on
    ``quadrature_bounds``, cell spacing about 0.01 for the paper's variant).
    """

    VARIANTS = {"paper": (2.0, 0.6), "seed003": (4.0, 0.8)}  # ring radius, width of the two z1 modes
    RING_STD = 0.4

    def __init__(self, variant: str = "paper", *, device=None, dtype=None, validate_args=None):
        if variant not in self.VARIANTS:
            raise ValueError(f"U1: unknown variant {variant!r}; valid variants: {', '.join(self.VARIANTS)}")
        self.variant = variant
        self.radius, self.mode_std = self.VARIANTS[variant]
        edge = self.radius + 2.0
        self.bounds = ((-edge, edge), (-edge, edge))
        # the ring's energy exceeds 35 beyond radius + 3.4
        reach = self.radius + 3.5
        self.quadrature_bounds = ((-reach, reach), (-reach, reach))
        self.quadrature_resolution = (320, 320)
        super().__init__(device=device, dtype=dtype, validate_args=validate_args)

    def _repr_args(self) -> str:
        return f"variant={self.variant!r}"

    def _energy(self, z):
        z1 = z[..., 0]
        ring = 0.5 * ((torch.linalg.vector_norm(z, dim=-1) - self.radius) / self.RING_STD) ** 2
        m = self.mode_std
        return ring - torch.logaddexp(-0.5 * ((z1 - 2.0) / m) ** 2, -0.5 * ((z1 + 2.0) / m) ** 2)


class _Wave(EnergyTarget):
    r"""Shared by U2, U3, U4: ``U(z) = V(z) + ½ (z1 / envelope)²`` where ``V`` is the paper's energy.

    For each fixed ``z1`` the paper's ``exp(-V)`` is a Gaussian (or a two-component Gaussian mixture) in
    ``z2`` whose integral over ``z2`` does not depend on ``z1``; so ``exp(-V)`` has no finite integral over
    the plane. The Gaussian envelope makes it proper, keeps the support the whole plane (``log_prob`` is
    finite everywhere, as a reverse-KL fit needs) and keeps everything exact: ``z1 ~ N(0, envelope²)``
    and ``z2 | z1`` is the paper's Gaussian (mixture), so ``sample`` is exact and
    ``log Z = log(2π · envelope · Σ_k σ_k)`` in closed form (``σ_k`` the widths in ``z2`` of the
    components, weighted as the paper's sum weights them). The default ``envelope = 4`` leaves the paper's
    picture on ``[-4, 4]²`` nearly unchanged (the envelope costs at most ``exp(-1/2)`` at the box's edges),
    but about 32% of the mass lies beyond ``|z1| > 4``. ``envelope=None`` gives the paper's energy
    unchanged (fine as a reverse-KL model on the paper's box), without log normaliser or samples.

    A bounded box support was the alternative; it was not chosen because ``log_prob`` would be ``-inf``
    outside the box, which breaks reverse-KL training of flows whose support is the plane.
    """

    bounds = ((-4.0, 4.0), (-4.0, 4.0))
    #: (mean shift function or None, width in z2, weight) of each component of exp(-V) given z1
    COMPONENTS: tuple = ()

    def __init__(self, envelope: float | None = 4.0, *, device=None, dtype=None, validate_args=None):
        if envelope is not None and not envelope > 0:
            raise ValueError(f"{type(self).__name__}: envelope must be positive or None, got {envelope!r}")
        self.envelope = None if envelope is None else float(envelope)
        s = self.envelope or 4.0
        # 7.5 envelope widths in z1; in z2 the components' centres lie in [-4, 1] (|w1| <= 1,
        # 0 <= w2, w3 <= 3) and their widths are at most 0.4, so [-8, 5] is 10 widths clear of them
        self.quadrature_bounds = ((-7.5 * s, 7.5 * s), (-8.0, 5.0))
        self.quadrature_resolution = (max(100, math.ceil(15.0 * s / 0.15)), 240)
        super().__init__(device=device, dtype=dtype, validate_args=validate_args)

    def _repr_args(self) -> str:
        return f"envelope={self.envelope!r}"

    def _improper_reason(self):
        if self.envelope is None:
            return "with envelope=None the energy does not bound z1 and exp(-U) is not integrable over the plane"
        return None

    def _paper_energy(self, z1, z2):
        raise NotImplementedError

    def _energy(self, z):
        z1, z2 = z[..., 0], z[..., 1]
        u = self._paper_energy(z1, z2)
        if self.envelope is not None:
            u = u + 0.5 * (z1 / self.envelope) ** 2
        return u

    def exact_log_normalizer(self):
        if self.envelope is None:
            return None
        return math.log(2.0 * math.pi * self.envelope * sum(std for _, std in self.COMPONENTS))

    def _sample(self, n):
        z1 = self.envelope * torch.randn(n, dtype=torch.float64)
        stds = torch.tensor([std for _, std in self.COMPONENTS], dtype=torch.float64)
        # each component integrates over z2 to std * sqrt(2 pi): its weight is proportional to its std
        k = torch.multinomial(stds, n, replacement=True) if n > 0 else torch.zeros(0, dtype=torch.long)
        centres = torch.stack([_w1(z1) - (0.0 if shift is None else shift(z1)) for shift, _ in self.COMPONENTS], -1)
        z2 = centres.gather(-1, k[:, None]).squeeze(-1) + stds[k] * torch.randn(n, dtype=torch.float64)
        return torch.stack([z1, z2], -1)


class U2(_Wave):
    r"""The sine of Rezende & Mohamed (2015), Table 1, with a Gaussian envelope in ``z1``:

    .. math::

        U_2(z) = \frac12 \left(\frac{z_2 - w_1(z)}{0.4}\right)^2 + \frac12 \left(\frac{z_1}{s}\right)^2,
        \qquad w_1(z) = \sin(2 \pi z_1 / 4),

    ``s = envelope`` (default 4). Exact samples; exact ``log Z = log(2π · s · 0.4)``
    (``log(3.2π) = 2.3080`` for ``s = 4``). Why the envelope, and ``envelope=None``: see ``_Wave``
    (the three wave targets share the rule).
    """

    COMPONENTS = ((None, 0.4),)

    def _paper_energy(self, z1, z2):
        return 0.5 * ((z2 - _w1(z1)) / 0.4) ** 2


class U3(_Wave):
    r"""The split sine of Rezende & Mohamed (2015), Table 1, with a Gaussian envelope in ``z1``:

    .. math::

        U_3(z) = -\log\left(e^{-\frac12 \left(\frac{z_2 - w_1}{0.35}\right)^2}
                          + e^{-\frac12 \left(\frac{z_2 - w_1 + w_2}{0.35}\right)^2}\right)
                 + \frac12 \left(\frac{z_1}{s}\right)^2,
        \qquad w_2(z) = 3 e^{-\frac12 ((z_1 - 1) / 0.6)^2},

    ``s = envelope`` (default 4). Exact samples; exact ``log Z = log(2π · s · 0.7)``
    (``log(5.6π) = 2.8676`` for ``s = 4``). Envelope: see ``_Wave``.
    """

    COMPONENTS = ((None, 0.35), (_w2, 0.35))

    def _paper_energy(self, z1, z2):
        a = z2 - _w1(z1)
        return -torch.logaddexp(-0.5 * (a / 0.35) ** 2, -0.5 * ((a + _w2(z1)) / 0.35) ** 2)


class U4(_Wave):
    r"""The sine with a step of Rezende & Mohamed (2015), Table 1, with a Gaussian envelope in ``z1``:

    .. math::

        U_4(z) = -\log\left(e^{-\frac12 \left(\frac{z_2 - w_1}{0.4}\right)^2}
                          + e^{-\frac12 \left(\frac{z_2 - w_1 + w_3}{0.35}\right)^2}\right)
                 + \frac12 \left(\frac{z_1}{s}\right)^2,
        \qquad w_3(z) = 3 \sigma\left(\frac{z_1 - 1}{0.3}\right),

    ``s = envelope`` (default 4). Exact samples; exact ``log Z = log(2π · s · 0.75)``
    (``log(6π) = 2.9365`` for ``s = 4``). Envelope: see ``_Wave``.
    """

    COMPONENTS = ((None, 0.4), (_w3, 0.35))

    def _paper_energy(self, z1, z2):
        a = z2 - _w1(z1)
        return -torch.logaddexp(-0.5 * (a / 0.4) ** 2, -0.5 * ((a + _w3(z1)) / 0.35) ** 2)


# ------------------------------------------------------------------------------------------------
# Double well
# ------------------------------------------------------------------------------------------------


class DoubleWell(EnergyTarget):
    r"""A 2D double well, as in stochastic normalizing flows (Wu, Köhler & Noé, 2020):

    .. math::

        U(x) = a x_1 + b x_1^2 + c x_1^4 + \tfrac12 d\, x_2^2 .

    The defaults ``a = -0.5, b = -6, c = 1, d = 1`` are those of the paper's double-well experiment (its
    code, ``experiment1_doublewell.ipynb`` in noegroup/stochastic_normalizing_flows, builds the target as
    ``DoubleWellEnergy(2, a=-0.5, b=-6)``, whose defaults give ``c = 1`` and the ``½ x2²`` term): wells
    at ``x1 ≈ -1.71`` and ``x1 ≈ 1.75``, a barrier at ``x1 ≈ -0.04`` about 8.1 kT above the left well and
    9.9 kT above the right one; ``a < 0`` tilts the mass towards the right well (84% of it). Needs ``c > 0`` and
    ``d > 0``.

    Samples: ``x2 ~ N(0, 1/d)`` exactly; ``x1`` by inverse CDF over 20000 cells of a 1D grid covering
    ``quadrature_bounds[0]``, uniform inside the cell. ``exact_log_normalizer`` is ``None``: the ``x1``
    integral has no closed form (the ``x2`` factor is ``sqrt(2π/d)``).
    """

    def __init__(self, a: float = -0.5, b: float = -6.0, c: float = 1.0, d: float = 1.0, *, device=None,
                 dtype=None, validate_args=None):
        if not (c > 0 and d > 0):
            raise ValueError(f"DoubleWell: needs c > 0 and d > 0 to be integrable, got c={c}, d={d}")
        self.a, self.b, self.c, self.d = float(a), float(b), float(c), float(d)
        # where does the x1 part matter? scan a range wide enough that its ends are 50 kT above the minimum
        half = 4.0
        for _ in range(40):
            xs = torch.linspace(-half, half, 40001, dtype=torch.float64)
            u = self._u1(xs)
            u = u - u.min()
            if u[0] > 50 and u[-1] > 50:
                break
            half *= 2.0
        else:
            raise ValueError(f"DoubleWell: could not find where the energy rises 50 kT above its minimum "
                             f"(a={a}, b={b}, c={c})")
        inside = xs[u < 50]
        lo, hi = float(inside[0]), float(inside[-1])
        shown = xs[u < 15]
        pad = 0.1 * (float(shown[-1]) - float(shown[0]))
        # curvature where the density is not negligible sets the cell size
        curvature = (2.0 * self.b + 12.0 * self.c * xs[u < 20] ** 2).max().clamp(min=1e-12)
        width = 1.0 / math.sqrt(float(curvature))
        reach2 = 9.0 / math.sqrt(self.d)
        self.quadrature_bounds = ((lo, hi), (-reach2, reach2))
        self.quadrature_resolution = (min(4000, max(200, math.ceil(6.0 * (hi - lo) / width))), 120)
        self.bounds = ((float(shown[0]) - pad, float(shown[-1]) + pad), (-3.5 / math.sqrt(self.d),
                                                                          3.5 / math.sqrt(self.d)))
        self._x1_cdf = None
        super().__init__(device=device, dtype=dtype, validate_args=validate_args)

    def _repr_args(self) -> str:
        return f"a={self.a}, b={self.b}, c={self.c}, d={self.d}"

    def _u1(self, x1):
        x1sq = x1 * x1
        return self.a * x1 + self.b * x1sq + self.c * x1sq * x1sq

    def _energy(self, z):
        x2 = z[..., 1]
        return self._u1(z[..., 0]) + 0.5 * self.d * x2 * x2

    def _sample(self, n):
        (lo, hi), _ = self.quadrature_bounds
        cells = 20000
        if self._x1_cdf is None:
            mid, _ = _midpoints(lo, hi, cells)
            self._x1_cdf = torch.cumsum(torch.softmax(-self._u1(mid), 0), 0)
        cdf = self._x1_cdf
        index = torch.searchsorted(cdf, torch.rand(n, dtype=torch.float64) * cdf[-1], right=True)
        index = index.clamp_(max=cells - 1).to(torch.float64)
        x1 = lo + (index + torch.rand(n, dtype=torch.float64)) * ((hi - lo) / cells)
        x2 = torch.randn(n, dtype=torch.float64) / math.sqrt(self.d)
        return torch.stack([x1, x2], -1)


# ------------------------------------------------------------------------------------------------
# Gaussian mixtures
# ------------------------------------------------------------------------------------------------


class GaussianMixture(EnergyTarget):
    r"""A mixture of isotropic 2D Gaussians, ``U(z) = -log Σ_k w_k N(z; μ_k, σ_k² I)``.

    ``means`` ``(K, 2)``, ``stds`` (one number or ``K``), ``weights`` (``K`` non-negative numbers, not all
    zero; equal ``1/K`` when omitted). The weights are **not** normalised, so ``exp(-U)`` integrates to
    ``Σ_k w_k`` and ``exact_log_normalizer() = log Σ_k w_k`` (0 for weights that sum to one).
    With no ``means``, the default is the three-component mixture ``datasets.MIXTURE_2D`` (unequal
    weights and widths; the same density as the ``"mixture2d"`` data set), stds and weights included
    unless given. ``sample`` is exact.

    The parameters are kept in float64 on the CPU; ``log_prob`` casts them to the input's dtype and
    device (once per dtype/device, cached). When ``means`` is a floating-point tensor and ``device`` /
    ``dtype`` are not given, samples come on its device and in its dtype.
    """

    def __init__(self, means=None, stds=None, weights=None, *, device=None, dtype=None, validate_args=None):
        if means is None:
            means = datasets.MIXTURE_2D["means"]
            stds = datasets.MIXTURE_2D["stds"] if stds is None else stds
            weights = datasets.MIXTURE_2D["weights"] if weights is None else weights
        if torch.is_tensor(means) and means.is_floating_point():
            device = means.device if device is None else device
            dtype = means.dtype if dtype is None else dtype
        means = _float64(means)
        if means.dim() != 2 or means.shape[-1] != 2 or means.shape[0] < 1:
            raise ValueError(f"{type(self).__name__}: means must have shape (K, 2), got {tuple(means.shape)}")
        k = means.shape[0]
        stds = _float64(1.0 if stds is None else stds)
        if stds.dim() > 1 or stds.numel() not in (1, k) or not bool((stds > 0).all()):
            raise ValueError(f"{type(self).__name__}: stds must be one positive number or {k} of them, "
                             f"got {stds.tolist()}")
        weights = torch.full((k,), 1.0 / k, dtype=torch.float64) if weights is None else _float64(weights)
        if weights.shape != (k,) or not bool((weights >= 0).all()) or not float(weights.sum()) > 0:
            raise ValueError(f"{type(self).__name__}: weights must be {k} non-negative numbers, not all zero, "
                             f"got {weights.tolist()}")
        self.means, self.stds, self.weights = means, stds.expand(k).clone(), weights
        self._params: dict = {}
        # plotting box: 3.5 widths around the centres; quadrature box: 9.5 widths (mass outside < 1e-19)
        lo, hi = (means - 3.5 * self.stds[:, None]).min(0).values, (means + 3.5 * self.stds[:, None]).max(0).values
        self.bounds = tuple((float(a), float(b)) for a, b in zip(lo, hi))
        lo, hi = (means - 9.5 * self.stds[:, None]).min(0).values, (means + 9.5 * self.stds[:, None]).max(0).values
        self.quadrature_bounds = tuple((float(a), float(b)) for a, b in zip(lo, hi))
        cell = float(self.stds.min()) / 5.0
        self.quadrature_resolution = tuple(min(4096, max(100, math.ceil((b - a) / cell)))
                                           for a, b in self.quadrature_bounds)
        super().__init__(device=device, dtype=dtype, validate_args=validate_args)

    def _repr_args(self) -> str:
        return f"K={self.means.shape[0]}"

    def _cast(self, like: torch.Tensor):
        key = (like.dtype, like.device)
        if key not in self._params:
            log_w = torch.log(self.weights) - math.log(2.0 * math.pi) - 2.0 * torch.log(self.stds)
            self._params[key] = tuple(t.to(dtype=like.dtype, device=like.device)
                                      for t in (self.means, self.stds, log_w))
        return self._params[key]

    def _energy(self, z):
        means, stds, log_w = self._cast(z)
        sq = ((z.unsqueeze(-2) - means) ** 2).sum(-1)  # (..., K)
        return -torch.logsumexp(log_w - 0.5 * sq / stds**2, -1)

    def exact_log_normalizer(self) -> float:
        return math.log(float(self.weights.sum()))

    def _sample(self, n):
        if n == 0:
            return torch.zeros(0, 2, dtype=torch.float64)
        k = torch.multinomial(self.weights, n, replacement=True)
        return self.means[k] + self.stds[k, None] * torch.randn(n, 2, dtype=torch.float64)


class EightGaussians(GaussianMixture):
    """Eight equally weighted Gaussians of width ``std`` centred on a circle of radius ``radius`` (first
    centre at ``(radius, 0)``): the density of the ``"8gaussians"`` data set, with the same defaults
    (``datasets.EIGHT_GAUSSIANS``). Weights 1/8 each, so ``log Z = 0`` exactly; exact samples."""

    def __init__(self, radius: float = datasets.EIGHT_GAUSSIANS["radius"],
                 std: float = datasets.EIGHT_GAUSSIANS["std"], *, device=None, dtype=None, validate_args=None):
        self.radius, self.std = float(radius), float(std)
        super().__init__(datasets.circle_means(8, self.radius).tolist(), self.std, None, device=device, dtype=dtype,
                         validate_args=validate_args)

    def _repr_args(self) -> str:
        return f"radius={self.radius}, std={self.std}"


TARGETS: dict[str, Callable[..., EnergyTarget]] = {
    "U1": U1,
    "U2": U2,
    "U3": U3,
    "U4": U4,
    "double_well": DoubleWell,
    "8gaussians": EightGaussians,
    "mixture": GaussianMixture,
}


def load(name: str, **options) -> EnergyTarget:
    """The target registered as ``name`` in ``TARGETS``, built with ``options``
    (e.g. ``load("U1", variant="seed003")``, ``load("mixture", means=..., stds=..., weights=...)``).

    Example:
        >>> import torch, pyro_nf as nf
        >>> target = nf.targets.load("U2")
        >>> target.log_prob(torch.zeros(3, 2)).shape, round(target.log_normalizer(), 4)  # log Z by quadrature
        (torch.Size([3]), 2.3079)
    """
    if name not in TARGETS:
        raise ValueError(f"unknown target {name!r}; valid names: {', '.join(TARGETS)}")
    return TARGETS[name](**options)
