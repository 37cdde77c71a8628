"""MADE: the one masked (autoregressive) network of pyro_nf (Germain et al., 2015)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .mlp import check_hidden_dims, make_activation


def check_order(order, input_dim: int, owner: str) -> torch.Tensor:
    """Validate an input ordering: a permutation of ``0..input_dim-1`` (``None``: natural order)."""
    if order is None:
        return torch.arange(input_dim)
    order = torch.as_tensor(order)
    if order.dtype.is_floating_point or order.shape != (input_dim,) or not torch.equal(
        order.sort().values, torch.arange(input_dim, dtype=order.dtype)
    ):
        raise ValueError(f"{owner}: order must be a permutation of 0..{input_dim - 1}, got {order.tolist()}")
    return order.long()


class MaskedLinear(nn.Linear):
    """``nn.Linear`` whose weight is multiplied by a fixed 0/1 mask ``(out, in)``."""

    constant_buffers = frozenset({"mask"})  # fixed at construction: the records' guard does not copy it

    def __init__(self, mask: torch.Tensor, bias: bool = True):
        super().__init__(mask.shape[1], mask.shape[0], bias=bias)
        self.register_buffer("mask", mask.to(self.weight.dtype), persistent=False)

    def forward(self, x):
        return F.linear(x, self.weight * self.mask, self.bias)


class MADE(nn.Module):
    r"""Masked autoencoder for distribution estimation (Germain et al., 2015).

    Maps ``x`` of shape ``(..., D)`` to parameters ``(..., D, params_per_dim)`` (or
    ``(..., params_per_dim, D)`` with ``param_major=True``) such that the
    parameters of coordinate ``i`` depend only on the coordinates that come before ``i`` in
    ``order`` (and on the optional context, which every hidden unit sees). Hidden unit
    degrees cycle through ``1..D-1``; each hidden layer needs at least ``D - 1`` units so that
    every allowed dependency can be expressed (``D`` with a context, whose degree-0 units
    feed the first coordinate). With ``zero_init`` the output layer starts at zero, so a layer
    built on it starts as the identity.

    Degrees: input ``i`` has degree ``rank(i) + 1`` where ``rank`` is its position in
    ``order`` (context inputs have degree 0); a hidden unit of degree ``m`` sees inputs of
    degree ``<= m``; an output of
    coordinate ``i`` sees hidden units of degree ``< rank(i) + 1``.
    """

    constant_buffers = frozenset({"order", "input_degree"})  # the masks are built from them, once

    def __init__(
        self,
        input_dim: int,
        hidden_dims: Sequence[int] = (64, 64),
        params_per_dim: int = 2,
        context_dim: int = 0,
        order=None,
        activation="relu",
        zero_init: bool = True,
        param_major: bool = False,
    ):
        super().__init__()
        if not isinstance(input_dim, int) or input_dim < 1:
            raise ValueError(f"MADE: input_dim must be a positive int, got {input_dim!r}")
        if not isinstance(params_per_dim, int) or params_per_dim < 1:
            raise ValueError(f"MADE: params_per_dim must be a positive int, got {params_per_dim!r}")
        hidden_dims = check_hidden_dims(hidden_dims, "MADE")
        # hidden degrees cycle through low..high; degree-0 units see only the context, so that
        # the first coordinate's parameters can depend on it
        low = 0 if context_dim else 1
        high = max(input_dim - 1, low)
        needed = high - low + 1
        if input_dim > 1 and min(hidden_dims) < needed:
            what = "input_dim" if context_dim else "input_dim - 1"
            raise ValueError(
                f"MADE: every hidden layer needs at least {what} = {needed} units to keep all "
                f"autoregressive dependencies, got hidden_dims={hidden_dims}"
            )
        self.input_dim, self.params_per_dim, self.context_dim = input_dim, params_per_dim, context_dim
        self.hidden_dims = hidden_dims
        self.param_major = bool(param_major)
        order = check_order(order, input_dim, "MADE")
        self.register_buffer("order", order)
        in_degree = torch.empty(input_dim, dtype=torch.long)
        in_degree[order] = torch.arange(1, input_dim + 1)
        self.register_buffer("input_degree", in_degree, persistent=False)

        context_degree = torch.zeros(context_dim, dtype=torch.long)
        previous = torch.cat([in_degree, context_degree])
        layers: list[nn.Module] = []
        for size in hidden_dims:
            degree = torch.arange(size) % needed + low
            layers += [MaskedLinear((degree[:, None] >= previous[None, :]).float()), make_activation(activation)]
            previous = degree
        # output unit k * D + i (param-major) or i * P + k carries parameter k of coordinate i
        out_degree = in_degree.repeat(params_per_dim) if param_major else in_degree.repeat_interleave(params_per_dim)
        layers.append(MaskedLinear((out_degree[:, None] > previous[None, :]).float()))
        self.net = nn.Sequential(*layers)
        if zero_init:
            nn.init.zeros_(layers[-1].weight)
            nn.init.zeros_(layers[-1].bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        if self.context_dim:
            if context is None or context.shape[-1] != self.context_dim:
                got = None if context is None else tuple(context.shape)
                raise ValueError(f"MADE: expected a context of shape (..., {self.context_dim}), got {got}")
            shape = torch.broadcast_shapes(x.shape[:-1], context.shape[:-1])
            x = torch.cat([x.expand(*shape, -1), context.expand(*shape, -1)], dim=-1)
        shape = (self.params_per_dim, self.input_dim) if self.param_major else (self.input_dim, self.params_per_dim)
        return self.net(x).unflatten(-1, shape)

    def repeated(self, context: torch.Tensor | None = None):
        """``forward`` as a function of ``x`` alone, for the sequential passes of an autoregressive inversion:
        the masked weights are multiplied out once, and the context's share of the first layer,
        ``W_c c + b``, is computed once instead of concatenating ``c`` to ``x`` at every pass.

        The function ``params(x, coordinate=None)`` returns what ``forward`` does; with ``coordinate`` (a
        one-element long tensor, on the device) only that coordinate's parameters, shaped ``(..., 1, P)`` (or
        ``(..., P, 1)`` param-major), from the rows of the output layer that carry them: a pass that solves for
        one coordinate needs no other. Differentiable as ``forward`` is; equal to it up to rounding."""
        if self.context_dim and (context is None or context.shape[-1] != self.context_dim):
            got = None if context is None else tuple(context.shape)
            raise ValueError(f"MADE: expected a context of shape (..., {self.context_dim}), got {got}")
        modules = list(self.net)
        weights = [m.weight * m.mask if isinstance(m, MaskedLinear) else None for m in modules]
        first, first_bias = weights[0], modules[0].bias
        context_share = None
        if self.context_dim:
            first, context_weight = first[:, : self.input_dim], first[:, self.input_dim:]
            context_share = F.linear(context, context_weight, first_bias)
        hidden, (last_weight, last) = list(zip(modules[1:-1], weights[1:-1])), (weights[-1], modules[-1])
        per_dim, dim = self.params_per_dim, self.input_dim
        shape = (per_dim, dim) if self.param_major else (dim, per_dim)
        offsets = torch.arange(per_dim, device=last_weight.device) * (dim if self.param_major else 1)

        def params(x: torch.Tensor, coordinate: torch.Tensor | None = None) -> torch.Tensor:
            h = F.linear(x, first, first_bias) if context_share is None else F.linear(x, first) + context_share
            for module, weight in hidden:
                h = module(h) if weight is None else F.linear(h, weight, module.bias)
            if coordinate is None:
                return F.linear(h, last_weight, last.bias).unflatten(-1, shape)
            rows = offsets + (coordinate if self.param_major else coordinate * per_dim)
            out = F.linear(h, last_weight.index_select(0, rows), last.bias.index_select(0, rows))
            return out.unsqueeze(-1 if self.param_major else -2)

        return params

    def extra_repr(self) -> str:
        return f"{self.input_dim} -> {self.hidden_dims} -> {self.input_dim} x {self.params_per_dim}"
