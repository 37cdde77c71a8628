r"""The base of every pyro_nf layer: checked inputs, pair records that cannot go stale, and calls that
change data-dependent state only when they succeed.

Direction convention (see DESIGN.md): ``forward`` is the *sampling* direction, base/latent ``z -> x``
data, and ``log_abs_det_jacobian(z, x)`` is ``log|det dx/dz|``, so that

    log p(x) = log p_base(z) - log_abs_det_jacobian(z, x).

Bijections (``pyro_nf.transforms``), surjections (``pyro_nf.surjections``) and stochastic layers
(``pyro_nf.stochastic``) all derive from :class:`FlowTransform`; :class:`pyro_nf.Flow` chains them.

**The record contract.** A layer (or a :class:`~pyro_nf.Flow`) keeps at most one :class:`PairRecord`: the
``(z, x, log-det)`` of the last pair it made through ``__call__`` or ``inv``. A record is used only for that
very pair of tensor objects, and only while its guard holds: the same grad mode, the same train/eval modes,
the same parameter and buffer *objects*, and the same *contents* of every parameter, buffer, ``z`` and
``x``, compared element by element against copies taken when the record was made (except the buffers a
module lists in ``constant_buffers``: structure fixed at construction, such as MADE's masks). Version counters are
consulted first, as a fast "changed" signal, never as the proof of "unchanged", so updates that do not
move them (fused or foreach optimizers, ``.data`` edits, ``inference_mode``, numpy views) are seen too.
Densities of data (``log_prob`` through :class:`~pyro_nf.distributions.FlowDistribution`) use no record
at all: only a pair that the model itself made is ever read back.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch
from pyro.distributions.torch_transform import TransformModule
from torch._utils import _flatten_dense_tensors
from torch.distributions import constraints

# --------------------------------------------------------------------------- records


def _version(t: torch.Tensor) -> int:
    # Inference-mode tensors have no version counter (reading it raises): -1, and the contents decide.
    try:
        return t._version
    except RuntimeError:
        return -1


def module_state(module: torch.nn.Module) -> tuple[list, tuple]:
    """The parameters and buffers of ``module`` and its submodules (depth first, in registration order; not
    the buffers a module's class lists in ``constant_buffers``), and their train/eval flags. A direct walk of
    the modules' own dicts: ``Module.parameters()`` deduplicates through ``named_modules`` and costs several
    times more, and this runs at every record and every read of one."""
    tensors: list = []
    modes: list = []
    stack = [module]
    while stack:
        current = stack.pop()
        state = current.__dict__
        modes.append(state["training"])
        for tensor in state["_parameters"].values():
            if tensor is not None:
                tensors.append(tensor)
        buffers = state["_buffers"]
        if buffers:
            constant = getattr(type(current), "constant_buffers", ())  # the class's: no Module.__getattr__ miss
            for name, tensor in buffers.items():
                if tensor is not None and name not in constant:
                    tensors.append(tensor)
        children = state["_modules"]
        if children:
            stack.extend(reversed([child for child in children.values() if child is not None]))
    return tensors, tuple(modes)


@torch.no_grad()
def _snapshot(tensors) -> dict:
    """Flat copies of ``tensors``, one concatenation per (dtype, device) (flattened and concatenated in C++:
    about half the time of a Python loop of views and ``torch.cat``, which is most of a record's cost)."""
    groups: dict = {}
    for t in tensors:
        groups.setdefault((t.dtype, t.device), []).append(t)
    return {key: _flatten_dense_tensors(group) for key, group in groups.items()}


def _same_contents(tensors, snapshot: dict) -> bool:
    current = _snapshot(tensors)
    if current.keys() != snapshot.keys():
        return False
    return all(torch.equal(current[key], snapshot[key]) for key in snapshot)


@dataclass(eq=False)
class PairRecord:
    """A pair ``(z, x)`` that a layer or flow made, its log-det, and the guard that says whether it still
    describes the owner: see the module docstring for the exact contract."""

    z: torch.Tensor
    x: torch.Tensor
    ladj: torch.Tensor
    grad_enabled: bool
    modes: tuple
    tensors: tuple
    versions: tuple
    snapshot: dict

    @classmethod
    def make(cls, owner: torch.nn.Module, z, x, ladj) -> PairRecord:
        tensors, modes = module_state(owner)
        watched = (*tensors, z, x)
        return cls(z, x, ladj, torch.is_grad_enabled(), modes, tuple(tensors), tuple(map(_version, watched)),
                   _snapshot(watched))

    def holds(self, owner: torch.nn.Module) -> bool:
        """Whether nothing that the pair depends on changed since it was made."""
        if torch.is_grad_enabled() != self.grad_enabled:
            return False
        tensors, modes = module_state(owner)
        if modes != self.modes or len(tensors) != len(self.tensors):
            return False
        if any(a is not b for a, b in zip(tensors, self.tensors)):
            return False
        watched = (*tensors, self.z, self.x)
        if any(_version(t) != v for t, v in zip(watched, self.versions)):
            return False
        return _same_contents(watched, self.snapshot)


class Recording:
    """What :class:`FlowTransform` and :class:`~pyro_nf.Flow` share: one :class:`PairRecord` slot."""

    def _recall(self, z=None, x=None) -> PairRecord | None:
        # never under torch.compile: reading the slot would guard the compiled graph on it
        if torch.compiler.is_compiling():
            return None
        record = self.__dict__.get("_record")
        if record is None or (z is not None and z is not record.z) or (x is not None and x is not record.x):
            return None
        if not record.holds(self):
            self.__dict__["_record"] = None  # drop the stale graph now
            return None
        return record

    # the calls, shared by layers and flows: each defines forward_and_ladj(z) and _computed_inverse(x)
    def inverse_and_ladj(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z, log|det dx/dz|)`` for ``z = inv(x)``: from the record when ``x`` is the output of the pair
        this transform made (and nothing changed since), else computed; makes no record."""
        record = self._recall(x=x)
        if record is not None:
            return record.z, record.ladj
        return self._computed_inverse(x)

    def __call__(self, z):
        record = self._recall(z=z)
        if record is not None:
            return record.x
        x, ladj = self.forward_and_ladj(z)
        self._remember(z, x, ladj)
        return x

    def _inv_call(self, x):
        record = self._recall(x=x)
        if record is not None:
            return record.z
        z, ladj = self._computed_inverse(x)
        self._remember(z, x, ladj)
        return z

    def _call(self, z):
        """The sampling direction, computed (torch's ``Transform`` hook)."""
        return self.forward_and_ladj(z)[0]

    def _inverse(self, x):
        """The density direction, computed (torch's ``Transform`` hook)."""
        return self._computed_inverse(x)[0]

    def _remember(self, z, x, ladj) -> None:
        if self._records and not torch.compiler.is_compiling():
            # through __dict__: no nn.Module.__setattr__ on the call path. Without gradients a record saves only
            # the inverse pass, not worth its guard's copies where that pass is cheap (see `cheap_inverse`)
            keep = torch.is_grad_enabled() or not self._cheap_inverse()
            self.__dict__["_record"] = PairRecord.make(self, z, x, ladj) if keep else None

    def _cheap_inverse(self) -> bool:
        raise NotImplementedError

    def clear_cache(self) -> None:
        """Forget the recorded pair (it also holds the autograd graph that made it)."""
        self.__dict__["_record"] = None

    def _refuse_uncached(self, cache_size: int, non_bijective: list) -> None:
        if cache_size not in (0, 1):
            raise ValueError(f"{type(self).__name__}: cache_size must be 0 or 1, got {cache_size!r}")
        if cache_size == 0 and non_bijective:
            raise ValueError(
                f"{non_bijective[0]} is not bijective and needs cache_size=1: without its record, log_prob of a "
                "sample would score a different random path than the one that made it"
            )

    def with_cache(self, cache_size: int = 1):
        if cache_size == int(self._records):
            return self
        name = type(self).__name__
        if cache_size == 0 and not self.bijective:
            raise ValueError(
                f"{name} is not bijective and needs its record (cache_size=1): without it, log_prob of a sample "
                "would score a different random path than the one that made it"
            )
        raise NotImplementedError(
            f"{name}: build it with cache_size={cache_size} instead of calling with_cache(): a copy would not "
            "share its parameters"
        )


# --------------------------------------------------------------------------- calls that commit or leave no trace

# Data-dependent state (ActNorm's initialisation, BatchNorm's running statistics) is staged during a call and
# committed when the outermost public call returns, or discarded when it raises. One process-wide re-entrant
# lock serialises the calls that stage state, so that two threads making the first call together cannot mix
# their batches: the first to stage initialises, the other waits and then sees the committed state.
_STATE_LOCK = threading.RLock()
_CALL = threading.local()


def open_call() -> bool:
    """Start a public call; ``True`` for the outermost one, which must end with :func:`close_call`."""
    if getattr(_CALL, "staged", None) is None:
        _CALL.staged = []
        return True
    return False


def close_call(outermost: bool, succeeded: bool) -> None:
    """End a public call: commit (or, after an error, discard) what its layers staged."""
    if not outermost:
        return
    staged, _CALL.staged = _CALL.staged, None
    try:
        for layer in staged:
            if succeeded:
                layer._commit_staged()
            else:
                layer._discard_staged()
    finally:
        for _ in staged:
            _STATE_LOCK.release()


# Under torch.compile the thread-local state and the lock are left alone (dynamo would guard on the first, and
# recompile once an eager call has set it, and cannot trace the second); a compiled graph does not fail half-way,
# so what its layers stage is committed, inside the graph, when its outermost call ends.
_TRACED = {"depth": 0, "staged": []}


def in_call(function, *args):
    """Run ``function(*args)`` as one public call (see :func:`open_call`)."""
    if torch.compiler.is_compiling():
        _TRACED["depth"] += 1
        result = function(*args)
        _TRACED["depth"] -= 1
        if _TRACED["depth"] == 0 and _TRACED["staged"]:
            staged, _TRACED["staged"] = _TRACED["staged"], []
            for layer in staged:
                layer._commit_staged()
        return result
    outermost = open_call()
    try:
        result = function(*args)
    except BaseException:
        close_call(outermost, False)
        raise
    close_call(outermost, True)
    return result


# --------------------------------------------------------------------------- the layer base class


class FlowTransform(Recording, TransformModule):
    r"""Base class of the vector-valued (``event_dim = 1``) layers of pyro_nf.

    A subclass implements

    * ``_forward_with_ladj(z) -> (x, ladj)``: the sampling direction and its log-det,
    * ``_inverse_with_ladj(x) -> (z, ladj)``: the density direction, returning the log-det
      of the *forward* map at the recovered ``z``,
    * optionally ``_ladj(z, x)``, the log-det of a pair seen by neither call (the default
      reruns the forward pass on ``z``).

    Inputs may have any leading batch shape ``(..., domain_dim)`` (forward) and
    ``(..., codomain_dim)`` (inverse); both are ``input_dim`` except for shape-changing layers.

    Non-bijective layers (surjections, stochastic layers) set ``bijective = False``: their
    log-det must be a deterministic function of the pair, and they refuse ``cache_size=0``,
    since without the record ``log_prob`` of a sample would score a different random path.

    **Records.** With ``cache_size=1`` the layer keeps the last pair it made by ``__call__`` or ``inv``, with
    its log-det, so ``inv`` of its own output and ``log_abs_det_jacobian`` of its own pair cost nothing, under
    the guard described in :mod:`pyro_nf.base` (any change of a parameter, buffer, input or output, however
    it was made, retires the record). ``forward_and_ladj`` and ``inverse_and_ladj`` of other tensors, and
    torch's ``_call``/``_inverse`` hooks, always compute.

    **State.** A layer that learns state from data (ActNorm, BatchNorm) stages it with :meth:`_stage` and
    applies it in ``_commit_staged``: only when the whole public call succeeded.
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True
    context_dim = 0  # layers whose conditioner takes a context set it; see :meth:`condition`
    #: Whether the inverse costs about one forward pass and gives the same log-det as the forward pass:
    #: then a pair made without gradients (``sample``) is not recorded, since reading it back would save
    #: less than the record's guard costs. Layers with a D-pass or iterative inverse, a stochastic log-det or
    #: batch statistics keep the default ``False``; with gradients every layer records (the record keeps
    #: the sample's graph, which a reverse-KL loss reuses).
    cheap_inverse = False

    def __init__(self, input_dim: int, cache_size: int = 1):
        super().__init__(cache_size=cache_size)
        if not isinstance(input_dim, int) or isinstance(input_dim, bool) or input_dim < 1:
            raise ValueError(f"{type(self).__name__}: input_dim must be a positive int, got {input_dim!r}")
        self._refuse_uncached(cache_size, [] if self.bijective else [type(self).__name__])
        self.input_dim = input_dim
        self.__dict__["_record"] = None

    @property
    def _records(self) -> bool:
        return self._cache_size == 1

    def _cheap_inverse(self) -> bool:
        return self.cheap_inverse

    # ----------------------------------------------------------------- subclass hooks
    def _forward_with_ladj(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _inverse_with_ladj(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _ladj(self, z: torch.Tensor, x: torch.Tensor, **context) -> torch.Tensor:
        return self._forward_with_ladj(z, **context)[1]

    def _commit_staged(self) -> None:
        """Apply the state staged during the call that just succeeded."""

    def _discard_staged(self) -> None:
        """Forget the state staged during the call that just failed."""

    def _stage(self) -> None:
        """Announce that this call is about to stage data-dependent state: takes the state lock (held until
        the outermost call ends; re-check your state after this returns, another thread may have committed)
        and registers the layer for ``_commit_staged`` / ``_discard_staged``. Under ``torch.compile``: no lock, and
        the commit is traced into the graph at the end of the outermost call."""
        if torch.compiler.is_compiling():  # see in_call: no lock, committed at the end of the traced call
            if not any(layer is self for layer in _TRACED["staged"]):
                _TRACED["staged"].append(self)
            return
        staged = getattr(_CALL, "staged", None)
        if staged is None:
            raise RuntimeError(f"{type(self).__name__}: state staged outside a public call")
        if any(layer is self for layer in staged):
            return
        _STATE_LOCK.acquire()
        staged.append(self)

    @property
    def domain_dim(self) -> int:
        """Size of the last dimension of the forward input (the latent side)."""
        return self.input_dim

    @property
    def codomain_dim(self) -> int:
        """Size of the last dimension of the forward output (the data side)."""
        return self.input_dim

    # ----------------------------------------------------------------- the two directions
    def forward_and_ladj(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, log|det dx/dz|)`` for ``x = self(z)``, computed (no record is read or made)."""
        self._check_input(z, self.domain_dim, "forward input")
        return in_call(self._forward_with_ladj, z)

    def _computed_inverse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_input(x, self.codomain_dim, "inverse input")
        return in_call(self._inverse_with_ladj, x)

    # ----------------------------------------------------------------- torch Transform API
    def log_abs_det_jacobian(self, z, x):
        record = self._recall(z=z, x=x)
        if record is not None:
            return record.ladj
        self._check_input(z, self.domain_dim, "log_abs_det_jacobian z")
        self._check_input(x, self.codomain_dim, "log_abs_det_jacobian x")
        return in_call(self._ladj, z, x)

    def condition(self, context: torch.Tensor) -> FlowTransform:
        """This layer for a given context (``(..., context_dim)``, broadcast against the inputs): a
        :class:`Conditioned` view sharing its parameters; a layer without a context is itself."""
        return Conditioned(self, context) if self.context_dim else self

    def forward_shape(self, shape):
        return torch.Size(shape[:-1]) + (self.codomain_dim,)

    def inverse_shape(self, shape):
        return torch.Size(shape[:-1]) + (self.domain_dim,)

    def __getstate__(self):
        state = super().__getstate__()
        state["_record"] = None
        state.pop("_reference_slot", None)
        return state

    # ----------------------------------------------------------------- checks and repr
    def _reference_tensor(self):
        """The first parameter, else the first floating buffer: the dtype and device inputs must match. Its
        place (module, kind, name) is kept, and the tensor read there at every call, so ``.to()``, a
        replaced parameter or a reloaded buffer are always seen."""
        slot = self.__dict__.get("_reference_slot")
        if slot is not None and not torch.compiler.is_compiling():
            tensor = getattr(slot[0], slot[1]).get(slot[2])
            if tensor is not None:
                return tensor
        slot = _first_slot(self, "_parameters") or _first_slot(self, "_buffers", floating=True)
        if slot is None:
            return None
        if not torch.compiler.is_compiling():
            self.__dict__["_reference_slot"] = slot
        return getattr(slot[0], slot[1])[slot[2]]

    def _check_input(self, value, size: int, what: str) -> None:
        if torch.jit.is_tracing():
            return  # under torch.jit.trace sizes are traced values: comparing them warns (TracerWarning)
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


class Conditioned(FlowTransform):
    r"""A layer whose conditioner takes a context, bound to one context ``c``: ``x = f(z; c)``.

    The layer's hooks get ``context=c``; its parameters are shared (this is a view, made by
    ``layer.condition(c)``). ``c`` has shape ``(..., context_dim)`` and broadcasts against the inputs'
    leading dimensions. The record of a conditioned layer or flow watches ``c`` like a parameter: the same
    ``x`` scored under another context, or after ``c`` was edited in place, is computed again.
    """

    def __init__(self, layer: FlowTransform, context: torch.Tensor):
        name = type(layer).__name__
        if not isinstance(context, torch.Tensor):
            raise TypeError(f"{name}: the context must be a torch.Tensor, got {type(context).__name__}")
        if context.dim() == 0 or context.shape[-1] != layer.context_dim:
            raise ValueError(f"{name}: expected a context of shape (..., {layer.context_dim}), got "
                             f"{tuple(context.shape)}")
        ref = layer._reference_tensor()
        if ref is not None and (context.dtype != ref.dtype or context.device != ref.device):
            raise TypeError(f"{name}: the context is {context.dtype} on {context.device} but the layer's parameters "
                            f"are {ref.dtype} on {ref.device}; convert one of them")
        super().__init__(layer.input_dim, cache_size=1)
        self.layer = layer
        # a buffer: it follows .to(), and records watch it like every parameter and buffer (not saved: a
        # context is an input, not a state)
        self.register_buffer("context", context, persistent=False)
        self.bijective = layer.bijective
        self.cheap_inverse = layer.cheap_inverse
        self.domain, self.codomain = layer.domain, layer.codomain

    @property
    def domain_dim(self) -> int:
        return self.layer.domain_dim

    @property
    def codomain_dim(self) -> int:
        return self.layer.codomain_dim

    def _forward_with_ladj(self, z):
        return self.layer._forward_with_ladj(z, context=self.context)

    def _inverse_with_ladj(self, x):
        return self.layer._inverse_with_ladj(x, context=self.context)

    def _ladj(self, z, x):
        return self.layer._ladj(z, x, context=self.context)

    def __repr__(self) -> str:
        return f"Conditioned({self.layer!r}, context of shape {tuple(self.context.shape)})"


def check_context_dim(context_dim, owner: str) -> int:
    """``context_dim`` as a non-negative int, or a ``ValueError`` naming ``owner``."""
    if not isinstance(context_dim, int) or isinstance(context_dim, bool) or context_dim < 0:
        raise ValueError(f"{owner}: context_dim must be a non-negative int, got {context_dim!r}")
    return context_dim


def check_finite(value: torch.Tensor, owner: str, what: str) -> None:
    """Raise a ``ValueError`` naming ``owner`` if ``value`` holds a NaN or an infinity.

    One reduction decides the common case: the sum of the elements is finite unless some element is
    not (or the sum overflows). Only then are the non-finite elements counted, so a finite input whose
    sum overflows passes. Skipped under ``torch.compile``, where the check would break the graph."""
    if torch.compiler.is_compiling():
        return
    with torch.no_grad():
        if bool(torch.isfinite(value.sum())):
            return
        bad = int((~torch.isfinite(value)).sum())
    if bad:
        raise ValueError(
            f"{owner}: the {what} of shape {tuple(value.shape)} has {bad} non-finite value(s) "
            f"(NaN or infinity) of {value.numel()}"
        )


def _first_slot(module: torch.nn.Module, kind: str, floating: bool = False):
    """``(module, kind, name)`` of the first tensor of ``_parameters`` or ``_buffers`` (``kind``) in a
    pre-order walk of the submodules, optionally the first floating-point one."""
    for key, t in getattr(module, kind).items():
        if t is not None and (not floating or t.is_floating_point()):
            return module, kind, key
    for child in module._modules.values():
        if child is not None:
            slot = _first_slot(child, kind, floating)
            if slot is not None:
                return slot
    return None


__all__ = ["Conditioned", "FlowTransform", "PairRecord", "Recording", "check_context_dim", "check_finite", "close_call",
           "in_call", "module_state", "open_call"]
