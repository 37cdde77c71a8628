r"""The absolute-value surjection of SurVAE flows (Nielsen et al., 2020)."""

from __future__ import annotations

import math

import torch
from torch.distributions import constraints
from torch.nn import functional as F

from ..base import FlowTransform, check_context_dim
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

    def __init__(self, input_dim: int, learn_signs: bool = False, hidden_dims=(32, 32), cache_size: int = 1,
                 context_dim: int = 0):
        super().__init__(input_dim, cache_size=cache_size)
        context_dim = check_context_dim(context_dim, "Abs")
        if context_dim and not learn_signs:
            raise ValueError("Abs: a context only conditions learned signs (learn_signs=True)")
        self.context_dim = context_dim
        self.sign_logits = MLP(input_dim, input_dim, hidden_dims, context_features=context_dim) if learn_signs \
            else None

    def _log_p_positive(self, z, context=None):
        """``log p(s_i = +1 | z)`` and ``log p(s_i = -1 | z)`` (given the context ``c`` when there is one)."""
        if self.sign_logits is None:
            half = torch.full_like(z, -math.log(2.0))
            return half, half
        logits = self.sign_logits(z, context) if self.context_dim else self.sign_logits(z)
        return F.logsigmoid(logits), F.logsigmoid(-logits)

    def _ladj_from_signs(self, z, positive, context=None):
        log_pos, log_neg = self._log_p_positive(z, context)
        return -torch.where(positive, log_pos, log_neg).sum(-1)

    def _forward_with_ladj(self, z, context=None):
        log_pos, _ = self._log_p_positive(z, context)
        z = z.expand_as(log_pos)
        positive = torch.rand_like(z) < log_pos.exp()
        x = torch.where(positive, z, -z)
        return x, self._ladj_from_signs(z, positive, context)

    def _inverse_with_ladj(self, x, context=None):
        z = x.abs()
        return z, self._ladj_from_signs(z, x >= 0, context)

    def _ladj(self, z, x, context=None):
        return self._ladj_from_signs(z, x >= 0, context)

    def extra_repr(self):
        return f"input_dim={self.input_dim}, learn_signs={self.sign_logits is not None}"
