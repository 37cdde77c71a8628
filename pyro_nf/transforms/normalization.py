r"""Normalisation layers: ActNorm (data-initialised affine) and flow batch norm."""

from __future__ import annotations

import torch
from torch import nn

from .base import FlowTransform
from .linear import AffineConstant, _batch_ladj


class ActNorm(AffineConstant):
    r"""Activation normalisation (Kingma & Dhariwal, 2018): ``y = x * e^{s} + t`` with ``s, t``
    learned, ``log|det J| = sum(s)``.

    **Data-dependent initialisation.** The first call in the *density* direction (the inverse,
    as ``log_prob`` makes it) with at least two points sets ``t = mean(y)`` and
    ``s = log std(y)`` over all leading dimensions, so that the layer's latent output starts
    standardised. Calls in the sampling direction before that leave it at the identity. The
    ``initialized`` flag is a buffer, so a loaded ``state_dict`` is not re-initialised.
    """

    def __init__(self, input_dim: int, eps: float = 1e-6, cache_size: int = 1):
        super().__init__(input_dim, scale=True, shift=True, cache_size=cache_size)
        self.eps = eps
        self.register_buffer("initialized", torch.tensor(False))

    @torch.no_grad()
    def initialize(self, y: torch.Tensor) -> None:
        """Set the parameters from a batch ``y`` of data-side values."""
        rows = y.detach().reshape(-1, self.input_dim)
        if rows.shape[0] < 2:
            raise ValueError(f"ActNorm: initialisation needs at least 2 points, got shape {tuple(y.shape)}")
        self.shift.copy_(rows.mean(0))
        self.log_scale.copy_(rows.std(0, unbiased=False).clamp_min(self.eps).log())
        self.initialized.fill_(True)

    def _inverse_with_ladj(self, y):
        if not self.initialized and y.reshape(-1, self.input_dim).shape[0] >= 2:
            self.initialize(y)
        return super()._inverse_with_ladj(y)

    def extra_repr(self):
        return f"input_dim={self.input_dim}, initialized={bool(self.initialized)}"


class BatchNorm(FlowTransform):
    r"""Batch normalisation as a flow layer (Dinh et al., 2017; Papamakarios et al., 2017).

    In the density direction,

    .. math:: x = \frac{y - \mu}{\sqrt{\sigma^2 + \epsilon}}\, e^{\gamma} + \beta,

    with the batch mean and variance of ``y`` (over all leading dimensions) in training mode,
    which also updates running averages, and the running averages in eval mode. The sampling
    direction inverts it with the running averages. The forward log-det is

    .. math:: \log|\det J| = \textstyle\sum_i \tfrac12\log(\sigma_i^2+\epsilon) - \gamma_i .

    In training mode the two directions use different statistics, so they are exact inverses
    only in eval mode.
    """

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
            with torch.no_grad():
                self.running_mean.lerp_(mean.detach(), self.momentum)
                self.running_var.lerp_(rows.var(0, unbiased=True).detach(), self.momentum)
        else:
            mean, var = self.running_mean, self.running_var
        x = (y - mean) / torch.sqrt(var + self.eps) * self.log_gamma.exp() + self.beta
        return x, self._ladj_from_var(var, y)

    def extra_repr(self):
        return f"input_dim={self.input_dim}, momentum={self.momentum}"
