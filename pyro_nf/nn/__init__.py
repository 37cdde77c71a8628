"""Conditioner networks and masks, shared by every layer."""

from .masks import COUPLING_MASKS, check_coupling_mask, coupling_mask
from .mlp import MLP, check_hidden_dims, make_activation

__all__ = ["MLP", "COUPLING_MASKS", "check_coupling_mask", "check_hidden_dims", "coupling_mask", "make_activation"]
