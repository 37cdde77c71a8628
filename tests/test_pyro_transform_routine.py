"""Pyro's own transform test routine, run over every layer and architecture of ``tests/cases.py``.

This module mirrors ``TransformTests._test`` of Pyro's test suite
(``tests/distributions/test_transforms.py`` in ``pyro-ppl/pyro``): the same checks, with the same
inputs and tolerances, written here for this project (no text is copied from Pyro). Pyro's routine
runs, for event shapes ``(2,)`` and ``(5,)`` (the same here):

* **inverse** (``_test_inverse``): ``x`` is 10 draws of a standard normal; with ``y = _call(x)``,
  ``x' = _inverse(y)`` (the uncached passes), ``max|x - x'| < 1e-6`` and
  ``max|ladj(x, y) - ladj(x', y)| < 1e-6``. For a non-bijective transform it checks the weaker
  pseudo-inverse equation ``max|_call(_inverse(y)) - y| < 1e-6`` instead.
* **shape** (``_test_shape``): for batch shapes ``(3,)``, ``(3, 4)`` and ``(3, 4, 5)``, a sample of
  ``TransformedDistribution(Normal(0, 1) of batch + event shape, [transform])`` has the expected
  shape, and ``forward_shape`` / ``inverse_shape`` map the event shapes and the full shapes onto
  each other (here also: ``log_prob`` of the sample has the batch shape; for a layer that changes
  the dimension, such as Augment or Slice, the base has the latent size ``latent_dim``).
* **jacobian** (``_test_jacobian``, bijections only): ``x`` is one standard-normal draw; the
  analytic ``log_abs_det_jacobian(x, transform(x))`` is within ``1e-4`` of ``log|det J|`` of the
  central finite-difference Jacobian (step ``1e-4``, one pair of passes per input coordinate; here
  of the uncached ``_call``, where Pyro calls the transform itself: the same values, since a fresh
  input never hits the cache).
  A transform that declares ``autoregressive`` is compared with the sum of the log of the
  diagonal (after the ``arn.get_permutation()`` reordering where it has one), and its Jacobian
  must have a non-zero diagonal and no entry below it.
* **autodiff** (``_test_autodiff``): three Adam steps of maximum likelihood,
  ``-TransformedDistribution(Normal, [transform]).log_prob(x)`` with ``x ~ U(0, 1)^D`` of shape
  ``(1, D)``, run without error. Pyro scores through ``transform`` when it has an inverse and
  through ``transform.inv`` otherwise; every pyro_nf layer has both directions, so both are run.

Pyro calls the routine with flags per transform (``inverse=False`` for Planar-like transforms
without an explicit inverse, ``autodiff=False`` for transforms without parameters, its batch norm
primed and put in eval mode). Here:

* the **jacobian** and **inverse** checks apply to bijections only (Pyro's own rule for the
  Jacobian; for surjective and stochastic layers the pseudo-inverse equation of Pyro's inverse
  check is meaningful only where one composition is deterministic, next item);
* surjections get their **exact direction** (``Case.exact``) instead: ``inverse_after_forward``
  (Abs, Slice: ``_inverse(_call(z)) = z``, with ``ladj`` agreeing on both pairs for single layers)
  or ``forward_after_inverse`` (Augment: ``_call(_inverse(y)) = y``, which is Pyro's pseudo-inverse
  equation), with Pyro's ``1e-6``;
* every kind (bijection, surjection, stochastic) gets the **shape** and **autodiff** checks (a layer
  without parameters, where Pyro passes ``autodiff=False`` because Adam refuses an empty parameter
  list, has the gradient of the loss checked against the data instead), plus two checks the brief of
  this file adds: the **cache round trip** (``transform.inv(transform(z)) is z`` and the cached
  log-det equal to a recomputed one), and **gradients reach the parameters** through ``_call``,
  ``_inverse`` and ``log_abs_det_jacobian``: every parameter is reached by at least one of them and
  every gradient is finite.

Every case runs fresh (``perturbed=False``) and moved off the identity (``perturbed=True``), in
float64, the default dtype of Pyro's test suite (its ``tests/conftest.py``; in float32 a step of
``1e-4`` leaves finite differences with rounding errors near ``1e-3``, over the tolerance for Pyro's
own layers too). As Pyro does for its batch norm, data-dependent layers are primed: a fresh model runs the
density direction once on a batch (initialising ActNorm, setting BatchNorm's running statistics),
and a model with BatchNorm is put in eval mode, where its two directions are exact inverses. Pyro's
own ``AffineCoupling``, ``AffineAutoregressive``, ``Planar`` and ``BatchNorm`` run through the same
functions as a control of the routine itself.
"""

