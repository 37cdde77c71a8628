"""Pictures of flows with matplotlib: density heat maps, samples, data against model, target energies,
samples after every layer, training curves.

Every function returns its matplotlib figure or axes and writes a PNG only when given ``path``. The
backend is left to the caller (scripts without a display: ``matplotlib.use("Agg")`` before importing
pyplot, as ``python -m pyro_nf`` does).
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import torch

from .flows import log_prob_estimate
from .infer.common import eval_mode

Bounds = tuple[tuple[float, float], tuple[float, float]]


def _bounds(bounds, default=None):
    """A box ``((x0, x1), (y0, y1))`` from a box, or from anything with a ``bounds`` attribute
    (a target of :mod:`pyro_nf.targets`)."""
    if bounds is None:
        return default
    if hasattr(bounds, "bounds"):
        bounds = bounds.bounds
    (x0, x1), (y0, y1) = bounds
    return (float(x0), float(x1)), (float(y0), float(y1))


def _save(fig, path, dpi=110):
    if path is not None:
        fig.savefig(path, dpi=dpi)


def _grid(bounds, resolution, like):
    (x0, x1), (y0, y1) = bounds
    xs = torch.linspace(x0, x1, resolution, dtype=like.dtype, device=like.device)
    ys = torch.linspace(y0, y1, resolution, dtype=like.dtype, device=like.device)
    gx, gy = torch.meshgrid(xs, ys, indexing="xy")
    return gx, gy, torch.stack([gx, gy], -1)


def _first_parameter(modules):
    for t in modules:
        for p in getattr(t, "parameters", lambda: [])():
            return p
    return torch.zeros(())


def _like(distribution):
    return _first_parameter(getattr(distribution, "transforms", []))


def _modules(distribution):
    return [t for t in getattr(distribution, "transforms", []) if isinstance(t, torch.nn.Module)]


def _heat(ax, gx, gy, values, cmap, title, bounds):
    ax.pcolormesh(gx.cpu().numpy(), gy.cpu().numpy(), values.cpu().numpy(), cmap=cmap, shading="auto")
    ax.set_xlim(*bounds[0])
    ax.set_ylim(*bounds[1])
    ax.set_aspect("equal")
    ax.set_title(title)
    return ax


@torch.no_grad()
def density(distribution, ax=None, bounds=((-3, 3), (-3, 3)), resolution=200, cmap="viridis", title=None,
            path=None, num_paths=1):
    """Heat map of ``exp(log_prob)`` of a 2D distribution on a grid. ``bounds`` is a box
    ``((x0, x1), (y0, y1))`` or a target (its ``bounds`` are used). Modules are evaluated in eval mode
    and left as they were.

    For models whose ``log_prob`` draws a random path (``Augment``, stochastic layers) each grid point
    gets one path, a noisy picture; ``num_paths=K`` shows the mean of ``exp(log_prob)`` over ``K``
    paths instead (:func:`pyro_nf.flows.log_prob_estimate`, ``K`` times the cost)."""
    ax = ax or plt.gca()
    bounds = _bounds(bounds, ((-3.0, 3.0), (-3.0, 3.0)))
    gx, gy, points = _grid(bounds, resolution, _like(distribution))
    with eval_mode(_modules(distribution)):
        flat = points.reshape(-1, 2)
        if num_paths == 1:
            log_p = distribution.log_prob(flat)
        else:
            chunk = max(1, 2**16 // num_paths)
            log_p = torch.cat([log_prob_estimate(distribution, part, num_paths) for part in flat.split(chunk)])
        values = log_p.reshape(gx.shape).exp()
    _heat(ax, gx, gy, values, cmap, title or "density", bounds)
    _save(ax.figure, path)
    return ax


@torch.no_grad()
def target_density(target, ax=None, bounds=None, resolution=300, cmap="viridis", title=None, path=None):
    """Heat map of the unnormalised density ``exp(-U)`` of a 2D target (shown up to a constant:
    ``exp(-U - max(-U))`` on the grid, so large energies cannot overflow), on ``target.bounds`` unless
    ``bounds`` is given. Returns the axes."""
    ax = ax or plt.gca()
    bounds = _bounds(bounds, _bounds(target))
    gx, gy, points = _grid(bounds, resolution, torch.zeros((), dtype=torch.float64))
    log_p = target.log_prob(points.reshape(-1, 2)).reshape(gx.shape)
    title = title or f"{getattr(target, 'name', 'target')}: exp(-U)"
    _heat(ax, gx, gy, torch.exp(log_p - log_p.max()), cmap, title, bounds)
    _save(ax.figure, path)
    return ax


def samples(x: torch.Tensor, ax=None, bounds=None, title=None, color="C0", size=2, path=None):
    """Scatter plot of 2D points; ``bounds`` (a box or a target) sets the limits."""
    ax = ax or plt.gca()
    x = x.detach().cpu()
    ax.scatter(x[:, 0].numpy(), x[:, 1].numpy(), s=size, c=color, alpha=0.6)
    bounds = _bounds(bounds)
    if bounds is not None:
        ax.set_xlim(*bounds[0])
        ax.set_ylim(*bounds[1])
    ax.set_aspect("equal")
    ax.set_title(title or "samples")
    _save(ax.figure, path)
    return ax


@torch.no_grad()
def data_vs_model(data: torch.Tensor, distribution, path=None, bounds=None, num_samples=2000, title=None):
    """Data against the model. In 2D, three panels: the data, samples from the model, the model's
    density; in any other dimension, :func:`corner` of the data against model samples. Saves a PNG to
    ``path`` when given and returns the figure."""
    if data.dim() != 2:
        raise ValueError(f"data_vs_model: expected data of shape (N, D), got {tuple(data.shape)}")
    if data.shape[-1] != 2:
        return corner(data, distribution.sample((num_samples,)), path=path, title=title)
    bounds = _bounds(bounds)
    if bounds is None:
        lo, hi = data.min(0).values.cpu(), data.max(0).values.cpu()
        pad = 0.25 * (hi - lo)
        bounds = ((float(lo[0] - pad[0]), float(hi[0] + pad[0])), (float(lo[1] - pad[1]), float(hi[1] + pad[1])))
    return _reference_samples_density(lambda ax: samples(data, ax, bounds, "data"), distribution, bounds,
                                      num_samples, "model", title, path)


@torch.no_grad()
def corner(data: torch.Tensor, model_samples: torch.Tensor, path=None, title=None, max_dims: int = 6,
           labels=None, size: float = 2.0):
    """Pairwise marginals of data (blue) against model samples (red): histograms of each coordinate on the
    diagonal, scatter plots of each pair below it. Only the first ``max_dims`` coordinates are drawn (a
    note says so). Works for any ``D >= 1``; returns the figure and saves a PNG to ``path`` when given."""
    data, model_samples = data.detach().cpu().double(), model_samples.detach().cpu().double()
    if data.dim() != 2 or model_samples.dim() != 2 or data.shape[1] != model_samples.shape[1]:
        raise ValueError(f"corner: expected data and samples of shapes (N, D) and (M, D), got {tuple(data.shape)} "
                         f"and {tuple(model_samples.shape)}")
    total = data.shape[1]
    d = min(total, max_dims)
    labels = list(labels) if labels is not None else [f"x{i}" for i in range(total)]
    fig, axes = plt.subplots(d, d, figsize=(2.4 * d + 0.6, 2.4 * d + 0.4), squeeze=False)
    both = torch.cat([data, model_samples])
    lo, hi = both.quantile(0.005, dim=0), both.quantile(0.995, dim=0)
    pad = 0.1 * (hi - lo).clamp_min(1e-12)
    lo, hi = lo - pad, hi + pad
    for i in range(d):
        for j in range(d):
            ax = axes[i][j]
            if j > i:
                ax.axis("off")
                continue
            if i == j:
                edges = torch.linspace(float(lo[i]), float(hi[i]), 41).numpy()
                ax.hist(data[:, i].numpy(), bins=edges, density=True, alpha=0.5, color="C0", label="data")
                ax.hist(model_samples[:, i].numpy(), bins=edges, density=True, alpha=0.5, color="C3", label="model")
                ax.set_yticks([])
            else:
                ax.scatter(data[:, j].numpy(), data[:, i].numpy(), s=size, c="C0", alpha=0.4)
                ax.scatter(model_samples[:, j].numpy(), model_samples[:, i].numpy(), s=size, c="C3", alpha=0.4)
                ax.set_ylim(float(lo[i]), float(hi[i]))
            ax.set_xlim(float(lo[j]), float(hi[j]))
            if i == d - 1:
                ax.set_xlabel(labels[j])
            if j == 0 and i > 0:
                ax.set_ylabel(labels[i])
    axes[0][0].legend(loc="upper right", fontsize=8)
    heading = title or "data (blue) against model samples (red)"
    if total > d:
        heading += f"; first {d} of {total} coordinates"
    fig.suptitle(heading)
    fig.tight_layout()
    _save(fig, path)
    return fig


def _reference_samples_density(draw_reference, distribution, bounds, num_samples, label, title, path,
                               resolution=200):
    """One row of three panels: a reference (drawn by ``draw_reference(ax)``), the distribution's
    samples and its density heat map."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
    draw_reference(axes[0])
    samples(distribution.sample((num_samples,)), axes[1], bounds, f"{label} samples", color="C3")
    density(distribution, axes[2], bounds, resolution=resolution, title=f"{label} density")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)
    return fig


