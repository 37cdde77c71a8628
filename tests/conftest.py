"""Shared fixtures: the dtypes and devices every property is checked on.

``device`` runs each test on the CPU and, where a GPU exists, on CUDA; the CUDA cases are skipped (not
faked) on a machine without one. ``dtype`` runs it in float32 and float64.
"""

from __future__ import annotations

import pytest
import torch

# The tests run many tiny tensor operations, which a second intra-op thread only slows down, and on a busy
# machine OpenMP's spinning threads make them 10-60x slower (measured: a small MAF step, 3 ms on one thread,
# 190 ms on two under load). Subprocesses (benchmarks, notebooks) keep torch's default.
torch.set_num_threads(1)

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                 reason="CUDA is not available on this machine"))]
DTYPES = [torch.float32, torch.float64]
# round-trip tolerance by dtype (DESIGN.md: 1e-5 in float32, 1e-10 in float64)
ROUND_TRIP_TOL = {torch.float32: 1e-5, torch.float64: 1e-10}


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    return torch.device(request.param)


@pytest.fixture(params=DTYPES, ids=["float32", "float64"])
def dtype(request) -> torch.dtype:
    return request.param