from __future__ import annotations

import pyro.distributions as dist
import pyro.distributions.transforms as T
import pytest
import torch
from cases import CASES, latent_dim, make, parts

import pyro_nf as nf
from pyro_nf.transforms import ActNorm, BatchNorm

EPSILON = 1e-4  # finite-difference step and Jacobian tolerance (Pyro's ``epsilon``)
DELTA = 1e-6  # inverse tolerance (Pyro's ``delta``)
EVENT_DIMS = (2, 5)  # Pyro's event shapes (2,) and (5,)
BATCH_SHAPES = ((3,), (3, 4), (3, 4, 5))  # Pyro's batch shapes for the shape check
N_INVERSE = 10  # Pyro's number of draws in the inverse check
SEED = 123  # Pyro's ``rng_seed`` for its transform tests

IDS = list(CASES)
BIJECTIONS = [i for i in IDS if CASES[i].kind == "bijection"]
EXACT = [i for i in IDS if CASES[i].exact is not None]

assert all(CASES[i].min_dim <= min(EVENT_DIMS) for i in IDS), "a case needs more dimensions than Pyro's routine uses"



@pytest.fixture(autouse=True)
def _float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


# --------------------------------------------------------------------------- the cases
def _params(ids):
    return [pytest.param(case_id, perturbed, dim, id=f"{case_id}-{'perturbed' if perturbed else 'fresh'}-D{dim}")
            for case_id in ids for perturbed in (False, True) for dim in EVENT_DIMS]


def build(case_id: str, perturbed: bool, dim: int):
    """The case in float64, primed like Pyro primes its batch norm, and the RNG seeded like Pyro's tests."""
    flow = make(case_id, dim, torch.float64, seed=0, perturbed=perturbed)
    layers = list(flow.modules())
    torch.manual_seed(SEED)
    if not perturbed and any(isinstance(m, (ActNorm, BatchNorm)) for m in layers):
        with torch.no_grad():  # the density direction once: ActNorm's data initialisation, BatchNorm's statistics
            flow.inv(torch.randn(64, dim) * 1.5 + 0.5)
    if any(isinstance(m, BatchNorm) for m in layers):
        flow.eval()
    torch.manual_seed(SEED)
    return flow


# --------------------------------------------------------------------------- the checks
def check_jacobian(transform, dim: int) -> None:
    x = torch.randn(1, dim)
    y = transform(x)
    analytic = transform.log_abs_det_jacobian(x, y).detach()
    if transform.event_dim == 0:
        analytic = analytic.sum(-1)
    # jacobian[j, k] = d y_k / d x_j, by central differences of the uncached forward pass
    jacobian = torch.zeros(dim, dim)
    with torch.no_grad():
        for j in range(dim):
            step = torch.zeros(1, dim)
            step[0, j] = EPSILON
            jacobian[j] = ((transform._call(x + 0.5 * step) - transform._call(x - 0.5 * step)) / EPSILON)[0]
    arn = getattr(transform, "arn", None)
    if getattr(transform, "autoregressive", False) and hasattr(arn, "get_permutation"):
        order = arn.get_permutation()
        jacobian = jacobian[order][:, order]
    if getattr(transform, "autoregressive", False):
        numeric = jacobian.diag().log().sum()
    else:
        numeric = jacobian.det().abs().log()
    discrepancy = (analytic - numeric).abs().max().item()
    assert discrepancy < EPSILON, f"log|det J|: analytic {analytic.tolist()} vs finite differences {numeric.item()}"
    if hasattr(transform, "autoregressive"):
        nonzero = jacobian.abs().sign()
        assert nonzero.diag().sum().item() == dim, f"zero on the diagonal of the Jacobian:\n{jacobian}"
        assert nonzero.tril(-1).sum().item() == 0, f"an output depends on a later input:\n{jacobian}"


def check_inverse(transform, dim: int) -> None:
    x = dist.Normal(torch.zeros(dim), torch.ones(dim)).sample(torch.Size([N_INVERSE]))
    y = transform._call(x)
    x_back = transform._inverse(y)
    if transform.bijective:
        error = (x - x_back).abs().max().item()
        assert error < DELTA, f"max|x - _inverse(_call(x))| = {error:.3g}"
        j1 = transform.log_abs_det_jacobian(x, y)
        j2 = transform.log_abs_det_jacobian(x_back, y)
        error = (j1 - j2).abs().max().item()
        assert error < DELTA, f"max|ladj(x, y) - ladj(_inverse(y), y)| = {error:.3g}"
    else:
        error = (y - transform._call(x_back)).abs().max().item()
        assert error < DELTA, f"max|y - _call(_inverse(y))| = {error:.3g}"


