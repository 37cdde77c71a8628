"""Conditioner networks and masks, shared by every layer: one MLP, one masked MLP (MADE)."""

from .functional import soft_clamp
from .made import MADE, MaskedLinear, check_order
from .masks import COUPLING_MASKS, check_coupling_mask, coupling_mask
from .mlp import MLP, check_hidden_dims, make_activation

__all__ = [
    "MADE",
    "MLP",
    "COUPLING_MASKS",
    "MaskedLinear",
    "check_coupling_mask",
    "check_hidden_dims",
    "check_order",
    "coupling_mask",
    "make_activation",
    "soft_clamp",
]
