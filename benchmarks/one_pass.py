"""Pass-count benchmark for the autoregressive and planar layers (issue: one pass where the math allows).

Measures, at dim 64, batch 1024, float32 (defaults):
  * MAF ``log_prob`` and IAF ``sample`` against one bare MADE forward pass (target: within 1.5x);
  * the sequential directions (MAF sample, IAF log_prob of fresh data) against D MADE passes;
  * the planar inverse against the planar forward at dim 2 (target: within 20x).

    python benchmarks/one_pass.py [--dim 64] [--batch 1024] [--repeats 20] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import pyro_nf as nf
from pyro_nf.nn import MADE
from pyro_nf.transforms import AffineAutoregressive, Planar


def timeit(fn, repeats: int, device) -> tuple[float, float]:
    """Median and spread (interquartile range) of ``fn``'s wall time in milliseconds."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(1e3 * (time.perf_counter() - start))
    quartiles = statistics.quantiles(times, n=4)
    return statistics.median(times), quartiles[2] - quartiles[0]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    d, n = args.dim, args.batch
    hidden = (2 * d, 2 * d)
    made = MADE(d, hidden, params_per_dim=2).to(device)
    maf = AffineAutoregressive(d, hidden, direction="maf").to(device)
    iaf = AffineAutoregressive(d, hidden, direction="iaf").to(device)
    maf_model, iaf_model = nf.transformed(nf.Flow([maf])), nf.transformed(nf.Flow([iaf]))
    x = torch.randn(n, d, device=device)
    rows = []
    with torch.no_grad():
        base, base_iqr = timeit(lambda: made(x), args.repeats, device)
        rows.append(("bare MADE forward", base, base_iqr, 1.0, "-"))
        for label, fn, passes, target in (
            ("MAF log_prob (one pass)", lambda: maf_model.log_prob(x.clone()), 1, 1.5),
            ("IAF sample (one pass)", lambda: iaf_model.sample((n,)), 1, 1.5),
            ("MAF sample (sequential)", lambda: maf_model.sample((n,)), d, None),
            ("IAF log_prob of fresh data (sequential)", lambda: iaf_model.log_prob(x.clone()), d, None),
        ):
            median, iqr = timeit(fn, max(3, args.repeats // (1 if passes == 1 else 4)), device)
            ratio = median / (passes * base)
            goal = f"<= {target}" if target else f"~1 (vs {passes} passes)"
            rows.append((label, median, iqr, ratio, goal))
        planar = Planar(2).to(device)
        x2 = torch.randn(n, 2, device=device)
        forward, forward_iqr = timeit(lambda: planar(x2.clone()), args.repeats, device)
        inverse, inverse_iqr = timeit(lambda: planar.inv(x2.clone()), args.repeats, device)
        rows.append(("planar forward (dim 2)", forward, forward_iqr, 1.0, "-"))
        rows.append(("planar inverse (dim 2)", inverse, inverse_iqr, inverse / forward, "<= 20"))
    print(f"torch {torch.__version__}, device {device}, dim {d}, batch {n}, float32, "
          f"{torch.get_num_threads()} threads")
    print(f"{'case':42s} {'median ms':>10s} {'IQR ms':>8s} {'ratio':>7s}  target")
    for label, median, iqr, ratio, goal in rows:
        print(f"{label:42s} {median:10.3f} {iqr:8.3f} {ratio:7.2f}  {goal}")


if __name__ == "__main__":
    main()
