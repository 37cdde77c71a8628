r"""Base distributions for flows."""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from pyro.distributions import TorchDistribution, constraints

from .base import Recording

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
    r"""Pyro's ``TransformedDistribution`` whose transform walks itself, with a cheaper check of the values
    it scores.

    When the transform is one pyro_nf :class:`~pyro_nf.Flow` or layer over a base with one event dimension,
    ``log_prob`` asks it once for the inverse *and* the log-det of the whole chain (``inverse_and_ladj``):
    torch's generic walk asks for the inverse, then for the log-det, which runs or looks up every layer
    twice. A value that the flow itself just made (by ``rsample``/``sample``) is read from the flow's
    record, under the guard of :mod:`pyro_nf.base`; any other value is computed, never cached.

    With validation on (Pyro's default), ``x`` is accepted when its shape fits and the *sum* of its
    elements is finite (one pass; a NaN or an infinity anywhere makes it NaN or infinite); anything else
    gets an error that names the shape, how many rows are bad and the first of them.
    """

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        r"""``log p(x) = log p_base(z) - log|det dx/dz|`` with ``z = inv(x)``."""
        transform = self._walker()
        if transform is None:
            return super().log_prob(value)
        record = transform._recall(x=value)
        if record is not None:  # the flow's own sample, unchanged since: nothing to validate or invert
            z, ladj = record.z, record.ladj
        else:
            if self._validate_args:
                self._validate_sample(value)
            z, ladj = transform._computed_inverse(value)
        return self.base_dist.log_prob(z) - ladj

    def rsample_and_log_prob(self, sample_shape=()) -> tuple[torch.Tensor, torch.Tensor]:
        r"""A reparameterised sample and its log density in one walk: no record is read or made, and nothing
        is synchronised with the device (what a training loop of its own wants).

        Example:
            >>> import torch, pyro_nf as nf
            >>> model = nf.transformed(nf.build("iaf", 3, num_layers=2))
            >>> x, log_q = model.rsample_and_log_prob((16,))
            >>> x.shape, log_q.shape
            (torch.Size([16, 3]), torch.Size([16]))
        """
        z = self.base_dist.rsample(torch.Size(sample_shape))
        transform = self._walker()
        if transform is None:
            x = self.rsample(sample_shape)
            return x, self.log_prob(x)
        x, ladj = transform.forward_and_ladj(z)
        return x, self.base_dist.log_prob(z) - ladj

    def _walker(self):
        if len(self.transforms) != 1 or len(self.base_dist.event_shape) != 1:
            return None
        transform = self.transforms[0]
        return transform if isinstance(transform, Recording) else None

    def _validate_sample(self, value: torch.Tensor) -> None:
        event = self.event_shape
        if not isinstance(value, torch.Tensor) or not _is_real_vector(self.support):
            return super()._validate_sample(value)
        if torch.jit.is_tracing():
            return None  # a value check would turn a traced tensor into a Python bool (TracerWarning)
        if value.dim() < len(event) or value.shape[value.dim() - len(event):] != event \
                or not _broadcasts(value.shape, self.batch_shape + event):
            raise ValueError(f"{type(self).__name__}: expected a value of shape (..., {', '.join(map(str, event))}) "
                             f"broadcastable with batch shape {tuple(self.batch_shape)}, got {tuple(value.shape)}")
        if torch.isfinite(value.sum()):
            return None
        bad = ~torch.isfinite(value).reshape(-1, event.numel()).all(-1)
        count = int(bad.sum())
        if count == 0:  # the sum overflowed, every value is finite
            return None
        first = bad.nonzero().flatten()[:5].tolist()
        raise ValueError(
            f"{type(self).__name__}: log_prob got non-finite values (NaN or infinity) in {count} of {bad.numel()} "
            f"rows of a value of shape {tuple(value.shape)} (first flattened rows: {first}); the support is "
            f"{self.support}"
        )


def _broadcasts(actual, expected) -> bool:
    return all(i == 1 or j == 1 or i == j for i, j in zip(reversed(actual), reversed(expected)))
