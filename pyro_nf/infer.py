"""Fitting flows and judging the fit.

- ``fit_density``: maximum likelihood on data; ``nll`` the held-out negative log-likelihood.
- ``fit_target``: reverse KL against an unnormalised target, Pyro's ELBO (the target is the model,
  the flow the guide); ``reverse_kl``, ``importance_log_normalizer`` and ``effective_sample_size``
  judge such a fit.
- ``AutoFlow``: a Pyro autoguide whose posterior is any registered flow over the model's
  unconstrained latent space.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import time
import warnings
from dataclasses import dataclass, field

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions.torch_distribution import TorchDistributionMixin
from pyro.infer.autoguide import AutoContinuous
from pyro.infer.autoguide.initialization import init_to_median
from torch.distributions import TransformedDistribution, biject_to
from tqdm.auto import tqdm

from . import distributed as multiprocess
from .compose import ConditionalFlow, ConditionalFlowDistribution
from .distributions import StandardNormal
from .flows import Flow, build, names, transformed
from .flows import options as flow_options
from .transforms import AffineConstant


@dataclass
class History:
    """What a fit recorded: mean training loss (NLL in nats) per evaluation window, the
    validation NLL at each evaluation, the best one and the wall time in seconds."""

    steps: list = field(default_factory=list)
    train_nll: list = field(default_factory=list)
    val_nll: list = field(default_factory=list)
    best_val_nll: float = math.inf
    best_step: int = 0
    wall_time: float = 0.0
    stopped_early: bool = False


def _as_distribution(model) -> TransformedDistribution:
    if isinstance(model, (TransformedDistribution, ConditionalFlowDistribution)):
        return model
    if isinstance(model, ConditionalFlow) or (isinstance(model, torch.nn.Module) and hasattr(model, "inverse_shape")):
        return transformed(model)
    raise TypeError(f"expected a TransformedDistribution or a flow, got {type(model).__name__}")


def _modules(distribution: TransformedDistribution) -> torch.nn.ModuleList:
    return torch.nn.ModuleList([t for t in distribution.transforms if isinstance(t, torch.nn.Module)])


def _log_prob(distribution, x, context=None):
    """``log p(x)``, or ``log p(x | c)`` of a conditional model (one context row per data row)."""
    if isinstance(distribution, ConditionalFlowDistribution):
        return distribution.condition(context).log_prob(x)
    return distribution.log_prob(x)


def _data_dim(distribution) -> int:
    if isinstance(distribution, ConditionalFlowDistribution):
        return distribution.flow.dim
    return distribution.event_shape[-1]


def _check_context(distribution, data, context, owner: str):
    """The context rows of a conditional model's data, on the data's device and dtype (``None`` otherwise)."""
    conditional = isinstance(distribution, ConditionalFlowDistribution)
    if conditional and context is None:
        raise ValueError(f"{owner}: the model is conditional (context_dim={distribution.flow.context_dim}); "
                         "pass context=, one row per data row")
    if not conditional and context is not None:
        raise ValueError(f"{owner}: context= was given but the model is not conditional (build it with context_dim)")
    if context is None:
        return None
    context = torch.as_tensor(context)
    check_data(context, distribution.flow.context_dim, f"{owner} (context)")
    if context.shape[0] != data.shape[0]:
        raise ValueError(f"{owner}: {data.shape[0]} data rows but {context.shape[0]} context rows")
    return context.detach().to(device=data.device, dtype=data.dtype)


def _reference(modules, owner: str = "fit_density"):
    for p in modules.parameters():
        return p
    raise ValueError(f"{owner}: the model has no trainable parameters")


def check_data(data: torch.Tensor, dim: int, owner: str) -> None:
    """Raise a clear error for data that is not ``(N, dim)`` floating point and finite."""
    if not isinstance(data, torch.Tensor):
        raise TypeError(f"{owner}: data must be a torch.Tensor, got {type(data).__name__}")
    if data.dim() != 2 or data.shape[-1] != dim:
        raise ValueError(f"{owner}: expected data of shape (N, {dim}), got {tuple(data.shape)}")
    if not data.is_floating_point():
        raise TypeError(f"{owner}: data must be floating point, got dtype {data.dtype}")
    bad = ~torch.isfinite(data).all(-1)
    if bad.any():
        rows = bad.nonzero().flatten()[:5].tolist()
        raise ValueError(f"{owner}: data has NaN or infinite values (rows {rows}{'...' if bad.sum() > 5 else ''})")


@torch.no_grad()
def nll(model, data: torch.Tensor, batch_size: int = 4096, context: torch.Tensor | None = None) -> float:
    """Mean negative log-likelihood of ``data`` in nats (of ``data`` given ``context`` for a conditional
    model, one context row per data row), evaluated in chunks in eval mode.

    ``data`` (and ``context``) may be tensors, numpy arrays or nested lists; as in :func:`fit_density` they are
    converted to the device and dtype of the model's parameters (float64 data scored by a float32 model are
    scored in float32)."""
    distribution = _as_distribution(model)
    data = torch.as_tensor(data)
    ref = next(iter(_modules(distribution).parameters()), None)
    if ref is not None:
        data = data.to(device=ref.device, dtype=ref.dtype)
        context = None if context is None else torch.as_tensor(context).to(device=ref.device, dtype=ref.dtype)
    check_data(data, _data_dim(distribution), "nll")
    if data.shape[0] == 0:
        raise ValueError("nll: no data points (an empty tensor has no mean negative log-likelihood)")
    context = _check_context(distribution, data, context, "nll")
    modules = _modules(distribution)
    was_training = modules.training
    modules.eval()
    contexts = context.split(batch_size) if context is not None else [None] * len(data.split(batch_size))
    try:
        total = sum(-_log_prob(distribution, chunk, c).sum().item() for chunk, c in zip(data.split(batch_size),
                                                                                         contexts))
    finally:
        modules.train(was_training)
    return total / data.shape[0]


class FitDivergedError(RuntimeError):
    """A fit stopped because its loss, its gradients or its parameters stopped being finite.

    Raised by :func:`fit_density` and :func:`fit_target` at the first step where it happens, before that
    step's update, so the model is left finite: at its best validated parameters when the fit tracked
    them, else at its parameters from before the failing step (always in eval mode). ``step`` is that
    step (counted from 1), ``lr`` the learning rate the fit was given, ``rate`` the (scheduled) rate of
    that step, ``quantity`` what stopped being finite (``"loss"``, ``"gradient norm"`` or
    ``"parameters"``) and ``value`` its value.
    """

    def __init__(self, message: str, *, step: int, lr: float, rate: float, quantity: str, value: float):
        super().__init__(message)
        self.step, self.lr, self.rate, self.quantity, self.value = step, lr, rate, quantity, value


def _seeded(seed: int | None, device: torch.device):
    """A context in which torch's RNG starts from ``seed`` (CPU and, for a CUDA model, its device) and
    after which the caller's RNG state is back as it was; a no-op for ``seed=None``."""
    if seed is None:
        return contextlib.nullcontext()
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int or None, got {seed!r}")

    @contextlib.contextmanager
    def scope():
        cuda = device.type == "cuda"
        with torch.random.fork_rng(devices=[device] if cuda else []):
            torch.default_generator.manual_seed(seed)
            if cuda:
                with torch.cuda.device(device):
                    torch.cuda.manual_seed(seed)
            yield

    return scope()


