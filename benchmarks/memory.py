"""Memory: the peak of one training step, one fresh process per case.

On CPU the peak is process-level: this script is started as its own process, imports torch and the
libraries once (without computing anything), then forks one child per case. Linux resets a forked
child's high-water mark to its current size, so in the child ``ru_maxrss`` after the step minus
``ru_maxrss`` just before it (after building the model, the optimiser and the data, and after a warm-up
step of a second instance on 16 points, which loads code pages and starts thread pools) is the step's
peak: activations kept for backward, gradients, the optimiser's state and temporaries. On CUDA it is
``torch.cuda.max_memory_allocated`` over ``memory_allocated`` before the step, in-process.

    python benchmarks/memory.py '<json list of [library, arch, dim]>' --batch 1024 [--reps 1]
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import multiprocessing
import os
import resource
import statistics
import sys
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from adapters import NotAvailable, build, import_error  # noqa: E402
from speed import make_step  # noqa: E402


def _maxrss_mib() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux


def _prepare(library, arch, dim, batch, device):
    model = build(library, arch, dim, device=device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    torch.manual_seed(1)
    x = torch.randn(batch, dim, device=device)
    return make_step(model, arch, "train", x, optimizer)


def _child(case, batch, threads, conn):
    try:
        warnings.filterwarnings("ignore")
        torch.set_num_threads(threads)
        # Warm-up: a second instance of the same model takes one step on 16 points, so that code pages,
        # thread pools and lazy imports touched for the first time are not counted; it stays alive, so
        # the measured step cannot reuse its freed memory.
        warm = _prepare(*case, 16, "cpu")
        warm()
        step = _prepare(*case, batch, "cpu")
        gc.collect()
        before = _maxrss_mib()
        step()
        conn.send(("ok", _maxrss_mib() - before))
        del warm
    except NotAvailable as reason:
        conn.send(("n/a", str(reason)))
    except Exception as error:  # noqa: BLE001 - reported in the table
        conn.send(("error", f"{type(error).__name__}: {error}".splitlines()[0][:110]))
    finally:
        conn.close()


def cpu_case(case, batch, threads, reps):
    """Median over ``reps`` forked children of the step's peak (MiB), or ("n/a"/"error", reason)."""
    context = multiprocessing.get_context("fork")
    values = []
    for _ in range(reps):
        receive, send = context.Pipe(duplex=False)
        child = context.Process(target=_child, args=(case, batch, threads, send))
        child.start()
        send.close()
        try:
            kind, value = receive.recv()
        except EOFError:
            kind, value = "error", f"child died (exit code {child.exitcode})"
        child.join()
        if kind != "ok":
            return kind, value
        values.append(value)
    return "ok", statistics.median(values)


def cuda_case(case, batch, reps):
    values = []
    for _ in range(reps):
        try:
            step = _prepare(*case, batch, "cuda")
        except NotAvailable as reason:
            return "n/a", str(reason)
        torch.cuda.synchronize()
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        try:
            step()
        except Exception as error:  # noqa: BLE001
            return "error", f"{type(error).__name__}: {error}".splitlines()[0][:110]
        torch.cuda.synchronize()
        values.append((torch.cuda.max_memory_allocated() - before) / 2**20)
        del step
    return "ok", statistics.median(values)


def run(cases, batch, device, threads, reps) -> dict:
    """{(library, arch, dim): (kind, value)} for every case."""
    out = {}
    for case in cases:
        case = tuple(case)
        if device == "cuda":
            out[case] = cuda_case(case, batch, reps)
        else:
            out[case] = cpu_case(case, batch, threads, reps)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cases", help="JSON list of [library, arch, dim]")
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--reps", type=int, default=1)
    args = parser.parse_args(argv)
    cases = json.loads(args.cases)
    # import every library once, before forking, so that no child counts an import; torch.optim imports
    # torch._dynamo at the first step (seconds): import it here too. Nothing is computed before the forks.
    for library in sorted({case[0] for case in cases}):
        import_error(library)
    importlib.import_module("torch._dynamo")
    warnings.filterwarnings("ignore")
    results = run(cases, args.batch, args.device, args.threads, args.reps)
    print(json.dumps([[*case, kind, value] for case, (kind, value) in results.items()]))


if __name__ == "__main__":
    main()
