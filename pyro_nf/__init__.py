"""pyro_nf: normalizing flows for Pyro.

Layers are ``pyro.distributions.TransformModule`` subclasses whose forward is the sampling
direction; named architectures come from :func:`pyro_nf.flows.build`.
"""

from . import datasets, distributions, flows, infer, nn, targets, transforms
from .distributions import FlowDistribution, StandardNormal
from .flows import Flow, build, names, transformed

__version__ = "0.1.0"

__all__ = [
    "Flow",
    "FlowDistribution",
    "StandardNormal",
    "build",
    "datasets",
    "distributions",
    "flows",
    "infer",
    "names",
    "nn",
    "targets",
    "transformed",
    "transforms",
    "__version__",
]
