r"""Planar flow (Rezende & Mohamed, 2015), with a numerical inverse.

Its paper gives no inverse; pyro_nf gives it one (a safeguarded scalar root-finder along ``w``), so it
serves as a density estimator (``log_prob`` of fresh data) and not only as a variational guide.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ..base import FlowTransform, check_finite

#: ``softplus^{-1}(1) = log(e - 1)``: the ``w.u`` at which ``c = softplus(w.u) - 1`` is 0
_SOFTPLUS_INV_ONE = math.log(math.expm1(1.0))


def _solve_monotone(f_and_slope, target, lower, upper, tol: float, max_iter: int, owner: str, start=None):
    r"""Solve ``f(a) = target`` elementwise for an increasing scalar function ``f``, given a bracket
    ``lower <= a* <= upper`` of the root ``a*``: a vectorised, safeguarded Newton's method.

    ``f_and_slope(a)`` returns ``(f(a), f'(a))``, or ``(f(a), f'(a), m(a))`` with ``m(a) >= 0`` the
    magnitude of the terms summed in ``f(a)`` (the scale of its rounding error; ``|f(a)|`` if absent).
    The iteration starts at ``start`` (default: the midpoint). With ``tol' = max(tol, 2 eps)`` (``eps``
    the machine epsilon of the dtype: a tolerance below the resolution of the dtype is raised to it),
    each iteration, for every element not yet converged, with ``r = f(a) - target``:

    1. the bracket shrinks to the side of the root that the sign of ``r`` shows (``a`` becomes ``lower``
       if ``r <= 0``, ``upper`` if ``r >= 0``);
    2. the element has converged when ``|r| <= 4 eps (m(a) + |target|)`` (the residual is rounding
       noise: ``a`` solves a problem perturbed in its last bits), when the Newton point
       ``n = a - r / f'(a)`` lies strictly inside the bracket and ``|n - a| <= tol' (1 + |a|)``, or when
       the bracket is narrower than ``tol' (1 + |a|)``, which adjacent floats always are
       (``ulp(a) <= eps max(|a|, 1)``), so the test is reachable in every dtype and float32 never fails
       for want of digits; its value is then frozen: ``n`` if strictly inside the bracket, else ``a`` if
       the residual was noise, else the midpoint;
    3. otherwise the next point is ``n`` if it lies *strictly* inside the bracket, is at most half the
       previous step (unless that step was a bisection), and the iterations left still suffice to close
       the bracket by bisection; else it is the midpoint. (A non-finite ``n``, from a zero or NaN slope,
       counts as outside.)

    A Newton point on a bracket end (where the sign of the residual is already known) or outside the
    bracket is never taken, so the iteration cannot cycle between the ends (the given bracket is widened
    by ``tol'`` first, so that a root on one of its ends is strictly inside); a Newton step that does not
    halve the previous Newton step (a slow or oscillating phase) gives way to a bisection, which halves
    the bracket; and once only as many iterations remain as bisection needs to close the bracket,
    bisection alone does. So every element converges within ``max_iter`` iterations whenever
    ``log2((upper - lower) / tol') < max_iter - 2``; ``RuntimeError`` naming ``owner`` otherwise.

    Returns ``a`` without a graph: differentiate through one Newton step at the root (implicit function
    theorem), as :class:`Planar` does.
    """
    with torch.no_grad():
        target, lower, upper = torch.broadcast_tensors(target, lower, upper)
        eps = torch.finfo(target.dtype).eps
        tol = max(tol, 2 * eps)
        a = torch.lerp(lower, upper, 0.5) if start is None else torch.broadcast_to(start, target.shape)
        a, lower, upper = a.clone(), lower.clone(), upper.clone()
        noise = 4 * eps * target.abs()
        done = upper - lower <= tol * (1 + a.abs())
        # widened by a hair, so that a root on an end of the given bracket (where Newton's method may land
        # exactly, e.g. a saturated tanh) lies strictly inside, where a Newton point may be taken
        lower = lower - tol * (1 + lower.abs())
        upper = upper + tol * (1 + upper.abs())
        last_step = torch.full_like(a, math.inf)
        constants = (f_and_slope, target, noise, tol, eps, torch.finfo(target.dtype).max)
        if torch.compiler.is_compiling():
            return _solve_traced(constants, a, lower, upper, last_step, done, max_iter)
        widest = float((upper - lower).max()) if target.numel() else 0.0
        for k in range(max_iter):
            if bool(done.all()):
                return a
            room = 2.0 ** min(max_iter - k - 2, 1000)  # how far bisection alone can still shrink the bracket
            a, lower, upper, last_step, done = _newton_step(constants, a, lower, upper, last_step, done, room,
                                                           widest > tol * room)
        if bool(done.all()):
            return a
        left = ~done
        raise RuntimeError(
            f"{owner}: the inverse did not converge in {max_iter} iterations for {int(left.sum())} of "
            f"{left.numel()} values (largest remaining bracket {float((upper - lower)[left].max()):.3g})"
        )


def _newton_step(constants, a, lower, upper, last_step, done, room, bounded):
    """One iteration of :func:`_solve_monotone` (steps 1-3 of its docstring). ``room``: how far bisection alone
    can still shrink the bracket in the iterations left; ``bounded``: whether that can fall short of the widest
    bracket, so that a Newton step must also keep the bracket within reach of bisection (a bool, or a 0-dim
    tensor when traced)."""
    f_and_slope, target, noise, tol, eps, huge = constants
    out = f_and_slope(a)
    value, slope = out[0], out[1]
    magnitude = out[2] if len(out) > 2 else value.abs()
    residual = value - target
    newton = torch.nan_to_num(a - residual / slope).clamp(lower, upper)
    lower = _pick(residual <= 0, a, lower)
    upper = _pick(residual >= 0, a, upper)
    step = (newton - a).abs()
    inside = (newton > lower) & (newton < upper)
    small = a.abs().mul_(tol).add_(tol)
    quiet = residual.abs() <= torch.add(noise, magnitude, alpha=4 * eps)
    converged = quiet | (upper - lower <= small) | (inside & (step <= small))
    fast = step <= 0.5 * last_step
    if isinstance(bounded, torch.Tensor):
        fast = fast & ((upper - lower <= small * room) | ~bounded)
    elif bounded:
        fast &= upper - lower <= small * room
    # converged: the Newton point if inside the bracket, else a if its residual is noise, else the midpoint
    take = (inside & (converged | fast)).to(a.dtype)
    following = torch.lerp(_pick(quiet, a, torch.lerp(lower, upper, 0.5)), newton, take)
    following = _pick(done, a, following)
    # after a bisection the next Newton step is not held to halving the previous one
    last_step = (following - a).abs() + (1 - take) * huge
    return following, lower, upper, last_step, done | converged


def _solve_traced(constants, a, lower, upper, last_step, done, max_iter: int):
    """The iterations of :func:`_solve_monotone` under ``torch.compile``: one ``while_loop`` (no graph break, no
    host sync); the bookkeeping that eager code keeps in Python numbers stays on the device. Elements that did not
    converge (never, in theory, when the bracket fits ``max_iter``) are NaN instead of an error."""
    from torch._higher_order_ops.while_loop import while_loop

    tol = constants[3]
    widest = (upper - lower).amax() if a.numel() else a.new_zeros(())
    count = torch.zeros((), dtype=torch.int64, device=a.device)

    def unfinished(k, a, lower, upper, last_step, done):
        return (k < max_iter) & ~done.all()

    def iteration(k, a, lower, upper, last_step, done):
        # 2 ** min(max_iter - k - 2, 1000): inf in float32 near the start, where no bound applies, as in eager
        room = torch.exp2((max_iter - k - 2).clamp(max=1000).to(a.dtype))
        return k + 1, *_newton_step(constants, a, lower, upper, last_step, done, room, widest > tol * room)

    _, a, _, _, _, done = while_loop(unfinished, iteration, (count, a, lower, upper, last_step, done))
    return torch.where(done, a, torch.nan)


def _pick(mask: torch.Tensor, if_true: torch.Tensor, if_false: torch.Tensor) -> torch.Tensor:
    """``torch.where(mask, if_true, if_false)`` for finite operands, as a ``lerp`` with weights 0 and 1
    (exact: torch evaluates ``lerp(s, e, 1)`` as ``e - (e - s) * 0``); several times faster than
    ``torch.where`` on CPU."""
    return torch.lerp(if_false, if_true, mask.to(if_false.dtype))


def _tolerance(dtype) -> float:
    """The solver's step tolerance relative to ``1 + |s|``: 1e-13 in float64, ``2 eps`` otherwise."""
    return 1e-13 if dtype == torch.float64 else 2 * torch.finfo(dtype).eps


def _sech2(s: torch.Tensor) -> torch.Tensor:
    r"""``sech^2(s) = 1 - tanh^2(s) = 1 / cosh^2(s)``: accurate where ``tanh(s)`` rounds to ``+-1``
    (``1 - tanh^2`` is 0 there). ``|s|`` is clipped at ``-log(eps)``, where ``sech^2 ~ 4 eps^2`` can no
    longer change ``1 + c sech^2``: no overflow of ``cosh``, no NaN gradient, and no subnormal numbers
    (which slow CPU arithmetic, and its backward pass, down many times)."""
    cut = -math.log(torch.finfo(s.dtype).eps)
    return torch.cosh(s.clamp(-cut, cut)).pow(-2)


class Planar(FlowTransform):
    r"""Planar flow (Rezende & Mohamed, 2015):

    .. math::
        x = z + \hat u\,\tanh(w^\top z + b),\qquad
        \log|\det J| = \log\left(1 + c\,\mathrm{sech}^2(w^\top z + b)\right),\quad c = w^\top\hat u,

    with ``u_hat = u + (m(w.u) - w.u) w / |w|^2``, ``m(a) = -1 + softplus(a)``, which makes
    ``c = w.u_hat = softplus(w.u) - 1 > -1`` and the map invertible (the paper's appendix). The log-det
    is evaluated as ``log1p(c sech^2 s)`` for ``c >= 0`` and as ``log(softplus(w.u) - c tanh^2 s)`` for
    ``c < 0``: sums of non-negative terms, exact to rounding even where ``tanh`` saturates or where
    ``c`` is close to ``-1``.

    **Inverse.** Along ``w`` the map reduces to a scalar equation for ``s = w.z + b``:

    .. math::
        g(s) = s + c\tanh s = T := w^\top x + b,\qquad g'(s) = 1 + c\,\mathrm{sech}^2 s \ge \min(1, 1 + c) > 0,

    then ``z = x - u_hat tanh(s)``. ``g`` is odd and strictly increasing, so ``s = sign(T) s'`` with
    ``s' >= 0`` the root of ``g(s') = |T|``, and on ``s' >= 0``:

    * ``c >= 0``: ``g`` is concave, the root lies in ``[max(0, |T| - c), |T|]`` and Newton's method
      started at the left end increases monotonically to it;
    * ``-1 < c < 0``: ``g`` is convex, the root lies in ``[|T|, |T| + |c|]`` and Newton's method started
      at the right end decreases monotonically to it (the slope ``1 + c sech^2`` can be close to 0 there:
      the safeguards below take over where Newton is slow).

    The root is found by :func:`_solve_monotone`, Newton's method safeguarded by that bracket: a Newton
    step is taken only *strictly* inside the current bracket (one landing on an end, where the sign of
    ``g - |T|`` is known, could cycle between the ends) and while it at least halves the previous step,
    bisection otherwise; it stops per element when the residual is rounding noise, the Newton step is
    below ``tol (1 + |s|)`` (``tol`` = 1e-13 in float64, 2 eps = 2.4e-7 in float32), or the bracket is
    narrower than that, as adjacent floats always are. It converges for every finite input and any
    ``c > -1`` (the bracket has width ``min(|T|, c)`` or ``|c| < 1``; once only as many iterations remain
    as bisection needs to close it, about ``log2(width / tol) = 50`` for ``c = 100`` in float64, it
    bisects): in 4-7 iterations for ``0 < c < 10``, 10-15 for ``c`` = 20-100, 15-25 for ``c`` near -1,
    and never more than ``max_iter``. Input with a NaN or an infinity raises ``ValueError``; a finite ``x`` whose
    ``w.x`` overflows has ``tanh(s) = sign(w.x)``.

    For inputs narrower than float64, ``T`` is only known to its rounding, and ``z = x - u_hat tanh(s)``
    rounds along ``w``, where the forward map stretches by up to ``1 + c``: one more Newton step and
    ``z`` are then computed in float64 and rounded once, which makes the round trip ``x -> z -> x`` as
    accurate as the float32 forward map allows (for ``c = 100`` about 1e-5 instead of 1e-3).

    Gradients flow by implicit differentiation: a Newton step ``delta = -(g(s) - T) / g'(s)`` taken with
    autograd on at the converged root (its value, ~0, is dropped) has exactly the implicit-function
    derivative ``ds/dtheta = -(dg/dtheta - dT/dtheta) / g'(s)``.

    **Initialisation.** ``u`` and ``w`` are drawn uniformly from ``[-1/sqrt(D), 1/sqrt(D)]`` (as Pyro's
    ``Planar``), ``b = 0``, and then ``u`` is moved along ``w`` by ``log(e - 1) w / |w|^2``, which centres
    ``c = softplus(w.u) - 1`` at 0 (spread about 0.15 for ``D = 2``): each layer starts near the identity,
    with ``|det J|`` near 1. Without the move, ``w.u`` near 0 gives ``c`` near ``log 2 - 1 = -0.31``: every
    layer contracts the base by up to 0.69 along its ``w``, and K layers compound it. A fresh 8-layer flow
    then had coordinate standard deviations of 0.17-0.6 instead of 1, a 32-layer one 0.001-0.03 (an initial
    reverse KL to ``U1`` of 25-29 nats; now a median of 7 over 10 seeds); fitted to ``U1`` without annealing
    (3000 steps of Adam at 5e-3, batch 256) it settled on one of the two modes in 5 of 6 seeds at ``K = 8``
    and 3 of 3 at ``K = 32``, and now finds both in 6 of 6 and 3 of 3 (``benchmarks/variational.md``).
    """

    def __init__(self, input_dim: int, max_iter: int = 100, cache_size: int = 1):
        super().__init__(input_dim, cache_size=cache_size)
        bound = 1.0 / math.sqrt(input_dim)
        u = torch.empty(input_dim).uniform_(-bound, bound)
        w = torch.empty(input_dim).uniform_(-bound, bound)
        # Centre c = w.u_hat = softplus(w.u) - 1 at 0, near the identity: with w.u ~ 0 it would be
        # log 2 - 1 = -0.31, every layer a contraction along w, compounded over the layers (see the docstring).
        u += _SOFTPLUS_INV_ONE * w / (w @ w)
        self.u = nn.Parameter(u)
        self.w = nn.Parameter(w)
        self.bias = nn.Parameter(torch.zeros(()))
        self.max_iter = max_iter

    def u_hat(self) -> torch.Tensor:
        wu = self.w @ self.u
        return self.u + (F.softplus(wu) - 1 - wu) * self.w / (self.w @ self.w)

    def _coefficients(self):
        """``(u_hat, c = w.u_hat, 1 + c)``, with ``1 + c = softplus(w.u)`` computed directly (no
        cancellation when ``c`` is close to -1)."""
        wu = self.w @ self.u
        one_plus_c = F.softplus(wu)
        u_hat = self.u + (one_plus_c - 1 - wu) * self.w / (self.w @ self.w)
        return u_hat, self.w @ u_hat, one_plus_c

    @staticmethod
    def _slope(s, h, c, one_plus_c, positive=None):
        """``g'(s) = 1 + c sech^2 s = (1 + c) - c tanh^2 s``, as a sum of non-negative terms: the first
        form for ``c >= 0``, the second for ``c < 0`` (``positive``: that sign, if known)."""
        if positive is None:  # both, and a lerp with a 0-dim weight of 0 or 1: no host sync, no where
            return torch.lerp(one_plus_c - c * h * h, 1 + c * _sech2(s), (c >= 0).to(s.dtype))
        return 1 + c * _sech2(s) if positive else one_plus_c - c * h * h

    def _forward_with_ladj(self, z):
        u_hat, c, one_plus_c = self._coefficients()
        s = z @ self.w + self.bias
        h = torch.tanh(s)
        x = z + h.unsqueeze(-1) * u_hat
        # the sign of c picks the slope's form: read on a CPU, where it costs no synchronisation and saves the
        # other form and the blend; kept a tensor on other devices and while tracing (compile or jit)
        tracing = torch.compiler.is_compiling() or torch.jit.is_tracing()
        positive = bool(c >= 0) if c.device.type == "cpu" and not tracing else None
        return x, torch.log(self._slope(s, h, c, one_plus_c, positive))

    def _solve(self, target, c, one_plus_c, positive: bool | None):
        """The root ``s`` of ``s + c tanh(s) = target`` (no graph; ``target`` finite): by symmetry
        ``sign(target)`` times the root ``s' >= 0`` of ``s' + c tanh(s') = |target|``. ``positive``: whether
        ``c >= 0``, or ``None`` (under ``torch.compile``) to select by the 0-dim tensor instead of a host sync."""
        size = target.abs()
        sign = c >= 0 if positive is None else None
        if positive is None:  # both brackets, one kept per element (no data-dependent branch)
            lower = torch.where(sign, (size - c).clamp(min=0), size)
            upper = torch.where(sign, size, size - c)
            start = torch.where(sign, lower, upper)
        elif positive:  # concave on s' >= 0: Newton's method from the left end is monotone
            lower, upper = (size - c).clamp(min=0), size
            start = lower
        else:  # convex: from the right end
            lower, upper = size, size - c
            start = upper

        def f_and_slope(s):
            h = torch.tanh(s)
            ch = c * h
            value = s + ch
            # the slope (1 + c) - c tanh^2 only steers the steps; m(s) = s + |c| tanh(s) for s >= 0
            magnitude = torch.where(sign, value, s - ch) if sign is not None else value if positive else s - ch
            return value, one_plus_c - ch * h, magnitude

        root = _solve_monotone(f_and_slope, size, lower, upper, _tolerance(target.dtype), self.max_iter,
                               "Planar", start=start)
        return torch.where(target < 0, -root, root)

    def _inverse_with_ladj(self, x):
        check_finite(x, "Planar", "inverse input")
        u_hat, c, one_plus_c = self._coefficients()
        # under torch.compile no host syncs (each would break the graph): the sign of c stays a tensor, and the
        # rescue of an overflowed w.x below is computed always and kept where needed
        traced = torch.compiler.is_compiling()
        positive = None if traced else bool(c >= 0)
        target = safe = x @ self.w + self.bias
        finite = None
        if traced or not bool(torch.isfinite(target.detach()).all()):
            # w.x overflowed in its terms for a finite x: again, scaled by each row's largest entry; what is
            # still infinite is a true |w.x| beyond the range of the dtype, where tanh(s) = sign(w.x)
            scale = x.detach().abs().amax(-1, keepdim=True)
            scale = torch.where(scale > 0, scale, torch.ones_like(scale))
            scaled = scale.squeeze(-1) * ((x / scale) @ self.w) + self.bias
            target = torch.where(torch.isfinite(target), target, scaled) if traced else scaled
            finite = torch.isfinite(target)
            safe = torch.where(finite, target, 0)
        with torch.no_grad():
            root = self._solve(safe, c, one_plus_c, positive)
            slope = self._slope(root, torch.tanh(root), c, one_plus_c, positive)
        # One Newton step at the root, differentiable in x and the parameters: its value (~0) is dropped
        # and its gradient, -(d/dtheta)(s + c tanh s - T) / g'(s), is the implicit-function derivative.
        s = root - (root + c * torch.tanh(root) - safe) / slope
        s = s - s.detach() + root
        if finite is not None:
            s = torch.where(finite, s, target)
        h = torch.tanh(s)
        z = x - h.unsqueeze(-1) * u_hat
        if x.dtype != torch.float64 and x.device.type != "mps":
            with torch.no_grad():
                rounded = self._refined(x, root, u_hat, positive, finite)
            z = z + (rounded - z).detach()  # the value of the refined z, the gradient of z
        return z, torch.log(self._slope(s, h, c, one_plus_c, positive))

    def _refined(self, x, root, u_hat, positive, finite):
        """``z`` for an ``x`` of a dtype narrower than float64: one Newton step on ``s`` and
        ``z = x - u_hat tanh(s)`` in float64 (with the layer's own rounded ``u_hat``), rounded once. The
        working-precision root is as good as ``T = w.x + b`` rounded can make it, and ``x - u_hat tanh(s)``
        rounds along ``w``, where the forward map stretches by up to ``1 + c``; this gives the nearly
        correctly rounded inverse instead. The step is taken only where it lowers the float64 residual."""
        x64, w, u = x.double(), self.w.double(), u_hat.double()
        c = w @ u
        target = x64 @ w + self.bias.double()
        s = root.double()
        h = torch.tanh(s)
        residual = s + c * h - target
        s1 = s - residual / self._slope(s, h, c, 1 + c, positive)
        h1 = torch.tanh(s1)
        h = torch.where((s1 + c * h1 - target).abs() < residual.abs(), h1, h)
        if finite is not None:  # |w.x| beyond the working dtype: tanh(s) = sign(w.x + b)
            h = torch.where(finite, h, torch.sign(target))
        return (x64 - h.unsqueeze(-1) * u).to(x.dtype)

    def extra_repr(self):
        return f"input_dim={self.input_dim}"
