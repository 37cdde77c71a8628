"""Fitting flows and judging the fit.

- :mod:`~pyro_nf.infer.density`: ``fit_density``, maximum likelihood on data (``p(x)`` or ``p(x | c)``),
  and ``nll``, the held-out negative log-likelihood.
- :mod:`~pyro_nf.infer.target`: ``fit_target``, reverse KL against an unnormalised target, Pyro's ELBO (the
  target is the model, the flow the guide); ``reverse_kl``, ``importance_log_normalizer`` and
  ``effective_sample_size`` judge such a fit.
- :mod:`~pyro_nf.infer.posterior`: ``fit_posterior``, neural posterior estimation of ``q(theta | x)`` from a
  prior and a simulator.
- :mod:`~pyro_nf.infer.autoguide`: ``AutoFlow``, a Pyro autoguide whose posterior is any registered flow over
  the model's unconstrained latent space.

Both fits return one :class:`History` and raise :class:`FitDivergedError` when a step stops being finite.
"""

from .autoguide import AutoFlow
from .common import FitDivergedError, History, check_data, eval_mode
from .density import fit_density, nll
from .posterior import fit_posterior
from .target import effective_sample_size, fit_target, importance_log_normalizer, reverse_kl

__all__ = [
    "AutoFlow",
    "FitDivergedError",
    "History",
    "check_data",
    "effective_sample_size",
    "eval_mode",
    "fit_density",
    "fit_posterior",
    "fit_target",
    "importance_log_normalizer",
    "nll",
    "reverse_kl",
]
