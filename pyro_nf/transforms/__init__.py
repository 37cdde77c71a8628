"""Bijective layers of pyro_nf, one family per module. Forward is the sampling direction."""

from .base import FlowTransform
from .coupling import AdditiveCoupling, AffineCoupling, Coupling, additive_coupling, affine_coupling
from .elementwise import LeakyReLU, PReLU
from .linear import AffineConstant, InvertibleLinear, Permutation, reverse
from .normalization import ActNorm, BatchNorm
from .scalar import Affine, ScalarTransformer, Shift

__all__ = [
    "ActNorm",
    "AdditiveCoupling",
    "Affine",
    "AffineConstant",
    "AffineCoupling",
    "BatchNorm",
    "Coupling",
    "FlowTransform",
    "InvertibleLinear",
    "LeakyReLU",
    "PReLU",
    "Permutation",
    "ScalarTransformer",
    "Shift",
    "additive_coupling",
    "affine_coupling",
    "reverse",
]
