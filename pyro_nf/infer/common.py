"""What the fitting routines share: one history type, the divergence error, input checks, the seeded RNG
scope, gradient-norm and finiteness checks, and the eval-mode switch."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import torch
from torch.distributions import TransformedDistribution

from .. import distributed as multiprocess
from ..compose import ConditionalFlow, ConditionalFlowDistribution
from ..flows import transformed


@dataclass
class History:
    r"""What a fit recorded; :func:`~pyro_nf.infer.fit_density` and :func:`~pyro_nf.infer.fit_target` return one.

    ``kind`` is ``"density"`` (maximum likelihood) or ``"target"`` (reverse KL). ``steps[i]`` is the step
    (counted from 1) of ``loss[i]``, the training loss in nats: for a density fit the mean training NLL over
    the steps since the previous record (one record every ``eval_every`` steps; also ``train_nll``), for a
    target fit the negative ELBO estimate :math:`\mathbb{E}_q[\log q(z) - \beta \log \tilde p(z)]` of that
    step, with its annealing factor in ``beta[i]`` (at ``beta = 1`` the loss plus the target's ``log Z`` is
    the reverse KL, so it cannot go below ``-log Z`` in expectation). ``val_nll`` holds the validation NLL at
    each record of a density fit with validation points, ``best_val_nll`` / ``best_step`` the best of them,
    ``stopped_early`` whether ``patience`` stopped the fit. ``wall_time`` is in seconds; ``param_prefix`` is
    the param-store prefix a target fit used.
    """

    kind: str = "density"
    steps: list = field(default_factory=list)
    loss: list = field(default_factory=list)
    val_nll: list = field(default_factory=list)
    beta: list = field(default_factory=list)
    best_val_nll: float = math.inf
    best_step: int = 0
    stopped_early: bool = False
    wall_time: float = 0.0
    param_prefix: str = ""

    @property
    def train_nll(self) -> list:
        """The training NLL records of a density fit (the same list as ``loss``)."""
        return self.loss

    def final_loss(self, window: int = 100) -> float:
        """Mean of the last ``window`` loss records (``nan`` before any)."""
        tail = self.loss[-window:]
        return sum(tail) / len(tail) if tail else math.nan


@contextlib.contextmanager
def eval_mode(modules):
    """Put ``modules`` (one ``nn.Module`` or an iterable of them) in eval mode for the ``with`` block and give
    each its own mode back afterwards, also after an error."""
    modules = [modules] if isinstance(modules, torch.nn.Module) else list(modules)
    modes = [[(m, m.training) for m in module.modules()] for module in modules]
    for module in modules:
        module.eval()
    try:
        yield
    finally:
        for saved in modes:
            for m, mode in saved:
                m.training = mode

def _as_distribution(model) -> TransformedDistribution:
    if isinstance(model, (TransformedDistribution, ConditionalFlowDistribution)):
        return model
    if isinstance(model, ConditionalFlow) or (isinstance(model, torch.nn.Module) and hasattr(model, "inverse_shape")):
        # the routines check their data once (check_data) and score their own samples: validating every batch
        # again would read it back to the host at every step (a synchronisation on a GPU)
        return transformed(model, validate_args=False)
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


def _penalty(modules):
    """The regularisation terms the layers ask a training loss to add (the RNODE terms of continuous flows with
    ``kinetic`` or ``jacobian`` weights, from their last solve), as a function of nothing; ``None`` if none."""
    from ..transforms.continuous import ContinuousFlow

    layers = [m for m in modules.modules() if isinstance(m, ContinuousFlow) and (m.kinetic > 0 or m.jacobian > 0)]
    if not layers:
        return None
    return lambda: sum(layer.regularization for layer in layers)


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


def _read_step(fit: str, loss: torch.Tensor, norm: torch.Tensor, *, world: int, step: int, lr: float, rate: float,
               kept: str = "") -> float:
    """A training step's one host sync: the loss and the gradient norm read together, before the update, and
    :class:`FitDivergedError` if either is not finite. With ``world > 1`` processes both are averaged over the
    processes first (the norm is already the same on each after DDP's gradient average), so every process
    raises or goes on alike. Returns the (averaged) loss."""
    checked = torch.stack([loss.detach(), norm.to(loss.dtype)])
    if world > 1:
        checked = multiprocess.all_reduce_sum(checked) / world
    loss_value, norm_value = checked.tolist()
    for quantity, value in (("loss", loss_value), ("gradient norm", norm_value)):
        if not math.isfinite(value):
            raise FitDivergedError(
                f"{fit}: the {quantity} became {value} at step {step} (lr {lr:g}, this step's rate {rate:.3g}); "
                f"{_suggest(lr)}{kept}", step=step, lr=lr, rate=rate, quantity=quantity, value=value)
    return loss_value


def _check_clip(owner: str, clip_grad) -> None:
    if clip_grad is not None and (isinstance(clip_grad, bool) or not isinstance(clip_grad, (int, float))
                                  or not 0 < clip_grad < math.inf):
        raise ValueError(f"{owner}: clip_grad must be a positive finite number or None, got {clip_grad!r}")


def _check_positive_int(owner: str, **values) -> None:
    for label, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{owner}: {label} must be a positive int, got {value!r}")
