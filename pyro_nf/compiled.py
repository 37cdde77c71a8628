r"""The compiled path: ``nf.compile(model)``, the training losses and the sampling of a flow through
``torch.compile``, each one graph with its backward.

A pyro_nf flow is written for eager PyTorch (checked inputs, records of the last pair, staged state), and every
one of those habits steps aside while ``torch.compile`` traces (``torch.compiler.is_compiling()``): records are
neither read nor made, inputs are not validated, no host synchronisation breaks the graph, and state a layer
stages (BatchNorm's running statistics) is committed inside the graph. So the whole loss, the walk through every
layer and the base density, is one graph, and AOTAutograd compiles its backward as a second one. The flow keeps
its records (``cache_size=1``) for eager calls, which may come between compiled ones without a recompilation.

What :func:`compile` gives (each method compiled at its second call, see *First calls*):

* ``nll_loss(x)``: ``-log_prob(x).mean()``, the maximum-likelihood loss;
* ``reverse_kl_loss(target, num_samples)``: ``mean(log q(x) - log p~(x))`` over reparameterised samples
  ``x ~ q``, the guide's loss against an unnormalised target;
* ``log_prob(x)``, ``rsample_and_log_prob(sample_shape)``, ``rsample(sample_shape)``, ``sample(sample_shape)``.

Samples start from the base distribution drawn eagerly (one ``randn``), so a seed gives the same samples as
the eager model; only the deterministic walk is compiled.

**Plain torch.compile** works the same way on any function of the model, e.g.
``torch.compile(lambda x: -model.log_prob(x).mean())`` or a reverse-KL loss written as Pyro scores a guide,
``x = model.rsample((n,)); (model.log_prob(x) - target(x)).mean()`` (one graph; compiled, ``log_prob`` of the
sample walks the inverse, since records are not read: prefer ``rsample_and_log_prob`` for IAF). Call the model
once eagerly before the first compiled call, as :func:`compile` does.

**First calls.** The first call of each method runs eagerly: it settles what a model initialises lazily
(ActNorm's data-dependent initialisation, cached constants), which a trace must not see change. The second call
compiles and later calls run the compiled code. Inductor's compilation takes tens of seconds on a CPU (20-60 s
per loss and its backward at D = 64 on two busy cores; minutes for a 16-layer planar flow, one ``while_loop``
per layer; repeated runs hit inductor's on-disk cache). A new batch size compiles once more, with a dynamic
batch dimension: keep the batch size fixed (``drop_last``) to compile once.

**Speed** (one CPU thread, D = 64, batch 1024, ``Adam(fused=True)``, ``benchmarks/compile_check.py``): the compiled
maximum-likelihood step of realnvp takes about 1/1.5 of the eager pyro_nf step (1/1.7 of the fastest eager peer's),
of nsf_coupling 1/2.6 (1/3), whose steps are many small elementwise kernels that inductor fuses; a MAF step is
three quarters matrix products (the MADE layers), which compilation does not shorten: 1/1.3.
"""

from __future__ import annotations

import types

import torch
from pyro.distributions import ConditionalDistribution

from .base import FlowTransform
from .compose import ConditionalFlow, ConditionalFlowDistribution, Flow, transformed
from .distributions import FlowDistribution


# Each compiled function takes the model and a context (None for an unconditional flow): a conditional model is
# conditioned inside the trace, so the conditioned layers, built anew at every call, are no guard of the graph.
def _at(model, context):
    return model if context is None else model.condition(context)


def _nll(model, x, context):
    return -_at(model, context).log_prob(x).mean()


def _log_prob(model, x, context):
    return _at(model, context).log_prob(x)


def _push(model, z, context):
    # the walk of rsample_and_log_prob, from a given base draw
    model = _at(model, context)
    x, ladj = model.transforms[0].forward_and_ladj(z)
    return x, model.base_dist.log_prob(z) - ladj


def _reverse_kl(model, target, z, context):
    x, log_q = _push(model, z, context)
    return (log_q - target(x)).mean()


def _own_copy(function):
    """``function`` with a code object of its own: dynamo keeps compiled code (and its limit of 8 recompilations)
    per code object, so each compiled model gets its own cache instead of sharing one with every other model."""
    return types.FunctionType(function.__code__.replace(), function.__globals__, function.__name__)