def check_exact_direction(transform, dim: int, exact: str, single_layer: bool) -> None:
    latent = latent_dim(transform, dim)
    if exact == "forward_after_inverse":
        check_inverse(transform, latent)  # Pyro's pseudo-inverse equation, in the latent space
        return
    assert exact == "inverse_after_forward", exact
    z = dist.Normal(torch.zeros(latent), torch.ones(latent)).sample(torch.Size([N_INVERSE]))
    x = transform._call(z)
    z_back = transform._inverse(x)
    error = (z - z_back).abs().max().item()
    assert error < DELTA, f"max|z - _inverse(_call(z))| = {error:.3g}"
    if single_layer:  # a chain recomputes its inner points with random passes; a layer's ladj is a function of the pair
        error = (transform.log_abs_det_jacobian(z, x) - transform.log_abs_det_jacobian(z_back, x)).abs().max().item()
        assert error < DELTA, f"max|ladj(z, x) - ladj(_inverse(x), x)| = {error:.3g}"


def check_shape(transform, dim: int) -> None:
    latent = latent_dim(transform, dim)
    in_event, out_event = torch.Size([latent]), torch.Size([dim])
    for batch in BATCH_SHAPES:
        batch = torch.Size(batch)
        base = dist.Normal(torch.zeros(batch + in_event), torch.ones(batch + in_event))
        model = dist.TransformedDistribution(base, [transform])
        sample = model.sample()
        assert sample.shape == batch + out_event
        assert model.log_prob(sample).shape == sample.shape[: sample.dim() - transform.codomain.event_dim]
        assert transform.forward_shape(in_event) == out_event
        assert transform.forward_shape(batch + in_event) == batch + out_event
        assert transform.inverse_shape(out_event) == in_event
        assert transform.inverse_shape(batch + out_event) == batch + in_event


def check_autodiff(transform, dim: int, through_inverse: bool) -> None:
    """Pyro's three steps of maximum likelihood; ``through_inverse`` scores with ``transform.inv``
    (the forward pass then maps the data to the base)."""
    latent = latent_dim(transform, dim)
    base_dim, data_dim = (dim, latent) if through_inverse else (latent, dim)
    base = dist.Normal(torch.zeros(base_dim), torch.ones(base_dim))
    model = dist.TransformedDistribution(base, [transform.inv if through_inverse else transform])
    params = list(transform.parameters())
    x = torch.rand(1, data_dim)
    if not params:  # Pyro passes autodiff=False here (Adam refuses no parameters): check the data gradient
        data = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(-model.log_prob(data).mean(), data)
        assert torch.isfinite(grad).all(), grad
        return
    optimizer = torch.optim.Adam(params)
    for _ in range(3):
        optimizer.zero_grad()
        loss = -model.log_prob(x.detach()).mean()
        loss.backward()
        assert torch.isfinite(loss), loss
        optimizer.step()


def check_gradients_reach_parameters(transform, dim: int, has_inverse: bool = True) -> None:
    named = [(n, p) for n, p in transform.named_parameters()]
    if not named:
        return
    latent = latent_dim(transform, dim)
    z = torch.randn(4, latent)
    x = transform._call(z)
    passes = {"_call": x, "log_abs_det_jacobian": transform.log_abs_det_jacobian(z, transform(z))}
    if transform.bijective or not isinstance(transform, nf.Flow):
        # a pair the cache does not know (a chain of random layers cannot score one: its inner points are random)
        passes["log_abs_det_jacobian, uncached pair"] = transform.log_abs_det_jacobian(z, x)
    if has_inverse:
        passes["_inverse"] = transform._inverse(torch.randn(4, dim))
    reached = set()
    for name, out in passes.items():
        if not out.requires_grad:
            continue
        grads = torch.autograd.grad(out.sum(), [p for _, p in named], allow_unused=True, retain_graph=True)
        for (pname, _), g in zip(named, grads):
            if g is not None:
                assert torch.isfinite(g).all(), f"non-finite gradient of {pname} through {name}"
                reached.add(pname)
    missing = [n for n, _ in named if n not in reached]
    assert not missing, f"no gradient through _call, _inverse or log_abs_det_jacobian reaches {missing}"


