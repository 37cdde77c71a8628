"""Data-parallel training on ``torch.distributed``: what the fit loops need, and nothing home-made.

Launched under ``torchrun --nproc_per_node=N`` (and ``--nnodes`` for several machines), every process
reads the same data, takes its shard of each global batch, and trains one model wrapped in
``DistributedDataParallel``, which all-reduces (averages) the gradients in its backward pass. The backend is
picked from the device: NCCL on CUDA, gloo on the CPU.

Rules the fit loops keep (so that a run on ``N`` processes equals the single-process run with the same
global batch, up to the order of floating-point reductions):

- every process draws the same order of the data (the same seed), so the global batches agree;
- the loss of a shard is its mean, the global batch split evenly, so the averaged gradients are the
  gradient of the global mean;
- data-dependent state is set identically everywhere: ActNorm is initialised from the *global* first batch
  on every process before the model is wrapped; BatchNorm's running statistics are those of process 0,
  broadcast by ``DistributedDataParallel`` at every step;
- validation losses are summed over processes before anyone decides to stop early;
- only process 0 prints, draws pictures and writes checkpoints.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def launched() -> bool:
    """Whether this process was started by ``torchrun`` (or any launcher that sets ``WORLD_SIZE``)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    """Whether a process group is running."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Process 0 (or the only process): the one that prints and writes files."""
    return rank() == 0


def setup(device: torch.device | str | None = None) -> torch.device:
    """Join the process group that ``torchrun`` describes (a no-op when already joined) and return this
    process's device: ``cuda:LOCAL_RANK`` with NCCL when ``device`` is CUDA (or None with a GPU present),
    the CPU with gloo otherwise."""
    wanted = torch.device(device) if device is not None else None
    use_cuda = torch.cuda.is_available() and (wanted is None or wanted.type == "cuda")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local)
    if not active():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return torch.device("cuda", local) if use_cuda else torch.device("cpu")


def shard(batch: torch.Tensor) -> torch.Tensor:
    """This process's equal share of a global batch (rows ``rank::world_size``). The global batch size
    must be divisible by the number of processes, which the fit loops check before training."""
    n = world_size()
    return batch if n == 1 else batch[rank()::n]


def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    """The sum over processes (a copy; the input is left alone)."""
    if not active():
        return value
    total = value.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


def broadcast_tensor(value: torch.Tensor) -> torch.Tensor:
    """Process 0's ``value`` on every process (a copy)."""
    if not active():
        return value
    value = value.detach().clone()
    dist.broadcast(value, src=0)
    return value


def cleanup() -> None:
    """Leave the process group (call once at the end of a script, on every process). Waits at a barrier first,
    so that no process tears down its connections while another still uses them (a process that finished early,
    e.g. one that does not report, would otherwise make gloo abort the others)."""
    if active():
        dist.barrier()
        dist.destroy_process_group()


__all__ = ["active", "all_reduce_sum", "broadcast_tensor", "cleanup", "is_main", "launched", "rank", "setup", "shard",
           "world_size"]