def _grad_norm(params: list, clip_grad: float | None) -> torch.Tensor:
    """The global 2-norm of the gradients of ``params`` (before clipping), after clipping them to
    ``clip_grad`` in that norm (``None``: no clipping). A tensor: reading it is the caller's one sync."""
    if clip_grad is not None:
        return torch.nn.utils.clip_grad_norm_(params, clip_grad)
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros((), device=params[0].device, dtype=params[0].dtype)
    if hasattr(torch.nn.utils, "get_total_norm"):  # torch >= 2.6
        return torch.nn.utils.get_total_norm(grads)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


def _params_finite(params: list) -> bool:
    """Whether every parameter is finite (one reduction, one sync)."""
    return bool(torch.isfinite(torch.stack([p.detach().sum() for p in params]).sum()))


def _snapshot(modules: torch.nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in modules.state_dict().items()}


def _suggest(lr: float) -> str:
    return f"try a smaller lr (now {lr:g}; e.g. {lr / 10:g})"


def _check_clip(owner: str, clip_grad) -> None:
    if clip_grad is not None and (isinstance(clip_grad, bool) or not isinstance(clip_grad, (int, float))
                                  or not 0 < clip_grad < math.inf):
        raise ValueError(f"{owner}: clip_grad must be a positive finite number or None, got {clip_grad!r}")


