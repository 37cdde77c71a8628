r"""Continuous normalizing flows: a neural ODE as one invertible layer (FFJORD).

A :class:`ContinuousFlow` moves a point along the solution of an ordinary differential equation
(Chen et al., 2018, "Neural Ordinary Differential Equations")

.. math::

    \frac{dz(t)}{dt} = f_\theta(z(t), t), \qquad x = z(T) = z(0) + \int_0^T f_\theta(z(t), t)\, dt,

with ``z(0) = z`` the latent (base) point and ``z(T) = x`` the data point: the forward, sampling
direction integrates from ``0`` to ``T``, the density direction from ``T`` back to ``0``. The map is a
bijection for any Lipschitz field (solutions of an ODE do not cross), whatever the architecture of
``f``, which is why the field can be a free-form MLP. By the instantaneous change of variables
(Chen et al., 2018, Theorem 1) the log-density along a trajectory obeys
``d log p(z(t)) / dt = -tr(df/dz)``, so the log-det is an integral of a trace,

.. math::

    \log\left|\det \frac{\partial x}{\partial z}\right| = \int_0^T \operatorname{tr}
        \frac{\partial f_\theta}{\partial z}(z(t), t)\, dt,

carried through the solver as one more state, ``d(ladj)/dt = tr(df/dz)``. The trace is

* **exact**: ``D`` vector-Jacobian products, one per output coordinate; the log-det is then correct to
  the solver's tolerance, and is the default in eval mode and for ``D <= 8``;
* **Hutchinson's estimator** (Grathwohl et al., 2019, "FFJORD: Free-form Continuous Dynamics for
  Scalable Reversible Generative Models"): ``tr(J) = E[eps^T J eps]`` for a probe with
  ``E[eps eps^T] = I`` (Rademacher or standard normal), one vector-Jacobian product per evaluation.
  One probe per sample is drawn per solve and held fixed along it (and through the adjoint solve),
  so the log-det is an unbiased estimate of the integral; it is the default for training when
  ``D > 8``. A log-det estimated this way is random, so a model using it scores an unbiased
  estimate, not the exact density: evaluate in eval mode (exact trace).

Solutions come from ``torchdiffeq`` (adaptive ``dopri5`` by default; ``odeint_adjoint`` with
``adjoint=True``, which backpropagates by solving the adjoint ODE backwards instead of storing the
solver's graph: memory constant in the number of steps, at the price of a second solve).

**Time.** The layer solves in a rescaled time ``s = t / T`` on ``[0, 1]``,
``dz/ds = T f(z, sT)``, so ``T = softplus(raw)`` (learned by default) enters as a parameter of the
field, which both direct backpropagation and the adjoint method differentiate as any other.

**Regularisation** (Finlay et al., 2020, "How to train your neural ODE: the world of Jacobian and kinetic
regularization", RNODE). With weights ``kinetic > 0`` or ``jacobian > 0`` every solve also integrates, per
sample, the kinetic energy ``E_K = int_0^T ||f||^2 dt`` and the Jacobian's Frobenius norm
``E_J = int_0^T ||df/dz||_F^2 dt`` (exact with the exact trace, else the unbiased ``||eps^T J||^2``).
Both penalise the paths that make the solver slow; a training loop adds
:attr:`ContinuousFlow.regularization` (``kinetic * mean E_K + jacobian * mean E_J`` of the last solve),
or :func:`regularization` of a whole flow, to its loss.

**Augmentation** (Dupont et al., 2019, "Augmented Neural ODEs"): the flow of an ODE is a homeomorphism,
so it cannot change the topology of the data; solving in ``D + A`` dimensions lifts that limit. The
``augmented_ffjord`` architecture does it with :class:`~pyro_nf.surjections.Augment`.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F
from torchdiffeq import odeint, odeint_adjoint

from ..base import FlowTransform, check_finite
from ..nn import MLP, check_hidden_dims

TRACES = ("auto", "exact", "hutchinson")
PROBES = ("rademacher", "gaussian")
EXACT_MAX_DIM = 8  # "auto" uses the exact trace up to this many dimensions in training
ADAPTIVE_SOLVERS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")
FIXED_STEP_SOLVERS = ("euler", "midpoint", "heun2", "heun3", "rk4", "explicit_adams", "implicit_adams")


def default_tolerance(dtype: torch.dtype) -> float:
    """The solver's ``atol = rtol`` when none is given: ``1e-10`` in float64 (log-dets and round trips to
    a few 1e-11), ``1e-6`` in float32 (round trips to a few 1e-6; below that float32 rounding, not the steps,
    sets the error), ``1e-3`` below."""
    if dtype == torch.float64:
        return 1e-10
    if dtype == torch.float32:
        return 1e-6
    return 1e-3


def _error_norm(state: tuple) -> torch.Tensor:
    # The largest scaled error of the point and its log-det over the whole batch: every sample is
    # solved to the tolerance (the default RMS would let one sample of a large batch drift). The
    # regulariser states do not steer the steps.
    return torch.maximum(state[0].abs().max(), state[1].abs().max())


class _Dynamics:
    """The augmented right-hand side of one solve, in rescaled time ``s``:
    ``(du, d ladj, [d E_K, d E_J]) / ds = T (f, tr df/dz, [||f||^2, ||df/dz||_F^2])`` at ``z = origin + u``.

    The state carries the displacement ``u = z(s) - z(start)``, not ``z``: torchdiffeq reads its answer off
    a step's interpolating polynomial, whose coefficients (up to ~30 times the state) cancel, so rounding
    scales with the state, and a displacement is smaller than the point (float32 round trips come out about
    a third closer). One object per solve, so the probe stays fixed along it and through an adjoint solve
    that runs later (at ``backward``); ``calls`` counts the evaluations."""

    def __init__(self, layer: ContinuousFlow, origin: torch.Tensor, probe: torch.Tensor | None, regularize: bool):
        self.layer = layer
        self.origin = origin
        self.probe = probe
        self.regularize = regularize
        self.calls = 0

    def __call__(self, s: torch.Tensor, state: tuple) -> tuple:
        self.calls += 1
        u = state[0]
        # Under no_grad (sampling, evaluation, the adjoint's forward solve) the trace still needs a local
        # graph, but nothing may keep it; with grad on, the trace must itself be differentiable.
        keep_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            if not u.requires_grad:
                u = u.detach().requires_grad_(True)
            z = (self.origin if keep_graph else self.origin.detach()) + u
            T = self.layer.T
            t = (s.to(z.dtype) * T).reshape(1)
            f = self.layer.field(z, t)
            # d/du = d/dz, since z = origin + u
            if self.probe is None:
                trace, frobenius = _exact_trace(f, u, keep_graph, self.regularize)
            else:
                trace, frobenius = _hutchinson_trace(f, u, self.probe, keep_graph)
            out = [T * f, T * trace]
            if self.regularize:
                out += [T * f.square().sum(-1), T * frobenius]
        if not keep_graph:
            out = [v.detach() for v in out]
        return tuple(out)


def _exact_trace(f, z, keep_graph: bool, frobenius: bool):
    """``tr(df/dz)`` from the ``D`` rows ``d f_i / dz`` (samples do not interact, so the gradient of
    ``sum f_i`` over the batch is each sample's row), and ``||df/dz||_F^2`` from the same rows."""
    trace = z.new_zeros(z.shape[:-1])
    squares = z.new_zeros(z.shape[:-1]) if frobenius else None
    for i in range(z.shape[-1]):
        (row,) = torch.autograd.grad(f[..., i].sum(), z, create_graph=keep_graph, retain_graph=True)
        trace = trace + row[..., i]
        if frobenius:
            squares = squares + row.square().sum(-1)
    return trace, squares


def _hutchinson_trace(f, z, probe, keep_graph: bool):
    """``eps^T (df/dz) eps``, unbiased for the trace, and ``||eps^T df/dz||^2``, unbiased for
    ``||df/dz||_F^2``, from one vector-Jacobian product."""
    (vjp,) = torch.autograd.grad(f, z, grad_outputs=probe, create_graph=keep_graph)
    return (vjp * probe).sum(-1), vjp.square().sum(-1)


class ContinuousFlow(FlowTransform):
    r"""A continuous normalizing flow (FFJORD): ``x = z(T)`` for ``dz/dt = f(z, t)``, ``z(0) = z``,
    and ``log|det dx/dz| = \int_0^T tr(df/dz) dt`` (see the module docstring for the math and papers).

    The field ``f`` is the project's :class:`~pyro_nf.nn.MLP` on ``z`` with the time ``t`` as its
    context, with a smooth activation (``tanh``; an ODE solver's error control assumes a smooth
    field) and its last layer at zero, so the layer starts as the identity.

    Args:
        input_dim: the dimension ``D``.
        hidden_dims: the field's hidden sizes.
        T: the integration time (initial value when learned).
        learn_T: learn ``T = softplus(raw)`` (default) or keep it fixed.
        solver: a ``torchdiffeq`` method: adaptive (``"dopri5"``, ``"dopri8"``, ``"bosh3"``, ``"fehlberg2"``,
            ``"adaptive_heun"``), or fixed-step (``"rk4"``, ``"euler"``, ...: ``step_size``), whose
            inverse and log-det hold only to its discretisation error.
        atol, rtol: the solver's tolerances; ``None``: :func:`default_tolerance` of the input's dtype
            (tight, so that log-dets and round trips hold to ~1e-10 in float64).
        trace: ``"exact"``, ``"hutchinson"`` or ``"auto"`` (exact in eval mode or for
            ``D <= 8``, Hutchinson in training above).
        probe: Hutchinson's probe, ``"rademacher"`` (lower variance) or ``"gaussian"``.
        adjoint: backpropagate with ``odeint_adjoint`` (memory independent of the number of steps).
        kinetic, jacobian: RNODE weights of the kinetic energy and of the Jacobian's Frobenius norm;
            either positive makes every solve integrate both (see :attr:`regularization`).
        activation: the field's activation (a smooth one: ``"tanh"``, ``"elu"``, ``"silu"``, ``"gelu"``).
        step_size: the step of a fixed-step ``solver`` (in units of ``T``).
        max_num_steps: the most steps an adaptive solve may take before it fails with an error.
        zero_init: start the field's last layer at zero (default: the layer starts as the identity) or at
            random like its other layers (zuko's CNF starts so). Measured (``benchmarks/continuous.md``, 400
            steps): a random start avoids a stall on spirals (held-out NLL 3.403 against 3.461) and costs 0.08
            nats on checkerboard.

    After each solve: :attr:`last_nfe` (evaluations of the field in that solve), :attr:`last_backward_nfe`
    (those of its adjoint solve, once ``backward`` ran), :attr:`kinetic_energy` and
    :attr:`jacobian_frobenius` (per sample, or ``None`` when not regularising).

    Example:
        >>> import torch
        >>> layer = ContinuousFlow(2, hidden_dims=(16, 16))
        >>> z = torch.randn(5, 2)
        >>> torch.equal(layer(z), z)  # the field starts at zero: the identity
        True
        >>> layer.last_nfe > 0
        True
    """

    def __init__(self, input_dim: int, hidden_dims=(64, 64), T: float = 1.0, learn_T: bool = True,
                 solver: str = "dopri5", atol: float | None = None, rtol: float | None = None,
                 trace: str = "auto", probe: str = "rademacher", adjoint: bool = False, kinetic: float = 0.0,
                 jacobian: float = 0.0, activation="tanh", step_size: float = 0.05, max_num_steps: int = 10_000,
                 zero_init: bool = True, cache_size: int = 1):
        super().__init__(input_dim, cache_size=cache_size)
        name = type(self).__name__
        hidden_dims = check_hidden_dims(hidden_dims, name)
        if not (isinstance(T, (int, float)) and not isinstance(T, bool) and math.isfinite(T) and T > 0):
            raise ValueError(f"{name}: T must be a positive finite number, got {T!r}")
        solvers = ADAPTIVE_SOLVERS + FIXED_STEP_SOLVERS
        if solver not in solvers:
            raise ValueError(f"{name}: unknown solver {solver!r}; choose one of {solvers}")
        for label, tol in (("atol", atol), ("rtol", rtol)):
            if tol is not None and not (isinstance(tol, (int, float)) and tol > 0):
                raise ValueError(f"{name}: {label} must be a positive number or None, got {tol!r}")
        if trace not in TRACES:
            raise ValueError(f"{name}: trace must be one of {TRACES}, got {trace!r}")
        if probe not in PROBES:
            raise ValueError(f"{name}: probe must be one of {PROBES}, got {probe!r}")
        for label, weight in (("kinetic", kinetic), ("jacobian", jacobian)):
            if not (isinstance(weight, (int, float)) and weight >= 0):
                raise ValueError(f"{name}: {label} must be a non-negative number, got {weight!r}")
        if not step_size > 0:
            raise ValueError(f"{name}: step_size must be positive, got {step_size!r}")
        if not isinstance(max_num_steps, int) or max_num_steps < 1:
            raise ValueError(f"{name}: max_num_steps must be a positive int, got {max_num_steps!r}")
        self.hidden_dims = hidden_dims
        if not isinstance(zero_init, bool):
            raise TypeError(f"{name}: zero_init must be a bool, got {zero_init!r}")
        self.field = MLP(input_dim, input_dim, hidden_dims, context_features=1, activation=activation,
                         zero_init=zero_init)
        raw = torch.tensor(T + math.log(-math.expm1(-T)))  # softplus^{-1}(T)
        if learn_T:
            self.raw_T = nn.Parameter(raw)
        else:
            self.register_buffer("raw_T", raw)
        self.learn_T = bool(learn_T)
        self.solver = solver
        self.atol, self.rtol = atol, rtol
        self.trace = trace
        self.probe = probe
        self.adjoint = bool(adjoint)
        self.kinetic, self.jacobian = float(kinetic), float(jacobian)
        self.step_size = float(step_size)
        self.max_num_steps = max_num_steps
        self._forget_solve()

    # ----------------------------------------------------------------- what the last solve left
    def _forget_solve(self):
        # through __dict__: plain attributes, not registered state
        self.__dict__.update(_dynamics=None, _nfe=0, kinetic_energy=None, jacobian_frobenius=None)

    @property
    def T(self) -> torch.Tensor:
        """The integration time ``softplus(raw_T) > 0``."""
        return F.softplus(self.raw_T)

    @property
    def last_nfe(self) -> int:
        """Evaluations of the field (the augmented dynamics) in the last forward or inverse solve."""
        return self._nfe

    @property
    def last_backward_nfe(self) -> int:
        """Evaluations in the adjoint solve of the last solve (0 until its ``backward`` ran, and without
        ``adjoint``: direct backpropagation evaluates nothing again)."""
        dynamics = self._dynamics
        return 0 if dynamics is None else dynamics.calls - self._nfe

    @property
    def regularization(self) -> torch.Tensor | float:
        """``kinetic * mean(E_K) + jacobian * mean(E_J)`` of the last solve (mean over its samples), to add
        to a training loss; ``0.0`` when neither weight is positive or no solve ran."""
        if self.kinetic_energy is None:
            return 0.0
        return self.kinetic * self.kinetic_energy.mean() + self.jacobian * self.jacobian_frobenius.mean()

    def uses_exact_trace(self) -> bool:
        """Whether the next solve computes the exact trace (``trace`` and the train/eval mode decide)."""
        if self.trace == "auto":
            return not self.training or self.input_dim <= EXACT_MAX_DIM
        return self.trace == "exact"

    # ----------------------------------------------------------------- the solve
    def _solve(self, y: torch.Tensor, forward: bool):
        name = type(self).__name__
        check_finite(y, name, "forward input" if forward else "inverse input")
        regularize = self.kinetic > 0 or self.jacobian > 0
        probe = None
        if not self.uses_exact_trace():
            probe = torch.randn_like(y)
            if self.probe == "rademacher":
                probe = probe.sign()  # symmetric: the signs of normals are fair coins
        dynamics = _Dynamics(self, y, probe, regularize)
        zeros = y.new_zeros(y.shape[:-1])
        state = (torch.zeros_like(y), zeros, zeros, zeros) if regularize else (torch.zeros_like(y), zeros)
        grid = y.new_tensor([0.0, 1.0] if forward else [1.0, 0.0])
        tol = default_tolerance(y.dtype)
        kwargs = dict(rtol=self.rtol or tol, atol=self.atol or tol, method=self.solver)
        if self.solver in ADAPTIVE_SOLVERS:
            # The last step ends on the end time, so the answer is a step's, not the dense output's. The first
            # step is guessed from the tolerance: torchdiffeq's guess starts at 1e-4 for a state that starts at
            # zero (the displacement), and growing from there costs about four steps.
            first_step = min(kwargs["rtol"], kwargs["atol"]) ** 0.2
            kwargs["options"] = dict(norm=_error_norm, max_num_steps=self.max_num_steps, step_t=grid[-1:],
                                     first_step=first_step)
        else:
            kwargs["options"] = dict(step_size=self.step_size)
        try:
            if self.adjoint:
                # the start point enters the field through z = origin + u: the adjoint must integrate its gradient
                params = tuple(p for p in (*self.parameters(), y) if p.requires_grad)
                solution = odeint_adjoint(dynamics, state, grid, adjoint_params=params, **kwargs)
            else:
                solution = odeint(dynamics, state, grid, **kwargs)
        except AssertionError as error:  # torchdiffeq's failures: max_num_steps, underflow in dt
            raise RuntimeError(
                f"{name}: the ODE solver ({self.solver}) failed on an input of shape {tuple(y.shape)}: {error}. "
                "The field may have become stiff: lower the learning rate, add RNODE regularisation "
                "(kinetic, jacobian), or loosen atol/rtol"
            ) from None
        end = [v[-1] for v in solution]
        sign = 1.0 if forward else -1.0  # a backward solve accumulates the integrals negated
        self.__dict__.update(_dynamics=dynamics, _nfe=dynamics.calls,
                             kinetic_energy=sign * end[2] if regularize else None,
                             jacobian_frobenius=sign * end[3] if regularize else None)
        return y + end[0], sign * end[1]

    def _forward_with_ladj(self, z):
        return self._solve(z, forward=True)

    def _inverse_with_ladj(self, x):
        return self._solve(x, forward=False)

    def __getstate__(self):
        state = super().__getstate__()
        # the last solve's tensors hold its graph: neither copied nor pickled
        state.update(_dynamics=None, _nfe=0, kinetic_energy=None, jacobian_frobenius=None)
        return state

    def extra_repr(self) -> str:
        T = f"{F.softplus(self.raw_T.detach()).item():.3g}"
        return (f"input_dim={self.input_dim}, hidden_dims={self.hidden_dims}, T={T}"
                f"{'' if self.learn_T else ' (fixed)'}, solver={self.solver!r}, trace={self.trace!r}, "
                f"adjoint={self.adjoint}")


def continuous_flow(input_dim: int, hidden_dims=(64, 64), **kwargs) -> ContinuousFlow:
    """Pyro-style factory for :class:`ContinuousFlow`."""
    return ContinuousFlow(input_dim, hidden_dims, **kwargs)


def regularization(flow) -> torch.Tensor | float:
    """The sum of :attr:`ContinuousFlow.regularization` over the continuous layers of ``flow`` (a layer or a
    :class:`~pyro_nf.Flow`): the RNODE term of their last solves, to add to a training loss."""
    return sum(m.regularization for m in flow.modules() if isinstance(m, ContinuousFlow))


def last_nfe(flow) -> int:
    """The field evaluations of the last solves of all continuous layers of ``flow``, together."""
    return sum(m.last_nfe for m in flow.modules() if isinstance(m, ContinuousFlow))


__all__ = ["ContinuousFlow", "continuous_flow", "default_tolerance", "last_nfe", "regularization"]
