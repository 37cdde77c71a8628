"""Chains of layers: :class:`Flow`, :func:`transformed` and :func:`log_prob_estimate`.

A :class:`Flow` owns the walk along its chain: one ``forward_and_ladj`` for sampling and one
``inverse_and_ladj`` for the density, each asking every layer once for its output *and* its log-det. It
records the last pair it made (see :mod:`pyro_nf.base` for the guard), so Pyro's
``TransformedDistribution`` scores a sample of its own without an inverse, and, with surjective or
stochastic layers inside, along the very path that made it.
"""

from __future__ import annotations

import math
import weakref

import torch
from pyro.distributions.conditional import (
    ConditionalDistribution,
    ConditionalTransformedDistribution,
    ConditionalTransformModule,
)
from pyro.distributions.torch_transform import ComposeTransformModule
from torch.distributions import constraints
from torch.distributions.transforms import Transform, _InverseTransform
from torch.distributions.utils import _sum_rightmost

from .base import FlowTransform, Recording, check_context_dim, in_call
from .distributions import FlowDistribution, StandardNormal


def is_positive(constraint) -> bool:
    """Whether a constraint restricts values to (a product of) the positive half-line."""
    while isinstance(constraint, constraints.independent):
        constraint = constraint.base_constraint
    bound = getattr(constraint, "lower_bound", None)
    return isinstance(constraint, (constraints.greater_than, constraints.greater_than_eq)) and bound is not None \
        and float(bound) >= 0


class Flow(Recording, ComposeTransformModule):
    """A chain of layers, sampling direction first to last. Prints as a chain, one layer a line.

    Composition is checked: a layer whose input must be positive (such as
    :class:`~pyro_nf.surjections.Abs`) must follow a layer whose output is positive (such as
    :class:`~pyro_nf.transforms.Softplus`), or the model would not integrate to one.

    Parts may also be torch or Pyro transforms of event dimension 0 or 1 (``SigmoidTransform``, Pyro's
    own layers); their log-dets are summed over the event like ``ComposeTransform`` does.

    ``log_abs_det_jacobian(z, x)`` of a pair the flow did not make walks forward from ``z`` and gives the last
    layer the pair's ``x``, as ``ComposeTransform`` does; with
    non-bijective layers inside, the intermediate points of such a pair are random, so it refuses.
    """

    def __init__(self, parts, dim: int | None = None, name: str | None = None, cache_size: int = 1):
        parts = list(parts)
        for i, part in enumerate(parts[1:], 1):
            if is_positive(part.domain) and not is_positive(parts[i - 1].codomain):
                raise ValueError(
                    f"Flow: {type(part).__name__} (layer {i}) needs positive inputs but {type(parts[i - 1]).__name__} "
                    f"(layer {i - 1}) can output any real value, so the model would integrate to less than one; "
                    "put a layer onto the positive orthant before it (e.g. pyro_nf.transforms.Softplus)"
                )
        for i, part in enumerate(parts):
            if part.domain.event_dim > 1 or part.codomain.event_dim > 1:
                raise ValueError(f"Flow: layer {i} ({type(part).__name__}) has event dimension > 1; "
                                 "a Flow chains vector (event_dim 1) or elementwise layers")
        super().__init__(parts)
        self._refuse_uncached(cache_size, [type(p).__name__ for p in parts if not p.bijective])
        self.__dict__["_flow_cache_size"] = cache_size
        self.__dict__["_record"] = None
        if dim is None:
            dim = getattr(self.parts[0], "domain_dim", None) if self.parts else None
            if dim is not None:
                dim = self.forward_shape(torch.Size([dim]))[-1]
        self.dim = dim
        self.name = name
        self.spec = None  # set by nf.build: what nf.save needs to build the flow again

    # torch's ComposeTransform keeps cache_size 0 (the parts and this record do the caching)
    @property
    def _records(self) -> bool:
        return self.__dict__.get("_flow_cache_size", 1) == 1

    def _cheap_inverse(self) -> bool:
        """Whether every part's inverse is cheap (see ``FlowTransform.cheap_inverse``): then a sample drawn
        without gradients is not recorded."""
        return all(isinstance(part, FlowTransform) and part._cheap_inverse() for part in self.parts)

    @property
    def domain(self):
        return constraints.independent(constraints.real, 1) if not self.parts else _vector(self.parts[0].domain)

    @property
    def codomain(self):
        return constraints.independent(constraints.real, 1) if not self.parts else _vector(self.parts[-1].codomain)

    # ----------------------------------------------------------------- the walks
    def forward_and_ladj(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, log|det dx/dz|)``: the sampling direction through every layer, one call each."""
        return in_call(self._walk_forward, z)

    def _computed_inverse(self, x):
        return in_call(self._walk_inverse, x)

    def _walk_forward(self, z):
        total = None
        for part in self.parts:
            z, ladj = part.forward_and_ladj(z) if isinstance(part, FlowTransform) else _generic_forward(part, z)
            total = ladj if total is None else total + ladj
        return z, (total if total is not None else z.new_zeros(z.shape[:-1]))

    def _walk_inverse(self, x):
        total = None
        for part in reversed(self.parts):
            x, ladj = part.inverse_and_ladj(x) if isinstance(part, FlowTransform) else _generic_inverse(part, x)
            total = ladj if total is None else total + ladj
        return x, (total if total is not None else x.new_zeros(x.shape[:-1]))

    # ----------------------------------------------------------------- torch Transform API
    @property
    def inv(self):
        # one inverse object calling this flow's _inv_call (ComposeTransform's would chain the parts' inverses
        # and bypass the flow's record)
        inverse = self._inv() if self._inv is not None else None
        if inverse is None:
            inverse = _InverseTransform(self)
            self._inv = weakref.ref(inverse)
        return inverse

    def log_abs_det_jacobian(self, z, x):
        record = self._recall(z=z, x=x)
        if record is not None:
            return record.ladj
        random = [type(p).__name__ for p in self.parts if not p.bijective]
        if random:
            raise ValueError(
                f"Flow: log_abs_det_jacobian of a pair this flow did not make (or one changed since): its "
                f"non-bijective layers ({', '.join(random)}) make the intermediate points random, so the pair "
                "does not determine them; score data with log_prob, or use the flow's own output"
            )
        return in_call(self._pair_ladj, z, x)

    def _pair_ladj(self, z, x):
        # as ComposeTransform: forward from z through all layers but the last, whose log-det takes the pair's x
        if not self.parts:
            return z.new_zeros(z.shape[:-1])
        *head, last = self.parts
        total = 0
        for part in head:
            z, ladj = part.forward_and_ladj(z) if isinstance(part, FlowTransform) else _generic_forward(part, z)
            total = total + ladj
        return total + _sum_rightmost(last.log_abs_det_jacobian(z, x), 1 - last.domain.event_dim)

    def __getstate__(self):
        state = super().__getstate__()
        state["_record"] = None
        return state

    def base_dim(self) -> int:
        """Size of the base (latent) distribution's event."""
        return self.inverse_shape(torch.Size([self.dim]))[-1]

    def __repr__(self) -> str:
        named = f"name={self.name!r}, " if self.name else ""
        lines = [f"Flow({named}dim={self.dim}, layers={len(self.parts)})", f"  ( Normal(0, I_{self.base_dim()}) )"]
        for part in self.parts:
            lines += ["    ↓", f"  {part!r}"]
        return "\n".join(lines)


