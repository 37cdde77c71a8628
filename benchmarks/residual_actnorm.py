"""Residual flow with and without ActNorm between blocks: held-out NLL at equal steps (seeds 0-1).

    python benchmarks/residual_actnorm.py [steps]      # default 1000; about 12 minutes on one loaded core
"""
import sys
import time

import torch

import pyro_nf as nf

torch.set_num_threads(1)
steps = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
for data_name in ["moons", "checkerboard", "8gaussians"]:
    data = nf.datasets.load(data_name, n=12000, seed=0)
    train, test = data[:10000], data[10000:]
    for actnorm in [True, False]:
        res = []
        for seed in [0, 1]:
            torch.manual_seed(seed)
            flow = nf.build("residual", 2, num_layers=8, hidden_dims=(64, 64), actnorm=actnorm)
            t = time.perf_counter()
            nf.infer.fit_density(flow, train, steps=steps, batch_size=256, lr=2e-3, progress=False, seed=seed,
                                 validation=0)
            res.append((nf.infer.nll(flow, test), time.perf_counter() - t))
        print(data_name, "actnorm" if actnorm else "no actnorm", [f"{v:.3f}" for v, _ in res],
              f"{sum(t for _, t in res) / 2:.0f}s", flush=True)
