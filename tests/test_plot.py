"""pyro_nf.plot: every function returns its figure or axes and writes a PNG only when given a path."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import pyro_nf as nf  # noqa: E402
from pyro_nf import infer, plot, targets  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def _png(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000
    return data


def test_target_density_uses_the_target_box(tmp_path):
    target = targets.load("U1")
    ax = plot.target_density(target, resolution=60)
    assert isinstance(ax, plt.Axes) and ax.get_xlim() == pytest.approx(target.bounds[0])
    assert list(tmp_path.iterdir()) == []  # nothing written without a path
    fig, axes = plt.subplots(1, 2)
    plot.target_density(targets.load("double_well"), ax=axes[0], bounds=((-1, 1), (-2, 2)), resolution=40,
                        path=tmp_path / "t.png")
    assert axes[0].get_xlim() == pytest.approx((-1, 1))
    _png(tmp_path / "t.png")


def test_density_and_samples_take_bounds_from_a_target(tmp_path):
    target = targets.load("U2")
    model = nf.transformed(nf.build("realnvp", 2, num_layers=2, hidden_dims=(8,)))
    ax = plot.density(model, bounds=target, resolution=30, path=tmp_path / "d.png")
    assert ax.get_xlim() == pytest.approx(target.bounds[0]) and ax.get_ylim() == pytest.approx(target.bounds[1])
    _png(tmp_path / "d.png")
    ax = plot.samples(torch.randn(50, 2), ax=plt.figure().gca(), bounds=target)
    assert ax.get_xlim() == pytest.approx(target.bounds[0])


def test_target_vs_model(tmp_path):
    target = targets.load("U3")
    fig = plot.target_vs_model(target, nf.transformed(nf.build("planar", 2, num_layers=2)), num_samples=200,
                               path=tmp_path / "tm.png", title="t", resolution=40)
    assert isinstance(fig, plt.Figure) and len(fig.axes) == 3
    _png(tmp_path / "tm.png")


def test_samples_per_layer(tmp_path):
    flow = nf.build("planar", 2, num_layers=3)
    fig = plot.samples_per_layer(flow, num_samples=200)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in visible] == ["base", "1: Planar", "2: Planar", "3: Planar"]
    # the last panel holds the flow's own samples: the same points as pushing through the whole flow
    torch.manual_seed(0)
    fig = plot.samples_per_layer(flow, num_samples=100, path=tmp_path / "layers.png")
    torch.manual_seed(0)
    z = torch.randn(100, 2)
    with torch.no_grad():
        x = flow(z)
    last = [ax for ax in fig.axes if ax.get_visible()][-1]
    torch.testing.assert_close(torch.as_tensor(last.collections[0].get_offsets(), dtype=torch.float32), x)
    _png(tmp_path / "layers.png")


def test_samples_per_layer_many_layers_and_distributions():
    flow = nf.build("realnvp", 2, num_layers=30, hidden_dims=(4,))
    flow.train()
    fig = plot.samples_per_layer(nf.transformed(flow), num_samples=50, max_panels=8)
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert len(titles) == 8 and titles[0] == "base" and titles[-1] == "30: AffineCoupling"
    assert flow.training  # modes restored


def test_training_curves(tmp_path):
    flow = nf.build("planar", 2, num_layers=2)
    fit = infer.fit_density(flow, torch.randn(200, 2), steps=20, eval_every=5, progress=False, seed=0)
    vi = infer.History(kind="target", steps=list(range(1, 301)), loss=[1.0 / s for s in range(1, 301)],
                       beta=[1.0] * 300)
    fig = plot.training_curves(fit)
    assert len(fig.axes[0].lines) == 2  # training and validation NLL
    fig = plot.training_curves([vi, vi], labels=["a", "b"], reference=0.0, path=tmp_path / "c.png")
    lines = fig.axes[0].lines
    assert len(lines) == 3 and len(lines[0].get_xdata()) == 100  # averaged over windows of 1% of the steps
    _png(tmp_path / "c.png")
    with pytest.raises(ValueError, match="training_curves: 1 labels for 2 histories"):
        plot.training_curves([vi, vi], labels=["a"])


def _heat_values(ax):
    return torch.as_tensor(ax.collections[-1].get_array().data).reshape(-1)


def test_density_averages_paths_for_random_models():
    """``num_paths``: exact models draw the same picture; an augmented model's picture gets less noisy."""
    torch.manual_seed(0)
    exact = nf.transformed(nf.build("realnvp", 2, num_layers=2, hidden_dims=(8,)))
    one = _heat_values(plot.density(exact, ax=plt.figure().gca(), resolution=20))
    many = _heat_values(plot.density(exact, ax=plt.figure().gca(), resolution=20, num_paths=4))
    torch.testing.assert_close(one, many)
    flow = nf.build("augmented_realnvp", 2, num_layers=2, hidden_dims=(8,), mask="alternate")
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model = nf.transformed(flow)

    def spread(paths):
        a, b = (_heat_values(plot.density(model, ax=plt.figure().gca(), resolution=20, num_paths=paths))
                for _ in range(2))
        return (a - b).abs().mean()

    assert spread(64) < 0.5 * spread(1)


@pytest.mark.parametrize("dim", [1, 3, 8])
def test_data_vs_model_draws_pairwise_marginals_beyond_2d(dim, tmp_path):
    """3-D data raised a shape error; now a corner plot, capped at 6 coordinates with a note."""
    model = nf.transformed(nf.build("maf", dim, num_layers=2))
    path = tmp_path / "corner.png"
    fig = plot.data_vs_model(torch.randn(300, dim), model, path=path, num_samples=300)
    shown = min(dim, 6)
    assert path.stat().st_size > 0
    assert len([ax for ax in fig.axes if ax.axison]) == shown * (shown + 1) // 2
    assert (f"first 6 of {dim}" in fig._suptitle.get_text()) == (dim > 6)
    plt.close(fig)
