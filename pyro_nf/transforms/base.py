"""The base class of every pyro_nf layer: checked inputs and a cache that cannot go stale.

Direction convention (see DESIGN.md): ``forward`` is the *sampling* direction, base/latent
``z -> x`` data, and ``log_abs_det_jacobian(z, x)`` is ``log|det dx/dz|``, so that

    log p(x) = log p_base(z) - log_abs_det_jacobian(z, x).
"""

from __future__ import annotations

import torch
from pyro.distributions.torch_transform import TransformModule
from torch.distributions import constraints
from torch.nn.modules import module as _module_hooks


class FlowTransform(TransformModule):
    r"""Base class of the vector-valued (``event_dim = 1``) layers of pyro_nf.

    A subclass implements

    * ``_forward_with_ladj(x) -> (y, ladj)``: the sampling direction and its log-det,
    * ``_inverse_with_ladj(y) -> (x, ladj)``: the density direction, returning the log-det
      of the *forward* map at the recovered ``x``,
    * optionally ``_ladj(x, y)``, the log-det of a pair seen by neither call (the default
      reruns the forward pass on ``x``).

    Inputs may have any leading batch shape ``(..., domain_dim)`` (forward) and
    ``(..., codomain_dim)`` (inverse); both are ``input_dim`` except for shape-changing layers.

    Non-bijective layers (surjections, stochastic layers) set ``bijective = False``: their
    log-det must be a deterministic function of the pair, and they refuse ``cache_size=0``,
    since without the cache ``log_prob`` of a sample would score a different random path.

    **Caching.** Like Pyro's transforms, a layer with ``cache_size=1`` remembers its last
    ``(x, y)`` pair, so that ``log_prob`` of a sample drawn by ``rsample`` costs no inverse and,
    for surjective and stochastic layers, scores the path that was actually sampled. Unlike
    Pyro's, the cache entry also records the log-det (so the conditioner never runs twice
    for one pair) and a *stamp*: the version counters of the layer's parameters and buffers
    and of ``x`` and ``y``, the grad mode and the train/eval mode. Any optimizer step,
    in-place edit or mode switch changes the stamp and the entry is ignored. A training loop
    that scores the same data tensor object at every step therefore always sees the current
    parameters (Pyro's identity-keyed cache returns the previous step's graph there and fails
    with "Trying to backward through the graph a second time").
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True

    def __init__(self, input_dim: int, cache_size: int = 1):
        super().__init__(cache_size=cache_size)
        if not isinstance(input_dim, int) or isinstance(input_dim, bool) or input_dim < 1:
            raise ValueError(f"{type(self).__name__}: input_dim must be a positive int, got {input_dim!r}")
        if not self.bijective and cache_size != 1:
            raise ValueError(
                f"{type(self).__name__} is not bijective and needs cache_size=1: without the cache, "
                "log_prob of a sample would score a different random path than the one that made it"
            )
        self.input_dim = input_dim
        self._cache_entry = None  # (x, y, ladj, stamp)

    # ----------------------------------------------------------------- subclass hooks
    def _forward_with_ladj(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _inverse_with_ladj(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _ladj(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._forward_with_ladj(x)[1]

    @property
    def domain_dim(self) -> int:
        """Size of the last dimension of the forward input (the latent side)."""
        return self.input_dim

    @property
    def codomain_dim(self) -> int:
        """Size of the last dimension of the forward output (the data side)."""
        return self.input_dim

    # ----------------------------------------------------------------- torch Transform API
    def __call__(self, x):
        self._check_input(x, self.domain_dim, "forward input")
        entry = self._cache_lookup(x=x)
        if entry is not None:
            return entry[1]
        y, ladj = self._forward_with_ladj(x)
        self._cache_store(x, y, ladj)
        return y

    def _inv_call(self, y):
        return self.inverse_and_ladj(y)[0]

    def inverse_and_ladj(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, log_abs_det_jacobian(x, y))`` for ``x = inv(y)``, through the cache: the density direction
        and its log-det in one call (what :class:`~pyro_nf.distributions.FlowDistribution` walks)."""
        self._check_input(y, self.codomain_dim, "inverse input")
        entry = self._cache_lookup(y=y)
        if entry is not None:
            return entry[0], entry[2]
        x, ladj = self._inverse_with_ladj(y)
        self._cache_store(x, y, ladj)
        return x, ladj

    def log_abs_det_jacobian(self, x, y):
        entry = self._cache_lookup(x=x, y=y)
        if entry is not None:
            return entry[2]
        self._check_input(x, self.domain_dim, "log_abs_det_jacobian x")
        self._check_input(y, self.codomain_dim, "log_abs_det_jacobian y")
        return self._ladj(x, y)

    def with_cache(self, cache_size: int = 1):
        if cache_size == self._cache_size:
            return self
        raise NotImplementedError(
            f"{type(self).__name__}: build the layer with cache_size={cache_size} instead of "
            "calling with_cache (a copy would not share its parameters)"
        )

    def forward_shape(self, shape):
        return torch.Size(shape[:-1]) + (self.codomain_dim,)

    def inverse_shape(self, shape):
        return torch.Size(shape[:-1]) + (self.domain_dim,)

    # ----------------------------------------------------------------- cache
    def _stamp(self, x: torch.Tensor, y: torch.Tensor) -> tuple:
        versions = [torch.is_grad_enabled(), self.training, _version(x), _version(y)]
        versions.extend(map(_version, self._stamped_tensors()))
        return tuple(versions)

    def _stamped_tensors(self) -> tuple:
        return self._walked()[1]

    def _walked(self) -> tuple:
        # (registration count, the parameters and buffers of this layer and its submodules, the reference
        # tensor of the input checks): walked once and kept until some module anywhere registers a
        # parameter, buffer or submodule (the walks were most of a stamp's and a check's cost)
        kept = self.__dict__.get("_stamped")
        if kept is None or kept[0] != _registrations[0]:
            tensors: list = []
            _collect_tensors(self, tensors)
            ref = _first_tensor(self, "_parameters")
            ref = ref if ref is not None else _first_tensor(self, "_buffers", floating=True)
            kept = (_registrations[0], tuple(tensors), ref)
            self.__dict__["_stamped"] = kept
        return kept

    def _cache_lookup(self, x=None, y=None):
        # is_compiling() first: a compiled function must not read (and so guard on) the cache entry, or
        # every eager call in between would invalidate the compiled graph and force a recompilation
        if torch.compiler.is_compiling() or self._cache_size == 0:
            return None
        entry = self._cache_entry
        if entry is None:
            return None
        if (x is not None and x is not entry[0]) or (y is not None and y is not entry[1]):
            return None
        if entry[3] != self._stamp(entry[0], entry[1]):
            self.__dict__["_cache_entry"] = None
            return None
        return entry

    def _cache_store(self, x, y, ladj):
        if self._cache_size == 0 or torch.compiler.is_compiling():
            return
        # through __dict__: nn.Module.__setattr__ costs several microseconds, and this runs at every call
        self.__dict__["_cache_entry"] = (x, y, ladj, self._stamp(x, y))

    def clear_cache(self) -> None:
        """Forget the cached ``(x, y)`` pair (it also holds the autograd graph that made it)."""
        self.__dict__["_cache_entry"] = None

    def __getstate__(self):
        state = super().__getstate__()
        state["_cache_entry"] = None
        state.pop("_stamped", None)
        return state

    # ----------------------------------------------------------------- checks and repr
    def _reference_tensor(self):
        # The first parameter, else the first floating buffer, in Module.parameters() order. A direct walk:
        # parameters() goes through named_modules, whose memo hashes every module (slow, and a graph
        # break under torch.compile, since Pyro's TransformModule.__hash__ calls super().__hash__()).
        if torch.compiler.is_compiling():
            ref = _first_tensor(self, "_parameters")
            return ref if ref is not None else _first_tensor(self, "_buffers", floating=True)
        return self._walked()[2]

    def _check_input(self, value, size: int, what: str) -> None:
        name = type(self).__name__
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name}: {what} must be a torch.Tensor, got {type(value).__name__}")
        if value.dim() == 0 or value.shape[-1] != size:
            raise ValueError(f"{name}: expected {what} of shape (..., {size}), got {tuple(value.shape)}")
        if not value.is_floating_point():
            raise TypeError(f"{name}: {what} must be floating point, got dtype {value.dtype}")
        ref = self._reference_tensor()
        if ref is not None:
            if value.dtype != ref.dtype:
                raise TypeError(
                    f"{name}: {what} has dtype {value.dtype} but the layer's parameters are "
                    f"{ref.dtype}; convert one of them (e.g. flow.to({value.dtype}))"
                )
            if value.device != ref.device:
                raise ValueError(
                    f"{name}: {what} is on {value.device} but the layer's parameters are on "
                    f"{ref.device}; move one of them (e.g. flow.to('{value.device}'))"
                )

    def extra_repr(self) -> str:
        return f"input_dim={self.input_dim}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"


