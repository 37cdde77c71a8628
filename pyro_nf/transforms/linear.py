r"""Linear layers: constant affine maps, the LU-parameterised invertible linear map
("invertible 1x1 convolution" on vectors) and fixed permutations."""

from __future__ import annotations

import torch
from torch import nn

from ..base import FlowTransform


def _batch_ladj(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A log-det that does not depend on the input, broadcast to ``like``'s batch shape."""
    return value.expand(like.shape[:-1])


class AffineConstant(FlowTransform):
    r"""Elementwise affine map with learned constants (seed 000's AffineConstantFlow; the
    diagonal scaling layer of NICE when ``shift=False``).

    .. math:: y = x\odot e^{s} + t,\qquad x = (y - t)\odot e^{-s},\qquad
              \log|\det J| = \textstyle\sum_i s_i.

    Starts as the identity (``s = t = 0``).
    """

    cheap_inverse = True  # see FlowTransform.cheap_inverse

    def __init__(self, input_dim: int, scale: bool = True, shift: bool = True, cache_size: int = 1):
        super().__init__(input_dim, cache_size=cache_size)
        if not (scale or shift):
            raise ValueError("AffineConstant: at least one of scale and shift must be True")
        self.log_scale = nn.Parameter(torch.zeros(input_dim)) if scale else None
        self.shift = nn.Parameter(torch.zeros(input_dim)) if shift else None

    def _parts(self, v):
        log_scale = self.log_scale if self.log_scale is not None else v.new_zeros(self.input_dim)
        shift = self.shift if self.shift is not None else v.new_zeros(self.input_dim)
        return log_scale, shift

    def _forward_with_ladj(self, x):
        log_scale, shift = self._parts(x)
        return x * log_scale.exp() + shift, _batch_ladj(log_scale.sum(), x)

    def _inverse_with_ladj(self, y):
        log_scale, shift = self._parts(y)
        return (y - shift) * torch.exp(-log_scale), _batch_ladj(log_scale.sum(), y)

    def _ladj(self, x, y):
        return _batch_ladj(self._parts(x)[0].sum(), x)

    def extra_repr(self):
        return f"input_dim={self.input_dim}, scale={self.log_scale is not None}, shift={self.shift is not None}"


class InvertibleLinear(FlowTransform):
    r"""Invertible linear map ``y = W x`` with ``W = P L (U + diag(sign * e^{v}))``
    (Kingma & Dhariwal, 2018, the LU form of Glow's invertible 1x1 convolution).

    ``P`` is a fixed permutation, ``L`` unit lower triangular, ``U`` strictly upper triangular,
    ``sign`` fixed. Then

    .. math:: \log|\det W| = \textstyle\sum_i v_i \quad (O(D)),

    and the inverse ``x = U'^{-1} L^{-1} P^T y`` costs two triangular solves, exact up to
    rounding. ``init="orthogonal"`` (default) starts from a random rotation, as Glow does;
    ``init="identity"`` from ``W = I``.
    """

    cheap_inverse = True  # see FlowTransform.cheap_inverse

    def __init__(self, input_dim: int, init: str = "orthogonal", cache_size: int = 1):
        super().__init__(input_dim, cache_size=cache_size)
        if init == "orthogonal":
            q, _ = torch.linalg.qr(torch.randn(input_dim, input_dim, dtype=torch.float64))
            p, lower, upper = torch.linalg.lu(q)
        elif init == "identity":
            p = lower = upper = torch.eye(input_dim, dtype=torch.float64)
        else:
            raise ValueError(f"InvertibleLinear: init must be 'orthogonal' or 'identity', got {init!r}")
        diag = torch.diagonal(upper)
        dtype = torch.get_default_dtype()
        self.register_buffer("permutation", p.to(dtype))
        self.register_buffer("diag_sign", torch.sign(diag).to(dtype))
        self.lower = nn.Parameter(torch.tril(lower, -1).to(dtype))
        self.upper = nn.Parameter(torch.triu(upper, 1).to(dtype))
        self.log_diag = nn.Parameter(diag.abs().log().to(dtype))

    def _factors(self):
        eye = torch.eye(self.input_dim, dtype=self.lower.dtype, device=self.lower.device)
        lower = torch.tril(self.lower, -1) + eye
        upper = torch.triu(self.upper, 1) + torch.diag(self.diag_sign * self.log_diag.exp())
        return lower, upper

    def weight(self) -> torch.Tensor:
        """The matrix ``W`` (``y = W x``)."""
        lower, upper = self._factors()
        return self.permutation @ lower @ upper

    def _forward_with_ladj(self, x):
        return x @ self.weight().T, _batch_ladj(self.log_diag.sum(), x)

    def _inverse_with_ladj(self, y):
        lower, upper = self._factors()
        rows = (y.reshape(-1, self.input_dim) @ self.permutation)  # (P^T y)^T
        rows = torch.linalg.solve_triangular(lower.T, rows, upper=True, left=False, unitriangular=True)
        rows = torch.linalg.solve_triangular(upper.T, rows, upper=False, left=False)
        return rows.reshape(y.shape), _batch_ladj(self.log_diag.sum(), y)

    def extra_repr(self):
        return f"input_dim={self.input_dim}"


class Permutation(FlowTransform):
    r"""Fixed reordering of the coordinates, ``y_i = x_{\pi(i)}``; ``\log|\det J| = 0``.

    ``permutation=None`` draws a random one; :func:`reverse` gives the reversal. Unlike
    Pyro's ``Permute``, the permutation is a buffer, so it follows ``.to(device)`` and
    ``state_dict``.
    """

    cheap_inverse = True  # see FlowTransform.cheap_inverse

    def __init__(self, input_dim: int, permutation=None, cache_size: int = 1):
        super().__init__(input_dim, cache_size=cache_size)
        if permutation is None:
            permutation = torch.randperm(input_dim)
        permutation = torch.as_tensor(permutation, dtype=torch.long)
        if permutation.shape != (input_dim,) or not torch.equal(permutation.sort().values, torch.arange(input_dim)):
            raise ValueError(
                f"Permutation: expected a permutation of 0..{input_dim - 1}, got {permutation.tolist()}"
            )
        self.register_buffer("permutation", permutation)
        self.register_buffer("inverse_permutation", torch.argsort(permutation))

    def _forward_with_ladj(self, x):
        return x.index_select(-1, self.permutation), x.new_zeros(x.shape[:-1])

    def _inverse_with_ladj(self, y):
        return y.index_select(-1, self.inverse_permutation), y.new_zeros(y.shape[:-1])

    def extra_repr(self):
        return f"input_dim={self.input_dim}, permutation={self.permutation.tolist()}"


def reverse(input_dim: int, cache_size: int = 1) -> Permutation:
    """The permutation that reverses the coordinates."""
    return Permutation(input_dim, torch.arange(input_dim - 1, -1, -1), cache_size=cache_size)
