r"""Autoregressive layers: MAF and IAF are one class with a direction switch.

With a monotone transformer ``tau`` and parameters from a MADE conditioner,

* ``direction="maf"`` (Papamakarios et al., 2017): ``x_i = tau(z_i; theta_i(x_{<i}))``. The
  density direction ``z = tau^{-1}(x; theta(x))`` is **one** network pass; sampling is
  sequential, ``D`` passes.
* ``direction="iaf"`` (Kingma et al., 2016): ``x_i = tau(z_i; theta_i(z_{<i}))``. Sampling is one
  pass; the density of the layer's own samples comes from the cache, of fresh points by
  ``D`` sequential passes.

Either way ``log|det dx/dz| = sum_i log tau'(z_i; theta_i)`` (the Jacobian is triangular in
the MADE ordering), and the log-det of any ``(z, x)`` pair costs one pass.
"""

from __future__ import annotations

from torch import nn

from ..base import FlowTransform, check_context_dim
from ..nn import MADE
from .scalar import Affine, ScalarTransformer
from .spline import RationalQuadraticSpline

DIRECTIONS = ("maf", "iaf")


def default_hidden_dims(input_dim: int) -> tuple[int, int]:
    """Two hidden layers wide enough for MADE's masks: ``max(64, 2 D)`` units each."""
    width = max(64, 2 * input_dim)
    return (width, width)


class Autoregressive(FlowTransform):
    """Generic autoregressive layer: a ``transformer`` and a MADE ``conditioner`` mapping
    ``(..., D)`` to the transformer's parameters, ``(..., D, transformer.params_per_dim)``, or
    ``(..., transformer.params_per_dim, D)`` when ``transformer.param_major`` (built from ``hidden_dims``
    and ``order`` when not given). With ``context_dim > 0`` the MADE also sees a context, given by
    :meth:`~pyro_nf.base.FlowTransform.condition`."""

    @property
    def cheap_inverse(self) -> bool:  # see FlowTransform.cheap_inverse: MAF's inverse is its one-pass direction
        return self.direction == "maf"

    def __init__(
        self,
        input_dim: int,
        transformer: ScalarTransformer,
        hidden_dims=None,
        order=None,
        direction: str = "maf",
        activation="relu",
        conditioner: nn.Module | None = None,
        cache_size: int = 1,
        context_dim: int = 0,
    ):
        super().__init__(input_dim, cache_size=cache_size)
        self.context_dim = check_context_dim(context_dim, type(self).__name__)
        name = type(self).__name__
        if direction not in DIRECTIONS:
            raise ValueError(f"{name}: direction must be one of {DIRECTIONS}, got {direction!r}")
        self.direction = direction
        self.transformer = transformer
        if conditioner is None:
            hidden_dims = default_hidden_dims(input_dim) if hidden_dims is None else hidden_dims
            try:
                conditioner = MADE(input_dim, hidden_dims, transformer.params_per_dim, order=order,
                                   activation=activation, param_major=transformer.param_major,
                                   context_dim=context_dim)
            except ValueError as error:
                raise ValueError(f"{name}: {error}") from None
        self.conditioner = conditioner
        self._params(None, check_only=True)

    def _params(self, x, check_only: bool = False, context=None):
        conditioner = self.conditioner
        # a MADE built for the other layout would silently pair the wrong outputs with the coordinates
        if isinstance(conditioner, MADE) and conditioner.param_major != self.transformer.param_major:
            raise ValueError(
                f"{type(self).__name__}: its {type(self.transformer).__name__} transformer reads parameters "
                f"{'param' if self.transformer.param_major else 'coordinate'}-major; build the MADE with "
                f"param_major={self.transformer.param_major}"
            )
        if check_only:
            return None
        return conditioner(x, context) if self.context_dim else conditioner(x)

    def _forward_with_ladj(self, z, context=None):
        if self.direction == "iaf":
            params = self._params(z, context=context)
            x, ladj = self.transformer(_broadcast(z, params), params)
            return x, ladj.sum(-1)
        x = self._solve(z, context, self.transformer)
        params = self._params(x, context=context)
        x, ladj = self.transformer(_broadcast(z, params), params)
        return x, ladj.sum(-1)

    def _inverse_with_ladj(self, x, context=None):
        if self.direction == "maf":
            params = self._params(x, context=context)
            z, ladj = self.transformer.inverse(_broadcast(x, params), params)
            return z, ladj.sum(-1)
        z = self._solve(x, context, self.transformer.inverse)
        params = self._params(z, context=context)
        z, ladj = self.transformer.inverse(_broadcast(x, params), params)
        return z, ladj.sum(-1)

    def _solve(self, given, context, transform):
        r"""The sequential direction's first ``D - 1`` passes: ``out_i = transform(given_i; params_i(out_{<i}))``
        for the coordinates in the conditioner's order but the last. After pass ``k`` the first ``k``
        coordinates are exact, so the caller's one full pass on the result makes all ``D`` exact and gives
        the log-det (``D`` conditioner passes in all). With a MADE each of these passes evaluates only the
        output rows of the coordinate it solves and transforms only that coordinate, with the masked weights
        multiplied out once (:meth:`~pyro_nf.nn.MADE.repeated`); other conditioners run whole passes."""
        conditioner, dim = self.conditioner, self.input_dim
        if not isinstance(conditioner, MADE):
            out = given
            for _ in range(dim - 1):
                params = self._params(out, context=context)
                out = transform(_broadcast(given, params), params)[0]
            return out
        params_of = conditioner.repeated(context if self.context_dim else None)
        out = given
        for k in range(dim - 1):
            coordinate = conditioner.order[k: k + 1]  # a device tensor: no host synchronisation
            params = params_of(out, coordinate)
            value = transform(_broadcast(given, params).index_select(-1, coordinate), params)[0]
            out = _broadcast(out, params).index_copy(-1, coordinate, value)
        return out

    def _ladj(self, z, x, context=None):
        params = self._params(x if self.direction == "maf" else z, context=context)
        return self.transformer(_broadcast(z, params), params)[1].sum(-1)

    def extra_repr(self):
        hidden = getattr(self.conditioner, "hidden_dims", None)
        text = f"input_dim={self.input_dim}, direction={self.direction!r}"
        return text + (f", hidden_dims={hidden}" if hidden is not None else "")