def check_cache_round_trip(transform, dim: int, recompute_ladj: bool) -> None:
    latent = latent_dim(transform, dim)
    z = torch.randn(N_INVERSE, latent)
    x = transform(z)
    assert transform.inv(x) is z, "the cached inverse does not return the forward input"
    ladj = transform.log_abs_det_jacobian(z, x)
    assert ladj.shape == (N_INVERSE,)
    assert torch.isfinite(ladj).all()
    if recompute_ladj:
        fresh = transform.log_abs_det_jacobian(z.clone(), x.clone())  # a pair the cache does not know
        error = (ladj - fresh).abs().max().item()
        assert error < DELTA, f"cached ladj differs from the recomputed one by {error:.3g}"


# --------------------------------------------------------------------------- pyro_nf
@pytest.mark.parametrize("case_id, perturbed, dim", _params(BIJECTIONS))
def test_jacobian(case_id, perturbed, dim):
    check_jacobian(build(case_id, perturbed, dim), dim)


@pytest.mark.parametrize("case_id, perturbed, dim", _params(BIJECTIONS))
def test_inverse(case_id, perturbed, dim):
    check_inverse(build(case_id, perturbed, dim), dim)


@pytest.mark.parametrize("case_id, perturbed, dim", _params(EXACT))
def test_exact_direction(case_id, perturbed, dim):
    flow = build(case_id, perturbed, dim)
    check_exact_direction(flow, dim, CASES[case_id].exact, single_layer=len(parts(flow)) == 1)


@pytest.mark.parametrize("case_id, perturbed, dim", _params(IDS))
def test_shape(case_id, perturbed, dim):
    check_shape(build(case_id, perturbed, dim), dim)


@pytest.mark.parametrize("through_inverse", [False, True], ids=["density", "inv"])
@pytest.mark.parametrize("case_id, perturbed, dim", _params(IDS))
def test_autodiff(case_id, perturbed, dim, through_inverse):
    check_autodiff(build(case_id, perturbed, dim), dim, through_inverse)


@pytest.mark.parametrize("case_id, perturbed, dim", _params(IDS))
def test_gradients_reach_parameters(case_id, perturbed, dim):
    check_gradients_reach_parameters(build(case_id, perturbed, dim), dim)


@pytest.mark.parametrize("case_id, perturbed, dim", _params(IDS))
def test_cache_round_trip(case_id, perturbed, dim):
    flow = build(case_id, perturbed, dim)
    # a chain of random layers recomputes its inner points with new random passes for a pair it did not make
    check_cache_round_trip(flow, dim, recompute_ladj=CASES[case_id].kind == "bijection" or len(parts(flow)) == 1)


def test_every_case_is_covered():
    # every architecture is a case, every case is of a known kind, every surjection has its exact direction
    assert {f"flow:{name}" for name in nf.flows.names()} <= set(IDS)
    assert {CASES[i].kind for i in IDS} <= {"bijection", "surjection", "stochastic"}
    assert set(EXACT) == {i for i in IDS if CASES[i].kind == "surjection"}


# --------------------------------------------------------------------------- control: Pyro's own transforms
def _pyro_batchnorm(dim):
    # as Pyro's test_batchnorm: set the moving statistics away from 0 / 1, then eval mode
    transform = T.batchnorm(dim)
    transform._inverse(torch.normal(torch.arange(0.0, dim), torch.arange(1.0, 1.0 + dim) / dim))
    return transform.eval()


PYRO_CONTROLS = {  # name -> (factory, has an explicit inverse, as Pyro's flags for it)
    "affine_coupling": (lambda d: T.affine_coupling(d, hidden_dims=[16, 16]), True),
    "affine_autoregressive": (lambda d: T.affine_autoregressive(d, hidden_dims=[16, 16]), True),
    "planar": (T.planar, False),
    "batchnorm": (_pyro_batchnorm, True),
}


@pytest.mark.parametrize("dim", EVENT_DIMS)
@pytest.mark.parametrize("name", list(PYRO_CONTROLS))
def test_pyro_builtin_control(name, dim):
    factory, has_inverse = PYRO_CONTROLS[name]
    torch.manual_seed(SEED)
    transform = factory(dim)
    if has_inverse:
        check_inverse(transform, dim)
    check_shape(transform, dim)
    check_jacobian(transform, dim)
    check_autodiff(transform, dim, through_inverse=not has_inverse)
    check_gradients_reach_parameters(transform, dim, has_inverse=has_inverse)
    if transform._cache_size == 1:  # Pyro's batch norm is built without a cache
        check_cache_round_trip(transform, dim, recompute_ladj=True)