class ConditionalFlow(ConditionalTransformModule):
    r"""A chain of layers some of which take a context: the flow of ``p(x | c)``, through Pyro's own
    ``ConditionalTransformModule`` interface.

    ``flow.condition(c)`` is a :class:`Flow` whose context-taking layers are bound to ``c`` (views that
    share this module's parameters; ``c`` of shape ``(..., context_dim)`` broadcasts against the inputs);
    ``nf.transformed(flow)`` is a :class:`ConditionalFlowDistribution`, whose ``condition(c)`` is a
    distribution with ``log_prob``, ``sample`` and ``rsample`` as for an unconditional flow. Records of
    the conditioned flow watch ``c`` as they watch parameters (see :mod:`pyro_nf.base`).
    """

    def __init__(self, parts, context_dim: int, dim: int | None = None, name: str | None = None):
        super().__init__()
        parts = list(parts)
        self.context_dim = check_context_dim(context_dim, "ConditionalFlow")
        if not any(getattr(part, "context_dim", 0) for part in parts):
            raise ValueError("ConditionalFlow: no layer takes a context (build them with context_dim > 0)")
        wrong = [type(p).__name__ for p in parts if getattr(p, "context_dim", 0) not in (0, self.context_dim)]
        if wrong:
            raise ValueError(f"ConditionalFlow: layers {wrong} take a context of another size than {context_dim}")
        self.parts = torch.nn.ModuleList(parts)
        self.dim = dim if dim is not None else Flow(parts).dim
        self.name = name
        self.spec = None
        self.context_units = None  # set by nf.flows.standardized(..., context_loc=, context_scale=)

    def condition(self, context: torch.Tensor) -> Flow:
        if self.context_units is not None:  # the layers see the context in standard units
            context = self.context_units(context)
        parts = [part.condition(context) if isinstance(part, FlowTransform) else part for part in self.parts]
        return Flow(parts, dim=self.dim, name=self.name)

    def base_dim(self) -> int:
        """Size of the base (latent) distribution's event."""
        return Flow(list(self.parts), dim=self.dim).base_dim()

    def __repr__(self) -> str:
        named = f"name={self.name!r}, " if self.name else ""
        lines = [f"ConditionalFlow({named}dim={self.dim}, context_dim={self.context_dim}, layers={len(self.parts)})",
                 f"  ( Normal(0, I_{self.base_dim()}) )"]
        for part in self.parts:
            lines += ["    ↓", f"  {part!r}" + (" | c" if getattr(part, "context_dim", 0) else "")]
        return "\n".join(lines)