def _validation_split(n: int, validation: float, patience: int | None) -> int:
    """The number of validation points a fraction leaves of ``n``; a clear error when the split leaves
    no training point, or no validation point although one was asked for."""
    if isinstance(validation, bool) or not isinstance(validation, (int, float)) or not 0.0 <= validation < 1.0:
        raise ValueError(f"fit_density: validation must be a fraction in [0, 1) or a tensor, got {validation!r}")
    n_val = int(round(validation * n))
    if n - n_val < 1:
        raise ValueError(f"fit_density: validation={validation:g} of {n} points leaves {n - n_val} training "
                         f"points; at least 1 is needed")
    if validation > 0 and n_val < 1:
        need = math.floor(0.5 / validation)
        while round(validation * need) < 1:  # round() halves to even: 0.5 rounds to 0
            need += 1
        hint = " (patience needs validation points)" if patience is not None else ""
        raise ValueError(f"fit_density: validation={validation:g} of {n} points rounds to 0 validation points"
                         f"{hint}; at least 1 is needed: give at least {need} points, a larger fraction, a "
                         f"tensor of validation points, or validation=0 to fit without validation")
    return n_val


def fit_density(
    model,
    data: torch.Tensor,
    *,
    steps: int = 2000,
    batch_size: int = 256,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    validation: float | torch.Tensor = 0.1,
    eval_every: int = 100,
    patience: int | None = None,
    clip_grad: float | None = 10.0,
    schedule: str | None = "cosine",
    seed: int | None = None,
    progress: bool = True,
    context: torch.Tensor | None = None,
    distributed: bool | None = None,
) -> History:
    r"""Fit ``model`` (a flow, or a ``TransformedDistribution`` over one) to ``data`` ``(N, D)``
    by maximum likelihood: Adam on mini-batches of ``-mean log p(x)``.

    A conditional model (a :class:`~pyro_nf.ConditionalFlow` or ``nf.transformed`` of one) is fitted to
    ``p(x | c)`` with ``context`` ``(N, context_dim)``, one row per data row, split and batched with the data
    (``validation`` is then a fraction).

    ``validation`` is a fraction of ``data`` held out (``0``: none), or a tensor of validation points;
    its NLL is measured every ``eval_every`` steps. With ``patience`` the fit stops after that many
    evaluations without improvement and restores the best parameters. ``schedule="cosine"``
    (default) decays the learning rate to zero over ``steps`` (``None``: constant). Gradients are
    clipped to global 2-norm ``clip_grad`` (all parameters together, as
    ``torch.nn.utils.clip_grad_norm_``; ``None``: no clipping). Data are moved to the model's device
    and dtype and detached (they are not parameters). ``progress=False`` silences the progress bar.

    **Seed.** With ``seed`` the fit runs in a fork of torch's RNG seeded with it
    (``torch.random.fork_rng``; the CPU generator and, for a CUDA model, its device's): the validation
    split, the batch order and every random draw inside the model (``Augment``, stochastic layers)
    repeat exactly, and the caller's RNG state is the same after the fit as before. ``None``: all of
    these come from torch's global RNG as it stands.

    **Sizes.** Checked before training: a fraction that leaves no training point, or rounds to no
    validation point (``validation=0.1`` of 5 points), raises ``ValueError`` with the counts, as does
    ``patience`` without validation points.

    **More than one process.** With ``distributed=True`` (default: whenever the process was launched by
    ``torchrun``) the fit joins the process group (gloo on the CPU, NCCL on CUDA) and trains one model with
    ``DistributedDataParallel``: every process draws the same split and batch order (the seed is process
    0's), scores its equal share of each global batch of ``batch_size`` rows, and the averaged gradients
    are those of the global batch, so the result equals the single-process fit up to the order of
    floating-point reductions. The loss and gradient norm are averaged over processes before the
    divergence check, and the validation NLL is summed over the processes' shares, so every process decides
    the same. ActNorm is initialised from the first global batch on every process before training;
    BatchNorm's running statistics are process 0's. Only process 0 shows the progress bar. See
    :mod:`pyro_nf.distributed`.

    **Failures.** At every step the loss and the gradients' global norm are checked (read together,
    the one host sync per step the loss needs anyway) before the update; if either is not finite the
    fit raises :class:`FitDivergedError` naming the step and the learning rate, so the parameters are
    never updated with a non-finite step. On that and on any other exception during training
    (``KeyboardInterrupt`` included) the model is left at its best validated parameters if validation
    tracked any, else at its last finite ones, and in eval mode.
    """
    distribution = _as_distribution(model)
    modules = _modules(distribution)
    ref = _reference(modules)
    dim = _data_dim(distribution)
    check_data(data, dim, "fit_density")
    context = _check_context(distribution, data, context, "fit_density")
    if context is not None and isinstance(validation, torch.Tensor):
        raise ValueError("fit_density: with a context, validation must be a fraction of the data")
    for label, value in (("steps", steps), ("batch_size", batch_size), ("eval_every", eval_every)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"fit_density: {label} must be a positive int, got {value!r}")
    if patience is not None and (not isinstance(patience, int) or isinstance(patience, bool) or patience < 1):
        raise ValueError(f"fit_density: patience must be a positive int or None, got {patience!r}")
    if not lr > 0:
        raise ValueError(f"fit_density: lr must be positive, got {lr!r}")
    if schedule not in (None, "cosine"):
        raise ValueError(f"fit_density: schedule must be 'cosine' or None, got {schedule!r}")
    _check_clip("fit_density", clip_grad)
    data = data.detach().to(device=ref.device, dtype=ref.dtype)
    if context is not None:
        context = context.to(device=ref.device, dtype=ref.dtype)
    train_c = val_c = None
    if isinstance(validation, torch.Tensor):
        check_data(validation, dim, "fit_density (validation)")
        val_given = validation.detach().to(device=ref.device, dtype=ref.dtype)
        if patience is not None and val_given.shape[0] == 0:
            raise ValueError("fit_density: patience needs validation points, but the validation tensor has 0 rows")
        n_val = None
    else:
        n_val = _validation_split(data.shape[0], validation, patience)
        if patience is not None and n_val == 0:
            raise ValueError("fit_density: patience needs validation points, but validation=0 holds none out; "
                             "give a validation fraction or tensor")
    if distributed is None:
        distributed = multiprocess.launched()
    if distributed:
        multiprocess.setup(ref.device)
        if batch_size % multiprocess.world_size():
            raise ValueError(f"fit_density: batch_size {batch_size} must be divisible by the number of processes "
                             f"({multiprocess.world_size()}) so that every process scores an equal share")
        if seed is None:  # one seed for all: the processes must agree on the split and the batches
            shared = torch.randint(0, 2**31 - 1, (), device=ref.device if ref.device.type == "cuda" else "cpu")
            seed = int(multiprocess.broadcast_tensor(shared))
    with _seeded(seed, ref.device):
        if n_val is None:
            train, val = data, val_given
        else:
            order = torch.randperm(data.shape[0]).to(data.device)
            train, val = data[order[n_val:]], data[order[:n_val]]
            if context is not None:
                train_c, val_c = context[order[n_val:]], context[order[:n_val]]
        return _density_loop(distribution, modules, train, val, steps=steps, batch_size=batch_size, lr=lr,
                             weight_decay=weight_decay, eval_every=eval_every, patience=patience,
                             clip_grad=clip_grad, schedule=schedule, progress=progress, train_c=train_c,
                             val_c=val_c, distributed=bool(distributed))