@torch.no_grad()
def target_vs_model(target, distribution, path=None, bounds=None, num_samples=2000, title=None, resolution=200):
    """Three panels: the target's ``exp(-U)``, samples from the model, the model's density (both heat maps
    on ``resolution`` points per axis), all on the target's box (or ``bounds``). Saves a PNG to ``path``
    when given and returns the figure."""
    bounds = _bounds(bounds, _bounds(target))
    return _reference_samples_density(
        lambda ax: target_density(target, ax, bounds, resolution=resolution, title="target exp(-U)"),
        distribution, bounds, num_samples, "flow", title, path, resolution)


@torch.no_grad()
def samples_per_layer(flow, num_samples=1000, base=None, path=None, bounds=None, max_panels=16, columns=6,
                      size=2):
    """Push base samples through ``flow.parts`` one layer at a time and scatter them after every layer
    (the picture of seed 002): panel 0 is the base sample, panel ``k`` the points after layer ``k``.

    ``flow`` is a flow (its ``parts``) or a ``TransformedDistribution`` (its transforms, a flow among them
    expanded into its parts; its base distribution is then the default ``base``). ``base`` is a
    distribution over the flow's input (default: standard normal of ``flow.base_dim()`` on the flow's
    device and dtype). Flows with more than ``max_panels - 1`` layers show an evenly
    spaced selection, the last layer always included. All panels share one box: ``bounds`` (a box or a
    target), else the central 99% of all the points, padded. Points of more than two dimensions are shown
    by their first two coordinates. Layers run in eval mode (restored afterwards). Returns the figure.
    """
    if isinstance(flow, torch.distributions.TransformedDistribution):
        base = flow.base_dist if base is None else base
        parts = [p for t in flow.transforms for p in getattr(t, "parts", [t])]
    else:
        parts = list(getattr(flow, "parts", [flow]))
    like = _first_parameter(parts)
    if base is None:
        size_in = flow.base_dim() if hasattr(flow, "base_dim") else parts[0].input_dim
        zeros = torch.zeros(size_in, device=like.device, dtype=like.dtype)
        base = torch.distributions.Independent(torch.distributions.Normal(zeros, torch.ones_like(zeros)), 1)
    z = base.sample((num_samples,))
    stages = [(0, "base", z)]
    modes = [getattr(p, "training", None) for p in parts]
    for p in parts:
        if isinstance(p, torch.nn.Module):
            p.eval()
    try:
        for k, part in enumerate(parts, start=1):
            z = part(z)
            stages.append((k, type(part).__name__, z))
    finally:
        for p, mode in zip(parts, modes):
            if isinstance(p, torch.nn.Module):
                p.train(mode)
    if len(stages) > max_panels:
        picks = sorted({round(i * (len(stages) - 1) / (max_panels - 1)) for i in range(max_panels)})
        stages = [stages[i] for i in picks]
    cols = min(columns, len(stages))
    rows = math.ceil(len(stages) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.6 * rows), squeeze=False)
    box = _bounds(bounds)
    if box is None:  # one box for every panel: the central 99% of the points of every stage, padded
        points = torch.cat([x[..., :2].reshape(-1, 2).to(torch.float64) for _, _, x in stages])
        points = points[torch.isfinite(points).all(-1)].cpu()
        lo, hi = torch.quantile(points, 0.005, dim=0), torch.quantile(points, 0.995, dim=0)
        pad = 0.1 * (hi - lo).clamp(min=1e-6)
        box = tuple((float(a), float(b)) for a, b in zip(lo - pad, hi + pad))
    for ax, (k, name, x) in zip(axes.flat, stages):
        samples(x[..., :2].reshape(-1, 2), ax, box, title=f"{k}: {name}" if k else "base", color=f"C{k % 10}",
                size=size)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[len(stages):]:
        ax.set_visible(False)
    fig.tight_layout()
    _save(fig, path)
    return fig


