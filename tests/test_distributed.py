"""Data-parallel fits on torch.distributed: two gloo processes on this machine train the same model as one
process with the same global batch, up to the order of floating-point reductions."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import pyro_nf as nf

STEPS, BATCH = 40, 64


def _fit(name: str, distributed: bool):
    torch.manual_seed(0)
    flow = nf.build(name, 2, num_layers=2, hidden_dims=(16,))
    data = nf.datasets.two_moons(400, seed=0) * 2 + 1  # off the unit scale, so ActNorm's init matters
    history = nf.infer.fit_density(flow, data, steps=STEPS, batch_size=BATCH, lr=1e-2, eval_every=10, seed=3,
                                   progress=False, distributed=distributed)
    return flow, history


def _worker(rank: int, world: int, port: int, name: str, out: str):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    try:
        flow, history = _fit(name, distributed=True)
        if rank == 0:
            torch.save({"state": flow.state_dict(), "val_nll": history.val_nll}, out)
    finally:
        nf.distributed.cleanup()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
@pytest.mark.parametrize("name", ["realnvp", "glow"])
def test_two_gloo_processes_match_one_process(name, tmp_path):
    out = str(tmp_path / "rank0.pt")
    mp.start_processes(_worker, args=(2, _free_port(), name, out), nprocs=2, join=True, start_method="spawn")
    result = torch.load(out, weights_only=True)
    flow, history = _fit(name, distributed=False)
    assert len(result["val_nll"]) == len(history.val_nll) == STEPS // 10
    for got, expected in zip(result["val_nll"], history.val_nll):
        assert abs(got - expected) < 1e-4, (result["val_nll"], history.val_nll)
    for key, value in flow.state_dict().items():
        torch.testing.assert_close(result["state"][key], value, rtol=1e-4, atol=1e-5, msg=key)


def test_uneven_shares_are_refused_before_training(monkeypatch):
    monkeypatch.setattr(nf.distributed, "setup", lambda device=None: torch.device("cpu"))
    monkeypatch.setattr(nf.distributed, "world_size", lambda: 3)
    with pytest.raises(ValueError, match="batch_size 64 must be divisible by the number of processes \\(3\\)"):
        nf.infer.fit_density(nf.build("realnvp", 2, num_layers=1), torch.randn(100, 2), steps=1, batch_size=64,
                             progress=False, distributed=True, seed=0)


def test_the_command_line_under_torchrun_reports_once_and_matches_one_process(tmp_path):
    import subprocess
    import sys

    common = ["fit", "--steps", "20", "--quiet"]  # (torchrun would take "--n" for its own "--nnodes")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                          f"--master-port={_free_port()}", "-m", "pyro_nf", *common, "--out",
                          str(tmp_path / "two.png")], capture_output=True, text=True, timeout=300, env=env)
    assert two.returncode == 0, two.stderr[-2000:]
    one = subprocess.run([sys.executable, "-m", "pyro_nf", *common, "--out", str(tmp_path / "one.png")],
                         capture_output=True, text=True, timeout=300, env=env)
    assert one.returncode == 0, one.stderr[-2000:]
    assert two.stdout.count("held-out NLL") == 1 and "2 processes" in two.stdout
    nll = [line.split()[2] for out in (one, two) for line in out.stdout.splitlines() if "held-out NLL" in line]
    assert abs(float(nll[0]) - float(nll[1])) < 1e-3, nll
    assert (tmp_path / "two.png").exists()
