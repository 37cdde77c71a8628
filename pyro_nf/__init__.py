"""pyro_nf: normalizing flows for Pyro.

Layers are ``pyro.distributions.TransformModule`` subclasses whose forward is the sampling
direction; named architectures come from :func:`pyro_nf.flows.build`.
"""

from . import datasets, distributed, distributions, flows, infer, nn, simulators, targets, transforms
from .compiled import CompiledFlow, compile
from .compose import ConditionalFlow, ConditionalFlowDistribution
from .distributions import FlowDistribution, StandardNormal
from .flows import Flow, build, names, transformed
from .io import load, save

__version__ = "0.1.0"

__all__ = [
    "CompiledFlow",
    "ConditionalFlow",
    "ConditionalFlowDistribution",
    "Flow",
    "FlowDistribution",
    "StandardNormal",
    "build",
    "compile",
    "datasets",
    "distributed",
    "distributions",
    "flows",
    "infer",
    "load",
    "names",
    "nn",
    "save",
    "simulators",
    "targets",
    "transformed",
    "transforms",
    "__version__",
]