class _ShardLoss(torch.nn.Module):
    """``-mean log p(x | c)`` of a shard, as a module's forward: what ``DistributedDataParallel`` wraps (it
    synchronises gradients for the parameters that a wrapped forward used)."""

    def __init__(self, distribution, modules):
        super().__init__()
        self.modules_ = modules
        self.distribution = distribution

    def forward(self, x, context=None):
        return -_log_prob(self.distribution, x, context).mean()


def _sharded_nll(distribution, val, val_c) -> float:
    """The validation NLL of the whole validation set, each process scoring its share."""
    rows = multiprocess.shard(torch.arange(val.shape[0], device=val.device))
    with torch.no_grad():
        part = -_log_prob(distribution, val[rows], None if val_c is None else val_c[rows]).sum()
    total = multiprocess.all_reduce_sum(part.reshape(1).to(torch.float64))
    return float(total) / val.shape[0]


def _density_loop(distribution, modules, train, val, *, steps, batch_size, lr, weight_decay, eval_every,
                  patience, clip_grad, schedule, progress, train_c=None, val_c=None, distributed=False) -> History:
    params = [p for p in modules.parameters() if p.requires_grad]
    world = multiprocess.world_size() if distributed else 1
    ddp = None
    optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps) if schedule == "cosine" else None
    history = History()
    best_state, bad_evals, window = None, 0, []
    modules.train()
    start = time.perf_counter()
    bar = tqdm(range(1, steps + 1), disable=not progress or not multiprocess.is_main(), desc="fit_density",
               leave=True)
    order, cursor = torch.randperm(train.shape[0]).to(train.device), 0
    if distributed:
        from torch.nn.parallel import DistributedDataParallel

        first = order[:batch_size]
        with torch.no_grad():  # data-dependent state (ActNorm) from the global first batch, on every process
            _log_prob(distribution, train[first], None if train_c is None else train_c[first])
        ddp = DistributedDataParallel(_ShardLoss(distribution, modules))
    try:
        for step in bar:
            if cursor + batch_size > train.shape[0]:
                order, cursor = torch.randperm(train.shape[0]).to(train.device), 0
            rows = order[cursor:cursor + batch_size]
            cursor += batch_size
            if ddp is not None:
                rows = multiprocess.shard(rows)
                loss = ddp(train[rows], None if train_c is None else train_c[rows])
            else:
                loss = -_log_prob(distribution, train[rows], None if train_c is None else train_c[rows]).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            norm = _grad_norm(params, clip_grad)
            checked = torch.stack([loss.detach(), norm.to(loss.dtype)])
            if ddp is not None:  # every process decides on the global values
                checked = multiprocess.all_reduce_sum(checked) / world
            # the step's one host sync: loss and gradient norm together, checked before the update
            loss_value, norm_value = checked.tolist()
            for quantity, value in (("loss", loss_value), ("gradient norm", norm_value)):
                if not math.isfinite(value):
                    raise FitDivergedError(
                        f"fit_density: the {quantity} became {value} at step {step} (lr {lr:g}, this step's rate "
                        f"{optimizer.param_groups[0]['lr']:.3g}); {_suggest(lr)}",
                        step=step, lr=lr, rate=optimizer.param_groups[0]["lr"], quantity=quantity, value=value)
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            window.append(loss_value)
            if step % eval_every == 0 or step == steps:
                history.steps.append(step)
                history.train_nll.append(sum(window) / len(window))
                window = []
                postfix = {"train_nll": f"{history.train_nll[-1]:.3f}"}
                if val.shape[0] > 0:
                    value = _sharded_nll(distribution, val, val_c) if ddp is not None else \
                        nll(distribution, val, context=val_c)
                    modules.train()
                    history.val_nll.append(value)
                    postfix["val_nll"] = f"{value:.3f}"
                    if value < history.best_val_nll:
                        history.best_val_nll, history.best_step, bad_evals = value, step, 0
                        best_state = _snapshot(modules)
                    else:
                        bad_evals += 1
                        if patience is not None and bad_evals >= patience:
                            history.stopped_early = True
                            break
                bar.set_postfix(postfix)
        if not _params_finite(params):  # Adam's finite steps keep them finite: only a broken model gets here
            raise FitDivergedError(
                f"fit_density: the parameters are not finite after step {step} (lr {lr:g}); {_suggest(lr)}",
                step=step, lr=lr, rate=optimizer.param_groups[0]["lr"], quantity="parameters", value=math.nan)
    except BaseException as error:
        if best_state is not None:
            modules.load_state_dict(best_state)
            kept = (f"the model was restored to its best validated parameters (step {history.best_step}, "
                    f"validation NLL {history.best_val_nll:.4f})")
        elif isinstance(error, FitDivergedError) and error.quantity == "parameters":
            kept = "no finite state was kept to restore"
        else:
            kept = "the model keeps its parameters from before that step"
        if isinstance(error, FitDivergedError):
            error.args = (f"{error.args[0]}; {kept}",)
        raise
    else:
        if patience is not None and best_state is not None:
            modules.load_state_dict(best_state)
    finally:
        bar.close()
        modules.eval()
        history.wall_time = time.perf_counter() - start
    return history


