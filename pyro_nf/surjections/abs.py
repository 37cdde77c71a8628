r"""The absolute-value surjection of SurVAE flows (Nielsen et al., 2020)."""

from __future__ import annotations

import math

import torch
from torch.distributions import constraints
from torch.nn import functional as F

from ..base import FlowTransform
from ..nn import MLP


class Abs(FlowTransform):
    r"""Absolute value as a surjective layer (Nielsen et al., 2020).

    * Density direction (inverse): ``z = |x|``, deterministic.
    * Sampling direction (forward): ``x = s \odot z`` with signs ``s_i \in \{-1, +1\}`` drawn from
      ``p(s | z)``: a fair coin (``learn_signs=False``) or ``p(s_i = +1 | z) = sigmoid(g_i(z))``
      with ``g`` a zero-initialised :class:`~pyro_nf.nn.MLP` (starting fair).
    * ``log_abs_det_jacobian(z, x) = -log p(s = sign(x) | z)``, a deterministic function of
      the pair (``D log 2`` for the fair coin), so ``log p(x) = log p(|x|) + log p(s | |x|)``.

    The layer's input lives on the positive orthant (``domain`` says so). A base density on all
    of ``R^D`` in front of it would integrate to ``1 / 2^D``; :class:`pyro_nf.flows.Flow` and
    :func:`pyro_nf.flows.transformed` refuse that construction. Put a layer onto the positive
    orthant first, e.g. :class:`~pyro_nf.transforms.Softplus` (see the ``realnvp_abs``
    architecture).
    """

    bijective = False
    domain = constraints.independent(constraints.positive, 1)
    codomain = constraints.real_vector

    def __init__(self, input_dim: int, learn_signs: bool = False, hidden_dims=(32, 32), cache_size: int = 1):
        super().__init__(input_dim, cache_size=cache_size)
        self.sign_logits = MLP(input_dim, input_dim, hidden_dims) if learn_signs else None

    def _log_p_positive(self, z):
        """``log p(s_i = +1 | z)`` and ``log p(s_i = -1 | z)``."""
        if self.sign_logits is None:
            half = torch.full_like(z, -math.log(2.0))
            return half, half
        logits = self.sign_logits(z)
        return F.logsigmoid(logits), F.logsigmoid(-logits)

    def _ladj_from_signs(self, z, positive):
        log_pos, log_neg = self._log_p_positive(z)
        return -torch.where(positive, log_pos, log_neg).sum(-1)

    def _forward_with_ladj(self, z):
        log_pos, _ = self._log_p_positive(z)
        positive = torch.rand_like(z) < log_pos.exp()
        x = torch.where(positive, z, -z)
        return x, self._ladj_from_signs(z, positive)

    def _inverse_with_ladj(self, x):
        z = x.abs()
        return z, self._ladj_from_signs(z, x >= 0)

    def _ladj(self, z, x):
        return self._ladj_from_signs(z, x >= 0)

    def extra_repr(self):
        return f"input_dim={self.input_dim}, learn_signs={self.sign_logits is not None}"
