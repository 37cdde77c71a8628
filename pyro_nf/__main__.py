"""Command line of pyro_nf. ``python -m pyro_nf`` with no arguments runs the main job:
fit RealNVP to two moons, print the held-out NLL and write a picture."""

from __future__ import annotations

import argparse
import sys
import time

import torch

from . import datasets, flows, infer


def _fit(args) -> int:
    import matplotlib

    matplotlib.use("Agg")
    from . import plot

    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda requested but CUDA is not available", file=sys.stderr)
        return 2
    dtype = torch.float64 if args.float64 else torch.float32
    data = datasets.load(args.data, n=args.n, seed=args.seed, device=device, dtype=dtype)
    train, val, test = datasets.split(data, (0.8, 0.1, 0.1), seed=args.seed)
    flow = flows.build(args.flow, data.shape[-1]).to(device=device, dtype=dtype)
    model = flows.transformed(flow)
    print(f"fitting {args.flow!r} to {args.data!r}: {train.shape[0]} training points, {args.steps} steps, "
          f"{sum(p.numel() for p in flow.parameters())} parameters, {device}, {dtype}")
    start = time.perf_counter()
    history = infer.fit_density(model, train, validation=val, steps=args.steps, batch_size=args.batch_size,
                                lr=args.lr, seed=args.seed, progress=not args.quiet)
    test_nll = infer.nll(model, test)
    elapsed = time.perf_counter() - start
    print(f"held-out NLL: {test_nll:.4f} nats  (best validation {history.best_val_nll:.4f} at step "
          f"{history.best_step}; fit {elapsed:.1f} s)")
    plot.data_vs_model(test if test.shape[0] >= 500 else data, model, path=args.out,
                       title=f"{args.flow} on {args.data}: held-out NLL {test_nll:.3f} nats")
    print(f"wrote {args.out}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pyro_nf", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    fit = sub.add_parser("fit", help="density estimation on a toy data set (the default job)")
    planar_sets = sorted(name for name in datasets.DATASETS if datasets.load(name, 4, seed=0).shape[-1] == 2)
    fit.add_argument("--data", default="moons", choices=planar_sets, help="a 2D toy data set")
    fit.add_argument("--flow", default="realnvp", choices=flows.names())
    fit.add_argument("--n", type=int, default=5000, help="number of data points (default 5000)")
    fit.add_argument("--steps", type=int, default=2000)
    fit.add_argument("--batch-size", type=int, default=256)
    fit.add_argument("--lr", type=float, default=2e-3)
    fit.add_argument("--device", default="cpu")
    fit.add_argument("--float64", action="store_true", help="fit in float64")
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--out", default="pyro_nf_fit.png", help="where to write the picture")
    fit.add_argument("--quiet", action="store_true", help="no progress bar")
    fit.set_defaults(run=_fit)
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["fit", *argv]
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
