"""The one conditioner network of pyro_nf: a plain MLP, near-identity at initialisation."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

_ACTIVATIONS = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
}


def check_hidden_dims(hidden_dims, owner: str) -> tuple[int, ...]:
    """Validate ``hidden_dims`` (a sequence of positive ints) and return it as a tuple."""
    if isinstance(hidden_dims, int):
        hidden_dims = (hidden_dims,)
    try:
        dims = tuple(hidden_dims)
    except TypeError:
        raise ValueError(f"{owner}: hidden_dims must be a sequence of positive ints, got {hidden_dims!r}") from None
    if not all(isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in dims):
        raise ValueError(f"{owner}: hidden_dims must be a sequence of positive ints, got {hidden_dims!r}")
    return dims


def make_activation(activation) -> nn.Module:
    if isinstance(activation, str):
        if activation not in _ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(_ACTIVATIONS)}")
        return _ACTIVATIONS[activation]()
    if isinstance(activation, type) and issubclass(activation, nn.Module):
        return activation()
    if isinstance(activation, nn.Module):
        return activation
    raise ValueError(f"activation must be a name, an nn.Module class or instance, got {activation!r}")


class MLP(nn.Module):
    r"""Fully connected network ``(..., in_features) -> (..., out_features)``.

    Used by every layer that needs a conditioner. ``context_features > 0`` adds a context
    input, concatenated to the input (broadcast over leading dimensions), for conditional
    flows. With ``zero_init=True`` (the default) the last layer's weights and biases start at
    zero, so the layer it conditions starts as the identity and deep flows train from the
    first step.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden_dims: Sequence[int] = (64, 64),
        context_features: int = 0,
        activation="relu",
        zero_init: bool = True,
    ):
        super().__init__()
        for label, value in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"MLP: {label} must be a positive int, got {value!r}")
        if not isinstance(context_features, int) or context_features < 0:
            raise ValueError(f"MLP: context_features must be a non-negative int, got {context_features!r}")
        self.in_features = in_features
        self.out_features = out_features
        self.context_features = context_features
        self.hidden_dims = check_hidden_dims(hidden_dims, "MLP")
        sizes = (in_features + context_features, *self.hidden_dims, out_features)
        layers: list[nn.Module] = []
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            if i > 0:
                layers.append(make_activation(activation))
            layers.append(nn.Linear(n_in, n_out))
        self.net = nn.Sequential(*layers)
        if zero_init:
            last = self.net[-1]
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        if self.context_features:
            if context is None:
                raise ValueError(f"MLP: this network expects a context of size {self.context_features}")
            if context.shape[-1] != self.context_features:
                raise ValueError(
                    f"MLP: expected context of shape (..., {self.context_features}), got {tuple(context.shape)}"
                )
            shape = torch.broadcast_shapes(x.shape[:-1], context.shape[:-1])
            x = torch.cat([x.expand(*shape, -1), context.expand(*shape, -1)], dim=-1)
        return self.net(x)

    def extra_repr(self) -> str:
        return f"{self.in_features} -> {self.hidden_dims} -> {self.out_features}"
