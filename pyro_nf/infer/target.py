"""Reverse KL, Pyro's way: :func:`fit_target` fits a flow to an unnormalised target; :func:`reverse_kl`,
:func:`importance_log_normalizer` and :func:`effective_sample_size` judge such a fit."""

from __future__ import annotations

import itertools
import math
import time

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions.torch_distribution import TorchDistributionMixin
from tqdm.auto import tqdm

from .. import distributed as multiprocess
from .common import (
    History,
    _as_distribution,
    _check_clip,
    _check_positive_int,
    _grad_norm,
    _modules,
    _penalty,
    _read_step,
    _reference,
    _seeded,
    eval_mode,
)

_PREFIXES = itertools.count()


def _fresh_prefix(stem: str) -> str:
    """A param-store module name that no entry of the current param store uses."""
    keys = list(pyro.get_param_store().keys())
    while True:
        prefix = f"{stem}_{next(_PREFIXES)}"
        if not any(k == prefix or k.startswith(prefix + "$$$") for k in keys):
            return prefix


def _drop_prefix(prefix: str) -> None:
    store = pyro.get_param_store()
    for key in [k for k in store.keys() if k.startswith(prefix + "$$$")]:
        del store[key]



def _check_target(distribution, target, owner: str) -> None:
    if not isinstance(target, torch.distributions.Distribution):
        raise TypeError(f"{owner}: target must be a (Pyro) distribution with an unnormalised log_prob, "
                        f"got {type(target).__name__}")
    if tuple(target.event_shape) != tuple(distribution.event_shape):
        raise ValueError(f"{owner}: the target's event shape {tuple(target.event_shape)} differs from the "
                         f"flow's {tuple(distribution.event_shape)}")


def fit_target(
    model,
    target,
    *,
    steps: int = 10000,
    lr: float = 2e-2,
    num_particles: int = 256,
    annealing: tuple[float, int | float] | None = (0.2, 0.1),
    schedule: str | None = "cosine",
    clip_grad: float | None = 10.0,
    seed: int | None = None,
    progress: bool = True,
    distributed: bool | None = None,
) -> History:
    r"""Fit ``model`` (a flow, or a ``TransformedDistribution`` over one) to an unnormalised ``target``
    by minimising the reverse KL divergence :math:`\mathrm{KL}(q \,\|\, p)`, Pyro's way.

    The target is the Pyro model, ``pyro.sample("z", target)`` (its ``log_prob`` is the unnormalised
    :math:`\log \tilde p = -U`; any Pyro distribution with the flow's event shape will do); the flow is the
    guide, ``pyro.module(prefix, flow)`` then ``pyro.sample("z", q)``, both under a plate of
    ``num_particles``. The loss is what Pyro's ``Trace_ELBO(num_particles, vectorize_particles=True)``
    computes for this reparameterised guide, read off the two Pyro traces (guide, then model replayed on
    its samples): the mean over the particles of :math:`\log q(z) - \beta \log \tilde p(z)`, so its
    minimum over ``q`` is ``-log Z`` at :math:`\beta = 1`, where the loss plus ``log Z`` is the reverse KL
    in nats. (Not ``SVI.step`` itself: Pyro reads each site's value to the host before the backward pass,
    and this loop needs one read per step, of the loss and the gradient norm together; see *Failures*.)

    ``annealing=(beta0, anneal_steps)`` multiplies :math:`\log \tilde p` at step ``t`` (counted from 0)
    by :math:`\beta_t = \min(1, \beta_0 + t / \text{anneal_steps})` (Rezende & Mohamed, 2015, used
    ``(0.01, 10000)``), through ``pyro.poutine.scale`` on the model's site; ``anneal_steps`` is a number
    of steps (an int) or a fraction of ``steps`` (a float in (0, 1]). ``None`` fits at :math:`\beta = 1`
    throughout. The default ``(0.2, 0.1)`` anneals from 0.2 over the first tenth of the steps: a short
    warm start that keeps ``q`` broad while it finds the modes (with the planar initialisation before
    the near-identity one, a planar flow on ``U1`` fitted without it settled on one of the two modes, a reverse
    KL near ``log 2``; since then K = 8 and 32 find both without annealing, ``benchmarks/variational.md``) and
    leaves most steps at
    :math:`\beta = 1`. Starting much colder hurts the wide targets: from 0.01 the flow first spreads over
    ``z1`` to widths near 40 (``U2``'s envelope is 4) and ends further from the target.

    Optimiser: Adam (``torch.optim.Adam``) at learning rate ``lr``, the gradients clipped to global 2-norm
    ``clip_grad`` (all parameters together, as ``torch.nn.utils.clip_grad_norm_``, the same meaning as in
    :func:`fit_density`; ``None``: no clipping), the learning rate decayed to zero over ``steps`` on a
    cosine (``schedule="cosine"``, the default) or kept constant (``None``). ``progress=False`` silences
    the progress bar. Continuous flows built with RNODE weights (``kinetic``, ``jacobian``) have their
    regularisation term added to the minimised loss (the history records the ELBO term alone). Samples live
    on the device and in the dtype of the flow's parameters; the target's
    ``log_prob`` must follow its input there (``pyro_nf.targets`` do).

    **Seed.** As in :func:`fit_density`: with ``seed`` the fit runs in a fork of torch's RNG seeded with it
    (every particle, hence the whole fit, repeats exactly, and the caller's RNG state is the same after
    the fit as before); ``None``: the particles come from torch's global RNG as it stands.

    **Failures.** At every step the loss and the gradients' global norm are checked before the update; if
    either is not finite (a particle drawn so far out that the target's log density overflows, or a
    learning rate too large), the fit raises :class:`FitDivergedError` naming the step and the learning
    rate. The flow then keeps its parameters from before that step, which are finite, and on that or any
    other exception it is left in eval mode.

    **Param store.** The flow's parameters are registered under a fresh prefix (``fit_target_<n>``, one no
    entry of the param store uses) for the length of the fit and removed from the store when it ends
    (also after an error), so several fits in one process never clash, with each other or with the
    user's own entries; the fitted values live in the flow itself. The prefix is in
    ``history.param_prefix``.

    **Default budget.** 10000 steps of 256 particles at ``lr=2e-2`` (cosine decay), annealing from 0.2 over the
    first 1000: aimed at a planar flow of 32 layers reaching a reverse KL below 0.05 nats on ``U1`` and ``U2`` and
    below 0.2 on ``U3`` / ``U4``. Measured (``torch.manual_seed(s)`` before building the flow, ``seed=s``, float32,
    one CPU thread; about 11 ms a step on an idle thread for ``U2``, so about 2 minutes a target), with the
    near-identity planar initialisation (``python benchmarks/variational.py --fit-target U1,U2,U3,U4 --seeds 0``):
    seed 0 ``U1`` 0.016, ``U2`` 0.110, ``U3`` 0.093, ``U4`` 0.236 nats; ``U4`` seeds 1 / 2 0.110 / 0.092. (With the
    former contracting initialisation: 0.004, 0.147, 0.096, 0.109 and 0.116 / 0.124; an earlier measurement gave
    ``U2`` 0.076, not reproduced. The earlier loop, ``SVI.step`` with ``ClippedAdam`` clamping each gradient element
    to ``[-10, 10]``, 14-17 ms a step, gave 0.077 / 0.099 on ``U3`` and 0.097 / 0.345 on ``U4`` for seeds 0 / 1: the
    seed matters more than the optimiser's details.) Without clipping ``U4`` ended at 0.256 (seed 0): its early
    gradient norms reach 100 or more. ``U2``, four periods of the sine inside two widths of its envelope, stays a
    little above its aim at this budget (0.055 after 20000 steps at ``lr=1e-2`` with the earlier loop).

    **More than one process.** With ``distributed=True`` (default: whenever the process was launched by
    ``torchrun``) the fit joins the process group (gloo on the CPU, NCCL on CUDA) and trains one flow with
    ``DistributedDataParallel``: every process draws its own ``num_particles`` particles, process ``r`` from
    the RNG stream seeded with ``seed + r`` (``seed=None``: a seed drawn by process 0 and shared), and the
    averaged gradients are those of the ELBO over all ``world_size * num_particles`` particles. The loss in
    the history is averaged over processes too, so every process decides the same on divergence; only
    process 0 shows the progress bar. The parameters start from process 0's (DDP broadcasts them).

    Returns a :class:`~pyro_nf.infer.History` (``kind="target"``, one record per step).

    Example:
        >>> import pyro_nf as nf
        >>> flow, target = nf.build("planar", 2, num_layers=8), nf.targets.load("U1")
        >>> history = nf.infer.fit_target(flow, target, steps=300, progress=False, seed=0)
        >>> kl = nf.infer.reverse_kl(flow, target, num_samples=5000)
        >>> history.kind, len(history.loss), bool(0 < kl < 1.5)
        ('target', 300, True)
    """
    distribution = _as_distribution(model)
    if not isinstance(distribution, TorchDistributionMixin):  # a torch one: Pyro's sample sites need expand_by
        distribution = dist.TransformedDistribution(distribution.base_dist, distribution.transforms)
    modules = _modules(distribution)
    ref = _reference(modules, "fit_target")
    _check_target(distribution, target, "fit_target")
    _check_positive_int("fit_target", steps=steps, num_particles=num_particles)
    if not lr > 0:
        raise ValueError(f"fit_target: lr must be positive, got {lr!r}")
    if schedule not in (None, "cosine"):
        raise ValueError(f"fit_target: schedule must be 'cosine' or None, got {schedule!r}")
    _check_clip("fit_target", clip_grad)
    if not distribution.has_rsample:
        raise ValueError("fit_target: the model must be reparameterised (its base distribution needs rsample)")
    if annealing is not None:
        try:
            beta0, anneal_steps = annealing
        except (TypeError, ValueError):
            raise ValueError(f"fit_target: annealing must be None or (start_beta, anneal_steps), "
                             f"got {annealing!r}") from None
        if not 0 < beta0 <= 1:
            raise ValueError(f"fit_target: the annealing start beta must lie in (0, 1], got {beta0!r}")
        if isinstance(anneal_steps, float) and 0 < anneal_steps <= 1:
            anneal_steps = max(1, round(anneal_steps * steps))
        if not isinstance(anneal_steps, int) or isinstance(anneal_steps, bool) or anneal_steps < 1:
            raise ValueError(f"fit_target: anneal_steps must be a positive int or a fraction of steps in (0, 1], "
                             f"got {anneal_steps!r}")

    if distributed is None:
        distributed = multiprocess.launched()
    world = 1
    if distributed:
        multiprocess.setup(ref.device)
        world = multiprocess.world_size()
        if seed is None:  # one seed for all, each process then takes its own stream from it
            shared = torch.randint(0, 2**31 - 1, (), device=ref.device if ref.device.type == "cuda" else "cpu")
            seed = int(multiprocess.broadcast_tensor(shared))
        seed = seed + multiprocess.rank()

    state = {"beta": 1.0}
    particles = pyro.plate("particles", num_particles, dim=-1)
    prefix = _fresh_prefix("fit_target")

    def target_model():
        with particles, poutine.scale(scale=state["beta"]):
            pyro.sample("z", target)

    def flow_guide():
        pyro.module(prefix, modules)
        with particles:
            pyro.sample("z", distribution)

    def negative_elbo():
        guide_trace = poutine.trace(flow_guide).get_trace()
        model_trace = poutine.trace(poutine.replay(target_model, trace=guide_trace)).get_trace()
        return (guide_trace.log_prob_sum() - model_trace.log_prob_sum()) / num_particles

    params = [p for p in modules.parameters() if p.requires_grad]
    penalty = _penalty(modules)
    loss_of = negative_elbo
    if distributed:
        from torch.nn.parallel import DistributedDataParallel

        loss_of = DistributedDataParallel(_ParticleLoss(modules, negative_elbo))  # broadcasts process 0's state
    optimizer = torch.optim.Adam(params, lr=lr)
    history = History(kind="target", param_prefix=prefix)
    modules.train()
    start = time.perf_counter()
    bar = tqdm(range(steps), disable=not progress or not multiprocess.is_main(),
               desc=f"fit_target {getattr(target, 'name', '')}".rstrip())
    report = max(10, steps // 100)
    try:
        with _seeded(seed, ref.device), pyro.validation_enabled(False):  # validation reads every site to the host
            for t in bar:
                beta = 1.0 if annealing is None else min(1.0, beta0 + t / anneal_steps)
                state["beta"] = beta
                rate = 0.5 * lr * (1.0 + math.cos(math.pi * t / steps)) if schedule == "cosine" else lr
                for group in optimizer.param_groups:
                    group["lr"] = rate
                loss = loss_of()
                optimizer.zero_grad(set_to_none=True)
                # under DDP: the gradients averaged over the processes; the history keeps the ELBO term alone
                (loss if penalty is None else loss + penalty()).backward()
                loss_value = _read_step("fit_target", loss, _grad_norm(params, clip_grad), world=world, step=t + 1,
                                        lr=lr, rate=rate, kept="; the flow keeps its parameters from before that step")
                optimizer.step()
                history.steps.append(t + 1)
                history.loss.append(loss_value)
                history.beta.append(beta)
                if (t + 1) % report == 0:
                    bar.set_postfix({"loss": f"{history.final_loss(report):.3f}", "beta": f"{beta:.2f}"},
                                    refresh=False)
    finally:
        bar.close()
        _drop_prefix(prefix)
        modules.eval()
        history.wall_time = time.perf_counter() - start
    return history


class _ParticleLoss(torch.nn.Module):
    """The negative ELBO of one process's particles as a module's forward: what ``DistributedDataParallel``
    wraps (it averages the gradients of the parameters that a wrapped forward used)."""

    def __init__(self, modules, loss):
        super().__init__()
        self.modules_ = modules
        self.loss = loss

    def forward(self):
        return self.loss()


# --------------------------------------------------------------------------- diagnostics
def _log_normalizer_of(target, log_normalizer):
    if log_normalizer is not None:
        return float(log_normalizer)
    exact = getattr(target, "exact_log_normalizer", None)
    value = exact() if callable(exact) else None
    if value is None:
        quadrature = getattr(target, "log_normalizer", None)
        value = quadrature() if callable(quadrature) else 0.0  # a plain Pyro distribution is normalised
    return float(value)


@torch.no_grad()
def _log_weights(model, target, num_samples: int, batch_size: int, owner: str):
    """The importance log-weights ``log p~(x) - log q(x)`` of ``num_samples`` draws ``x ~ q``, float64,
    on the model's device."""
    distribution = _as_distribution(model)
    _check_target(distribution, target, owner)
    _check_positive_int(owner, num_samples=num_samples, batch_size=batch_size)
    parts = []
    with eval_mode(_modules(distribution)):
        remaining = num_samples
        while remaining > 0:
            n = min(batch_size, remaining)
            x = distribution.rsample((n,)) if distribution.has_rsample else distribution.sample((n,))
            log_q = distribution.log_prob(x)
            parts.append((target.log_prob(x) - log_q).to(torch.float64))
            remaining -= n
    log_w = torch.cat(parts)
    if torch.isnan(log_w).any():
        raise ValueError(f"{owner}: the importance log-weights have NaN values "
                         f"({int(torch.isnan(log_w).sum())} of {num_samples})")
    return log_w


def reverse_kl(model, target, num_samples: int = 20000, log_normalizer: float | None = None,
               batch_size: int = 8192) -> float:
    r"""Monte Carlo estimate of :math:`\mathrm{KL}(q \,\|\, p)` in nats, for the model ``q`` (a flow or a
    ``TransformedDistribution``) and a ``target`` known up to its normaliser:
    :math:`\mathbb{E}_q[\log q - \log \tilde p] + \log Z`, over ``num_samples`` draws from ``q`` (in
    batches of ``batch_size``, without gradients, on the model's device and dtype).

    ``log Z`` is ``log_normalizer`` when given, else ``target.exact_log_normalizer()`` where it is not
    ``None``, else ``target.log_normalizer()`` (quadrature), else 0 (a normalised Pyro distribution).
    The Monte Carlo standard error is about ``std(log q - log p~) / sqrt(num_samples)``; an estimate can
    come out slightly negative for a near-perfect fit.

    For a model whose ``log_prob`` scores a random path (``Augment``, stochastic layers), ``log q`` is the
    one-path value of each sample's own path, so the result is the KL between path distributions, an
    upper bound on the KL of the samples themselves.
    """
    log_w = _log_weights(model, target, num_samples, batch_size, "reverse_kl")
    return float(-log_w.mean()) + _log_normalizer_of(target, log_normalizer)


def importance_log_normalizer(model, target, num_samples: int = 20000,
                              batch_size: int = 8192) -> tuple[float, float]:
    r"""Importance-sampling estimate of the target's ``log Z`` with the model as proposal, and its standard
    error: with weights :math:`w_i = \tilde p(x_i) / q(x_i)`, :math:`x_i \sim q`,

    .. math:: \log \hat Z = \log \tfrac1N \textstyle\sum_i w_i, \qquad
              \mathrm{se} \approx \frac{\mathrm{sd}(w)}{\sqrt N\, \bar w} \quad\text{(delta method)}.

    :math:`\hat Z` is unbiased, :math:`\log \hat Z` biased low by about :math:`\mathrm{se}^2 / 2`. The error is
    only as trustworthy as the weights' variance estimate: a proposal that misses a mode gives a small
    error and a wrong answer (a flow that has collapsed onto one of two wells reports an ESS near 1
    and a confident ``log Z`` too low by the missing mass). Without gradients, in batches, on the
    model's device.
    """
    log_w = _log_weights(model, target, num_samples, batch_size, "importance_log_normalizer")
    n = log_w.numel()
    log_z = float(torch.logsumexp(log_w, 0)) - math.log(n)
    if n < 2:
        return log_z, math.inf
    w = torch.exp(log_w - log_w.max())  # scale-free: the ratio sd / mean is unchanged
    se = float(w.std() / (w.mean() * math.sqrt(n)))
    return log_z, se


def effective_sample_size(model, target, num_samples: int = 20000, batch_size: int = 8192) -> float:
    r"""Kish's effective sample size of the importance weights :math:`w_i = \tilde p(x_i) / q(x_i)`,
    :math:`x_i \sim q`, as a fraction of ``num_samples``:
    :math:`(\sum_i w_i)^2 / (N \sum_i w_i^2) \in (0, 1]`; 1 when ``q`` is proportional to the target.
    Without gradients, in batches, on the model's device."""
    log_w = _log_weights(model, target, num_samples, batch_size, "effective_sample_size")
    log_ess = 2.0 * torch.logsumexp(log_w, 0) - torch.logsumexp(2.0 * log_w, 0)
    return float(torch.exp(log_ess - math.log(log_w.numel())).clamp(max=1.0))

