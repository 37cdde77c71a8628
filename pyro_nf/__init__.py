"""pyro_nf: normalizing flows for Pyro.

Layers are ``pyro.distributions.TransformModule`` subclasses whose forward is the sampling
direction; named architectures come from :func:`pyro_nf.flows.build`.
"""

from . import flows, nn, transforms
from .flows import Flow, build, names, transformed

__version__ = "0.1.0"

__all__ = ["Flow", "build", "flows", "names", "nn", "transformed", "transforms", "__version__"]
