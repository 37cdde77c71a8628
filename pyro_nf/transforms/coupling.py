r"""Coupling layers: NICE, RealNVP, and any other elementwise transformer.

Split the coordinates by a mask into an identity part ``A`` and a transformed part ``B``:

.. math::
    y_A = x_A,\qquad y_B = \tau(x_B;\ \theta(x_A)),\qquad
    x_B = \tau^{-1}(y_B;\ \theta(y_A)),\qquad
    \log|\det J| = \sum_{i\in B}\log|\partial\tau/\partial x_i|.

Both directions cost one conditioner pass (Dinh et al., 2014, 2017).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..base import FlowTransform, check_context_dim
from ..nn import MLP, check_coupling_mask, coupling_mask
from .scalar import Affine, ScalarTransformer, Shift


class Coupling(FlowTransform):
    r"""Generic coupling layer: ``mask`` picks the transformed coordinates (``True``),
    ``transformer`` is a :class:`~pyro_nf.transforms.scalar.ScalarTransformer` and
    ``conditioner`` maps ``(..., |A|)`` to ``(..., |B| * transformer.params_per_dim)``, read in the
    transformer's layout (``(P, |B|)`` blocks when ``transformer.param_major``, else ``(|B|, P)``)
    (by default a zero-initialised :class:`~pyro_nf.nn.MLP`, so the layer starts as the
    identity). With ``context_dim > 0`` the conditioner also sees a context ``c``, ``\theta(x_A, c)``,
    given by :meth:`~pyro_nf.base.FlowTransform.condition` (a custom conditioner then takes ``(x_A, c)``).
    """

    cheap_inverse = True  # see FlowTransform.cheap_inverse
    constant_buffers = frozenset({"identity_index", "transformed_index", "merge_index"})  # from the mask, once

    def __init__(
        self,
        mask,
        transformer: ScalarTransformer,
        conditioner: nn.Module | None = None,
        hidden_dims: Sequence[int] = (64, 64),
        activation="relu",
        cache_size: int = 1,
        context_dim: int = 0,
    ):
        mask = check_coupling_mask(mask, None, type(self).__name__)
        super().__init__(mask.numel(), cache_size=cache_size)
        self.register_buffer("identity_index", mask.logical_not().nonzero().flatten(), persistent=False)
        self.register_buffer("transformed_index", mask.nonzero().flatten(), persistent=False)
        order = torch.cat([self.identity_index, self.transformed_index])
        self.register_buffer("merge_index", torch.argsort(order), persistent=False)
        # When both parts are contiguous blocks (the "half" masks), split by views and merge by one cat
        # instead of gathering copies: (identity_first, size of the first block).
        self._blocks = None
        if _is_range(self.identity_index) and _is_range(self.transformed_index):
            identity_first = int(self.identity_index[0]) == 0
            self._blocks = (identity_first, self.identity_index.numel() if identity_first
                            else self.transformed_index.numel())
        self.transformer = transformer
        n_a, n_b = self.identity_index.numel(), self.transformed_index.numel()
        self.context_dim = check_context_dim(context_dim, type(self).__name__)
        if conditioner is None:
            conditioner = MLP(n_a, n_b * transformer.params_per_dim, hidden_dims, activation=activation,
                              context_features=context_dim)
        self.conditioner = conditioner

    @property
    def mask(self) -> torch.Tensor:
        mask = torch.zeros(self.input_dim, dtype=torch.bool, device=self.identity_index.device)
        mask[self.transformed_index] = True
        return mask

    def _params(self, x_a, context=None):
        n_b, per_dim = self.transformed_index.numel(), self.transformer.params_per_dim
        params = self.conditioner(x_a, context) if self.context_dim else self.conditioner(x_a)
        return params.unflatten(-1, (per_dim, n_b) if self.transformer.param_major else (n_b, per_dim))

    def _split(self, v):
        if self._blocks is not None:
            identity_first, first = self._blocks
            head, tail = v[..., :first], v[..., first:]
            return (head, tail) if identity_first else (tail, head)
        return v.index_select(-1, self.identity_index), v.index_select(-1, self.transformed_index)

    def _merge(self, v_a, v_b):
        if self._blocks is not None:
            return torch.cat([v_a, v_b] if self._blocks[0] else [v_b, v_a], dim=-1)
        return torch.cat([v_a, v_b], dim=-1).index_select(-1, self.merge_index)

    def _forward_with_ladj(self, x, context=None):
        x_a, x_b = self._split(x)
        params = self._params(x_a, context)
        if context is not None:  # a context with more leading dimensions than x broadcasts both halves
            shape = params.shape[:-2]
            x_a, x_b = x_a.expand(*shape, -1), x_b.expand(*shape, -1)
        y_b, ladj = self.transformer(x_b, params)
        return self._merge(x_a, y_b), ladj.sum(-1)

    def _inverse_with_ladj(self, y, context=None):
        y_a, y_b = self._split(y)
        params = self._params(y_a, context)
        if context is not None:
            shape = params.shape[:-2]
            y_a, y_b = y_a.expand(*shape, -1), y_b.expand(*shape, -1)
        x_b, ladj = self.transformer.inverse(y_b, params)
        return self._merge(y_a, x_b), ladj.sum(-1)

    def extra_repr(self):
        hidden = getattr(self.conditioner, "hidden_dims", None)
        text = f"input_dim={self.input_dim}, transformed={self.transformed_index.tolist()}"
        return text + (f", hidden_dims={hidden}" if hidden is not None else "")


def _is_range(index: torch.Tensor) -> bool:
    """Whether a 1-D index tensor is ``start, start + 1, ..., start + n - 1``."""
    return index.numel() > 0 and bool(torch.equal(index, torch.arange(int(index[0]), int(index[0]) + index.numel())))


class AffineCoupling(Coupling):
    r"""RealNVP affine coupling layer (Dinh, Sohl-Dickstein & Bengio, 2017).

    .. math::
        y_B = (x_B + t(x_A)) \odot e^{s(x_A)},\qquad x_B = y_B \odot e^{-s(y_A)} - t(y_A),
        \qquad \log|\det J| = \sum_{i\in B} s_i(x_A),

    with the log-scale soft-clamped as ``s = b tanh(r / b)``, ``b = scale_bound``. The shift acts on the latent
    side by default, which conditions maximum-likelihood training better; ``shift="data"`` gives ``y_B = x_B
    e^{s} + t``, the better form for a guide trained by reverse KL (see
    :class:`~pyro_nf.transforms.scalar.Affine`). ``mask=None`` transforms the second half.
    """

    def __init__(self, input_dim: int, hidden_dims=(64, 64), mask=None, scale_bound: float = 2.0,
                 activation="relu", conditioner=None, cache_size: int = 1, shift: str = "latent",
                 context_dim: int = 0):
        mask = coupling_mask(input_dim) if mask is None else check_coupling_mask(mask, input_dim, "AffineCoupling")
        try:
            transformer = Affine(int(mask.sum()), scale_bound, shift)
        except ValueError as error:
            raise ValueError(f"AffineCoupling: {error}") from None
        super().__init__(mask, transformer, conditioner, hidden_dims, activation, cache_size, context_dim)


class AdditiveCoupling(Coupling):
    r"""NICE additive coupling layer (Dinh, Krueger & Bengio, 2014): volume preserving.

    .. math:: y_B = x_B + t(x_A),\qquad x_B = y_B - t(y_A),\qquad \log|\det J| = 0.

    Combine with :class:`~pyro_nf.transforms.linear.AffineConstant` (NICE's diagonal scaling
    layer) to change volume. ``mask=None`` transforms the second half.
    """

    def __init__(self, input_dim: int, hidden_dims=(64, 64), mask=None, activation="relu",
                 conditioner=None, cache_size: int = 1, context_dim: int = 0):
        mask = coupling_mask(input_dim) if mask is None else check_coupling_mask(mask, input_dim, "AdditiveCoupling")
        super().__init__(mask, Shift(), conditioner, hidden_dims, activation, cache_size, context_dim)


def affine_coupling(input_dim: int, hidden_dims=(64, 64), flip: bool = False, **kwargs) -> AffineCoupling:
    """Pyro-style factory: an :class:`AffineCoupling` transforming the second half
    (the first half with ``flip=True``)."""
    return AffineCoupling(input_dim, hidden_dims, mask=coupling_mask(input_dim, flip=flip), **kwargs)


def additive_coupling(input_dim: int, hidden_dims=(64, 64), flip: bool = False, **kwargs) -> AdditiveCoupling:
    """Pyro-style factory for :class:`AdditiveCoupling`."""
    return AdditiveCoupling(input_dim, hidden_dims, mask=coupling_mask(input_dim, flip=flip), **kwargs)