def _broadcast(v, params):
    """``v`` expanded to the leading shape of its parameters (a context may carry more dimensions)."""
    shape = params.shape[:-2]
    return v if v.shape[:-1] == shape else v.expand(*shape, -1)


class AffineAutoregressive(Autoregressive):
    r"""Affine autoregressive layer, MAF or IAF by ``direction``. With ``(t_i, s_i)`` from MADE on
    ``x_{<i}`` (MAF) or ``z_{<i}`` (IAF) and the log-scale soft-clamped, ``s = b tanh(r / b)`` with
    ``b = scale_bound``:

    .. math::
        \text{MAF:}\quad z_i = x_i\,e^{-s_i} - t_i,\quad x_i = (z_i + t_i)\,e^{s_i};\qquad
        \text{IAF:}\quad x_i = z_i\,e^{s_i} + t_i,\quad z_i = (x_i - t_i)\,e^{-s_i};\qquad
        \log|\det J| = \textstyle\sum_i s_i.

    The shift comes last in the layer's one-pass direction, the direction it is trained in (MAF:
    density, scored by the base; IAF: sampling, scored by the target), which conditions training better
    (see :class:`~pyro_nf.transforms.scalar.Affine`); ``shift="data"`` / ``"latent"`` overrides it.
    """

    def __init__(self, input_dim: int, hidden_dims=None, order=None, direction: str = "maf",
                 scale_bound: float = 2.0, activation="relu", conditioner=None, cache_size: int = 1,
                 shift: str | None = None, context_dim: int = 0):
        shift = shift if shift is not None else ("latent" if direction == "maf" else "data")
        try:
            transformer = Affine(input_dim, scale_bound, shift)
        except ValueError as error:
            raise ValueError(f"AffineAutoregressive: {error}") from None
        super().__init__(input_dim, transformer, hidden_dims, order, direction, activation, conditioner, cache_size,
                         context_dim)


class SplineAutoregressive(Autoregressive):
    r"""Rational-quadratic spline autoregressive layer (Durkan et al., 2019), MAF or IAF by
    ``direction``: ``x_i = RQS(z_i; theta_i)``; see
    :class:`~pyro_nf.transforms.spline.RationalQuadraticSpline`."""

    def __init__(self, input_dim: int, hidden_dims=None, count_bins: int = 8, bound: float = 3.0, order=None,
                 direction: str = "maf", activation="relu", conditioner=None, cache_size: int = 1,
                 context_dim: int = 0):
        super().__init__(input_dim, RationalQuadraticSpline(count_bins, bound), hidden_dims, order, direction,
                         activation, conditioner, cache_size, context_dim)


def affine_autoregressive(input_dim: int, hidden_dims=None, direction: str = "maf", **kwargs):
    """Pyro-style factory for :class:`AffineAutoregressive`."""
    return AffineAutoregressive(input_dim, hidden_dims, direction=direction, **kwargs)


def spline_autoregressive(input_dim: int, hidden_dims=None, count_bins: int = 8, direction: str = "maf", **kwargs):
    """Pyro-style factory for :class:`SplineAutoregressive`."""
    return SplineAutoregressive(input_dim, hidden_dims, count_bins, direction=direction, **kwargs)

