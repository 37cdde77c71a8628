"""Neural posterior estimation: :func:`fit_posterior` fits ``q(theta | x)`` to simulations."""

from __future__ import annotations

import contextlib

import torch

from .common import History, _reference, check_data
from .density import fit_density


def fit_posterior(model, prior, simulator, num_simulations: int = 10000, *, simulation_batch: int = 10000,
                  seed: int | None = None, **fit_options) -> History:
    r"""Neural posterior estimation (single round; Papamakarios & Murray, 2016; Lueckmann et al., 2017;
    Greenberg et al., 2019): fit a conditional flow ``q(theta | x)`` to the posterior of a simulator.

    Draws :math:`\theta_i \sim p(\theta)` from ``prior`` and :math:`x_i \sim p(x \mid \theta_i)` by calling
    ``simulator(theta)`` (a batch ``(n, D)`` of parameters in, a batch ``(n, k)`` of simulations out), then
    minimises

    .. math:: \mathcal L(q) = -\frac1N \sum_{i=1}^N \log q(\theta_i \mid x_i)
              \;\approx\; \mathbb{E}_{p(x)}\big[\mathrm{KL}\big(p(\theta \mid x) \,\|\, q(\theta \mid x)\big)\big]
              + \text{const},

    whose minimiser over all conditional densities is the true posterior for every ``x`` the prior
    predictive reaches: amortised, so ``model.condition(x_obs)`` is the posterior at any observation
    without refitting. The fit is :func:`~pyro_nf.infer.fit_density` with ``context`` = the simulations;
    ``fit_options`` go to it (``steps``, ``batch_size``, ``lr``, ``validation``, ``patience``, ...).

    ``model`` is a conditional flow over ``D`` parameters with ``context_dim = k`` (``nf.build(name, D,
    context_dim=k)``) or ``nf.transformed`` of one; the flow's base is unbounded, so a prior with bounded
    support puts a little posterior mass outside it (map the parameters to the real line first, e.g. by
    the prior's ``biject_to(support).inv``, to avoid that). Simulations far from unit scale fit better
    standardised: ``nf.flows.standardized(flow, 0, 1, context_loc, context_scale)`` keeps the caller's units.

    The simulations are drawn in batches of ``simulation_batch`` without gradients, on the CPU or wherever
    the prior puts them, then moved to the model's device and dtype. With ``seed`` the draws and the fit
    repeat exactly (torch's RNG is forked, the caller's is left as it was). Rows whose simulation is not
    finite are an error that names them.

    Example:
        >>> import torch, pyro.distributions as dist, pyro_nf as nf
        >>> prior = dist.Normal(torch.zeros(2), torch.ones(2)).to_event(1)
        >>> simulator = lambda theta: theta + 0.5 * torch.randn_like(theta)
        >>> flow = nf.build("maf", 2, context_dim=2, num_layers=2)
        >>> history = nf.infer.fit_posterior(flow, prior, simulator, 2000, steps=300, progress=False, seed=0)
        >>> posterior = nf.transformed(flow).condition(torch.tensor([1.0, -1.0]))
        >>> mean = posterior.sample((4000,)).mean(0)  # exact: x / (1 + 0.5^2) = (0.8, -0.8)
        >>> bool((mean - torch.tensor([0.8, -0.8])).abs().max() < 0.15)
        True
    """
    from ..compose import ConditionalFlow, ConditionalFlowDistribution

    flow = model.flow if isinstance(model, ConditionalFlowDistribution) else model
    if not isinstance(flow, ConditionalFlow):
        raise TypeError(f"fit_posterior: expected a conditional flow (nf.build(name, dim, context_dim=k)) or "
                        f"nf.transformed of one, got {type(model).__name__}")
    for label, value in (("num_simulations", num_simulations), ("simulation_batch", simulation_batch)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"fit_posterior: {label} must be a positive int, got {value!r}")
    if not callable(simulator):
        raise TypeError(f"fit_posterior: simulator must be callable, got {type(simulator).__name__}")
    ref = _reference(flow, "fit_posterior")
    with torch.random.fork_rng(devices=[]) if seed is not None else contextlib.nullcontext():
        if seed is not None:
            torch.manual_seed(seed)
        thetas, xs = [], []
        with torch.no_grad():
            remaining = num_simulations
            while remaining:
                n = min(simulation_batch, remaining)
                theta = prior.sample((n,))
                if theta.dim() != 2 or theta.shape[-1] != flow.dim:
                    raise ValueError(f"fit_posterior: the prior's samples have shape {tuple(theta.shape)} for a "
                                     f"batch of {n}; the flow needs ({n}, {flow.dim})")
                x = torch.as_tensor(simulator(theta))
                if x.dim() == 1:
                    x = x.unsqueeze(-1)
                if x.shape != (n, flow.context_dim):
                    raise ValueError(f"fit_posterior: simulator returned shape {tuple(x.shape)} for {n} parameter "
                                     f"rows; the flow's context needs ({n}, {flow.context_dim})")
                thetas.append(theta)
                xs.append(x)
                remaining -= n
        theta = torch.cat(thetas).to(device=ref.device, dtype=ref.dtype)
        x = torch.cat(xs).to(device=ref.device, dtype=ref.dtype)
        check_data(x, flow.context_dim, "fit_posterior (simulations)")
        return fit_density(model, theta, context=x, seed=seed, **fit_options)
