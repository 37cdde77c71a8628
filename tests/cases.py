"""One registry of test cases, id -> factory(dim), driving the shared property suite.

A new layer or architecture is tested by adding it here (architectures are added
automatically from ``pyro_nf.flows.names()``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

import pyro_nf as nf
from pyro_nf.stochastic import AnnealedEnergy, Langevin, Metropolis
from pyro_nf.surjections import Abs, Augment, Slice
from pyro_nf.transforms import (
    ActNorm,
    AdditiveCoupling,
    Affine,
    AffineAutoregressive,
    AffineConstant,
    AffineCoupling,
    Autoregressive,
    BatchNorm,
    ContinuousFlow,
    Coupling,
    InvertibleLinear,
    LeakyReLU,
    Permutation,
    Planar,
    PReLU,
    Radial,
    Residual,
    Shift,
    Softplus,
    Spline,
    SplineAutoregressive,
    SplineCoupling,
    reverse,
)

HIDDEN = (16, 16)


@dataclass
class Case:
    """``kind``: "bijection", "surjection" or "stochastic". For surjections, ``exact`` says which
    composition is the identity: "inverse_after_forward" (Abs, Slice: the sampling direction
    is the random one) or "forward_after_inverse" (Augment: the density direction is).

    ``perturb_scale`` is how far :func:`perturb` moves the zero-initialised parameters. Models
    whose ``log_prob`` is an importance weight (a whole flow before Augment, a flow feeding
    Metropolis layers) get a smaller one: a strongly perturbed, untrained model is so far from its
    own proposal (``q(e|x)``, the reverse kernel) that the weights have infinite variance, and no
    number of paths would check their unbiasedness."""

    id: str
    factory: Callable[[int], torch.nn.Module]
    min_dim: int = 1
    kind: str = "bijection"
    exact: str | None = None
    perturb_scale: float = 0.3
    density_dims: tuple = (1, 2)  # where the density is integrated on a grid (each dim >= min_dim is kept)

    @property
    def random_density(self) -> bool:
        """Whether ``log_prob`` of fresh data draws a random path."""
        return self.kind == "stochastic" or self.exact == "forward_after_inverse"


def _layer_cases() -> list[Case]:
    return [
        Case("AffineCoupling", lambda d: AffineCoupling(d, HIDDEN), min_dim=2),
        Case("AffineCoupling-alternate", lambda d: AffineCoupling(d, HIDDEN, mask=nf.nn.coupling_mask(d, "alternate"),
                                                                  shift="data"),
             min_dim=2),
        Case("AdditiveCoupling", lambda d: AdditiveCoupling(d, HIDDEN, mask=nf.nn.coupling_mask(d, flip=True)),
             min_dim=2),
        Case("Coupling-custom-mask", lambda d: Coupling(torch.arange(d) % 2 == 0,
                                                        Affine(len(range(0, d, 2)), scale_bound=1.5),
                                                        hidden_dims=HIDDEN, activation="tanh"), min_dim=2),
        Case("AffineConstant", lambda d: AffineConstant(d)),
        Case("ActNorm", lambda d: ActNorm(d)),
        Case("InvertibleLinear", lambda d: InvertibleLinear(d)),
        Case("Permutation", lambda d: Permutation(d)),
        Case("Permutation-reverse", lambda d: reverse(d)),
        Case("BatchNorm", lambda d: BatchNorm(d)),
        Case("LeakyReLU", lambda d: LeakyReLU(d, 0.3)),
        Case("PReLU", lambda d: PReLU(d)),
        Case("AffineAutoregressive-maf", lambda d: AffineAutoregressive(d, HIDDEN, order=torch.arange(d).flip(0))),
        Case("AffineAutoregressive-iaf", lambda d: AffineAutoregressive(d, HIDDEN, direction="iaf")),
        Case("Autoregressive-shift-iaf", lambda d: Autoregressive(d, Shift(), HIDDEN, direction="iaf")),
        Case("SplineAutoregressive-maf", lambda d: SplineAutoregressive(d, HIDDEN, count_bins=4, bound=2.0)),
        Case("SplineAutoregressive-iaf", lambda d: SplineAutoregressive(d, HIDDEN, count_bins=4, direction="iaf")),
        Case("SplineCoupling", lambda d: SplineCoupling(d, HIDDEN, count_bins=5, bound=2.0), min_dim=2),
        Case("Spline", lambda d: Spline(d, count_bins=6, bound=2.0)),
        Case("ContinuousFlow", lambda d: ContinuousFlow(d, HIDDEN)),
        Case("Planar", lambda d: Planar(d)),
        Case("Radial", lambda d: Radial(d)),
        Case("Residual", lambda d: Residual(d, HIDDEN)),
        Case("Conditioned", lambda d: AffineCoupling(d, HIDDEN, context_dim=2).condition(torch.tensor([0.5, -1.0])),
             min_dim=2),
        Case("Abs", lambda d: nf.Flow([Softplus(d), Abs(d)]), kind="surjection", exact="inverse_after_forward"),
        Case("Abs-learned-signs", lambda d: nf.Flow([AffineConstant(d), Softplus(d), Abs(d, learn_signs=True,
                                                                                          hidden_dims=HIDDEN)]),
             kind="surjection", exact="inverse_after_forward"),
        Case("Augment", lambda d: Augment(d, 2), kind="surjection", exact="forward_after_inverse"),
        Case("Augment-learned", lambda d: nf.Flow([AffineCoupling(d + 1, HIDDEN), Augment(d, 1, learned=True,
                                                                                             hidden_dims=HIDDEN)]),
             kind="surjection", exact="forward_after_inverse"),
        Case("Slice", lambda d: Slice(d - 1, 1, hidden_dims=HIDDEN), min_dim=2, kind="surjection",
             exact="inverse_after_forward"),
        Case("Metropolis", lambda d: Metropolis(d, _shifted_normal, n_steps=3, step_size=0.5), kind="stochastic"),
        Case("Langevin", lambda d: Langevin(d, AnnealedEnergy(_shifted_normal, 0.7), n_steps=2, step_size=0.2),
             kind="stochastic"),
    ]


def _shifted_normal(x: torch.Tensor) -> torch.Tensor:
    """Energy of N(0.5, 0.8^2 I), unnormalised."""
    return 0.5 * (((x - 0.5) / 0.8) ** 2).sum(-1)


ARCHITECTURE_KINDS = {"realnvp_abs": ("surjection", "inverse_after_forward", 0.3),
                      "augmented_realnvp": ("surjection", "forward_after_inverse", 0.1),
                      "augmented_ffjord": ("surjection", "forward_after_inverse", 0.1),
                      "snf": ("stochastic", None, 0.1)}


# An ODE solve at float64 tolerance per grid point: one block and one extra dimension keep the augmented
# continuous flow's checks affordable; its random density is integrated in 1D (64k solves with 32 paths,
# against 1.28M in 2D, which took 114 s).
ARCHITECTURE_OPTIONS = {"augmented_ffjord": {"num_layers": 1, "augment_dim": 1}}
DENSITY_DIMS = {"augmented_ffjord": (1,)}


def _architecture_cases() -> list[Case]:
    cases = []
    for name in nf.flows.names():
        min_dim = nf.flows._get(name).min_dim
        small = (("num_layers", 2), ("hidden_dims", HIDDEN), ("count_bins", 4))
        opts = {k: v for k, v in small if k in nf.flows.options(name)}
        opts.update(ARCHITECTURE_OPTIONS.get(name, {}))
        kind, exact, scale = ARCHITECTURE_KINDS.get(name, ("bijection", None, 0.3))
        cases.append(Case(f"flow:{name}", lambda d, name=name, opts=opts: nf.flows.build(name, d, **opts), min_dim,
                          kind, exact, scale, density_dims=DENSITY_DIMS.get(name, (1, 2))))
    return cases


CASES = {case.id: case for case in _layer_cases() + _architecture_cases()}


@torch.no_grad()
def perturb(module: torch.nn.Module, scale: float = 0.3, seed: int = 0) -> torch.nn.Module:
    """Move the parameters that start at zero (the identity initialisation of most layers) to
    random values, so the properties are tested on a non-trivial map, and give data-dependent
    layers a set state. Randomly initialised parameters are left as they are."""
    gen = torch.Generator().manual_seed(seed)
    for p in module.parameters():
        if not p.any():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device))
    for m in module.modules():
        if isinstance(m, ActNorm):
            m.initialized.fill_(True)
        if isinstance(m, BatchNorm):
            m.running_mean.copy_(0.3 * torch.randn(m.running_mean.shape, generator=gen, dtype=m.running_mean.dtype))
            m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen, dtype=m.running_var.dtype))
    return module


def make(case_id: str, dim: int, dtype=torch.float32, seed: int = 0, perturbed: bool = True,
         trained: bool = False, device="cpu"):
    """The case's flow on ``device`` in ``dtype``: fresh (``perturbed=False``), with its zero-initialised
    parameters moved at random (default), or, with ``trained=True``, also trained a few steps."""
    case = CASES[case_id]
    torch.manual_seed(seed)
    flow = case.factory(dim).to(dtype)
    if perturbed or trained:
        perturb(flow, scale=case.perturb_scale, seed=seed)
    flow = flow.to(device)
    if trained:
        train_a_few_steps(flow, dim, seed=seed)
    return flow


def train_a_few_steps(flow, dim: int, steps: int = 5, seed: int = 0):
    """Maximum likelihood on a skewed, shifted data set, a few large Adam steps: a map that training
    produced, not one drawn at random (both can hide what the other shows)."""
    params = list(flow.parameters())
    if not params:
        return flow
    ref = params[0]
    gen = torch.Generator().manual_seed(seed + 100)
    data = torch.randn(256, dim, generator=gen, dtype=ref.dtype)
    data = (data + 0.5 * data.square() - 0.3).to(ref.device)
    if nf.flows.is_positive(parts(flow)[0].domain) or nf.flows.is_positive(getattr(flow, "codomain", None)):
        data = data.abs()
    model = nf.transformed(flow) if not nf.flows.is_positive(parts(flow)[0].domain) else None
    if model is None:
        return flow
    optimizer = torch.optim.Adam(params, lr=0.05)
    was_training = flow.training
    flow.train()
    for _ in range(steps):
        loss = -model.log_prob(data).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    flow.train(was_training)
    with torch.no_grad():
        assert all(torch.isfinite(p).all() for p in params), "training moved a parameter to a non-finite value"
    return flow


def inverse_with_parameters(layer_class, dim: int, names):
    """``f(x, *values)``: the density direction of a fresh float64 ``layer_class(dim)`` whose parameters
    ``names`` are replaced by ``values``, for ``torch.autograd.gradcheck`` over inputs and parameters."""

    def inverse(x, *values):
        fresh = layer_class(dim).double()
        for name, value in zip(names, values):
            delattr(fresh, name)
            setattr(fresh, name, value)
        return fresh._inverse_with_ladj(x)

    return inverse


def latent_dim(flow, dim: int) -> int:
    """Size of the forward input (the latent side) for data of size ``dim``."""
    return flow.inverse_shape(torch.Size([dim]))[-1]


def parts(flow) -> list:
    """The layers of a flow (a single layer is its own only part)."""
    return list(flow.parts) if isinstance(flow, nf.Flow) else [flow]
