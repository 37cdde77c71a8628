r"""Normalisation layers: ActNorm (data-initialised affine) and flow batch norm."""

from __future__ import annotations

import torch
from torch import nn

from ..base import FlowTransform
from .linear import AffineConstant, _batch_ladj


class ActNorm(AffineConstant):
    r"""Activation normalisation (Kingma & Dhariwal, 2018): ``x = z e^{s} + t`` with ``s, t`` learned,
    ``log|det J| = sum(s)``.

    **Data-dependent initialisation, in whichever direction comes first.**

    * The first call in the *density* direction (``log_prob``, ``inv``) sets ``t`` and ``s`` from its batch
      ``x`` (all leading dimensions pooled) so that the layer's latent output starts standardised: ``t`` is
      the per-coordinate median and ``e^s`` the median absolute deviation times 1.4826 (the standard
      deviation for Gaussian data; robust, so one outlier such as ``1e30`` cannot set the scale), or the
      standard deviation where the deviation is 0. It refuses a batch with non-finite values, and one of
      fewer than ``min_init_points`` points (default 16), too few to estimate a scale.
    * The first call in the *sampling* direction (``rsample``, SVI, :class:`~pyro_nf.infer.AutoFlow`) keeps
      the identity: its input is already standardised by the base or the layer before it.

    Either way the layer is then initialised for good: a guide trained by SVI is never re-initialised by a
    later ``log_prob``. The new state is committed only when the whole call succeeds (a later layer that
    raises leaves the layer uninitialised), under a lock, so two threads making the first call together do
    not mix their batches. ``initialized`` is a buffer: a loaded ``state_dict`` is not re-initialised.
    """

    def __init__(self, input_dim: int, eps: float = 1e-6, min_init_points: int = 16, cache_size: int = 1):
        super().__init__(input_dim, scale=True, shift=True, cache_size=cache_size)
        if not isinstance(min_init_points, int) or min_init_points < 2:
            raise ValueError(f"ActNorm: min_init_points must be an int >= 2, got {min_init_points!r}")
        self.eps = eps
        self.min_init_points = min_init_points
        self.register_buffer("initialized", torch.tensor(False))
        self.__dict__["_known_initialized"] = False  # a host-side mirror: no device sync once initialised
        self.__dict__["_staged_init"] = None

    def _is_initialized(self) -> bool:
        if self.__dict__.get("_known_initialized"):
            return True
        known = bool(self.initialized)
        self.__dict__["_known_initialized"] = known
        return known

    @torch.no_grad()
    def _statistics(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows = x.detach().reshape(-1, self.input_dim)
        n = rows.shape[0]
        if n < self.min_init_points:
            raise ValueError(
                f"ActNorm: data-dependent initialisation needs at least {self.min_init_points} points to estimate a "
                f"scale, got {n} (input shape {tuple(x.shape)}); make the first density call on a larger batch, "
                "call initialize(batch), or lower min_init_points"
            )
        finite = torch.isfinite(rows).all(-1)
        if not bool(finite.all()):
            bad = (~finite).nonzero().flatten()
            raise ValueError(
                f"ActNorm: the first batch, which would initialise the layer, has non-finite values in {bad.numel()} "
                f"of {n} rows (first: {bad[:5].tolist()}); the layer stays uninitialised"
            )
        wide = rows.double()
        center = wide.median(0).values
        spread = 1.4826 * (wide - center).abs().median(0).values
        spread = torch.where(spread > 0, spread, wide.std(0, unbiased=False))
        log_scale = spread.clamp_min(self.eps).log()
        return center.to(rows.dtype), log_scale.to(rows.dtype)

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        """Initialise from a batch ``x`` of data-side values now (see the class docstring)."""
        shift, log_scale = self._statistics(x)
        self._write(shift, log_scale)

    def _write(self, shift, log_scale):
        with torch.no_grad():
            if shift is not None:
                self.shift.copy_(shift)
                self.log_scale.copy_(log_scale)
            self.initialized.fill_(True)
        self.__dict__["_known_initialized"] = True

    def _staged_parts(self, v, x_batch=None):
        """The ``(log_scale, shift)`` of this call: the parameters, or, on the first call, the staged
        initial values (whose gradient still reaches the parameters)."""
        if self._is_initialized():
            return self.log_scale, self.shift
        self._stage()
        if self._is_initialized():  # another thread committed while this one waited
            return self.log_scale, self.shift
        staged = self.__dict__.get("_staged_init")
        if staged is None:
            staged = self._statistics(x_batch) if x_batch is not None else (None, None)
            self.__dict__["_staged_init"] = staged
        shift, log_scale = staged
        if shift is None:
            return self.log_scale, self.shift
        return (self.log_scale + (log_scale - self.log_scale).detach(),
                self.shift + (shift - self.shift).detach())

    def _commit_staged(self):
        staged = self.__dict__.get("_staged_init")
        self.__dict__["_staged_init"] = None
        if staged is not None and not self._is_initialized():
            self._write(*staged)

    def _discard_staged(self):
        self.__dict__["_staged_init"] = None

    def _forward_with_ladj(self, z):
        log_scale, shift = self._staged_parts(z)
        return z * log_scale.exp() + shift, _batch_ladj(log_scale.sum(), z)

    def _inverse_with_ladj(self, x):
        log_scale, shift = self._staged_parts(x, x_batch=x)
        return (x - shift) * torch.exp(-log_scale), _batch_ladj(log_scale.sum(), x)

    def _load_from_state_dict(self, *args, **kwargs):
        self.__dict__["_known_initialized"] = False
        super()._load_from_state_dict(*args, **kwargs)

    def _apply(self, *args, **kwargs):
        self.__dict__["_known_initialized"] = False  # the buffer may be replaced
        return super()._apply(*args, **kwargs)

    def __getstate__(self):
        state = super().__getstate__()
        state["_known_initialized"] = False
        state["_staged_init"] = None
        return state

    def extra_repr(self):
        return f"input_dim={self.input_dim}, initialized={self._is_initialized()}"


class BatchNorm(FlowTransform):
    r"""Batch normalisation as a flow layer (Dinh et al., 2017; Papamakarios et al., 2017).

    In the density direction,

    .. math:: x = \frac{y - \mu}{\sqrt{\sigma^2 + \epsilon}}\, e^{\gamma} + \beta,

    with the batch mean and variance of ``y`` (over all leading dimensions) in training mode,
    which also updates running averages, and the running averages in eval mode. The sampling
    direction inverts it with the running averages. The forward log-det is

    .. math:: \log|\det J| = \textstyle\sum_i \tfrac12\log(\sigma_i^2+\epsilon) - \gamma_i .

    In training mode the two directions use different statistics, so they are exact inverses
    only in eval mode. The running averages change only when the whole call succeeds, and never by a batch
    with non-finite values.
    """

    @property
    def cheap_inverse(self) -> bool:  # see FlowTransform.cheap_inverse: in training the directions differ
        return not self.training

    def __init__(self, input_dim: int, momentum: float = 0.1, eps: float = 1e-5, cache_size: int = 1):
        super().__init__(input_dim, cache_size=cache_size)
        if not 0.0 < momentum <= 1.0:
            raise ValueError(f"BatchNorm: momentum must be in (0, 1], got {momentum!r}")
        if not eps > 0:
            raise ValueError(f"BatchNorm: eps must be positive, got {eps!r}")
        self.momentum = momentum
        self.eps = eps
        self.log_gamma = nn.Parameter(torch.zeros(input_dim))
        self.beta = nn.Parameter(torch.zeros(input_dim))
        self.register_buffer("running_mean", torch.zeros(input_dim))
        self.register_buffer("running_var", torch.ones(input_dim))

    def _ladj_from_var(self, var, like):
        return _batch_ladj((0.5 * torch.log(var + self.eps) - self.log_gamma).sum(), like)

    def _forward_with_ladj(self, x):
        mean, var = self.running_mean, self.running_var
        y = (x - self.beta) * torch.exp(-self.log_gamma) * torch.sqrt(var + self.eps) + mean
        return y, self._ladj_from_var(var, x)

    def _inverse_with_ladj(self, y):
        if self.training:
            rows = y.reshape(-1, self.input_dim)
            if rows.shape[0] < 2:
                raise ValueError(
                    f"BatchNorm: training mode needs a batch of at least 2 points, got shape {tuple(y.shape)}; "
                    "call flow.eval() to use the running statistics"
                )
            mean, var = rows.mean(0), rows.var(0, unbiased=False)
            self._stage()
            self.__dict__["_staged_statistics"] = (mean.detach(), rows.var(0, unbiased=True).detach())
        else:
            mean, var = self.running_mean, self.running_var
        x = (y - mean) / torch.sqrt(var + self.eps) * self.log_gamma.exp() + self.beta
        return x, self._ladj_from_var(var, y)

    @torch.no_grad()
    def _commit_staged(self):
        staged = self.__dict__.pop("_staged_statistics", None)
        if staged is None:
            return
        mean, var = staged
        # a batch with non-finite values leaves the running statistics as they were (no device sync to ask)
        finite = torch.isfinite(mean).all() & torch.isfinite(var).all()
        self.running_mean.copy_(torch.where(finite, self.running_mean.lerp(mean, self.momentum), self.running_mean))
        self.running_var.copy_(torch.where(finite, self.running_var.lerp(var, self.momentum), self.running_var))

    def _discard_staged(self):
        self.__dict__.pop("_staged_statistics", None)

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_staged_statistics", None)
        return state

    def extra_repr(self):
        return f"input_dim={self.input_dim}, momentum={self.momentum}"
