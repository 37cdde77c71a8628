"""Maximum likelihood: :func:`fit_density` fits a flow (or a conditional flow) to data, :func:`nll` scores it."""

from __future__ import annotations

import math
import time

import torch
from tqdm.auto import tqdm

from .. import distributed as multiprocess
from .common import (
    FitDivergedError,
    History,
    _as_distribution,
    _check_clip,
    _check_context,
    _data_dim,
    _grad_norm,
    _log_prob,
    _modules,
    _params_finite,
    _penalty,
    _read_step,
    _reference,
    _seeded,
    _snapshot,
    _suggest,
    check_data,
    eval_mode,
)


@torch.no_grad()
def nll(model, data: torch.Tensor, batch_size: int = 4096, context: torch.Tensor | None = None) -> float:
    """Mean negative log-likelihood of ``data`` in nats (of ``data`` given ``context`` for a conditional
    model, one context row per data row), evaluated in chunks in eval mode.

    ``data`` (and ``context``) may be tensors, numpy arrays or nested lists; as in :func:`fit_density` they are
    converted to the device and dtype of the model's parameters (float64 data scored by a float32 model are
    scored in float32).

    Example:
        >>> import numpy as np, pyro_nf as nf
        >>> model = nf.transformed(nf.build("maf", 2, num_layers=2))
        >>> round(nf.infer.nll(model, np.zeros((4, 2))), 4)  # a fresh flow is N(0, I): log(2 pi)
        1.8379
    """
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
    contexts = context.split(batch_size) if context is not None else [None] * len(data.split(batch_size))
    with eval_mode(_modules(distribution)):
        total = sum(-_log_prob(distribution, chunk, c).sum().item() for chunk, c in zip(data.split(batch_size),
                                                                                         contexts))
    return total / data.shape[0]


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
    ``torch.nn.utils.clip_grad_norm_``; ``None``: no clipping). Continuous flows built with RNODE weights
    (``kinetic``, ``jacobian``) have their regularisation term added to the minimised loss; the history
    records the NLL alone. Data are moved to the model's device
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

    Example:
        >>> import pyro_nf as nf
        >>> data = nf.datasets.two_moons(1000, seed=0)
        >>> model = nf.transformed(nf.build("realnvp", 2, num_layers=4))
        >>> history = nf.infer.fit_density(model, data, steps=200, progress=False, seed=0)
        >>> history.kind, len(history.val_nll), history.best_val_nll < 2.0
        ('density', 2, True)
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
    history = History(kind="density")
    best_state, bad_evals, window = None, 0, []
    penalty = _penalty(modules)
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
            (loss if penalty is None else loss + penalty()).backward()  # the history keeps the NLL alone
            loss_value = _read_step("fit_density", loss, _grad_norm(params, clip_grad), world=world, step=step,
                                    lr=lr, rate=optimizer.param_groups[0]["lr"])
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            window.append(loss_value)
            if step % eval_every == 0 or step == steps:
                history.steps.append(step)
                history.loss.append(sum(window) / len(window))
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


