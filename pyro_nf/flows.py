"""Named flow architectures and the registry: ``names()`` and ``build(name, dim, **options)``.

Every architecture returns a :class:`Flow`, a ``ComposeTransformModule`` ready for
``pyro.distributions.TransformedDistribution`` (see :func:`transformed`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

import pyro.distributions as dist
import torch
from pyro.distributions.torch_transform import ComposeTransformModule

from .nn import COUPLING_MASKS, check_hidden_dims, coupling_mask
from .transforms import (
    ActNorm,
    AdditiveCoupling,
    AffineAutoregressive,
    AffineConstant,
    AffineCoupling,
    BatchNorm,
    InvertibleLinear,
    Planar,
    Radial,
    SplineAutoregressive,
    SplineCoupling,
)
from .transforms.autoregressive import default_hidden_dims


class Flow(ComposeTransformModule):
    """A chain of layers, sampling direction first to last. Prints as a chain, one layer a line."""

    def __init__(self, parts, dim: int | None = None, name: str | None = None):
        super().__init__(list(parts))
        self.dim = dim if dim is not None else getattr(self.parts[0], "input_dim", None)
        self.name = name

    def base_dim(self) -> int:
        """Size of the base (latent) distribution's event."""
        return self.inverse_shape(torch.Size([self.dim]))[-1]

    def __repr__(self) -> str:
        named = f"name={self.name!r}, " if self.name else ""
        lines = [f"Flow({named}dim={self.dim}, layers={len(self.parts)})", f"  ( Normal(0, I_{self.base_dim()}) )"]
        for part in self.parts:
            lines += ["    ↓", f"  {part!r}"]
        return "\n".join(lines)


def transformed(flow, base: dist.Distribution | None = None) -> dist.TransformedDistribution:
    """``TransformedDistribution(base, flow)``; the default base is a standard normal of the
    flow's base size, on the device and dtype of the flow's parameters."""
    if base is None:
        ref = next(iter(flow.parameters()), None)
        device, dtype = (ref.device, ref.dtype) if ref is not None else (None, torch.get_default_dtype())
        size = flow.base_dim() if isinstance(flow, Flow) else flow.input_dim
        zeros = torch.zeros(size, device=device, dtype=dtype)
        base = dist.Normal(zeros, torch.ones_like(zeros)).to_event(1)
    return dist.TransformedDistribution(base, flow)


# --------------------------------------------------------------------------- the registry
@dataclass
class Architecture:
    name: str
    builder: Callable
    description: str
    min_dim: int = 1
    defaults: dict = field(default_factory=dict)


_ARCHITECTURES: dict[str, Architecture] = {}


def register(name: str, description: str, min_dim: int = 1):
    """Register ``builder(dim, **options) -> list of layers`` under ``name``; its keyword
    defaults are the architecture's options."""

    def decorator(builder):
        params = inspect.signature(builder).parameters
        defaults = {k: p.default for k, p in params.items() if k != "dim"}
        _ARCHITECTURES[name] = Architecture(name, builder, description, min_dim, defaults)
        return builder

    return decorator


def names() -> list[str]:
    """Names of every registered architecture."""
    return sorted(_ARCHITECTURES)


def options(name: str) -> dict:
    """The options of an architecture with their defaults."""
    return dict(_get(name).defaults)


def _get(name: str) -> Architecture:
    if name not in _ARCHITECTURES:
        raise ValueError(f"unknown flow architecture {name!r}; valid names: {', '.join(names())}")
    return _ARCHITECTURES[name]


def build(name: str, dim: int, **opts) -> Flow:
    """Build the architecture ``name`` for data of dimension ``dim``.

    Shared options where they apply: ``num_layers`` and ``hidden_dims``; see
    :func:`options` for each architecture's full list and defaults.
    """
    arch = _get(name)
    if not isinstance(dim, int) or isinstance(dim, bool) or dim < arch.min_dim:
        raise ValueError(f"{name}: dim must be an int >= {arch.min_dim}, got {dim!r}")
    unknown = sorted(set(opts) - set(arch.defaults))
    if unknown:
        raise ValueError(f"{name}: unknown option(s) {unknown}; valid options: {sorted(arch.defaults)}")
    merged = {**arch.defaults, **opts}
    if "num_layers" in merged:
        n = merged["num_layers"]
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"{name}: num_layers must be a positive int, got {n!r}")
    if merged.get("hidden_dims") is not None:
        merged["hidden_dims"] = check_hidden_dims(merged["hidden_dims"], name)
    return Flow(arch.builder(dim, **merged), dim=dim, name=name)


