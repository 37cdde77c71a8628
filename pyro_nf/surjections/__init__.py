"""Surjective layers (SurVAE flows): deterministic one way, stochastic the other."""

from .abs import Abs
from .augment import Augment, ConditionalGaussian, Slice

__all__ = ["Abs", "Augment", "ConditionalGaussian", "Slice"]
