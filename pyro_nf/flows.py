"""Named flow architectures and the registry: ``names()`` and ``build(name, dim, **options)``.

Every architecture returns a :class:`Flow`, a ``ComposeTransformModule`` ready for
``pyro.distributions.TransformedDistribution`` (see :func:`transformed`).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import pyro.distributions as dist
import torch
from pyro.distributions.torch_transform import ComposeTransformModule
from torch.distributions import constraints

from .distributions import FlowDistribution, StandardNormal
from .nn import COUPLING_MASKS, check_hidden_dims, coupling_mask
from .stochastic import AnnealedEnergy, Langevin, Metropolis
from .surjections import Abs, Augment
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
from .transforms.base import FlowTransform
from .transforms.elementwise import Softplus


def is_positive(constraint) -> bool:
    """Whether a constraint restricts values to (a product of) the positive half-line."""
    while isinstance(constraint, constraints.independent):
        constraint = constraint.base_constraint
    bound = getattr(constraint, "lower_bound", None)
    return isinstance(constraint, (constraints.greater_than, constraints.greater_than_eq)) and bound is not None \
        and float(bound) >= 0


class Flow(ComposeTransformModule):
    """A chain of layers, sampling direction first to last. Prints as a chain, one layer a line.

    Composition is checked: a layer whose input must be positive (such as
    :class:`~pyro_nf.surjections.Abs`) must follow a layer whose output is positive (such as
    :class:`~pyro_nf.transforms.Softplus`), or the model would not integrate to one.
    """

    def __init__(self, parts, dim: int | None = None, name: str | None = None):
        parts = list(parts)
        for i, part in enumerate(parts[1:], 1):
            if is_positive(part.domain) and not is_positive(parts[i - 1].codomain):
                raise ValueError(
                    f"Flow: {type(part).__name__} (layer {i}) needs positive inputs but {type(parts[i - 1]).__name__} "
                    "(layer {}) can output any real value, so the model would integrate to less than one; "
                    "put a layer onto the positive orthant before it (e.g. pyro_nf.transforms.Softplus)".format(i - 1)
                )
        super().__init__(parts)
        if dim is None:
            dim = getattr(self.parts[0], "domain_dim", None)
            if dim is not None:
                dim = self.forward_shape(torch.Size([dim]))[-1]
        self.dim = dim
        self.name = name

    def log_abs_det_jacobian(self, x, y):
        total = self._ladj_from_layer_caches(x, y)
        return total if total is not None else super().log_abs_det_jacobian(x, y)

    def _ladj_from_layer_caches(self, x, y):
        # ComposeTransform runs every layer forward again from x to find the intermediate points (free only
        # through each layer's cache, one lookup per layer, then a second lookup for its log-det). When
        # (x, y) is a pair that this flow just made, each pyro_nf layer's cache already holds its
        # (input, output, log-det): walk back from y through them instead. Any gap (a layer of another
        # library, a stale or missing entry, a pair that is not this chain's) leaves it to ComposeTransform.
        if torch.compiler.is_compiling() or not self.parts:
            return None
        total, current = None, y
        for part in reversed(self.parts):
            if not isinstance(part, FlowTransform):
                return None
            entry = part._cache_lookup(y=current)
            if entry is None:
                return None
            total = entry[2] if total is None else total + entry[2]
            current = entry[0]
        return total if current is x else None

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
    """``TransformedDistribution(base, flow)`` (a :class:`~pyro_nf.distributions.FlowDistribution`, whose
    input check is cheaper); the default base is a :class:`~pyro_nf.distributions.StandardNormal` of the
    flow's base size, on the device and dtype of the flow's parameters."""
    first = flow.parts[0] if isinstance(flow, ComposeTransformModule) and flow.parts else flow
    if base is None and is_positive(first.domain):
        raise ValueError(
            f"transformed: the flow starts with {type(first).__name__}, whose input must be positive, but the "
            "default standard normal base is not: the model would integrate to 1/2^D. Start the flow with a "
            "layer onto the positive orthant (e.g. pyro_nf.transforms.Softplus) or pass a positive base"
        )
    if base is not None and is_positive(first.domain) and not is_positive(base.support):
        raise ValueError(f"transformed: {type(first).__name__} needs a base on the positive orthant, "
                         f"got support {base.support}")
    if base is None:
        # parameters first, then floating buffers (a flow of Metropolis layers has only buffers)
        floating = (t for t in (*flow.parameters(), *flow.buffers()) if t.is_floating_point())
        ref = next(floating, None)
        device, dtype = (ref.device, ref.dtype) if ref is not None else (None, torch.get_default_dtype())
        size = flow.base_dim() if isinstance(flow, Flow) else getattr(flow, "domain_dim", flow.input_dim)
        base = StandardNormal(size, device=device, dtype=dtype)
    return FlowDistribution(base, flow)


@torch.no_grad()
def log_prob_estimate(model, x: torch.Tensor, num_samples: int = 16) -> torch.Tensor:
    """``log p(x)`` estimated as ``log mean_k exp(log_prob_k(x))`` over ``num_samples`` random
    paths drawn in one batched call. For bijective flows every path gives the exact value;
    with :class:`~pyro_nf.surjections.Augment` or stochastic layers each ``log_prob`` is a
    one-path estimate whose exponential is unbiased for ``p(x)``, and more paths tighten the
    lower bound. (Scoring the same tensor twice would reuse its cached path, hence the batch.)
    """
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"log_prob_estimate: num_samples must be a positive int, got {num_samples!r}")
    paths = model.log_prob(x.expand(num_samples, *x.shape).clone())
    return torch.logsumexp(paths, dim=0) - math.log(num_samples)


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
             activation="relu", learn_bound=False, shift="latent"):
    _check_mask_kind("realnvp", mask)
    layers = []
    for i in range(num_layers):
        layers.append(AffineCoupling(dim, hidden_dims, coupling_mask(dim, mask, flip=i % 2 == 1),
                                     scale_bound=scale_bound, activation=activation, learn_bound=learn_bound,
                                     shift=shift))
        if batch_norm and i < num_layers - 1:
            layers.append(BatchNorm(dim))
    return layers


@register("glow", "Glow: ActNorm -> invertible linear (LU) -> affine coupling (Kingma & Dhariwal, 2018)",
          min_dim=2)
def _glow(dim, num_layers=4, hidden_dims=(64, 64), scale_bound=2.0, activation="relu", learn_bound=False,
          shift="latent"):
    layers = []
    for i in range(num_layers):
        layers += [
            ActNorm(dim),
            InvertibleLinear(dim),
            AffineCoupling(dim, hidden_dims, coupling_mask(dim, flip=i % 2 == 1), scale_bound=scale_bound,
                           activation=activation, learn_bound=learn_bound, shift=shift),
        ]
    return layers


def _alternating_order(dim: int, i: int) -> torch.Tensor:
    """Natural order on even layers, reversed on odd ones (MAF's choice)."""
    order = torch.arange(dim)
    return order.flip(0) if i % 2 == 1 else order


@register("maf", "MAF: affine autoregressive layers, density in one pass (Papamakarios et al., 2017)")
def _maf(dim, num_layers=5, hidden_dims=None, scale_bound=2.0, activation="relu", learn_bound=False,
         shift=None):
    hidden_dims = hidden_dims or default_hidden_dims(dim)
    return [AffineAutoregressive(dim, hidden_dims, _alternating_order(dim, i), "maf", scale_bound, activation,
                                 learn_bound=learn_bound, shift=shift) for i in range(num_layers)]


@register("iaf", "IAF: affine autoregressive layers, sampling in one pass (Kingma et al., 2016)")
def _iaf(dim, num_layers=5, hidden_dims=None, scale_bound=2.0, activation="relu", learn_bound=False,
         shift=None):
    hidden_dims = hidden_dims or default_hidden_dims(dim)
    return [AffineAutoregressive(dim, hidden_dims, _alternating_order(dim, i), "iaf", scale_bound, activation,
                                 learn_bound=learn_bound, shift=shift) for i in range(num_layers)]


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


@register("realnvp_abs", "RealNVP onto the positive orthant (Softplus), then the Abs surjection: for data "
                        "symmetric about 0 (Nielsen et al., 2020)", min_dim=2)
def _realnvp_abs(dim, num_layers=6, hidden_dims=(64, 64), learn_signs=False):
    return [*_realnvp(dim, num_layers, hidden_dims), Softplus(dim), Abs(dim, learn_signs=learn_signs)]


@register("augmented_realnvp", "RealNVP on [x, e], e ~ q(e|x) from Augment: extra dimensions for the flow "
                              "(Huang et al., 2020)")
def _augmented_realnvp(dim, num_layers=8, hidden_dims=(64, 64), augment_dim=2, learned=True, mask="half"):
    # "half" splits [x, e] into its first and second halves; "alternate" interleaves them, so that
    # data coordinates also condition each other directly
    _check_mask_kind("augmented_realnvp", mask)
    return [*_realnvp(dim + augment_dim, num_layers, hidden_dims, mask), Augment(dim, augment_dim, learned=learned)]


@register("snf", "Stochastic normalizing flow: RealNVP blocks interleaved with Metropolis or Langevin layers on "
                 "energies annealed from N(0, I) to `energy` (Wu et al., 2020)", min_dim=2)
def _snf(dim, num_layers=4, hidden_dims=(64, 64), energy=None, kernel="metropolis", n_steps=5, step_size=0.2):
    kernels = {"metropolis": Metropolis, "langevin": Langevin}
    if kernel not in kernels:
        raise ValueError(f"snf: kernel must be one of {sorted(kernels)}, got {kernel!r}")
    layers = []
    for i in range(num_layers):
        layers += _realnvp(dim, 2, hidden_dims)
        beta = (i + 1) / num_layers
        target = energy if energy is not None else (lambda x: 0.5 * (x * x).sum(-1))
        layers.append(kernels[kernel](dim, AnnealedEnergy(target, beta), n_steps=n_steps, step_size=step_size))
    return layers


__all__ = ["Flow", "build", "is_positive", "log_prob_estimate", "names", "options", "register", "transformed"]
