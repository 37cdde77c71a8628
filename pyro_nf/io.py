"""Saving and loading fitted models: :func:`save` and :func:`load`.

A checkpoint is a plain dictionary of tensors, strings and numbers, written by ``torch.save`` and read with
``torch.load(..., weights_only=True)``: no pickled code, so loading a file cannot run anything. It holds

- ``format`` and ``format_version``: what this is, and the layout of the dictionary;
- ``package_version``: the pyro_nf that wrote it;
- ``architecture``, ``dim``, ``options``, ``standardize``, ``standardize_context``: enough to call
  :func:`pyro_nf.build` again (and :func:`pyro_nf.flows.standardized` when the model reads data, and for a
  conditional model its contexts, in their own units);
- ``dtype``: the parameters' dtype; ``state_dict``: every parameter and buffer, ActNorm's initialisation and
  BatchNorm's running statistics included.
"""

from __future__ import annotations

import os

import torch
from torch.distributions import TransformedDistribution

from .compose import ConditionalFlow, ConditionalFlowDistribution, Flow, transformed
from .distributions import StandardNormal

FORMAT = "pyro_nf.checkpoint"
FORMAT_VERSION = 1
_OPTION_TYPES = (int, float, str, bool, type(None))


def _flow_of(model) -> Flow | ConditionalFlow:
    if isinstance(model, (Flow, ConditionalFlow)):
        return model
    if isinstance(model, ConditionalFlowDistribution):
        return model.flow
    if isinstance(model, TransformedDistribution):
        if len(model.transforms) == 1 and isinstance(model.transforms[0], Flow):
            if not isinstance(model.base_dist, StandardNormal):
                raise ValueError(f"save: only models over the standard normal base can be saved, got "
                                 f"{type(model.base_dist).__name__}")
            return model.transforms[0]
    raise TypeError(f"save: expected a Flow from nf.build or nf.transformed(flow), got {type(model).__name__}")


def _plain(value, key):
    if isinstance(value, _OPTION_TYPES):
        return value
    if isinstance(value, (tuple, list)):
        return type(value)(_plain(v, key) for v in value)
    raise ValueError(f"save: option {key}={value!r} is not a number, string or sequence of them, so the "
                     "checkpoint could not rebuild it (an energy function, say); save the state_dict yourself")


def save(model, path) -> None:
    """Write ``model`` (a flow built by :func:`pyro_nf.build`, possibly wrapped by
    :func:`pyro_nf.flows.standardized`, or ``nf.transformed`` of one) to ``path``.

    Example:
        >>> import tempfile, torch, pyro_nf as nf
        >>> model = nf.transformed(nf.build("realnvp", 2, num_layers=2))
        >>> path = tempfile.mkdtemp() + "/model.pt"
        >>> nf.save(model, path)
        >>> x = torch.randn(3, 2)
        >>> torch.equal(nf.load(path).log_prob(x), model.log_prob(x))
        True
    """
    flow = _flow_of(model)
    spec = getattr(flow, "spec", None)
    if spec is None:
        raise ValueError("save: this flow was not made by nf.build, so a checkpoint could not rebuild it; "
                         "save its state_dict with torch.save and build it again yourself")
    options = {key: _plain(value, key) for key, value in spec["options"].items()}
    ref = next(iter(flow.parameters()), None)
    checkpoint = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "package_version": _package_version(),
        "architecture": spec["architecture"],
        "dim": spec["dim"],
        "options": options,
        "standardize": bool(spec.get("standardize", False)),
        "standardize_context": bool(spec.get("standardize_context", False)),
        "dtype": str(ref.dtype if ref is not None else torch.get_default_dtype()).replace("torch.", ""),
        "state_dict": {k: v.detach().cpu() for k, v in flow.state_dict().items()},
    }
    directory = os.path.dirname(os.path.abspath(os.fspath(path)))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"save: the folder {directory} does not exist")
    torch.save(checkpoint, path)


def load(path, device=None):
    """Read a checkpoint written by :func:`save` and return ``nf.transformed(flow)`` in eval mode, on
    ``device`` (default: the CPU) in the dtype it was saved in, with identical ``log_prob`` (a conditional
    model comes back as a :class:`~pyro_nf.ConditionalFlowDistribution`)."""
    from . import flows  # the registry imports this package's layers; keep io importable on its own

    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise ValueError(f"load: {path} is not a pyro_nf checkpoint (no '{FORMAT}' format tag)")
    version = checkpoint.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(
            f"load: {path} has checkpoint format {version} (written by pyro_nf {checkpoint.get('package_version')}); "
            f"this pyro_nf ({_package_version()}) reads format {FORMAT_VERSION}"
        )
    name = checkpoint["architecture"]
    if name not in flows.names():
        raise ValueError(f"load: {path} holds architecture {name!r}, which this pyro_nf does not have "
                         f"(written by pyro_nf {checkpoint.get('package_version')})")
    dtype = getattr(torch, checkpoint["dtype"])
    flow = flows.build(name, checkpoint["dim"], **checkpoint["options"]).to(dtype)
    if checkpoint["standardize"]:
        dim, context_dim = checkpoint["dim"], checkpoint["options"].get("context_dim", 0)
        context_units = (torch.zeros(context_dim), torch.ones(context_dim)) \
            if checkpoint.get("standardize_context") else (None, None)
        flow = flows.standardized(flow, torch.zeros(dim), torch.ones(dim), *context_units)
    try:
        flow.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as error:
        raise ValueError(f"load: the parameters in {path} do not fit a {name} with these options "
                         f"(written by pyro_nf {checkpoint.get('package_version')}): {error}") from None
    flow = flow.to(device) if device is not None else flow
    return transformed(flow.eval())


def _package_version() -> str:
    from . import __version__

    return __version__


__all__ = ["FORMAT_VERSION", "load", "save"]
