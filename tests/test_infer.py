import math

import pytest
import torch

import pyro_nf as nf
from pyro_nf import datasets, infer


def test_fit_density_lowers_the_nll():
    torch.manual_seed(0)
    data = datasets.two_moons(1000, seed=0)
    flow = nf.build("realnvp", 2, num_layers=4, hidden_dims=(32, 32))
    before = infer.nll(flow, data)
    history = infer.fit_density(flow, data, steps=150, eval_every=50, lr=3e-3, seed=0, progress=False)
    after = infer.nll(flow, data)
    assert after < before - 0.5
    assert len(history.val_nll) == 3 and all(math.isfinite(v) for v in history.train_nll)
    assert history.wall_time > 0 and history.best_step in history.steps


def test_fit_density_moves_data_to_the_model_dtype_and_stops_early():
    flow = nf.build("nice", 2, num_layers=2, hidden_dims=(8,)).double()
    data = datasets.two_moons(300, seed=0)  # float32 data, float64 model
    history = infer.fit_density(nf.transformed(flow), data, steps=400, eval_every=10, patience=2,
                                lr=5e-2, schedule=None, seed=0, progress=False)
    assert history.steps[-1] <= 400
    if history.stopped_early:
        assert history.steps[-1] < 400


def test_fit_density_rejects_bad_data():
    flow = nf.build("realnvp", 2, num_layers=1)
    data = torch.randn(50, 2)
    data[3, 1] = float("nan")
    with pytest.raises(ValueError, match=r"fit_density: data has NaN or infinite values \(rows \[3\]\)"):
        infer.fit_density(flow, data, steps=1, progress=False)
    with pytest.raises(ValueError, match=r"fit_density: expected data of shape \(N, 2\), got \(50, 3\)"):
        infer.fit_density(flow, torch.randn(50, 3), steps=1, progress=False)
    with pytest.raises(ValueError, match="steps must be a positive int"):
        infer.fit_density(flow, torch.randn(50, 2), steps=0, progress=False)
    with pytest.raises(TypeError, match="expected a TransformedDistribution or a flow"):
        infer.fit_density("realnvp", torch.randn(50, 2))
