"""Fitting flows: maximum likelihood on data (``fit_density``)."""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

import torch
from torch.distributions import TransformedDistribution
from tqdm.auto import tqdm

from .flows import transformed


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
    if isinstance(model, TransformedDistribution):
        return model
    if isinstance(model, torch.nn.Module) and hasattr(model, "inverse_shape"):
        return transformed(model)
    raise TypeError(f"expected a TransformedDistribution or a flow, got {type(model).__name__}")


def _modules(distribution: TransformedDistribution) -> torch.nn.ModuleList:
    return torch.nn.ModuleList([t for t in distribution.transforms if isinstance(t, torch.nn.Module)])


def _reference(modules):
    for p in modules.parameters():
        return p
    raise ValueError("fit_density: the model has no trainable parameters")


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
def nll(model, data: torch.Tensor, batch_size: int = 4096) -> float:
    """Mean negative log-likelihood of ``data`` in nats, evaluated in chunks in eval mode."""
    distribution = _as_distribution(model)
    modules = _modules(distribution)
    was_training = modules.training
    modules.eval()
    try:
        total = sum(-distribution.log_prob(chunk).sum().item() for chunk in data.split(batch_size))
    finally:
        modules.train(was_training)
    return total / data.shape[0]


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
) -> History:
    r"""Fit ``model`` (a flow, or a ``TransformedDistribution`` over one) to ``data`` ``(N, D)``
    by maximum likelihood: Adam on mini-batches of ``-mean log p(x)``.

    ``validation`` is a fraction of ``data`` held out, or a tensor of validation points; its
    NLL is measured every ``eval_every`` steps. With ``patience`` the fit stops after that many
    evaluations without improvement and restores the best parameters. ``schedule="cosine"``
    (default) decays the learning rate to zero over ``steps`` (``None``: constant). Gradients
    are clipped to norm ``clip_grad``. Data are moved to the model's device and dtype.
    ``progress=False`` silences the progress bar.
    """
    distribution = _as_distribution(model)
    modules = _modules(distribution)
    ref = _reference(modules)
    dim = distribution.event_shape[-1]
    check_data(data, dim, "fit_density")
    for label, value in (("steps", steps), ("batch_size", batch_size), ("eval_every", eval_every)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"fit_density: {label} must be a positive int, got {value!r}")
    if not lr > 0:
        raise ValueError(f"fit_density: lr must be positive, got {lr!r}")
    if schedule not in (None, "cosine"):
        raise ValueError(f"fit_density: schedule must be 'cosine' or None, got {schedule!r}")
    data = data.to(device=ref.device, dtype=ref.dtype)
    gen = torch.Generator()
    gen.manual_seed(seed) if seed is not None else gen.seed()
    if isinstance(validation, torch.Tensor):
        check_data(validation, dim, "fit_density (validation)")
        train, val = data, validation.to(device=ref.device, dtype=ref.dtype)
    else:
        if not 0.0 <= validation < 1.0:
            raise ValueError(f"fit_density: validation must be a fraction in [0, 1) or a tensor, got {validation!r}")
        order = torch.randperm(data.shape[0], generator=gen).to(data.device)
        n_val = int(round(validation * data.shape[0]))
        train, val = data[order[n_val:]], data[order[:n_val]]
    if train.shape[0] == 0:
        raise ValueError("fit_density: no training points left after the validation split")

    optimizer = torch.optim.Adam(modules.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps) if schedule == "cosine" else None
    history = History()
    best_state, bad_evals, window = None, 0, []
    modules.train()
    start = time.perf_counter()
    bar = tqdm(range(1, steps + 1), disable=not progress, desc="fit_density", leave=True)
    order, cursor = torch.randperm(train.shape[0], generator=gen).to(train.device), 0
    for step in bar:
        if cursor + batch_size > train.shape[0]:
            order, cursor = torch.randperm(train.shape[0], generator=gen).to(train.device), 0
        batch = train[order[cursor:cursor + batch_size]]
        cursor += batch_size
        loss = -distribution.log_prob(batch).mean()
        if not torch.isfinite(loss):
            raise RuntimeError(f"fit_density: the loss became {loss.item()} at step {step}; try a smaller lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip_grad is not None:
            torch.nn.utils.clip_grad_norm_(modules.parameters(), clip_grad)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        window.append(loss.item())
        if step % eval_every == 0 or step == steps:
            history.steps.append(step)
            history.train_nll.append(sum(window) / len(window))
            window = []
            postfix = {"train_nll": f"{history.train_nll[-1]:.3f}"}
            if val.shape[0] > 0:
                value = nll(distribution, val)
                modules.train()
                history.val_nll.append(value)
                postfix["val_nll"] = f"{value:.3f}"
                if value < history.best_val_nll:
                    history.best_val_nll, history.best_step, bad_evals = value, step, 0
                    if patience is not None:
                        best_state = copy.deepcopy(modules.state_dict())
                else:
                    bad_evals += 1
                    if patience is not None and bad_evals >= patience:
                        history.stopped_early = True
                        break
            bar.set_postfix(postfix)
    bar.close()
    if best_state is not None:
        modules.load_state_dict(best_state)
    modules.eval()
    history.wall_time = time.perf_counter() - start
    return history
