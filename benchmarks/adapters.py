"""One interface over pyro_nf, Pyro's built-in transforms, zuko, nflows and normflows.

``build(library, arch, dim)`` returns a :class:`Model` with the same four calls for every library:

* ``log_prob(x)``: density of fresh data, shape ``(n,)``;
* ``sample(n)``: ``n`` samples without gradients;
* ``sample_and_log_prob(n)``: reparameterised samples and their log-density (the reverse-KL / guide step);
* ``parameters()``: everything an optimiser should train.

Architectures are matched across libraries (see ``ARCHITECTURES`` and ``architecture_table``): the same
number of layers, conditioner hidden sizes, bins and spline bound; each library keeps its own
parameterisation of scales and its own initialisation. Where a library lacks an architecture or a
direction, ``build`` raises / ``unavailable`` returns :class:`NotAvailable` with the reason.

Convention reminder: pyro_nf, Pyro and normflows call the sampling direction (z -> x) "forward";
zuko and nflows call the density direction (x -> z) "forward". The adapters only wire each library
the way its own documentation does; the one-pass direction is stated in ``architecture_table``.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

LIBRARIES = ("pyro_nf", "pyro", "zuko", "nflows", "normflows")
ARCHS = ("realnvp", "maf", "iaf", "nsf_coupling", "nsf_autoregressive", "planar")
DENSITY_ARCHS = ("realnvp", "maf", "nsf_coupling", "nsf_autoregressive")
# the training step of each architecture: maximum likelihood on data, or the reverse-KL (guide) step
TRAIN_KIND = {arch: "density" for arch in DENSITY_ARCHS} | {"iaf": "reverse_kl", "planar": "reverse_kl"}


def made_width(dim: int) -> int:
    """MADE hidden width of pyro_nf's autoregressive defaults: ``max(64, 2 D)``."""
    return max(64, 2 * dim)


ARCHITECTURES = {
    "realnvp": dict(layers=8, hidden=lambda d: (64, 64)),
    "maf": dict(layers=5, hidden=lambda d: (made_width(d),) * 2),
    "iaf": dict(layers=5, hidden=lambda d: (made_width(d),) * 2),
    "nsf_coupling": dict(layers=4, hidden=lambda d: (64, 64), bins=8, bound=3.0),
    "nsf_autoregressive": dict(layers=3, hidden=lambda d: (made_width(d),) * 2, bins=8, bound=3.0),
    "planar": dict(layers=16, hidden=lambda d: ()),
}


class NotAvailable(Exception):
    """A library lacks an architecture or a direction; the message says why."""


def version(library: str) -> str:
    name = {"pyro": "pyro-ppl", "pyro_nf": "pyro_nf"}.get(library, library)
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


_MODULES = {
    "pyro_nf": ("pyro_nf",),
    "pyro": ("pyro.distributions", "pyro.distributions.transforms", "pyro.nn"),
    "zuko": ("zuko.flows", "zuko.transforms", "zuko.distributions"),
    "nflows": ("nflows.transforms", "nflows.distributions", "nflows.flows"),
    "normflows": ("normflows", "normflows.flows.neural_spline.autoregressive",
                  "normflows.flows.neural_spline.coupling"),
}


def import_error(library: str) -> str | None:
    """``None`` when every module the adapter of ``library`` uses imports, else the reason it cannot be
    benchmarked (an uninstalled peer is skipped with this reason, not fatal)."""
    for module in _MODULES[library]:
        try:
            importlib.import_module(module)
        except Exception as error:  # noqa: BLE001 - any import failure means: skip with the reason
            return f"cannot import {module}: {type(error).__name__}: {error}"
    return None


# ----------------------------------------------------------------------------- what is missing where
_NO_ARCH = {
    ("zuko", "planar"): "zuko has no planar layer",
    ("nflows", "planar"): "nflows has no planar layer",
}
_NO_OP = {
    ("pyro", "planar", "log_prob"): "Pyro's Planar has no inverse: log_prob works only on its own cached samples",
    ("normflows", "planar", "log_prob"): "normflows' tanh Planar has no inverse (NotImplementedError)",
}


def unavailable(library: str, arch: str, op: str | None = None) -> str | None:
    """Why ``library`` cannot run ``arch`` (or its operation ``op``), or ``None``."""
    reason = _NO_ARCH.get((library, arch))
    if reason is None and op is not None:
        if op == "train" and TRAIN_KIND[arch] == "density":
            op = "log_prob"
        reason = _NO_OP.get((library, arch, op))
    return reason