# --------------------------------------------------------------------------- reverse KL, the Pyro way
@dataclass
class TargetHistory:
    """What :func:`fit_target` recorded, one entry per step: the loss (the negative ELBO estimate in nats,
    ``E_q[log q(z) - beta log p~(z)]``) and the annealing factor ``beta``; the wall time in seconds.

    At ``beta = 1`` the loss plus the target's ``log Z`` is the reverse KL ``KL(q || p)``; so the loss
    cannot go below ``-log Z`` in expectation. ``param_prefix`` is the param-store prefix the fit used.
    """

    steps: list = field(default_factory=list)
    loss: list = field(default_factory=list)
    beta: list = field(default_factory=list)
    wall_time: float = 0.0
    param_prefix: str = ""

    def final_loss(self, window: int = 100) -> float:
        """Mean loss of the last ``window`` steps (``nan`` before any step)."""
        tail = self.loss[-window:]
        return sum(tail) / len(tail) if tail else math.nan


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


def _check_positive_int(owner: str, **values) -> None:
    for label, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{owner}: {label} must be a positive int, got {value!r}")


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
) -> TargetHistory:
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
    warm start that keeps ``q`` broad while it finds the modes (without it a planar flow on ``U1`` can
    settle on one of the two modes, a reverse KL near ``log 2``) and leaves most steps at
    :math:`\beta = 1`. Starting much colder hurts the wide targets: from 0.01 the flow first spreads over
    ``z1`` to widths near 40 (``U2``'s envelope is 4) and ends further from the target.

    Optimiser: Adam (``torch.optim.Adam``) at learning rate ``lr``, the gradients clipped to global 2-norm
    ``clip_grad`` (all parameters together, as ``torch.nn.utils.clip_grad_norm_``, the same meaning as in
    :func:`fit_density`; ``None``: no clipping), the learning rate decayed to zero over ``steps`` on a
    cosine (``schedule="cosine"``, the default) or kept constant (``None``). ``progress=False`` silences
    the progress bar. Samples live on the device and in the dtype of the flow's parameters; the target's
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

    **Default budget.** 10000 steps of 256 particles at ``lr=2e-2`` (cosine decay), annealing from 0.2 over
    the first 1000: aimed at a planar flow of 32 layers reaching a reverse KL below 0.05 nats on ``U1`` and
    ``U2`` and below 0.2 on ``U3`` / ``U4``. Measured (``torch.manual_seed(s)`` before building the flow,
    ``seed=s``, float32, one CPU thread; about 11 ms a step on an idle thread for ``U2``, so about 2 minutes
    a target): seed 0 ``U1`` 0.005, ``U2`` 0.076, ``U3`` 0.100, ``U4`` 0.128 nats; seed 1 ``U3`` 0.097,
    ``U4`` 0.164. (The earlier loop, ``SVI.step`` with ``ClippedAdam`` clamping each gradient element to
    ``[-10, 10]``, 14-17 ms a step, gave 0.077 / 0.099 on ``U3`` and 0.097 / 0.345 on ``U4`` for seeds 0 / 1:
    the seed matters more than the optimiser's details.) Without clipping ``U4`` ended at 0.256 (seed 0): its
    early gradient norms reach 100 or more. ``U2``, four periods of the sine inside two widths of its
    envelope, stays a little above its aim at this budget (0.055 after 20000 steps at ``lr=1e-2`` with the
    earlier loop).

    Returns a :class:`TargetHistory`.
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

    params = [p for p in modules.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr)
    history = TargetHistory(param_prefix=prefix)
    modules.train()
    start = time.perf_counter()
    bar = tqdm(range(steps), disable=not progress, desc=f"fit_target {getattr(target, 'name', '')}".rstrip())
    report = max(10, steps // 100)
    try:
        with _seeded(seed, ref.device), pyro.validation_enabled(False):  # validation reads every site to the host
            for t in bar:
                beta = 1.0 if annealing is None else min(1.0, beta0 + t / anneal_steps)
                state["beta"] = beta
                rate = 0.5 * lr * (1.0 + math.cos(math.pi * t / steps)) if schedule == "cosine" else lr
                for group in optimizer.param_groups:
                    group["lr"] = rate
                guide_trace = poutine.trace(flow_guide).get_trace()
                model_trace = poutine.trace(poutine.replay(target_model, trace=guide_trace)).get_trace()
                loss = (guide_trace.log_prob_sum() - model_trace.log_prob_sum()) / num_particles
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                norm = _grad_norm(params, clip_grad)
                # the step's one host sync: loss and gradient norm together, checked before the update
                loss_value, norm_value = torch.stack([loss.detach(), norm.to(loss.dtype)]).tolist()
                for quantity, value in (("loss", loss_value), ("gradient norm", norm_value)):
                    if not math.isfinite(value):
                        raise FitDivergedError(
                            f"fit_target: the {quantity} became {value} at step {t + 1} (lr {lr:g}, this step's "
                            f"rate {rate:.3g}); {_suggest(lr)}; the flow keeps its parameters from before that step",
                            step=t + 1, lr=lr, rate=rate, quantity=quantity, value=value)
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
    modules = _modules(distribution)
    was_training = modules.training
    modules.eval()
    parts = []
    try:
        remaining = num_samples
        while remaining > 0:
            n = min(batch_size, remaining)
            x = distribution.rsample((n,)) if distribution.has_rsample else distribution.sample((n,))
            log_q = distribution.log_prob(x)
            parts.append((target.log_prob(x) - log_q).to(torch.float64))
            remaining -= n
    finally:
        modules.train(was_training)
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


# --------------------------------------------------------------------------- a flow autoguide
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
        was_training = self.flow.training
        self.flow.eval()
        try:
            return self.get_posterior(*args, **kwargs).sample((self.num_quantile_samples,))
        finally:
            self.flow.train(was_training)

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
