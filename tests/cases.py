"""One registry of test cases, id -> factory(dim), driving the shared property suite.

A new layer or architecture is tested by adding it here (architectures are added
automatically from ``pyro_nf.flows.names()``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

import pyro_nf as nf
from pyro_nf.transforms import (
    ActNorm,
    AdditiveCoupling,
    Affine,
    AffineAutoregressive,
    AffineConstant,
    AffineCoupling,
    Autoregressive,
    BatchNorm,
    Coupling,
    InvertibleLinear,
    LeakyReLU,
    Permutation,
    Planar,
    PReLU,
    Radial,
    Shift,
    Spline,
    SplineAutoregressive,
    SplineCoupling,
    reverse,
)

HIDDEN = (16, 16)


@dataclass
class Case:
    id: str
    factory: Callable[[int], torch.nn.Module]
    min_dim: int = 1


def _layer_cases() -> list[Case]:
    return [
        Case("AffineCoupling", lambda d: AffineCoupling(d, HIDDEN), min_dim=2),
        Case("AffineCoupling-alternate", lambda d: AffineCoupling(d, HIDDEN, mask=nf.nn.coupling_mask(d, "alternate")),
             min_dim=2),
        Case("AdditiveCoupling", lambda d: AdditiveCoupling(d, HIDDEN, mask=nf.nn.coupling_mask(d, flip=True)),
             min_dim=2),
        Case("Coupling-custom-mask", lambda d: Coupling(torch.arange(d) % 2 == 0, Affine(len(range(0, d, 2))),
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
        Case("Planar", lambda d: Planar(d)),
        Case("Radial", lambda d: Radial(d)),
    ]


def _architecture_cases() -> list[Case]:
    cases = []
    for name in nf.flows.names():
        min_dim = nf.flows._get(name).min_dim
        small = (("num_layers", 2), ("hidden_dims", HIDDEN), ("count_bins", 4))
        opts = {k: v for k, v in small if k in nf.flows.options(name)}
        cases.append(Case(f"flow:{name}", lambda d, name=name, opts=opts: nf.flows.build(name, d, **opts), min_dim))
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


def make(case_id: str, dim: int, dtype=torch.float32, seed: int = 0, perturbed: bool = True):
    case = CASES[case_id]
    torch.manual_seed(seed)
    flow = case.factory(dim).to(dtype)
    if perturbed:
        perturb(flow, seed=seed)
    return flow


def parts(flow) -> list:
    """The layers of a flow (a single layer is its own only part)."""
    return list(flow.parts) if isinstance(flow, nf.Flow) else [flow]
