r"""Simulators for simulation-based inference, each with a reference posterior, and two-sample scores.

A simulator is a prior ``p(theta)`` and a sampler of ``p(x | theta)``. Neural posterior estimation (NPE)
trains a conditional density ``q(theta | x)`` by maximum likelihood on pairs ``(theta, x) ~ p(theta) p(x | theta)``;
the objective ``E_{p(theta, x)}[-log q(theta | x)]`` equals ``E_{p(x)} KL(p(theta | x) || q(theta | x))`` plus a
constant, so its minimiser is the posterior. To judge such a fit, each simulator here knows its posterior:

* :class:`GaussianLinear`: ``theta ~ N(m0, diag s0^2)``, ``x = A theta + b + N(0, diag sigma^2)``; the posterior
  is Gaussian in closed form (:meth:`GaussianLinear.posterior`).
* :class:`TwoMoons`: the two-moons simulator of Greenberg et al. (2019), as in the sbibm benchmark; its
  likelihood is a change of variables and its posterior is sampled exactly by inverting the simulator
  (see the class docstring for the math).

Every simulator has ``prior`` (a Pyro distribution with event shape ``(theta_dim,)``), ``sample_prior(n, seed)``,
``simulate(theta, seed)``, ``sample_joint(n, seed)``, ``log_likelihood(theta, x)``,
``reference_posterior_samples(x_obs, n, seed)``, ``reference_log_posterior(theta, x_obs)`` and
``observations(num, seed)``.

**Randomness.** ``seed`` is an ``int`` (a fresh ``torch.Generator`` seeded with it: the same numbers every
time), a ``torch.Generator`` (used and advanced, for a stream of draws) or ``None`` (torch's global RNG, so
``pyro.set_rng_seed`` governs it). Draws are made on the CPU in float64 and cast at the end to the
``dtype``/``device`` asked for (``simulate`` follows ``theta``), so a seed gives the same numbers on every device.

Two-sample scores for comparing an approximate posterior's samples with reference samples: :func:`c2st`
(classifier two-sample test accuracy; 0.5 is a perfect match, 1 a complete mismatch) and :func:`mmd`
(unbiased squared maximum mean discrepancy with a Gaussian kernel).
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch

__all__ = ["GaussianLinear", "Simulator", "TwoMoons", "c2st", "mmd"]


def _generator(seed) -> torch.Generator | None:
    """A generator for ``seed``: a fresh seeded one for an int, the given one, or ``None`` (the global RNG)."""
    if seed is None or isinstance(seed, torch.Generator):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, a torch.Generator or None, got {seed!r}")
    return torch.Generator().manual_seed(seed)


def _randn(shape, gen) -> torch.Tensor:
    return torch.randn(shape, generator=gen, dtype=torch.float64)


def _rand(shape, gen) -> torch.Tensor:
    return torch.rand(shape, generator=gen, dtype=torch.float64)


def _check_n(owner: str, n) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{owner}: n must be a positive int, got {n!r}")
    return n


class Simulator:
    """The interface every simulator here follows (see the module docstring); subclasses fill in the math."""

    name: str = "simulator"
    theta_dim: int
    x_dim: int

    # ----------------------------------------------------------------- to be provided by a subclass
    @property
    def prior(self) -> dist.TorchDistribution:
        """``p(theta)``, a Pyro distribution with event shape ``(theta_dim,)`` at the default dtype."""
        raise NotImplementedError

    def _sample_prior(self, n: int, gen) -> torch.Tensor:
        raise NotImplementedError

    def _simulate(self, theta: torch.Tensor, gen) -> torch.Tensor:
        raise NotImplementedError

    def log_likelihood(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``log p(x | theta)``, broadcasting over leading dimensions."""
        raise NotImplementedError

    def _posterior_samples(self, x_obs: torch.Tensor, n: int, gen) -> torch.Tensor:
        raise NotImplementedError

    def reference_log_posterior(self, theta: torch.Tensor, x_obs: torch.Tensor) -> torch.Tensor:
        """``log p(theta | x_obs)``, normalised, broadcasting over leading dimensions."""
        raise NotImplementedError

    # ----------------------------------------------------------------- shared
    def _check(self, owner: str, value: torch.Tensor, dim: int, label: str) -> torch.Tensor:
        value = torch.as_tensor(value)
        if not value.is_floating_point():
            value = value.to(torch.get_default_dtype())
        if value.dim() < 1 or value.shape[-1] != dim:
            raise ValueError(f"{type(self).__name__}.{owner}: expected {label} of shape (..., {dim}), "
                             f"got {tuple(value.shape)}")
        return value

    def in_support(self, theta: torch.Tensor) -> torch.Tensor:
        """Whether each row of ``theta`` ``(..., theta_dim)`` lies in the prior's support (a bool tensor
        ``theta.shape[:-1]``; no validation error for points outside, unlike ``prior.log_prob``)."""
        theta = self._check("in_support", theta, self.theta_dim, "theta")
        return self.prior.support.check(theta.to(torch.get_default_dtype()).cpu()).to(theta.device)

    def sample_prior(self, n: int, seed=None, device=None, dtype=None) -> torch.Tensor:
        """``n`` draws of ``theta ~ p(theta)``, shape ``(n, theta_dim)``."""
        n = _check_n("sample_prior", n)
        theta = self._sample_prior(n, _generator(seed))
        return theta.to(device=device, dtype=dtype or torch.get_default_dtype())

    def simulate(self, theta: torch.Tensor, seed=None) -> torch.Tensor:
        """One ``x ~ p(x | theta)`` per row of ``theta`` ``(..., theta_dim)``: shape ``(..., x_dim)``, on the
        device and dtype of ``theta``."""
        theta = self._check("simulate", theta, self.theta_dim, "theta")
        x = self._simulate(theta.detach().to(device="cpu", dtype=torch.float64), _generator(seed))
        return x.to(device=theta.device, dtype=theta.dtype)

    def sample_joint(self, n: int, seed=None, device=None, dtype=None) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` pairs ``(theta, x) ~ p(theta) p(x | theta)``: NPE's training set."""
        gen = _generator(seed)
        theta = self.sample_prior(n, gen, dtype=torch.float64)
        x = self.simulate(theta, gen)
        dtype = dtype or torch.get_default_dtype()
        return theta.to(device=device, dtype=dtype), x.to(device=device, dtype=dtype)

    def observations(self, num: int, seed=0, device=None, dtype=None) -> tuple[torch.Tensor, torch.Tensor]:
        """``num`` test cases ``(theta_true, x_obs)``, drawn from the joint like the training pairs."""
        return self.sample_joint(num, seed, device=device, dtype=dtype)

    def reference_posterior_samples(self, x_obs: torch.Tensor, n: int, seed=None) -> torch.Tensor:
        """``n`` exact draws from ``p(theta | x_obs)`` for one observation ``x_obs`` ``(x_dim,)``: shape
        ``(n, theta_dim)``, on the device and dtype of ``x_obs``."""
        x_obs = self._check("reference_posterior_samples", x_obs, self.x_dim, "x_obs")
        if x_obs.dim() != 1:
            raise ValueError(f"{type(self).__name__}.reference_posterior_samples: one observation of shape "
                             f"({self.x_dim},) at a time, got {tuple(x_obs.shape)}")
        n = _check_n("reference_posterior_samples", n)
        draws = self._posterior_samples(x_obs.detach().to(device="cpu", dtype=torch.float64), n, _generator(seed))
        return draws.to(device=x_obs.device, dtype=x_obs.dtype)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(theta_dim={self.theta_dim}, x_dim={self.x_dim})"


# ================================================================================ Gaussian linear
class GaussianLinear(Simulator):
    r"""A linear model with Gaussian prior and noise, whose posterior is Gaussian in closed form.

    .. math::

        \theta \sim \mathcal N(m_0, S_0), \qquad x \mid \theta \sim \mathcal N(A\theta + b, \Sigma),

    with ``S0 = diag(prior_scale^2)`` and ``Sigma = diag(noise_scale^2)``. Completing the square in
    ``log p(theta) + log p(x | theta)``:

    .. math::

        p(\theta \mid x) = \mathcal N(\mu, P^{-1}), \quad P = S_0^{-1} + A^\top \Sigma^{-1} A, \quad
        \mu = P^{-1}\big(S_0^{-1} m_0 + A^\top \Sigma^{-1} (x - b)\big).

    ``matrix`` ``(x_dim, theta_dim)`` defaults to the identity when ``x_dim == theta_dim`` (sbibm's
    "gaussian_linear" then has ``theta_dim = 10``, ``prior_scale = noise_scale = 0.1 ** 0.5``), else to a
    fixed random matrix (seed 0) with entries ``N(0, 1 / theta_dim)``. Scales are floats or vectors.

    Example:
        >>> import torch
        >>> from pyro_nf import simulators
        >>> sim = simulators.GaussianLinear(2, noise_scale=0.5)
        >>> theta, x = sim.sample_joint(3, seed=0)
        >>> sim.posterior(x).batch_shape, sim.reference_posterior_samples(x[0], 100, seed=0).shape
        (torch.Size([3]), torch.Size([100, 2]))
        >>> torch.allclose(sim.posterior(x).mean, x * 4 / 5)  # prior N(0, 1), noise 0.5^2: mean x / (1 + 1/4)
        True
    """

    name = "gaussian_linear"

    def __init__(self, theta_dim: int = 2, x_dim: int | None = None, matrix=None, offset=0.0, prior_loc=0.0,
                 prior_scale=1.0, noise_scale=0.5):
        x_dim = theta_dim if x_dim is None else x_dim
        for label, value in (("theta_dim", theta_dim), ("x_dim", x_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"GaussianLinear: {label} must be a positive int, got {value!r}")
        self.theta_dim, self.x_dim = theta_dim, x_dim
        f64 = torch.float64
        if matrix is None:
            if x_dim == theta_dim:
                matrix = torch.eye(theta_dim, dtype=f64)
            else:
                matrix = torch.randn(x_dim, theta_dim, generator=torch.Generator().manual_seed(0), dtype=f64)
                matrix = matrix / math.sqrt(theta_dim)
        self.matrix = torch.as_tensor(matrix, dtype=f64)
        if self.matrix.shape != (x_dim, theta_dim):
            raise ValueError(f"GaussianLinear: matrix must be ({x_dim}, {theta_dim}), got {tuple(self.matrix.shape)}")

        def vector(value, dim, label, positive=False):
            out = torch.as_tensor(value, dtype=f64).expand(dim).clone()
            if not torch.isfinite(out).all() or (positive and not (out > 0).all()):
                raise ValueError(f"GaussianLinear: {label} must be finite{' and positive' if positive else ''}")
            return out

        self.offset = vector(offset, x_dim, "offset")
        self.prior_loc = vector(prior_loc, theta_dim, "prior_loc")
        self.prior_scale = vector(prior_scale, theta_dim, "prior_scale", positive=True)
        self.noise_scale = vector(noise_scale, x_dim, "noise_scale", positive=True)
        # the posterior's precision and covariance do not depend on x
        precision = torch.diag(self.prior_scale ** -2) + self.matrix.T @ (self.matrix / self.noise_scale[:, None] ** 2)
        self.posterior_covariance = torch.linalg.inv(precision)
        self.posterior_covariance = (self.posterior_covariance + self.posterior_covariance.T) / 2
        self._posterior_tril = torch.linalg.cholesky(self.posterior_covariance)

    @property
    def prior(self):
        dtype = torch.get_default_dtype()
        return dist.Normal(self.prior_loc.to(dtype), self.prior_scale.to(dtype)).to_event(1)

    def _sample_prior(self, n, gen):
        return self.prior_loc + self.prior_scale * _randn((n, self.theta_dim), gen)

    def _mean(self, theta):
        return theta @ self.matrix.to(theta).T + self.offset.to(theta)

    def _simulate(self, theta, gen):
        return self._mean(theta) + self.noise_scale * _randn((*theta.shape[:-1], self.x_dim), gen)

    def log_likelihood(self, theta, x):
        theta = self._check("log_likelihood", theta, self.theta_dim, "theta")
        x = self._check("log_likelihood", x, self.x_dim, "x")
        return dist.Normal(self._mean(theta), self.noise_scale.to(theta)).to_event(1).log_prob(x)

    def posterior_mean(self, x_obs: torch.Tensor) -> torch.Tensor:
        """The posterior mean ``mu(x_obs)`` for observations ``(..., x_dim)``, in their dtype."""
        x_obs = self._check("posterior_mean", x_obs, self.x_dim, "x_obs")
        like = dict(device=x_obs.device, dtype=x_obs.dtype)
        weighted = (x_obs - self.offset.to(**like)) / self.noise_scale.to(**like) ** 2
        rhs = (self.prior_loc / self.prior_scale ** 2).to(**like) + weighted @ self.matrix.to(**like)
        return rhs @ self.posterior_covariance.to(**like).T

    def posterior(self, x_obs: torch.Tensor) -> dist.MultivariateNormal:
        """The exact posterior ``p(theta | x_obs)`` as a Pyro ``MultivariateNormal`` with batch shape
        ``x_obs.shape[:-1]``, in the dtype and on the device of ``x_obs``."""
        mean = self.posterior_mean(x_obs)
        return dist.MultivariateNormal(mean, scale_tril=self._posterior_tril.to(mean))

    def _posterior_samples(self, x_obs, n, gen):
        return self.posterior_mean(x_obs) + _randn((n, self.theta_dim), gen) @ self._posterior_tril.T

    def reference_log_posterior(self, theta, x_obs):
        theta = self._check("reference_log_posterior", theta, self.theta_dim, "theta")
        return self.posterior(torch.as_tensor(x_obs).to(theta)).log_prob(theta)


# ================================================================================ two moons
class TwoMoons(Simulator):
    r"""The two-moons simulator (Greenberg et al., 2019; sbibm's "two_moons"): a crescent-shaped, bimodal
    posterior that a Gaussian cannot fit.

    **Simulator.** ``theta ~ U(-1, 1)^2``, ``a ~ U(-pi/2, pi/2)``, ``r ~ N(0.1, 0.01^2)``,

    .. math::

        u = (r\cos a,\ r\sin a), \qquad
        x = u + (0.25, 0) + m(\theta), \qquad
        m(\theta) = \Big(-\frac{|\theta_1 + \theta_2|}{\sqrt 2},\ \frac{\theta_2 - \theta_1}{\sqrt 2}\Big).

    **Likelihood.** ``(a, r) -> u`` is polar coordinates with Jacobian determinant ``r``. Over
    ``a in (-pi/2, pi/2)`` and ``r != 0`` it is one-to-one onto ``{u_1 != 0}``, with inverse
    ``r = sign(u_1) |u|``, ``a = arctan(u_2 / u_1)`` (``r < 0`` is the left half-plane; it has probability
    ``Phi(-10)``, but keeping it makes the density exact). By the change of variables
    ``p_u(u) = p_a(a) p_r(r) / |r|`` and, ``x`` being ``u`` translated,

    .. math::

        p(x \mid \theta) = \frac{1}{\pi}\, \frac{\mathcal N(r;\ 0.1,\ 0.01^2)}{|u|}, \qquad
        u = x - (0.25, 0) - m(\theta),\ r = \mathrm{sign}(u_1)\,|u| .

    **Posterior, exactly.** ``m`` folds the plane onto ``{m_1 <= 0}``: writing ``s = theta_1 + theta_2`` and
    ``d = theta_2 - theta_1``, ``m = (-|s|, d) / sqrt 2``, so each ``m`` with ``m_1 < 0`` has two preimages,
    ``s = +-sqrt 2 |m_1|``, ``d = sqrt 2 m_2``, and on either branch ``m`` is an isometry (``|det| = 1``).
    Hence sampling ``u ~ p_u``, setting ``m = x - (0.25, 0) - u``, picking a branch with probability 1/2
    and keeping ``theta`` only if it lies in the prior's box gives draws with density
    ``∝ 1_box(theta) p_u(x - (0.25, 0) - m(theta)) = 1_box(theta) p(x | theta) ∝ p(theta | x)``: exact
    rejection sampling (:meth:`reference_posterior_samples`). Its acceptance rate ``alpha(x)`` is
    ``(1/2) ∫_box p(x | theta) d theta``, so the evidence is ``p(x) = (1/4) ∫_box p(x | theta) d theta =
    alpha(x) / 2`` (:meth:`log_evidence`, by a deterministic midpoint rule over ``(a, r)`` and both
    branches), and ``log p(theta | x) = log p(x | theta) - log 4 - log p(x)`` inside the box.
    """

    name = "two_moons"
    theta_dim = 2
    x_dim = 2
    r_loc, r_scale, shift = 0.1, 0.01, 0.25

    @property
    def prior(self):
        one = torch.ones(2)
        return dist.Uniform(-one, one).to_event(1)

    def _sample_prior(self, n, gen):
        return 2 * _rand((n, 2), gen) - 1

    @staticmethod
    def _fold(theta):
        """``m(theta)``."""
        s, d = theta[..., 0] + theta[..., 1], theta[..., 1] - theta[..., 0]
        return torch.stack([-s.abs(), d], -1) / math.sqrt(2)

    @staticmethod
    def _unfold(m, branch):
        """The preimage of ``m`` on the branch ``sign(theta_1 + theta_2) = branch``."""
        s, d = branch * math.sqrt(2) * (-m[..., 0]), math.sqrt(2) * m[..., 1]
        return torch.stack([(s - d) / 2, (s + d) / 2], -1)

    def _moon(self, shape, gen):
        """``u + (0.25, 0)`` for ``a``, ``r`` drawn as in the simulator."""
        a = math.pi * (_rand(shape, gen) - 0.5)
        r = self.r_loc + self.r_scale * _randn(shape, gen)
        return torch.stack([r * torch.cos(a) + self.shift, r * torch.sin(a)], -1)

    def _simulate(self, theta, gen):
        return self._moon(theta.shape[:-1], gen) + self._fold(theta)

    def log_likelihood(self, theta, x):
        theta = self._check("log_likelihood", theta, 2, "theta")
        x = self._check("log_likelihood", x, 2, "x")
        theta, x = torch.broadcast_tensors(theta, x.to(theta))
        u = x - self._fold(theta) - x.new_tensor([self.shift, 0.0])
        radius = torch.linalg.vector_norm(u, dim=-1)
        r = torch.where(u[..., 0] >= 0, radius, -radius)
        return (-math.log(math.pi) + dist.Normal(self.r_loc, self.r_scale).log_prob(r) - radius.log())

    def _posterior_samples(self, x_obs, n, gen, chunk: int = 65536, max_proposals: int = 10**8):
        kept, have, proposed = [], 0, 0
        while have < n:
            if proposed >= max_proposals:
                raise RuntimeError(f"TwoMoons.reference_posterior_samples: {have} of {n} draws accepted after "
                                   f"{proposed} proposals; x_obs={x_obs.tolist()} is (nearly) impossible under "
                                   "the prior")
            m = x_obs - self._moon((chunk,), gen)
            branch = torch.where(_rand((chunk,), gen) < 0.5, -1.0, 1.0).to(m)
            theta = self._unfold(m, branch)
            ok = (m[:, 0] <= 0) & (theta.abs() <= 1).all(-1)
            kept.append(theta[ok])
            have += int(ok.sum())
            proposed += chunk
        return torch.cat(kept)[:n]

    def log_evidence(self, x_obs: torch.Tensor, resolution: tuple[int, int] = (2000, 200)) -> torch.Tensor:
        r"""``log p(x_obs)`` for observations ``(..., 2)``: ``log(alpha / 2)`` with the acceptance rate
        ``alpha`` of the exact sampler as a midpoint rule over ``(a, r)``: ``resolution[0]`` equal cells of
        ``a`` by ``resolution[1]`` equal-probability cells of ``r`` (quantiles), both branches counted with
        weight 1/2. The integrand is an indicator, so the error is of the order of the cell size along the
        box's edges: measured against (8000, 400) on observations whose crescent crosses an edge, about 1e-4
        in ``log p(x)`` at the default, 3e-4 at (1000, 100). Where the whole crescent lies inside the box,
        ``alpha = 1`` and ``p(x) = 1/2`` exactly."""
        x_obs = self._check("log_evidence", x_obs, 2, "x_obs")
        f64 = x_obs.to(device="cpu", dtype=torch.float64)
        na, nr = resolution
        a = math.pi * ((torch.arange(na, dtype=torch.float64) + 0.5) / na - 0.5)
        q = (torch.arange(nr, dtype=torch.float64) + 0.5) / nr
        r = self.r_loc + self.r_scale * math.sqrt(2) * torch.erfinv(2 * q - 1)
        u = torch.stack([r[None] * torch.cos(a)[:, None] + self.shift, r[None] * torch.sin(a)[:, None]], -1)
        u = u.reshape(-1, 2)
        out = []
        for x in f64.reshape(-1, 2):
            m = x - u
            inside = [((m[:, 0] <= 0) & (self._unfold(m, b).abs() <= 1).all(-1)).double().mean() for b in (-1, 1)]
            out.append(torch.log((inside[0] + inside[1]) / 4))  # alpha / 2, alpha = mean over branches
        return torch.stack(out).reshape(x_obs.shape[:-1]).to(device=x_obs.device, dtype=x_obs.dtype)

    def reference_log_posterior(self, theta, x_obs, log_evidence: torch.Tensor | None = None):
        """``log p(theta | x_obs)`` (``-inf`` outside the prior's box); ``log_evidence`` may be passed to
        reuse :meth:`log_evidence` of ``x_obs``."""
        theta = self._check("reference_log_posterior", theta, 2, "theta")
        x_obs = torch.as_tensor(x_obs).to(theta)
        if log_evidence is None:
            log_evidence = self.log_evidence(x_obs)
        log_post = self.log_likelihood(theta, x_obs) - math.log(4.0) - torch.as_tensor(log_evidence).to(theta)
        return torch.where((theta.abs() <= 1).all(-1), log_post, torch.full_like(log_post, -math.inf))


# ================================================================================ two-sample scores
def _as_pair(owner, x, y):
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    if x.dim() != 2 or y.dim() != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"{owner}: expected two samples (n, d) and (m, d), got {tuple(x.shape)} and {tuple(y.shape)}")
    if min(x.shape[0], y.shape[0]) < 2:
        raise ValueError(f"{owner}: each sample needs at least 2 points")
    if not (torch.isfinite(x).all() and torch.isfinite(y).all()):
        raise ValueError(f"{owner}: samples must be finite")
    return x.detach().to("cpu", torch.float64), y.detach().to("cpu", torch.float64)


def c2st(x: torch.Tensor, y: torch.Tensor, *, folds: int = 5, hidden_dims: tuple | None = None, epochs: int = 100,
         batch_size: int = 128, lr: float = 1e-3, seed: int = 0) -> float:
    r"""Classifier two-sample test: the held-out accuracy of a classifier trained to tell ``x`` from ``y``.

    Label ``x`` 0 and ``y`` 1 (equal numbers: both samples are cut to the smaller size, rounded down to a
    multiple of ``folds``), train a classifier on part of the pooled points and measure its accuracy on the
    rest. For balanced classes the best possible accuracy is

    .. math::

        \tfrac12 + \tfrac12\, \mathrm{TV}(P, Q), \qquad \mathrm{TV}(P, Q) = \tfrac12 \int |p - q|,

    so it is 0.5 when ``P = Q`` (no classifier beats a coin; an estimate scatters around 0.5, a little
    below or above) and 1 when the two have disjoint supports. A finite classifier trained on finite
    samples finds less than TV, so on average the score is below that best accuracy: a small C2ST says the
    classifier found no difference, not that there is none.

    As in sbibm: inputs standardised with the mean and standard deviation of ``x``; an MLP with
    ``hidden_dims`` (default two layers of ``10 d`` ReLU units) trained with Adam on the cross-entropy,
    ``epochs`` passes of mini-batches of ``batch_size``; stratified ``folds``-fold cross-validation, the
    score the mean held-out accuracy over folds. The folds' classifiers are trained side by side as one
    batched network (Adam acts elementwise, so this equals training them one by one). Deterministic given
    ``seed`` (its own generator; torch's global RNG is left alone). Runs on the CPU in float32.
    """
    x, y = _as_pair("c2st", x, y)
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ValueError(f"c2st: folds must be an int >= 2, got {folds!r}")
    d = x.shape[1]
    n = min(x.shape[0], y.shape[0]) // folds * folds
    if n < folds:
        raise ValueError(f"c2st: {min(x.shape[0], y.shape[0])} points per sample cannot be split into {folds} folds")
    gen = torch.Generator().manual_seed(seed)
    x = x[torch.randperm(x.shape[0], generator=gen)[:n]]
    y = y[torch.randperm(y.shape[0], generator=gen)[:n]]
    loc, scale = x.mean(0), x.std(0).clamp_min(1e-12)
    # stratified folds: fold k holds points k, k + folds, ... of each (shuffled) sample
    per = n // folds
    x_f = ((x - loc) / scale).float().reshape(per, folds, d).transpose(0, 1)  # (folds, per, d)
    y_f = ((y - loc) / scale).float().reshape(per, folds, d).transpose(0, 1)
    data = torch.cat([x_f, y_f], 1)  # (folds, 2 per, d), labels 0 then 1
    labels = torch.cat([torch.zeros(per), torch.ones(per)])
    # fold k trains on every fold but k
    others = torch.tensor([[j for j in range(folds) if j != k] for k in range(folds)])
    train_x = data[others].reshape(folds, -1, d)
    train_y = labels.repeat(folds - 1).expand(folds, -1)
    hidden = tuple(hidden_dims) if hidden_dims is not None else (10 * d, 10 * d)
    params = _classifier(folds, d, hidden, gen)
    opt = torch.optim.Adam(params, lr=lr)
    m = train_x.shape[1]
    for _ in range(epochs):
        order = torch.argsort(torch.rand(folds, m, generator=gen), dim=1)  # one shuffle per fold
        for rows in order.split(batch_size, dim=1):
            xb = torch.gather(train_x, 1, rows[..., None].expand(-1, -1, d))
            yb = torch.gather(train_y, 1, rows)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(_logits(params, xb), yb, reduction="none")
            opt.zero_grad()
            loss.mean(1).sum().backward()  # each fold's mean loss; the folds share no parameter
            opt.step()
    with torch.no_grad():
        guess = (_logits(params, data) > 0).float()
    return (guess == labels).float().mean().item()


def _classifier(folds, d, hidden, gen) -> list:
    """Weights and biases of ``folds`` MLPs side by side, PyTorch's default uniform initialisation drawn
    from ``gen``."""
    params, width = [], d
    for h in (*hidden, 1):
        bound = 1 / math.sqrt(width)
        params.append(((2 * torch.rand(folds, width, h, generator=gen) - 1) * bound).requires_grad_())
        params.append(((2 * torch.rand(folds, 1, h, generator=gen) - 1) * bound).requires_grad_())
        width = h
    return params


def _logits(params, x):
    for i in range(0, len(params), 2):
        x = torch.baddbmm(params[i + 1], x, params[i])
        if i + 2 < len(params):
            x = torch.relu(x)
    return x.squeeze(-1)


def mmd(x: torch.Tensor, y: torch.Tensor, bandwidth: float | None = None) -> float:
    r"""Unbiased estimate of the squared maximum mean discrepancy with a Gaussian kernel.

    .. math::

        \mathrm{MMD}^2(P, Q) = \mathbb E\,k(x, x') + \mathbb E\,k(y, y') - 2\,\mathbb E\,k(x, y), \qquad
        k(u, v) = \exp\!\Big(-\frac{|u - v|^2}{2 h^2}\Big),

    with ``x, x' ~ P`` and ``y, y' ~ Q`` independent. The estimate averages ``k`` over all pairs of distinct
    points within each sample (the U-statistic, unbiased: it can be slightly negative when ``P = Q``) and
    over all cross pairs. With a characteristic kernel such as the Gaussian, ``MMD = 0`` only when ``P = Q``.
    ``bandwidth`` ``h`` defaults to the median distance between points of the pooled sample (the median
    heuristic). Cost and memory ``O((n + m)^2)``.
    """
    x, y = _as_pair("mmd", x, y)
    pooled = torch.cat([x, y])
    sq = torch.cdist(pooled, pooled).pow(2)
    if bandwidth is None:
        off = sq[~torch.eye(pooled.shape[0], dtype=torch.bool)]
        bandwidth = off.median().sqrt().item()
    if not bandwidth > 0:
        raise ValueError(f"mmd: bandwidth must be positive, got {bandwidth!r}")
    k = torch.exp(-sq / (2 * bandwidth ** 2))
    n, m = x.shape[0], y.shape[0]
    kxx, kyy, kxy = k[:n, :n], k[n:, n:], k[:n, n:]
    return float((kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1)) + (kyy.sum() - kyy.diagonal().sum())
                 / (m * (m - 1)) - 2 * kxy.mean())
