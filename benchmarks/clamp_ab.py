"""What the stabilised log-scale costs in a whole call: pyro_nf's affine flow with its soft clamp (the default),
with a hard clamp, and with none (both switched in for the measurement only), against one peer, interleaved.

    python benchmarks/clamp_ab.py realnvp 64 sample normflows
    python benchmarks/clamp_ab.py iaf 2 train pyro

Arguments: architecture (realnvp, maf, iaf), D, operation (log_prob, train, sample), peer library. Each round
runs every contestant for 20 calls, the first contestant rotating; medians over 21 rounds of the ms per call and
of the per-round ratio to the peer. Two torch threads.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import adapters  # noqa: E402
import speed  # noqa: E402
import torch  # noqa: E402

import pyro_nf.transforms.scalar as scalar  # noqa: E402

VARIANTS = {"soft clamp (default)": None, "hard clamp": lambda raw, b: raw.clamp(-b, b), "none": lambda raw, b: raw}


def main(arch: str, dim: int, op: str, peer: str, rounds: int = 21, calls: int = 20) -> None:
    torch.set_num_threads(2)
    x = torch.randn(1024, dim)

    def step_of(lib):
        torch.manual_seed(0)
        model = adapters.build(lib, arch, dim)
        return speed.make_step(model, arch, op, x, torch.optim.Adam(model.module.parameters(), lr=1e-4))

    ours, original = step_of("pyro_nf"), scalar.soft_clamp

    def variant(clamp):
        def step():
            scalar.soft_clamp = clamp or original
            try:
                return ours()
            finally:
                scalar.soft_clamp = original
        return step

    steps = {name: variant(clamp) for name, clamp in VARIANTS.items()}
    steps[peer] = step_of(peer)
    times = {name: [] for name in steps}
    for step in steps.values():
        for _ in range(calls):
            step()
    names = list(steps)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            for _ in range(calls):
                steps[name]()
            times[name].append((time.perf_counter() - start) / calls * 1e3)
    print(f"{arch} D={dim} {op}, against {peer}, load average {os.getloadavg()[0]:.2f}")
    for name, values in times.items():
        ratio = statistics.median(a / b for a, b in zip(values, times[peer]))
        print(f"  {name:22s} {statistics.median(values):8.3f} ms   / {peer}: {ratio:.3f}")


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4])
