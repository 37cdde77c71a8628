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


TARGET_STEPS, PARTICLES, TARGET_SEED = 6, 32, 5


def _target_flow():
    torch.manual_seed(0)
    return nf.build("realnvp", 2, num_layers=2, hidden_dims=(8,))


def _fit_target(flow, distributed: bool):
    return nf.infer.fit_target(flow, nf.targets.load("U1"), steps=TARGET_STEPS, lr=1e-2, num_particles=PARTICLES,
                               annealing=None, schedule=None, clip_grad=None, seed=TARGET_SEED, progress=False,
                               distributed=distributed)


def _target_worker(rank: int, world: int, port: int, out: str):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    try:
        flow = _target_flow()
        if rank == 1:  # a different start: DDP must hand every process process 0's parameters
            with torch.no_grad():
                for p in flow.parameters():
                    p.add_(0.1)
        history = _fit_target(flow, distributed=True)
        torch.save({"state": flow.state_dict(), "loss": history.loss}, f"{out}.{rank}")
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


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_fit_target_on_two_processes_averages_two_particle_streams(tmp_path):
    """Each process draws its own particles (process r from the stream seeded with seed + r); the update is
    Adam's on the gradient averaged over both: emulated here in one process, stream by stream."""
    out = str(tmp_path / "target")
    mp.start_processes(_target_worker, args=(2, _free_port(), out), nprocs=2, join=True, start_method="spawn")
    ranks = [torch.load(f"{out}.{r}", weights_only=True) for r in (0, 1)]
    for key in ranks[0]["state"]:  # one model on both processes
        assert torch.equal(ranks[0]["state"][key], ranks[1]["state"][key]), key
    assert ranks[0]["loss"] == ranks[1]["loss"]  # the loss averaged over processes: the same decisions

    flow = _target_flow()
    model, target = nf.transformed(flow), nf.targets.load("U1")
    params = list(flow.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-2)
    streams = []
    for r in (0, 1):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(TARGET_SEED + r)
            streams.append(torch.get_rng_state())
    losses = []
    for _ in range(TARGET_STEPS):
        grads, step_loss = [], 0.0
        for r in (0, 1):
            with torch.random.fork_rng(devices=[]):
                torch.set_rng_state(streams[r])
                z = model.rsample((PARTICLES,))
                loss = (model.log_prob(z) - target.log_prob(z)).mean()
                streams[r] = torch.get_rng_state()
            grads.append(torch.autograd.grad(loss, params))
            step_loss += loss.item() / 2
        for p, g0, g1 in zip(params, *grads):
            p.grad = (g0 + g1) / 2
        optimizer.step()
        losses.append(step_loss)
    assert ranks[0]["loss"] == pytest.approx(losses, rel=1e-4, abs=1e-5)
    for key, value in flow.state_dict().items():
        torch.testing.assert_close(ranks[0]["state"][key], value, rtol=1e-4, atol=1e-5, msg=key)
    one = _fit_target(_target_flow(), distributed=False)  # process 0's stream alone is not the average
    assert one.loss[1:] != pytest.approx(losses[1:], rel=1e-3)


def test_vi_under_torchrun_reports_once(tmp_path):
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                          f"--master-port={_free_port()}", "-m", "pyro_nf", "vi", "--steps", "20", "--layers", "2",
                          "--particles", "16", "--eval-samples", "500", "--quiet", "--out", str(tmp_path / "vi.png")],
                         capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "2 processes" in run.stdout and run.stdout.count("ESS:") == 1
    assert (tmp_path / "vi.png").exists()