# ----------------------------------------------------------------------------- the common model
@dataclass
class Model:
    library: str
    arch: str
    dim: int
    module: nn.Module  # owns every parameter
    _log_prob: object
    _sample: object
    _sample_and_log_prob: object

    def parameters(self):
        return self.module.parameters()

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        reason = unavailable(self.library, self.arch, "log_prob")
        if reason:
            raise NotAvailable(reason)
        return self._log_prob(x)

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        return self._sample(n)

    def sample_and_log_prob(self, n: int):
        return self._sample_and_log_prob(n)


class ContextMLP(nn.Module):
    """Plain ReLU MLP called as ``net(x, context=None)`` (the conditioner signature nflows and
    normflows coupling layers expect)."""

    def __init__(self, sizes, zero_last: bool = False):
        super().__init__()
        layers = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            if i:
                layers.append(nn.ReLU())
            layers.append(nn.Linear(a, b))
        if zero_last:
            nn.init.zeros_(layers[-1].weight)
            nn.init.zeros_(layers[-1].bias)
        self.net = nn.Sequential(*layers)
        # nflows and normflows scale spline logits by 1/sqrt(hidden_features) when the net declares it
        self.hidden_features = sizes[1]

    def forward(self, x, context=None):
        return self.net(x)


def half_mask(dim: int, flip: bool) -> torch.Tensor:
    """``True`` on the coordinates a coupling layer transforms: the second half, or the first when flipped
    (pyro_nf's ``coupling_mask(dim, "half", flip)``)."""
    mask = torch.arange(dim) >= dim // 2
    return ~mask if flip else mask


def orders(dim: int, layers: int):
    """Natural order on even layers, reversed on odd ones (MAF's choice, pyro_nf's and zuko's default)."""
    return [torch.arange(dim).flip(0) if i % 2 else torch.arange(dim) for i in range(layers)]


# ----------------------------------------------------------------------------- pyro_nf
def _build_pyro_nf(arch, dim, cfg, device):
    import pyro_nf as nf

    options = {"num_layers": cfg["layers"]}
    if arch != "planar":
        options["hidden_dims"] = cfg["hidden"](dim)
    if arch in ("nsf_coupling", "nsf_autoregressive"):
        options.update(count_bins=cfg["bins"], bound=cfg["bound"])
    flow = nf.build(arch, dim, **options).to(device)
    model = nf.transformed(flow)  # its base follows the flow's device

    # the guide's step through the one-walk call, as zuko, nflows and normflows are measured; the Pyro-style
    # rsample + log_prob through the record (what SVI's traces do) is measured by record_overhead.py
    return flow, model.log_prob, lambda n: model.sample((n,)), lambda n: model.rsample_and_log_prob((n,))


