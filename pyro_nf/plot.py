"""Pictures of flows with matplotlib: density heat maps, samples, data against model."""

from __future__ import annotations

import matplotlib.pyplot as plt
import torch


def _grid(bounds, resolution, like):
    (x0, x1), (y0, y1) = bounds
    xs = torch.linspace(x0, x1, resolution, dtype=like.dtype, device=like.device)
    ys = torch.linspace(y0, y1, resolution, dtype=like.dtype, device=like.device)
    gx, gy = torch.meshgrid(xs, ys, indexing="xy")
    return gx, gy, torch.stack([gx, gy], -1)


def _like(distribution):
    for t in getattr(distribution, "transforms", []):
        for p in getattr(t, "parameters", lambda: [])():
            return p
    return torch.zeros(())


@torch.no_grad()
def density(distribution, ax=None, bounds=((-3, 3), (-3, 3)), resolution=200, cmap="viridis", title=None):
    """Heat map of ``exp(log_prob)`` of a 2D distribution on a grid."""
    ax = ax or plt.gca()
    gx, gy, points = _grid(bounds, resolution, _like(distribution))
    for t in getattr(distribution, "transforms", []):
        if isinstance(t, torch.nn.Module):
            t.eval()
    values = distribution.log_prob(points.reshape(-1, 2)).reshape(gx.shape).exp()
    ax.pcolormesh(gx.cpu().numpy(), gy.cpu().numpy(), values.cpu().numpy(), cmap=cmap, shading="auto")
    ax.set_aspect("equal")
    ax.set_title(title or "density")
    return ax


def samples(x: torch.Tensor, ax=None, bounds=None, title=None, color="C0", size=2):
    """Scatter plot of 2D points."""
    ax = ax or plt.gca()
    x = x.detach().cpu()
    ax.scatter(x[:, 0].numpy(), x[:, 1].numpy(), s=size, c=color, alpha=0.6)
    if bounds is not None:
        ax.set_xlim(*bounds[0])
        ax.set_ylim(*bounds[1])
    ax.set_aspect("equal")
    ax.set_title(title or "samples")
    return ax


@torch.no_grad()
def data_vs_model(data: torch.Tensor, distribution, path=None, bounds=None, num_samples=2000, title=None):
    """Three panels: the data, samples from the model, the model's density. Saves a PNG to
    ``path`` when given and returns the figure."""
    if bounds is None:
        lo, hi = data.min(0).values.cpu(), data.max(0).values.cpu()
        pad = 0.25 * (hi - lo)
        bounds = ((float(lo[0] - pad[0]), float(hi[0] + pad[0])), (float(lo[1] - pad[1]), float(hi[1] + pad[1])))
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
    samples(data, axes[0], bounds, "data")
    samples(distribution.sample((num_samples,)), axes[1], bounds, "model samples", color="C3")
    density(distribution, axes[2], bounds, title="model density")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig
