"""Microbenchmarks behind the affine transformer's design (the notes in ``benchmarks/README.md``).

Forward and backward of the pieces, one thread, batch 1024, float32; the variants of a section are timed
round-robin (``--rounds`` rounds of ``--calls`` calls each), so drift of a shared machine hits them alike,
and each shows its median over the rounds:

* ``clamp``: the log-scale stabilisers followed by ``x * exp(s)``: none, Pyro's hard clamp, the soft clamp
  ``b tanh(r / b)`` with a learned per-coordinate bound (pyro_nf before), with a fixed bound as ``tanh``,
  as two kernels (``4 sigmoid(r) - 2``) and as one (``torch.add`` with a 0-d scalar, pyro_nf now), and
  zuko's softsign ``r / (1 + |r| / b)``;
* ``split``: the backward of splitting a conditioner's output into shift and log-scale from the
  coordinate-major layout ``(B, D, 2)`` (``unbind(-1)``: an interleaved ``stack``) and the param-major
  layout ``(B, 2, D)`` (``unbind(-2)``: two contiguous blocks, pyro_nf now).

    python benchmarks/micro.py [--dims 2 64] [--calls 200] [--rounds 15]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from pyro_nf.nn import soft_clamp


def _interleaved(steps: dict, calls: int, rounds: int) -> list[tuple[str, float]]:
    """Median microseconds per call of each step, timed round-robin."""
    for step in steps.values():
        for _ in range(max(20, calls // 5)):
            step()
    timings = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            for _ in range(calls):
                step()
            timings[name].append((time.perf_counter() - start) / calls * 1e6)
    return [(name, statistics.median(values)) for name, values in timings.items()]


def clamp_rows(dim: int, calls: int, rounds: int) -> list[tuple[str, float]]:
    raw = torch.randn(1024, dim, requires_grad=True)
    log_bound = torch.full((dim,), math.log(2.0), requires_grad=True)
    x = torch.randn(1024, dim)
    minus_two = torch.tensor(-2.0)
    variants = {
        "none": lambda: raw,
        "hard clamp (Pyro)": lambda: raw.clamp(-2.0, 2.0),
        "soft, learned bound": lambda: soft_clamp(raw, log_bound.exp()),
        "soft, fixed, tanh": lambda: 2.0 * torch.tanh(raw / 2.0),
        "soft, fixed, 2 kernels": lambda: torch.sigmoid(raw) * 4.0 - 2.0,
        "soft, fixed, 1 kernel": lambda: torch.add(minus_two, torch.sigmoid(raw), alpha=4.0),
        "softsign (zuko)": lambda: raw / (1 + raw.abs() / 2.0),
    }
    steps = {}
    for name, log_scale in variants.items():
        def step(log_scale=log_scale):
            s = log_scale()
            (x * s.exp() + s).sum().backward()
        steps[name] = step
    return _interleaved(steps, calls, rounds)


def split_rows(dim: int, calls: int, rounds: int) -> list[tuple[str, float]]:
    steps = {}
    for name, shape, axis in (("(B, D, 2), unbind(-1)", (1024, dim, 2), -1),
                              ("(B, 2, D), unbind(-2)", (1024, 2, dim), -2)):
        params = torch.randn(*shape, requires_grad=True)

        def step(params=params, axis=axis):
            shift, raw = params.unbind(axis)
            (shift + raw).sum().backward()
        steps[name] = step
    return _interleaved(steps, calls, rounds)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 64])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, batch 1024, float32; microseconds per forward + backward")
    for dim in args.dims:
        for section, rows in (("clamp + exp", clamp_rows(dim, args.calls, args.rounds)),
                              ("split", split_rows(dim, args.calls, args.rounds))):
            for name, us in rows:
                print(f"D={dim:<3d} {section:12s} {name:28s} {us:8.1f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