def _collect_tensors(module: torch.nn.Module, out: list) -> None:
    # A direct walk: Module.parameters() dedups through named_modules and costs ~10x more.
    out.extend(t for t in module._parameters.values() if t is not None)
    out.extend(t for t in module._buffers.values() if t is not None)
    for child in module._modules.values():
        if child is not None:
            _collect_tensors(child, out)


# How many parameters, buffers and submodules have been registered (by ``setattr`` or ``register_*``) on
# any module of the process: a change tells every layer that its list of stamped tensors may be out of date.
_registrations = [0]


def _count_registration(*args):
    _registrations[0] += 1


_module_hooks.register_module_parameter_registration_hook(_count_registration)
_module_hooks.register_module_buffer_registration_hook(_count_registration)
_module_hooks.register_module_module_registration_hook(_count_registration)


def _first_tensor(module: torch.nn.Module, kind: str, floating: bool = False):
    """The first tensor of ``module._parameters`` or ``module._buffers`` (``kind``) in a pre-order walk of
    the submodules, optionally the first floating-point one."""
    for t in getattr(module, kind).values():
        if t is not None and (not floating or t.is_floating_point()):
            return t
    for child in module._modules.values():
        if child is not None:
            t = _first_tensor(child, kind, floating)
            if t is not None:
                return t
    return None


def _version(t: torch.Tensor) -> int:
    # Inference-mode tensors have no version counter (reading it raises); they cannot be edited outside
    # inference mode either. try/except: the common case costs one attribute read.
    try:
        return t._version
    except RuntimeError:
        return -1

