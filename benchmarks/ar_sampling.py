"""Sampling time of the autoregressive flows (D sequential passes), one thread, median of 5 after a warm-up.

    python benchmarks/ar_sampling.py                      # this checkout
    python benchmarks/ar_sampling.py /path/to/other/checkout   # another checkout, to compare two versions
"""

import sys
import time

import torch

if len(sys.argv) > 1:
    sys.path.insert(0, sys.argv[1])

import pyro_nf as nf  # noqa: E402

torch.set_num_threads(1)
results = {}
for name, dim, layers in [("nsf_autoregressive", 64, 3), ("nsf_autoregressive", 8, 3), ("maf", 64, 5), ("maf", 8, 5)]:
    torch.manual_seed(0)
    model = nf.transformed(nf.build(name, dim, num_layers=layers).eval())
    with torch.no_grad():
        model.sample((1024,))
        times = []
        for _ in range(5):
            start = time.perf_counter()
            model.sample((1024,))
            times.append(time.perf_counter() - start)
    results[f"{name} D={dim}"] = sorted(times)[2] * 1e3
print(nf.__file__)
for label, ms in results.items():
    print(f"{label}: {ms:.1f} ms for 1024 samples")