class ContextStandardization(torch.nn.Module):
    r"""The fixed map :math:`c \mapsto (c - \mathrm{loc}) / \mathrm{scale}` that a standardised
    :class:`ConditionalFlow` applies to its context before its layers see it (buffers, saved with the model;
    see :func:`pyro_nf.flows.standardized`)."""

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor):
        super().__init__()
        self.register_buffer("loc", loc.detach().clone())
        self.register_buffer("scale", scale.detach().clone())

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        return (context - self.loc) / self.scale


class ConditionalFlowDistribution(ConditionalTransformedDistribution):
    """``p(x | c)``: Pyro's ``ConditionalTransformedDistribution`` over a :class:`ConditionalFlow`, whose
    ``condition(c)`` is a :class:`~pyro_nf.distributions.FlowDistribution` with the base expanded to the
    context's batch shape (a conditional base, a Pyro ``ConditionalDistribution``, is conditioned too)."""

    def __init__(self, base_dist, flow: ConditionalFlow, validate_args=None):
        super().__init__(base_dist, [flow])
        self.flow = flow
        self.validate_args = validate_args  # for each conditioned distribution

    def condition(self, context: torch.Tensor) -> FlowDistribution:
        base = self.base_dist.condition(context)
        batch = context.shape[:-1]
        if base.batch_shape != batch:
            base = base.expand(torch.broadcast_shapes(base.batch_shape, batch))
        return FlowDistribution(base, self.flow.condition(context), validate_args=self.validate_args)


def _vector(constraint):
    return constraint if constraint.event_dim >= 1 else constraints.independent(constraint, 1)


def _generic_forward(part: Transform, z):
    x = part(z)
    return x, _sum_rightmost(part.log_abs_det_jacobian(z, x), 1 - part.domain.event_dim)


def _generic_inverse(part: Transform, x):
    z = part.inv(x)
    return z, _sum_rightmost(part.log_abs_det_jacobian(z, x), 1 - part.domain.event_dim)


def transformed(flow, base=None, *, validate_args=None):
    """``TransformedDistribution(base, flow)`` (a :class:`~pyro_nf.distributions.FlowDistribution`, whose
    input check is cheaper); the default base is a :class:`~pyro_nf.distributions.StandardNormal` of the
    flow's base size, on the device and dtype of the flow's parameters. For a :class:`ConditionalFlow` it is a
    :class:`ConditionalFlowDistribution` (``base`` may then be a Pyro ``ConditionalDistribution``).

    ``validate_args`` (torch's meaning; ``None``: the global default, on unless ``pyro.enable_validation(False)``)
    applies to the distribution and to its default base. Validation reads the values on the host, a device
    synchronisation on a GPU; with ``validate_args=False`` (and Pyro's validation off, which the layers'
    own input checks follow) ``log_prob``, ``rsample`` and their gradients read nothing back, except in the
    layers documented as iterative (the planar inverse, the residual flow, the ODE solvers).

    Example:
        >>> import torch, pyro_nf as nf
        >>> model = nf.transformed(nf.build("nsf_coupling", 2, num_layers=2).double())
        >>> x = model.sample((4,))
        >>> x.dtype, model.log_prob(x).shape
        (torch.float64, torch.Size([4]))
    """
    first = flow.parts[0] if isinstance(flow, (ComposeTransformModule, ConditionalFlow)) and flow.parts else flow
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
        size = flow.base_dim() if isinstance(flow, (Flow, ConditionalFlow)) else getattr(flow, "domain_dim",
                                                                                          flow.input_dim)
        base = StandardNormal(size, device=device, dtype=dtype, validate_args=validate_args)
    if isinstance(flow, ConditionalFlow):
        return ConditionalFlowDistribution(base, flow, validate_args=validate_args)
    if isinstance(base, ConditionalDistribution):
        raise TypeError("transformed: a conditional base needs a ConditionalFlow (build with context_dim=k)")
    return FlowDistribution(base, flow, validate_args=validate_args)


@torch.no_grad()
def log_prob_estimate(model, x: torch.Tensor, num_samples: int = 16) -> torch.Tensor:
    """``log p(x)`` estimated as ``log mean_k exp(log_prob_k(x))`` over ``num_samples`` random
    paths drawn in one batched call. For bijective flows every path gives the exact value;
    with :class:`~pyro_nf.surjections.Augment` or stochastic layers each ``log_prob`` is a
    one-path estimate whose exponential is unbiased for ``p(x)``, and more paths tighten the
    lower bound.

    Example:
        >>> import torch, pyro_nf as nf
        >>> model = nf.transformed(nf.build("augmented_realnvp", 2, num_layers=2))
        >>> nf.flows.log_prob_estimate(model, torch.zeros(3, 2), num_samples=8).shape
        torch.Size([3])
    """
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"log_prob_estimate: num_samples must be a positive int, got {num_samples!r}")
    paths = model.log_prob(x.expand(num_samples, *x.shape))
    return torch.logsumexp(paths, dim=0) - math.log(num_samples)


__all__ = ["ConditionalFlow", "ConditionalFlowDistribution", "Flow", "is_positive", "log_prob_estimate", "transformed"]