def _check_mask_kind(name, mask):
    if mask not in COUPLING_MASKS:
        raise ValueError(f"{name}: mask must be one of {COUPLING_MASKS}, got {mask!r}")


# --------------------------------------------------------------------------- architectures
@register("nice", "NICE: additive coupling layers then a diagonal scaling (Dinh et al., 2014)", min_dim=2)
def _nice(dim, num_layers=4, hidden_dims=(64, 64), mask="half", activation="relu"):
    _check_mask_kind("nice", mask)
    layers = [
        AdditiveCoupling(dim, hidden_dims, coupling_mask(dim, mask, flip=i % 2 == 1), activation=activation)
        for i in range(num_layers)
    ]
    return [AffineConstant(dim, shift=False), *layers]


@register("realnvp", "RealNVP: affine coupling layers with alternating masks (Dinh et al., 2017)", min_dim=2)
def _realnvp(dim, num_layers=8, hidden_dims=(64, 64), mask="half", scale_bound=2.0, batch_norm=False,
             activation="relu"):
    _check_mask_kind("realnvp", mask)
    layers = []
    for i in range(num_layers):
        layers.append(AffineCoupling(dim, hidden_dims, coupling_mask(dim, mask, flip=i % 2 == 1),
                                     scale_bound=scale_bound, activation=activation))
        if batch_norm and i < num_layers - 1:
            layers.append(BatchNorm(dim))
    return layers


@register("glow", "Glow: ActNorm -> invertible linear (LU) -> affine coupling (Kingma & Dhariwal, 2018)",
          min_dim=2)
def _glow(dim, num_layers=4, hidden_dims=(64, 64), scale_bound=2.0, activation="relu"):
    layers = []
    for i in range(num_layers):
        layers += [
            ActNorm(dim),
            InvertibleLinear(dim),
            AffineCoupling(dim, hidden_dims, coupling_mask(dim, flip=i % 2 == 1), scale_bound=scale_bound,
                           activation=activation),
        ]
    return layers


def _alternating_order(dim: int, i: int) -> torch.Tensor:
    """Natural order on even layers, reversed on odd ones (MAF's choice)."""
    order = torch.arange(dim)
    return order.flip(0) if i % 2 == 1 else order


@register("maf", "MAF: affine autoregressive layers, density in one pass (Papamakarios et al., 2017)")
def _maf(dim, num_layers=5, hidden_dims=None, scale_bound=2.0, activation="relu"):
    hidden_dims = hidden_dims or default_hidden_dims(dim)
    return [AffineAutoregressive(dim, hidden_dims, _alternating_order(dim, i), "maf", scale_bound, activation)
            for i in range(num_layers)]


@register("iaf", "IAF: affine autoregressive layers, sampling in one pass (Kingma et al., 2016)")
def _iaf(dim, num_layers=5, hidden_dims=None, scale_bound=2.0, activation="relu"):
    hidden_dims = hidden_dims or default_hidden_dims(dim)
    return [AffineAutoregressive(dim, hidden_dims, _alternating_order(dim, i), "iaf", scale_bound, activation)
            for i in range(num_layers)]


@register("nsf_coupling", "Neural spline flow, coupling: rational-quadratic spline couplings (Durkan et al., 2019)",
          min_dim=2)
def _nsf_coupling(dim, num_layers=4, hidden_dims=(64, 64), count_bins=8, bound=3.0, mask="half",
                  activation="relu"):
    _check_mask_kind("nsf_coupling", mask)
    return [SplineCoupling(dim, hidden_dims, count_bins, bound, coupling_mask(dim, mask, flip=i % 2 == 1),
                           activation=activation) for i in range(num_layers)]


@register("nsf_autoregressive", "Neural spline flow, autoregressive: RQ-spline MAF layers (Durkan et al., 2019)")
def _nsf_autoregressive(dim, num_layers=3, hidden_dims=None, count_bins=8, bound=3.0, direction="maf",
                        activation="relu"):
    hidden_dims = hidden_dims or default_hidden_dims(dim)
    return [SplineAutoregressive(dim, hidden_dims, count_bins, bound, _alternating_order(dim, i), direction,
                                 activation) for i in range(num_layers)]


@register("planar", "Planar flow, invertible with a numerical inverse (Rezende & Mohamed, 2015)")
def _planar(dim, num_layers=16):
    return [Planar(dim) for _ in range(num_layers)]


@register("radial", "Radial flow, invertible with a closed-form inverse (Rezende & Mohamed, 2015)")
def _radial(dim, num_layers=16):
    return [Radial(dim) for _ in range(num_layers)]


__all__ = ["Flow", "build", "names", "options", "register", "transformed"]
