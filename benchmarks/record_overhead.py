"""What the record contract costs: a maximum-likelihood step and an SVI-style step (rsample, log_prob of
that sample through its record, backward, Adam), beside the same step through the one-walk
``rsample_and_log_prob`` (no record), on one CPU thread, best of 7 rounds of 10 steps, in milliseconds.

    python benchmarks/record_overhead.py                 # this checkout
    python benchmarks/record_overhead.py /path/to/other  # another checkout of pyro_nf, for a comparison

Run both interleaved a few times on a quiet machine: single runs move by 5-10%.
"""

from __future__ import annotations

import sys
import time

if len(sys.argv) > 1:
    sys.path.insert(0, sys.argv[1])

import torch  # noqa: E402

import pyro_nf as nf  # noqa: E402

CASES = [("realnvp", 2, 256), ("realnvp", 64, 1024), ("iaf", 8, 256), ("maf", 8, 1024)]


def best_ms(step, rounds: int = 7, inner: int = 10) -> float:
    step()
    step()
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(inner):
            step()
        best = min(best, (time.perf_counter() - start) / inner)
    return best * 1e3


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    results = {}
    for name, dim, batch in CASES:
        flow = nf.build(name, dim)
        model = nf.transformed(flow)
        optimizer = torch.optim.Adam(flow.parameters(), lr=1e-4)
        data = torch.randn(batch, dim)

        def fit_step(model=model, data=data, optimizer=optimizer):
            loss = -model.log_prob(data).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        def vi_step(model=model, batch=batch, optimizer=optimizer):
            sample = model.rsample((batch,))
            loss = model.log_prob(sample).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        def vi_step_one_walk(model=model, batch=batch, optimizer=optimizer):
            _, log_q = model.rsample_and_log_prob((batch,))
            loss = log_q.mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        results[f"{name} D={dim} batch={batch} fit"] = best_ms(fit_step)
        if name != "maf":  # MAF samples in D passes: not a guide
            results[f"{name} D={dim} batch={batch} vi"] = best_ms(vi_step)
            results[f"{name} D={dim} batch={batch} vi, one walk"] = best_ms(vi_step_one_walk)
    # sample() of IAF, the flow of the tables that records a sample drawn without gradients: with its record, and
    # with the record switched off for the measurement (what the guard's copy costs in place)
    from pyro_nf import base

    flow = nf.build("iaf", 8)
    model = nf.transformed(flow)
    remember = base.Recording._remember
    results["iaf D=8 sample(1024), record"] = best_ms(lambda: model.sample((1024,)))
    base.Recording._remember = lambda *args: None
    try:
        results["iaf D=8 sample(1024), no record"] = best_ms(lambda: model.sample((1024,)))
    finally:
        base.Recording._remember = remember
    for label, ms in results.items():
        print(f"{label:40s} {ms:7.2f} ms")


if __name__ == "__main__":
    main()
