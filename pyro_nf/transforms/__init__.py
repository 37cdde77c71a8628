"""Bijective layers of pyro_nf, one family per module. Forward is the sampling direction."""

from ..base import FlowTransform
from .autoregressive import (
    AffineAutoregressive,
    Autoregressive,
    SplineAutoregressive,
    affine_autoregressive,
    spline_autoregressive,
)
from .continuous import ContinuousFlow, continuous_flow
from .coupling import AdditiveCoupling, AffineCoupling, Coupling, additive_coupling, affine_coupling
from .elementwise import LeakyReLU, PReLU, Softplus
from .linear import AffineConstant, InvertibleLinear, Permutation, reverse
from .normalization import ActNorm, BatchNorm
from .planar import Planar
from .radial import Radial
from .residual import LipSwish, Residual, residual
from .scalar import Affine, ScalarTransformer, Shift
from .spline import RationalQuadraticSpline, Spline, SplineCoupling, spline_coupling

__all__ = [
    "ActNorm",
    "AdditiveCoupling",
    "Affine",
    "AffineAutoregressive",
    "AffineConstant",
    "AffineCoupling",
    "Autoregressive",
    "BatchNorm",
    "ContinuousFlow",
    "Coupling",
    "FlowTransform",
    "InvertibleLinear",
    "LeakyReLU",
    "LipSwish",
    "PReLU",
    "Permutation",
    "Planar",
    "Radial",
    "RationalQuadraticSpline",
    "Residual",
    "ScalarTransformer",
    "Shift",
    "Softplus",
    "Spline",
    "SplineAutoregressive",
    "SplineCoupling",
    "additive_coupling",
    "affine_autoregressive",
    "affine_coupling",
    "continuous_flow",
    "residual",
    "reverse",
    "spline_autoregressive",
    "spline_coupling",
]