class CompiledFlow:
    r"""A flow distribution whose losses, density and sampling run through ``torch.compile``: made by
    :func:`compile`, sharing the model's parameters (train it with any optimizer over ``parameters()``).

    ``model`` is the eager :class:`~pyro_nf.distributions.FlowDistribution`, or the
    :class:`~pyro_nf.ConditionalFlowDistribution` of a conditional flow, whose every method then takes the
    context, one row per batch element (``conditional`` says which); each method is compiled on its own the first
    time it is used again (see :mod:`pyro_nf.compiled`) with the keyword arguments given to :func:`compile`.
    """

    def __init__(self, model: FlowDistribution | ConditionalFlowDistribution, **compile_kwargs):
        self.model = model
        self.conditional = isinstance(model, ConditionalFlowDistribution)
        self.flow = model.flow if self.conditional else model.transforms[0]
        self.compile_kwargs = dict(compile_kwargs)
        self._compiled: dict = {}

    def _run(self, function, *args, context=None):
        compiled = self._compiled.get(function)
        if compiled is None:
            # eager first: lazy state (ActNorm's initialisation, cached constants) settles before any trace
            self._compiled[function] = torch.compile(_own_copy(function), **self.compile_kwargs)
            return function(self.model, *args, context)
        return compiled(self.model, *args, context)

    def _context(self, caller: str, context):
        if not self.conditional:
            if context is not None:
                raise ValueError(f"CompiledFlow.{caller}: context= was given but the flow is not conditional")
            return None
        if context is None:
            raise ValueError(f"CompiledFlow.{caller}: the flow is conditional (context_dim={self.flow.context_dim}); "
                             "pass context=, one row per batch element")
        context = torch.as_tensor(context)
        if context.dim() < 1 or context.shape[-1] != self.flow.context_dim:
            raise ValueError(f"CompiledFlow.{caller}: expected a context of shape (..., {self.flow.context_dim}), "
                             f"got {tuple(context.shape)}")
        return context

    def parameters(self):
        """The flow's parameters (what an optimizer trains)."""
        return self.flow.parameters()

    # ----------------------------------------------------------------- losses
    def nll_loss(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """``-log_prob(x).mean()`` (``-log p(x | c)`` of a conditional flow, one context row per data row): the
        maximum-likelihood loss of a batch, differentiable, one compiled graph."""
        return self._run(_nll, x, context=self._context("nll_loss", context))

    def reverse_kl_loss(self, target, num_samples: int, context: torch.Tensor | None = None) -> torch.Tensor:
        r"""``mean(log q(x) - log p~(x))`` over ``num_samples`` reparameterised samples ``x ~ q`` of this model:
        the reverse-KL loss of a guide (``KL(q || p) - log Z``, ``p = p~ / Z``), differentiable, one compiled graph.

        ``target`` is an unnormalised log density: a callable ``x -> log p~(x)`` or a distribution (its
        ``log_prob``); it is traced into the same graph (keep passing the same object, or it compiles again).
        For a conditional flow the samples have shape ``(num_samples, *context.shape[:-1], D)``: an amortised
        guide, ``target`` scoring each sample against its context row.
        """
        if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 1:
            raise ValueError(f"reverse_kl_loss: num_samples must be a positive int, got {num_samples!r}")
        log_target = getattr(target, "log_prob", target)
        if not callable(log_target):
            raise TypeError(f"reverse_kl_loss: target must be a callable or have log_prob, got {type(target).__name__}")
        context = self._context("reverse_kl_loss", context)
        return self._run(_reverse_kl, log_target, self._base_draw((num_samples,), context), context=context)

    # ----------------------------------------------------------------- the distribution's calls
    def log_prob(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """``log p(x)`` (or ``log p(x | c)``), compiled (a new tensor each call: no record is read)."""
        return self._run(_log_prob, x, context=self._context("log_prob", context))

    def rsample_and_log_prob(self, sample_shape=(), context: torch.Tensor | None = None) \
            -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterised samples and their log density in one compiled walk (from an eager base draw); for a
        conditional flow of shape ``sample_shape + context.shape[:-1]``, one draw per context row."""
        context = self._context("rsample_and_log_prob", context)
        return self._run(_push, self._base_draw(sample_shape, context), context=context)

    def rsample(self, sample_shape=(), context: torch.Tensor | None = None) -> torch.Tensor:
        """Reparameterised samples (the compiled walk of :meth:`rsample_and_log_prob`)."""
        return self.rsample_and_log_prob(sample_shape, context)[0]

    def sample(self, sample_shape=(), context: torch.Tensor | None = None) -> torch.Tensor:
        """Samples without gradients (compiled once more, for inference mode)."""
        with torch.no_grad():
            return self.rsample_and_log_prob(sample_shape, context)[0]

    def _base_draw(self, sample_shape, context) -> torch.Tensor:
        base = self.model.base_dist
        if context is None:
            return base.rsample(torch.Size(sample_shape))
        if isinstance(base, ConditionalDistribution):  # the same draw as the eager condition(c).rsample
            return self.model.condition(context).base_dist.rsample(torch.Size(sample_shape))
        return base.rsample(torch.Size(sample_shape) + context.shape[:-1])

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in self.compile_kwargs.items())
        return f"CompiledFlow({type(self.flow).__name__}{', ' + options if options else ''})"


def compile(model, **compile_kwargs) -> CompiledFlow:
    r"""The compiled path of a flow in one line: its losses, density and sampling through ``torch.compile``.

    ``model`` is a :class:`~pyro_nf.distributions.FlowDistribution` (``nf.transformed(flow)``), or a
    :class:`~pyro_nf.Flow` or a layer, which gets the default standard normal base. ``compile_kwargs`` go to
    ``torch.compile`` (``backend``, ``mode``, ``dynamic``, ``fullgraph=True`` to make any graph break an error).
    The result shares the flow's parameters: train ``compiled.parameters()`` (the flow's) with any optimizer;
    ``Adam(..., fused=True)`` is the fast one on CPUs and GPUs.

    One graph, no graph break (the layers' checks and records are skipped while tracing), for realnvp, nice, glow,
    realnvp_abs, augmented_realnvp, maf, iaf, nsf_coupling, nsf_autoregressive, radial and planar (whose
    numerical inverse runs as a ``while_loop``). ffjord (adaptive ODE steps), residual (its fixed-point inverse) and
    snf (Metropolis steps) break the graph at their data-dependent loops and run those parts eagerly. A conditional
    flow (a :class:`~pyro_nf.ConditionalFlow` or its ``nf.transformed``) compiles the same way, conditioned inside
    the graph: every method takes ``context=``, e.g. ``fast.nll_loss(theta, context=x)`` for neural posterior
    estimation.

    Example:
        >>> import torch, pyro_nf as nf
        >>> model = nf.transformed(nf.build("realnvp", 2, num_layers=2))
        >>> fast = nf.compile(model)  # doctest: +SKIP
        >>> fast = nf.compile(model, backend="aot_eager")  # quick to compile here; inductor is the default
        >>> optimizer = torch.optim.Adam(fast.parameters(), lr=1e-3, fused=True)
        >>> x = torch.randn(256, 2)
        >>> for step in range(3):  # the first call runs eagerly, the second compiles
        ...     optimizer.zero_grad()
        ...     loss = fast.nll_loss(x)
        ...     loss.backward()
        ...     optimizer.step()
        >>> torch.allclose(fast.log_prob(x), model.log_prob(x), atol=1e-5)
        True
        >>> fast.rsample_and_log_prob((5,))[0].shape
        torch.Size([5, 2])
    """
    if isinstance(model, (Flow, FlowTransform, ConditionalFlow)):
        model = transformed(model)
    if isinstance(model, ConditionalFlowDistribution):
        return CompiledFlow(model, **compile_kwargs)
    if not isinstance(model, FlowDistribution) or model._walker() is None:
        raise TypeError("compile: expected a pyro_nf flow distribution (nf.transformed(flow)), a Flow or a layer, "
                        f"got {type(model).__name__}")
    return CompiledFlow(model, **compile_kwargs)


__all__ = ["CompiledFlow", "compile"]
