r"""Base distributions for flows."""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from pyro.distributions import TorchDistribution, constraints

from .transforms.base import FlowTransform

_LOG_2PI = math.log(2 * math.pi)


class StandardNormal(TorchDistribution):
    r"""The standard normal :math:`\mathcal N(0, I_D)` as a Pyro distribution with ``event_shape (D,)``:

    .. math:: \log p(z) = -\tfrac12 \lVert z \rVert^2 - \tfrac D2 \log 2\pi.

    The same density as ``dist.Normal(zeros, ones).to_event(1)``, computed in two elementwise passes
    instead of about six (no ``loc`` to subtract, no ``scale`` to divide by or take the log of): for a
    flow whose layers are cheap the base density is a visible share of ``log_prob``. Samples and
    densities live on ``device`` in ``dtype``; ``batch_shape`` broadcasts like any Pyro distribution.
    """

    arg_constraints: dict = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, dim: int, batch_shape=(), *, device=None, dtype=None, validate_args=None):
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
            raise ValueError(f"StandardNormal: dim must be a positive int, got {dim!r}")
        self._reference = torch.zeros((), device=device, dtype=dtype or torch.get_default_dtype())
        super().__init__(torch.Size(batch_shape), torch.Size([dim]), validate_args=validate_args)

    @property
    def dim(self) -> int:
        return self.event_shape[0]

    @property
    def mean(self) -> torch.Tensor:
        return self._reference.expand(self.batch_shape + self.event_shape)

    @property
    def variance(self) -> torch.Tensor:
        return (self._reference + 1).expand(self.batch_shape + self.event_shape)

    def rsample(self, sample_shape=()) -> torch.Tensor:
        shape = self._extended_shape(torch.Size(sample_shape))
        return torch.randn(shape, device=self._reference.device, dtype=self._reference.dtype)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        log_p = -0.5 * (value * value).sum(-1) - 0.5 * self.dim * _LOG_2PI
        # a finite density means finite values: the full (elementwise) support check runs only to
        # raise its error, which saves most of the cost of validation
        if self._validate_args and not (log_p.shape == value.shape[:-1] and torch.isfinite(log_p).all()):
            self._validate_sample(value)
        if not self.batch_shape:  # torch.broadcast_shapes is Python code, slow enough to show here
            return log_p
        return log_p.expand(torch.broadcast_shapes(log_p.shape, self.batch_shape))

    def entropy(self) -> torch.Tensor:
        return (self._reference + 0.5 * self.dim * (1 + _LOG_2PI)).expand(self.batch_shape)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(StandardNormal, _instance)
        new._reference = self._reference
        super(StandardNormal, new).__init__(torch.Size(batch_shape), self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def __repr__(self) -> str:
        batch = f", batch_shape={tuple(self.batch_shape)}" if self.batch_shape else ""
        return f"StandardNormal(dim={self.dim}{batch}, dtype={self._reference.dtype}, device={self._reference.device})"


def _is_real_vector(constraint) -> bool:
    return (isinstance(constraint, constraints.independent) and constraint.reinterpreted_batch_ndims == 1
            and constraint.base_constraint is constraints.real)


class FlowDistribution(dist.TransformedDistribution):
    r"""Pyro's ``TransformedDistribution`` with a cheaper check of the values it scores.

    With validation on (Pyro's default), ``log_prob(x)`` first checks that every element of ``x`` lies in
    the support: for a flow onto ``R^D`` that is a handful of elementwise passes and a row-wise reduction,
    as much as a cheap layer costs. Here ``x`` is accepted when its shape fits and the *sum* of its
    elements is finite (one pass; a NaN or an infinity anywhere makes it NaN or infinite); anything else,
    a sum that overflows included, goes through the full check, with its usual error. Everything else is
    ``TransformedDistribution`` itself, which :func:`pyro_nf.transformed` returns this as.
    """

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        r"""``log p(x) = log p_base(z) - sum_k ladj_k``, walking the layers from the data side.

        When the transform is one chain of pyro_nf layers (a :class:`~pyro_nf.flows.Flow`) over a base with
        one event dimension, each layer is asked once for its inverse *and* its log-det
        (``inverse_and_ladj``, read from its cache for a pair it made): torch's generic walk asks the
        composed transform for the inverse, then for the log-det, which looks every layer up again (and,
        under ``torch.compile``, where the caches are off, runs every layer forward a second time). Any
        other composition takes the generic walk.
        """
        parts = self._layer_chain()
        if parts is None:
            return super().log_prob(value)
        if self._validate_args:
            self._validate_sample(value)
        y, total = value, None
        for part in reversed(parts):
            y, ladj = part.inverse_and_ladj(y)
            total = ladj if total is None else total + ladj
        return self.base_dist.log_prob(y) - total

    def _layer_chain(self):
        if len(self.transforms) != 1 or len(self.base_dist.event_shape) != 1:
            return None
        parts = getattr(self.transforms[0], "parts", None)
        if not parts or not all(isinstance(part, FlowTransform) for part in parts):
            return None
        return parts

    def _validate_sample(self, value: torch.Tensor) -> None:
        event = self.event_shape
        if (isinstance(value, torch.Tensor) and _is_real_vector(self.support) and value.dim() >= len(event)
                and value.shape[value.dim() - len(event):] == event
                and _broadcasts(value.shape, self.batch_shape + event) and torch.isfinite(value.sum())):
            return
        super()._validate_sample(value)


def _broadcasts(actual, expected) -> bool:
    return all(i == 1 or j == 1 or i == j for i, j in zip(reversed(actual), reversed(expected)))