def _curves(history):
    """``[(name, steps, values)]`` of what a history recorded."""
    if history.kind == "target":  # one loss per step
        steps, loss = list(history.steps), list(history.loss)
        window = max(1, len(loss) // 100)
        if window > 1:
            t = torch.tensor(loss, dtype=torch.float64)
            smooth = t.unfold(0, window, window).mean(-1)
            steps = steps[window - 1::window][: smooth.numel()]
            loss = smooth.tolist()
        return [("loss (negative ELBO)", steps, loss)]
    curves = [("train NLL", list(history.steps), list(history.loss))]
    if getattr(history, "val_nll", None):
        curves.append(("validation NLL", list(history.steps)[: len(history.val_nll)], list(history.val_nll)))
    return curves


def training_curves(histories, labels=None, ax=None, path=None, title=None, reference=None):
    """Loss against step for one history or a list of them: an ``infer.History`` of a density fit (training and
    validation NLL) or of a target fit (the negative ELBO, averaged over windows of 1% of the steps).
    ``labels`` names the histories; ``reference`` draws a horizontal line (e.g. ``-log Z``, the floor of
    the negative ELBO). Returns the figure."""
    if not isinstance(histories, (list, tuple)):
        histories = [histories]
    if labels is None:
        labels = [None] * len(histories) if len(histories) == 1 else [f"fit {i}" for i in range(len(histories))]
    if len(labels) != len(histories):
        raise ValueError(f"training_curves: {len(labels)} labels for {len(histories)} histories")
    if ax is None:
        fig, ax = plt.subplots(figsize=(6.5, 4))
    else:
        fig = ax.figure
    for i, (history, label) in enumerate(zip(histories, labels)):
        for j, (name, steps, values) in enumerate(_curves(history)):
            ax.plot(steps, values, color=f"C{i % 10}", linestyle=("-", "--")[j % 2],
                    label=f"{label}: {name}" if label else name)
    if reference is not None:
        ax.axhline(reference, color="k", linewidth=0.8, linestyle=":", label=f"reference {reference:.3f}")
    ax.set_xlabel("step")
    ax.set_ylabel("nats")
    ax.legend(fontsize=8)
    ax.set_title(title or "training")
    fig.tight_layout()
    _save(fig, path)
    return fig
