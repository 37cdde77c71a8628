"""A Pyro autoguide whose posterior is any registered pyro_nf flow."""

from __future__ import annotations

import math
import warnings

import pyro
import torch
from pyro.infer.autoguide import AutoContinuous
from pyro.infer.autoguide.initialization import init_to_median
from torch.distributions import biject_to

from ..distributions import StandardNormal
from ..flows import Flow, build, names
from ..flows import options as flow_options
from ..transforms import AffineConstant
from .common import _check_positive_int, eval_mode


class AutoFlow(AutoContinuous):
    r"""A Pyro autoguide whose posterior is a pyro_nf flow over the model's unconstrained latent space.

    Like Pyro's ``AutoNormalizingFlow`` (and as an ``AutoContinuous``), it maps every continuous latent
    site to the real line (``biject_to(site.support)``), concatenates them into one vector of size
    ``latent_dim`` and fits one distribution to it; here

    .. math:: x = \mathrm{loc} + \mathrm{scale} \odot f(z), \qquad z \sim \mathcal N(0, I),

    with ``f = nf.build(flow, latent_dim, **options)`` (any name in ``nf.names()``; ``options`` are that
    architecture's, e.g. ``num_layers``, ``hidden_dims``) followed by a learned elementwise affine layer
    (``AffineConstant``) that starts at ``loc`` = the ``init_loc_fn`` values (default: the prior median)
    and ``scale = init_scale`` (default 1, as Pyro's flow guides start from ``N(0, I)``; see below). Affine
    architectures get ``shift="data"`` unless ``options`` say otherwise: a guide's samples are what the ELBO
    scores, so the shift goes last in the sampling direction (see :class:`~pyro_nf.transforms.scalar.Affine`).
    Augmented architectures get ``learned=False`` unless ``options`` say otherwise: in a guide the ELBO with
    the auxiliary coordinates ``e`` is ``E[log p(x) + log r(e | x) - log q(x, e)]``, and a learned ``r``
    follows ``q(e | x)`` wherever it goes, so nothing holds ``e`` in place; it drifts wide, and the layers
    that condition on it then throw ``x`` far out. Measured on a small hierarchical model (8 latents,
    LogNormal and HalfCauchy scales; 200 steps of ``ClippedAdam`` at ``lr=5e-3``, 16 particles,
    ``init_scale=1``): with a learned ``r`` 2 of 30 seeds went non-finite within 8 steps, with the fixed
    standard normal none, at about the same final loss (152.0 nats fixed, 151.2 learned, over the seeds
    that stayed finite). The whole chain is
    ``guide.flow`` (a :class:`~pyro_nf.Flow`), built on the first call, on the device and in the dtype of the
    model's latent values.

    It works wherever a Pyro autoguide does: ``SVI``, ``Predictive``, the param store (the flow's
    parameters are registered as ``AutoFlow.flow$$$...`` through ``pyro.module``, as Pyro registers any
    ``nn.Module`` attribute of a ``PyroModule``), ``guide.get_posterior()``, ``guide.sample_latent()``.
    ``median()`` and ``quantiles()`` are Monte Carlo estimates from ``num_quantile_samples`` draws (per
    unconstrained coordinate, mapped through each site's bijection), since a flow has no closed form.

    **Initial scale.** The flow starts as the identity, so the guide starts as ``N(loc, init_scale^2 I)``,
    and a guide narrower than the posterior must widen. Adam moves the one log-scale per coordinate of the
    last layer by about the learning rate a step, but the many weights of the flow's networks all at once,
    so the flow widens first and overshoots: it amplifies the base draws' tails, and a draw far out makes
    the model's log density overflow. Measured on Neal's funnel (5 latents, ``y ~ N(0, 3^2)``; 16 particles,
    ``ClippedAdam`` at ``lr=1e-2``, clip 10, 30 steps, seeds 0-19): from ``init_scale=0.1`` RealNVP's and
    Glow's parameters went non-finite within 4 steps in 4 of 20 seeds each, and in most of the other seeds
    the mean loss over the 30 steps exceeded 1000 nats; from ``init_scale=1`` none went non-finite, mean
    losses near 2. Over every architecture (200 steps at ``lr=5e-3`` decayed tenfold, seeds 0-9, the funnel
    and a small hierarchical model) ``init_scale=0.1`` left non-finite parameters in 21 of 240 fits
    (RealNVP 7 of 10 on the hierarchical model) and ``init_scale=1`` in none, with a lower final loss in 21
    of the 24 pairs of architecture and model. The exception that matters is NICE on the hierarchical model
    (391 against 180 nats): its volume-preserving layers leave the narrowing to the two diagonal layers,
    which move by about the learning rate a step. Lower ``init_scale`` for a posterior known to be much
    narrower than 1 in unconstrained space if the fit stays finite; raise it for one much wider.

    **Param store.** As with every Pyro autoguide, the names depend on the class only, so two AutoFlow
    guides in one process share names. A stale entry would silently shadow the new guide's parameters
    (``pyro.module`` keeps what the store already holds), so on set-up the guide replaces any
    ``AutoFlow.flow$$$`` entries it finds, with a warning; call ``pyro.clear_param_store()`` between fits,
    as Pyro's examples do, to avoid both.

    Raises ``ValueError`` for an unknown architecture (listing ``nf.names()``) or unknown options, and, on
    the first call, for a model with a discrete latent site (naming it: hide such sites with
    ``poutine.block`` and enumerate them, as for any ``AutoContinuous`` guide).

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> from pyro.infer import SVI, Trace_ELBO
        >>> from pyro_nf.infer import AutoFlow
        >>> def model(y):
        ...     loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
        ...     scale = pyro.sample("scale", dist.LogNormal(0.0, 1.0))
        ...     with pyro.plate("data", len(y)):
        ...         pyro.sample("y", dist.Normal(loc, scale), obs=y)
        >>> pyro.clear_param_store()
        >>> guide = AutoFlow(model, "nsf_coupling", num_layers=2)
        >>> svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
        >>> losses = [svi.step(torch.randn(50) * 2) for _ in range(20)]
        >>> guide.flow.dim, sorted(guide.median(torch.randn(50)))
        (2, ['loc', 'scale'])
    """

    def __init__(self, model, flow: str = "iaf", *, init_loc_fn=init_to_median, init_scale: float = 1.0,
                 num_quantile_samples: int = 4096, **options):
        if flow not in names():
            raise ValueError(f"AutoFlow: unknown flow architecture {flow!r}; valid names: {', '.join(names())}")
        unknown = sorted(set(options) - set(flow_options(flow)))
        if unknown:
            raise ValueError(f"AutoFlow: unknown option(s) {unknown} for {flow!r}; valid options: "
                             f"{sorted(flow_options(flow))}")
        if not (isinstance(init_scale, (int, float)) and init_scale > 0):
            raise ValueError(f"AutoFlow: init_scale must be a positive number, got {init_scale!r}")
        _check_positive_int("AutoFlow", num_quantile_samples=num_quantile_samples)
        self._flow_name = flow
        self._flow_options = dict(options)
        if "shift" in flow_options(flow):
            self._flow_options.setdefault("shift", "data")
        if "learned" in flow_options(flow):  # Augment's q(e | x): fixed in a guide, see the docstring
            self._flow_options.setdefault("learned", False)
        self._init_scale = float(init_scale)
        self.num_quantile_samples = num_quantile_samples
        super().__init__(model, init_loc_fn=init_loc_fn)

    def _discrete_site(self):
        trace = getattr(self, "prototype_trace", None)
        if trace is None:
            return None
        for name, site in trace.iter_stochastic_nodes():
            if site["fn"].support.is_discrete:
                return name, site
        return None

    def _raise_if_discrete(self, cause=None):
        found = self._discrete_site()
        if found is not None:
            name, site = found
            raise ValueError(
                f"AutoFlow: the model's latent site {name!r} is discrete ({type(site['fn']).__name__}); AutoFlow "
                f"fits continuous latent sites only. Hide it, e.g. AutoFlow(poutine.block(model, hide=[{name!r}]))"
                f", and enumerate it (TraceEnum_ELBO) or give it its own guide (AutoGuideList)."
            ) from cause

    def _setup_prototype(self, *args, **kwargs):
        try:
            super()._setup_prototype(*args, **kwargs)
        except (ValueError, NotImplementedError) as error:
            self._raise_if_discrete(error)
            raise
        self._raise_if_discrete()
        loc = self._init_loc().detach()
        dim = self.latent_dim
        try:
            # the random structure (LU permutations and signs, random initialisations) from a fixed seed: what the
            # param store does not hold is then the same in every build, so a stored guide restores exactly
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                body = build(self._flow_name, dim, **self._flow_options)
        except ValueError as error:
            raise ValueError(f"AutoFlow: cannot build {self._flow_name!r} over the model's {dim} unconstrained "
                             f"latent dimension(s): {error}") from None
        affine = AffineConstant(dim)
        with torch.no_grad():
            affine.shift.copy_(loc)
            affine.log_scale.fill_(math.log(self._init_scale))
        flow = Flow([*body.parts, affine], dim=dim, name=self._flow_name).to(device=loc.device, dtype=loc.dtype)
        prefix = self._pyro_get_fullname("flow") + "$$$"
        store = pyro.get_param_store()
        stored = {k: store[k] for k in store.keys() if k.startswith(prefix)}
        expected = {prefix + name: p for name, p in flow.named_parameters()}
        if stored and stored.keys() == expected.keys() and all(
                stored[k].shape == expected[k].shape for k in expected):
            # a guide saved through Pyro's param store (store.save / store.load): restore it
            with torch.no_grad():
                for key, value in stored.items():
                    expected[key].copy_(value.detach().to(expected[key]))
            for part in flow.parts:  # trained in the sampling direction: never re-initialise from data
                if hasattr(part, "initialized"):
                    part.initialized.fill_(True)
        elif stored:
            warnings.warn(f"AutoFlow: replacing {len(stored)} param-store entries named {prefix}... that do not fit "
                          f"this guide's {self._flow_name!r} flow (another architecture, size or model); call "
                          "pyro.clear_param_store() between fits", stacklevel=3)
            for key in stored:
                del store[key]
        self.flow = flow

    def get_base_dist(self):
        ref = self.flow.parts[-1].shift
        return StandardNormal(self.flow.base_dim(), device=ref.device, dtype=ref.dtype)  # shape-changing layers

    def get_transform(self, *args, **kwargs):
        return self.flow

    @torch.no_grad()
    def _latent_draws(self, *args, **kwargs) -> torch.Tensor:
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        with eval_mode(self.flow):
            return self.get_posterior(*args, **kwargs).sample((self.num_quantile_samples,))

    @torch.no_grad()
    def quantiles(self, quantiles, *args, **kwargs):
        """Posterior quantiles of each latent site (Monte Carlo, ``num_quantile_samples`` draws): a dict
        of tensors whose first dimension runs over ``quantiles``."""
        latents = self._latent_draws(*args, **kwargs)
        q = torch.as_tensor(quantiles, dtype=latents.dtype, device=latents.device).reshape(-1)
        values = torch.quantile(latents, q, dim=0)  # (Q, latent_dim)
        result = {}
        for row in values:
            for site, unconstrained in self._unpack_latent(row):
                result.setdefault(site["name"], []).append(biject_to(site["fn"].support)(unconstrained))
        return {name: torch.stack(v) for name, v in result.items()}

    @torch.no_grad()
    def median(self, *args, **kwargs):
        """Posterior median of each latent site (Monte Carlo, ``num_quantile_samples`` draws)."""
        return {name: v[0] for name, v in self.quantiles([0.5], *args, **kwargs).items()}