# ----------------------------------------------------------------------------- Pyro's built-ins
def _build_pyro(arch, dim, cfg, device):
    import pyro.distributions as dist
    import pyro.distributions.transforms as T
    from pyro.nn import AutoRegressiveNN, DenseNN

    layers, hidden = cfg["layers"], list(cfg["hidden"](dim))
    modules, transforms = [], []
    # swaps the two halves, so consecutive couplings transform every coordinate
    swap = torch.cat([torch.arange(dim // 2, dim), torch.arange(dim // 2)]).to(device)
    if arch == "realnvp":
        for i in range(layers):
            layer = T.affine_coupling(dim, hidden_dims=hidden, split_dim=dim // 2)
            modules.append(layer)
            transforms.append(layer)
            if i < layers - 1:
                transforms.append(T.Permute(swap))
    elif arch == "nsf_coupling":
        k, n_b = cfg["bins"], dim - dim // 2
        for i in range(layers):
            net = DenseNN(dim // 2, hidden, param_dims=[n_b * k, n_b * k, n_b * (k - 1)])
            layer = T.SplineCoupling(dim, dim // 2, net, count_bins=k, bound=cfg["bound"], order="quadratic",
                                     identity=True)
            modules.append(layer)
            transforms.append(layer)
            if i < layers - 1:
                transforms.append(T.Permute(swap))
    elif arch in ("maf", "iaf"):
        for order in orders(dim, layers):
            layer = T.AffineAutoregressive(AutoRegressiveNN(dim, hidden, permutation=order))
            modules.append(layer)
            # Pyro's AffineAutoregressive samples in one pass (IAF); its .inv is the MAF layer
            transforms.append(layer if arch == "iaf" else layer.inv)
    elif arch == "nsf_autoregressive":
        k = cfg["bins"]
        for order in orders(dim, layers):
            net = AutoRegressiveNN(dim, hidden, param_dims=[k, k, k - 1], permutation=order)
            layer = T.SplineAutoregressive(dim, net, count_bins=k, bound=cfg["bound"], order="quadratic")
            modules.append(layer)
            transforms.append(layer.inv)  # MAF direction: density in one pass
    elif arch == "planar":
        for _ in range(layers):
            layer = T.Planar(dim)
            modules.append(layer)
            transforms.append(layer)
    module = nn.ModuleList(modules).to(device)
    loc = torch.zeros(dim, device=device)
    distribution = dist.TransformedDistribution(dist.Normal(loc, torch.ones_like(loc)).to_event(1), transforms)

    def model():
        return distribution

    def sample_and_log_prob(n):
        d = model()
        x = d.rsample((n,))
        return x, d.log_prob(x)

    return module, lambda x: model().log_prob(x), lambda n: model().sample((n,)), sample_and_log_prob


# ----------------------------------------------------------------------------- zuko
def _build_zuko(arch, dim, cfg, device):
    from zuko.distributions import DiagNormal
    from zuko.flows import Flow, GeneralCouplingTransform, MaskedAutoregressiveTransform, UnconditionalDistribution
    from zuko.transforms import MonotonicRQSTransform

    layers, hidden = cfg["layers"], tuple(cfg["hidden"](dim))
    spline = {}
    if "bins" in cfg:
        k = cfg["bins"]
        spline = dict(univariate=partial(MonotonicRQSTransform, bound=cfg["bound"]), shapes=[(k,), (k,), (k - 1,)])
    if arch in ("realnvp", "nsf_coupling"):
        # zuko's mask marks the conditioning (identity) coordinates
        transforms = [GeneralCouplingTransform(dim, mask=~half_mask(dim, i % 2 == 1), hidden_features=hidden,
                                               **spline) for i in range(layers)]
    elif arch in ("maf", "nsf_autoregressive", "iaf"):
        transforms = [MaskedAutoregressiveTransform(dim, order=order, hidden_features=hidden, **spline)
                      for order in orders(dim, layers)]
        if arch == "iaf":  # zuko's forward is the density direction; its inverse samples in one pass
            transforms = [t.inv for t in transforms]
    base = UnconditionalDistribution(DiagNormal, loc=torch.zeros(dim), scale=torch.ones(dim), buffer=True)
    flow = Flow(transforms, base).to(device)
    return (flow, lambda x: flow().log_prob(x), lambda n: flow().sample((n,)),
            lambda n: flow().rsample_and_log_prob((n,)))


# ----------------------------------------------------------------------------- nflows
def _build_nflows(arch, dim, cfg, device):
    from nflows import transforms as NT
    from nflows.distributions import StandardNormal
    from nflows.flows import Flow

    layers, hidden = cfg["layers"], cfg["hidden"](dim)
    parts = []
    if arch in ("realnvp", "nsf_coupling"):
        def make_net(n_in, n_out):
            return ContextMLP((n_in, *hidden, n_out))

        for i in range(layers):
            mask = half_mask(dim, i % 2 == 1).int()  # nflows: > 0 marks transformed coordinates
            if arch == "realnvp":
                parts.append(NT.AffineCouplingTransform(mask, make_net))
            else:
                parts.append(NT.PiecewiseRationalQuadraticCouplingTransform(
                    mask, make_net, num_bins=cfg["bins"], tails="linear", tail_bound=cfg["bound"]))
    else:
        width = hidden[0]
        for i in range(layers):
            if arch in ("maf", "iaf"):
                layer = NT.MaskedAffineAutoregressiveTransform(dim, width, num_blocks=1, use_residual_blocks=False)
                if arch == "iaf":  # nflows' forward is the density direction
                    layer = NT.InverseTransform(layer)
            else:
                layer = NT.MaskedPiecewiseRationalQuadraticAutoregressiveTransform(
                    dim, width, num_bins=cfg["bins"], tails="linear", tail_bound=cfg["bound"], num_blocks=1,
                    use_residual_blocks=False)
            parts.append(layer)
            if i < layers - 1:
                parts.append(NT.ReversePermutation(dim))  # nflows' MADE has the natural order only
    flow = Flow(NT.CompositeTransform(parts), StandardNormal([dim])).to(device)
    return flow, flow.log_prob, flow.sample, flow.sample_and_log_prob


# ----------------------------------------------------------------------------- normflows
def _build_normflows(arch, dim, cfg, device):
    import normflows as nfl
    from normflows.flows.neural_spline.autoregressive import MaskedPiecewiseRationalQuadraticAutoregressive
    from normflows.flows.neural_spline.coupling import PiecewiseRationalQuadraticCoupling

    class Flip(nfl.flows.Flow):
        """Reverses the coordinates (normflows' MADE has the natural order only)."""

        def forward(self, z):
            return z.flip(-1), z.new_zeros(z.shape[0])

        inverse = forward

    class DensityForward(nfl.flows.Flow):
        """normflows' forward is the sampling direction: wrap a layer written in the nflows convention
        (forward = density direction) as its own wrappers do."""

        def __init__(self, layer):
            super().__init__()
            self.layer = layer

        def forward(self, z):
            x, log_det = self.layer.inverse(z)
            return x, log_det.view(-1)

        def inverse(self, x):
            z, log_det = self.layer(x)
            return z, log_det.view(-1)

    layers, hidden = cfg["layers"], cfg["hidden"](dim)
    flows = []
    if arch == "realnvp":
        for i in range(layers):
            net = nfl.nets.MLP([dim // 2, *hidden, 2 * (dim - dim // 2)], init_zeros=True)
            flows.append(nfl.flows.AffineCouplingBlock(net, scale_map="exp",
                                                       split_mode="channel" if i % 2 == 0 else "channel_inv"))
    elif arch == "nsf_coupling":
        def make_net(n_in, n_out):
            return ContextMLP((n_in, *hidden, n_out), zero_last=True)

        for i in range(layers):
            mask = half_mask(dim, i % 2 == 1).int()
            flows.append(DensityForward(PiecewiseRationalQuadraticCoupling(
                mask, make_net, num_bins=cfg["bins"], tails="linear", tail_bound=cfg["bound"],
                apply_unconditional_transform=False)))
    elif arch in ("maf", "iaf", "nsf_autoregressive"):
        width = hidden[0]
        for i in range(layers):
            if arch == "nsf_autoregressive":
                flows.append(DensityForward(MaskedPiecewiseRationalQuadraticAutoregressive(
                    dim, width, num_bins=cfg["bins"], tails="linear", tail_bound=cfg["bound"], num_blocks=1,
                    use_residual_blocks=False, activation=nn.ReLU())))
            else:
                layer = nfl.flows.MaskedAffineAutoregressive(dim, width, num_blocks=1, use_residual_blocks=False)
                # normflows' MaskedAffineAutoregressive samples in one pass (an IAF in its convention)
                flows.append(layer if arch == "iaf" else nfl.flows.Reverse(layer))
            if i < layers - 1:
                flows.append(Flip())
    elif arch == "planar":
        flows = [nfl.flows.Planar((dim,)) for _ in range(layers)]
    model = nfl.NormalizingFlow(nfl.distributions.DiagGaussian(dim, trainable=False), flows).to(device)
    return model, model.log_prob, lambda n: model.sample(n)[0], model.sample


_BUILDERS = {
    "pyro_nf": _build_pyro_nf,
    "pyro": _build_pyro,
    "zuko": _build_zuko,
    "nflows": _build_nflows,
    "normflows": _build_normflows,
}


def build(library: str, arch: str, dim: int, device="cpu", seed: int = 0) -> Model:
    """The ``arch`` flow of ``library`` on ``dim`` coordinates (float32, on ``device``)."""
    reason = unavailable(library, arch)
    if reason:
        raise NotAvailable(reason)
    torch.manual_seed(seed)
    module, log_prob, sample, sample_and_log_prob = _BUILDERS[library](arch, dim, ARCHITECTURES[arch],
                                                                        torch.device(device))
    return Model(library, arch, dim, module, log_prob, sample, sample_and_log_prob)


# ----------------------------------------------------------------------------- documentation
_ARCH_NOTES = {
    "realnvp": {
        "pyro_nf": "`AffineCoupling`, half masks alternating; soft-clamped log-scale",
        "pyro": "`affine_coupling` + `Permute` (half swap) between layers; clamped log-scale",
        "zuko": "`GeneralCouplingTransform` with the same half masks; bounded log-scale",
        "nflows": "`AffineCouplingTransform`, same masks; scale = sigmoid(s + 2) + 1e-3",
        "normflows": "`AffineCouplingBlock` (channel / channel_inv split); scale = exp(s)",
    },
    "maf": {
        "pyro_nf": "`AffineAutoregressive(direction='maf')`, MADE orders natural/reversed",
        "pyro": "`AffineAutoregressive(...).inv`, `AutoRegressiveNN` orders natural/reversed",
        "zuko": "`MAF` (`MaskedAutoregressiveTransform`, orders natural/reversed)",
        "nflows": "`MaskedAffineAutoregressiveTransform` + `ReversePermutation` between layers",
        "normflows": "`Reverse(MaskedAffineAutoregressive)` + a flip between layers",
    },
    "iaf": {
        "pyro_nf": "`AffineAutoregressive(direction='iaf')`",
        "pyro": "`AffineAutoregressive` (its forward is IAF)",
        "zuko": "`MaskedAutoregressiveTransform(...).inv`",
        "nflows": "`InverseTransform(MaskedAffineAutoregressiveTransform)` + `ReversePermutation`",
        "normflows": "`MaskedAffineAutoregressive` (its forward is IAF) + a flip",
    },
    "nsf_coupling": {
        "pyro_nf": "`SplineCoupling`, half masks alternating",
        "pyro": "`SplineCoupling(order='quadratic', identity=True)` + `Permute`",
        "zuko": "`GeneralCouplingTransform` with `MonotonicRQSTransform(bound=3)`",
        "nflows": "`PiecewiseRationalQuadraticCouplingTransform(tails='linear')`",
        "normflows": "`PiecewiseRationalQuadraticCoupling(tails='linear')`, density direction one pass",
    },
    "nsf_autoregressive": {
        "pyro_nf": "`SplineAutoregressive(direction='maf')`",
        "pyro": "`SplineAutoregressive(order='quadratic').inv`",
        "zuko": "`MAF` with `MonotonicRQSTransform(bound=3)`",
        "nflows": "`MaskedPiecewiseRationalQuadraticAutoregressiveTransform` + `ReversePermutation`",
        "normflows": "`MaskedPiecewiseRationalQuadraticAutoregressive`, density direction one pass + a flip",
    },
    "planar": {
        "pyro_nf": "`Planar` (numerical inverse)",
        "pyro": "`Planar` (no inverse)",
        "zuko": "n/a",
        "nflows": "n/a",
        "normflows": "`Planar` (tanh; no inverse)",
    },
}


def architecture_table() -> str:
    """Markdown table of the matched architectures."""
    rows = [
        "| architecture | layers | conditioner hidden sizes | bins / bound | one-pass direction | "
        + " | ".join(LIBRARIES) + " |",
        "| --- | --- | --- | --- | --- | " + " | ".join("---" for _ in LIBRARIES) + " |",
    ]
    one_pass = {
        "realnvp": "both", "maf": "density (sampling: D passes)", "iaf": "sampling (density: D passes)",
        "nsf_coupling": "both", "nsf_autoregressive": "density (sampling: D passes)",
        "planar": "sampling (pyro_nf's inverse: 1-D Newton)",
    }
    hidden = {
        "realnvp": "MLP (64, 64)", "nsf_coupling": "MLP (64, 64)", "planar": "none",
        "maf": "MADE (max(64, 2D),) x 2", "iaf": "MADE (max(64, 2D),) x 2",
        "nsf_autoregressive": "MADE (max(64, 2D),) x 2",
    }
    for arch in ARCHS:
        cfg = ARCHITECTURES[arch]
        bins = f"{cfg['bins']} / {cfg['bound']:g}" if "bins" in cfg else "-"
        notes = " | ".join(_ARCH_NOTES[arch][lib] for lib in LIBRARIES)
        rows.append(f"| {arch} | {cfg['layers']} | {hidden[arch]} | {bins} | {one_pass[arch]} | {notes} |")
    return "\n".join(rows)
