"""Command line of pyro_nf. ``python -m pyro_nf`` with no arguments runs the main job:
fit RealNVP to two moons, print the held-out NLL and write a picture.

``python -m pyro_nf fit --data my.csv --save model.pt`` fits a user's own data (.csv, .npy, .npz, .pt; any
dimension), standardised inside the saved model so that densities and samples are in the data's units;
``python -m pyro_nf sample --model model.pt -n 1000 --out samples.csv`` and
``python -m pyro_nf score --model model.pt --data new.csv`` use the saved model.

``python -m pyro_nf vi --target U1 --flow planar --layers 32`` fits a flow to an unnormalised 2D
target by reverse KL (Pyro's ELBO), prints the reverse KL, the effective sample size and the importance
estimate of log Z against quadrature, and writes a picture (target | flow samples | flow density)."""

from __future__ import annotations

import argparse
import copy
import sys
import time

import torch

from . import datasets, flows, infer, targets
from . import distributed as multiprocess


def _setup(args):
    """Seed, headless matplotlib, and the device and dtype of ``args``; ``None`` if CUDA is asked for
    but missing (after saying so)."""
    import matplotlib

    matplotlib.use("Agg")
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda requested but CUDA is not available", file=sys.stderr)
        return None
    return device, torch.float64 if args.float64 else torch.float32


SPLIT = (0.8, 0.1, 0.1)  # train, validation, test fractions of the fit command's data


def _split_sizes(n: int) -> list[int]:
    """How many of ``n`` points ``datasets.split`` puts in each part of ``SPLIT``."""
    return [part.shape[0] for part in datasets.split(torch.empty(n, 0), SPLIT, seed=0)]


def _check_fit_sizes(parser, args) -> None:
    """Exit through ``parser.error`` (status 2), before any training, when ``--n`` leaves a part of the
    split empty: the fit needs training points, validation points and test points."""
    sizes = _split_sizes(args.n)
    if min(sizes) >= 1:
        return
    need = next(m for m in range(1, 10_000) if all(min(_split_sizes(k)) >= 1 for k in range(m, m + 20)))
    parser.error(f"--n {args.n} is too small: the {'/'.join(f'{f:.0%}' for f in SPLIT)} split leaves "
                 f"{sizes[0]} training, {sizes[1]} validation and {sizes[2]} test points, and the fit needs at "
                 f"least one of each; use --n {need} or more")


def _positive(kind):
    """An argparse type: ``kind`` (int or float) and greater than zero."""

    def convert(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}")
        return value

    convert.__name__ = f"positive {kind.__name__}"
    return convert


def _diverged(error) -> int:
    print(f"error: {error}", file=sys.stderr)
    return 1


def _fit(args) -> int:
    from . import plot

    setup = _setup(args)
    if setup is None:
        return 2
    device, dtype = setup
    if multiprocess.launched():  # under torchrun: one process per device, process 0 reports
        device = multiprocess.setup(device)
    say = print if multiprocess.is_main() else (lambda *a, **k: None)
    own = args.data not in datasets.DATASETS
    if own:
        data = args.loaded.to(device=device, dtype=dtype)
    else:
        data = datasets.load(args.data, n=args.n, seed=args.seed, device=device, dtype=dtype)
    train, val, test = datasets.split(data, SPLIT, seed=args.seed)
    torch.manual_seed(args.seed)  # the same initial parameters on every process
    flow = flows.build(args.flow, data.shape[-1], **args.flow_options).to(device=device, dtype=dtype)
    if own and not args.no_standardize:  # fit in standard units, keep the data's units in the model
        loc, scale = train.mean(0), train.std(0).clamp_min(1e-12)
        flow = flows.standardized(flow, loc, scale)
    model = flows.transformed(flow)
    say(f"fitting {args.flow!r} to {args.data!r}: {train.shape[0]} training points, {args.steps} steps, "
        f"{sum(p.numel() for p in flow.parameters())} parameters, {device}, {dtype}"
        + (f", {multiprocess.world_size()} processes" if multiprocess.active() else ""))
    start = time.perf_counter()
    try:
        history = infer.fit_density(model, train, validation=val, steps=args.steps, batch_size=args.batch_size,
                                    lr=args.lr, seed=args.seed, progress=not args.quiet)
    except infer.FitDivergedError as error:
        return _diverged(error)
    test_nll = infer.nll(model, test)
    elapsed = time.perf_counter() - start
    if multiprocess.is_main():
        print(f"held-out NLL: {test_nll:.4f} nats  (best validation {history.best_val_nll:.4f} at step "
              f"{history.best_step}; fit {elapsed:.1f} s)")
        plot.data_vs_model(test if test.shape[0] >= 500 else data, model, path=args.out,
                           title=f"{args.flow} on {args.data}: held-out NLL {test_nll:.3f} nats")
        print(f"wrote {args.out}")
        if args.save:
            from .io import save

            save(model, args.save)
            print(f"saved the model to {args.save}")
    multiprocess.cleanup()
    return 0


def _sample(args) -> int:
    import numpy as np

    from .io import load

    torch.manual_seed(args.seed)
    model = load(args.model)
    with torch.no_grad():
        x = model.sample((args.n,)).double().numpy()
    header = ",".join(f"x{i}" for i in range(x.shape[1]))
    np.savetxt(args.out, x, delimiter=",", header=header, comments="")
    print(f"wrote {args.n} samples of dimension {x.shape[1]} to {args.out}")
    return 0


def _score(args) -> int:
    import numpy as np

    from .io import load

    model = load(args.model)
    dim = model.transforms[0].dim
    if args.loaded.shape[1] != dim:
        print(f"error: the model is {dim}-dimensional but {args.data} has {args.loaded.shape[1]} columns",
              file=sys.stderr)
        return 2
    ref = next(iter(model.transforms[0].parameters()))
    with torch.no_grad():
        log_p = model.log_prob(args.loaded.to(ref.dtype)).double().numpy()
    if args.out:
        np.savetxt(args.out, log_p, delimiter=",", header="log_density", comments="")
    print(f"mean log density: {log_p.mean():.6f} nats over {log_p.shape[0]} rows"
          + (f" (per row in {args.out})" if args.out else ""))
    return 0


def _parse_options(parser, args) -> dict:
    """``--layers``, ``--hidden`` and ``--option key=value`` as options of the architecture."""
    import ast

    valid = flows.options(args.flow)
    chosen = {}
    if args.layers is not None:
        chosen["num_layers"] = args.layers
    if args.hidden is not None:
        try:
            chosen["hidden_dims"] = tuple(int(v) for v in args.hidden.split(","))
        except ValueError:
            parser.error(f"--hidden: expected comma-separated sizes such as 64,64, got {args.hidden!r}")
    for item in args.option:
        key, sep, text = item.partition("=")
        if not sep:
            parser.error(f"--option: expected key=value, got {item!r}")
        try:
            chosen[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            chosen[key] = text
    unknown = sorted(set(chosen) - set(valid))
    if unknown:
        parser.error(f"{args.flow} has no option(s) {unknown}; its options: {', '.join(sorted(valid))}")
    return chosen


def _check_path_for_writing(parser, flag: str, path) -> None:
    import os

    if path and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
        parser.error(f"{flag} {path}: the folder {os.path.dirname(os.path.abspath(path))} does not exist")


def _read_data(parser, path):
    try:
        return datasets.read_file(path)
    except (OSError, ValueError) as error:
        parser.error(f"--data {path}: {error}")


def _vi(args) -> int:
    from . import plot

    setup = _setup(args)
    if setup is None:
        return 2
    device, dtype = setup
    target = targets.load(args.target)
    flow = flows.build(args.flow, 2, num_layers=args.layers).to(device=device, dtype=dtype)
    model = flows.transformed(flow)
    anneal_steps = max(1, args.steps // 10) if args.anneal_steps is None else args.anneal_steps
    annealing = (args.beta0, anneal_steps) if anneal_steps > 0 else None
    schedule = f"annealing beta {args.beta0} -> 1 over {anneal_steps} steps" if annealing else "no annealing"
    print(f"fitting {args.flow!r} ({args.layers} layers, {sum(p.numel() for p in flow.parameters())} parameters) "
          f"to {target.name} by reverse KL: {args.steps} steps x {args.particles} particles, lr {args.lr}, "
          f"{schedule}, {device}, {dtype}")
    try:
        history = infer.fit_target(model, target, steps=args.steps, lr=args.lr, num_particles=args.particles,
                                   annealing=annealing, seed=args.seed, progress=not args.quiet)
    except infer.FitDivergedError as error:
        return _diverged(error)
    n = args.eval_samples
    kl = infer.reverse_kl(model, target, n)
    ess = infer.effective_sample_size(model, target, n)
    log_z, se = infer.importance_log_normalizer(model, target, n)
    exact = target.exact_log_normalizer()
    reference = f"{target.log_normalizer():.4f} (quadrature" + (f"; exact {exact:.4f})" if exact is not None else ")")
    print(f"reverse KL: {kl:.4f} nats  ({n} samples; fit {history.wall_time:.1f} s)")
    print(f"ESS: {ess:.3f} as a fraction of the {n} samples, about {ess * n:.0f} effective samples (Kish, "
          "importance weights p~/q)")
    print(f"log Z: {log_z:.4f} +- {se:.4f} (importance sampling) vs {reference}")
    # the picture from a float64 copy: a finer density, and numerical inverses (planar) that float32 can
    # fail to converge on a grid far from where the flow was trained
    picture_model = flows.transformed(copy.deepcopy(flow).double())
    plot.target_vs_model(target, picture_model, path=args.out,
                         title=f"{args.flow} (K={args.layers}) on {target.name}: reverse KL {kl:.3f} nats, "
                               f"ESS {ess:.2f}")
    print(f"wrote {args.out}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pyro_nf", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    fit = sub.add_parser("fit", help="density estimation on a toy data set (the default job)")
    fit.add_argument("--data", default="moons",
                     help=f"a toy data set ({', '.join(sorted(datasets.DATASETS))}) or a file: .csv (a header line "
                          "is detected), .npy, .npz or .pt of N rows and D columns (default: moons)")
    fit.add_argument("--flow", default="realnvp", choices=flows.names(), help="the architecture (default realnvp)")
    fit.add_argument("--layers", type=_positive(int), default=None, help="number of layers (default: the flow's)")
    fit.add_argument("--hidden", default=None,
                     help="hidden sizes of the conditioners, e.g. 64,64 (default: the flow's)")
    fit.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                     help="any other option of the architecture, repeatable (see nf.flows.options(name))")
    fit.add_argument("--no-standardize", action="store_true",
                     help="fit a data file as it is (default: standardise it inside the saved model)")
    fit.add_argument("--save", default=None, metavar="PATH", help="write the fitted model here (nf.load reads it)")
    fit.add_argument("--n", type=_positive(int), default=5000, help="number of data points (default 5000)")
    fit.add_argument("--steps", type=_positive(int), default=2000)
    fit.add_argument("--batch-size", type=_positive(int), default=256)
    fit.add_argument("--lr", type=_positive(float), default=2e-3)
    fit.add_argument("--device", default="cpu")
    fit.add_argument("--float64", action="store_true", help="fit in float64")
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--out", default="pyro_nf_fit.png", help="where to write the picture")
    fit.add_argument("--quiet", action="store_true", help="no progress bar")
    fit.set_defaults(run=_fit)
    sample = sub.add_parser("sample", help="draw samples from a saved model into a CSV file")
    sample.add_argument("--model", required=True, help="a checkpoint written by fit --save or nf.save")
    sample.add_argument("-n", type=_positive(int), default=1000, help="number of samples (default 1000)")
    sample.add_argument("--out", default="samples.csv", help="the CSV file to write (default samples.csv)")
    sample.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    sample.set_defaults(run=_sample)
    score = sub.add_parser("score", help="log density of each row of a data file under a saved model")
    score.add_argument("--model", required=True, help="a checkpoint written by fit --save or nf.save")
    score.add_argument("--data", required=True, help="a .csv, .npy, .npz or .pt file of N rows and D columns")
    score.add_argument("--out", default=None, help="a CSV file for the per-row log densities (default: none)")
    score.set_defaults(run=_score)
    vi = sub.add_parser("vi", help="reverse-KL fit of a flow to an unnormalised 2D target (Pyro's ELBO)")
    vi.add_argument("--target", default="U1", choices=list(targets.TARGETS), help="an energy target")
    vi.add_argument("--flow", default="planar", choices=flows.names())
    vi.add_argument("--layers", type=_positive(int), default=32, help="number of layers (default 32)")
    vi.add_argument("--steps", type=_positive(int), default=10000)
    vi.add_argument("--lr", type=_positive(float), default=2e-2)
    vi.add_argument("--particles", type=_positive(int), default=256, help="samples per step (default 256)")
    vi.add_argument("--beta0", type=float, default=0.2, help="annealing: first inverse temperature (default 0.2)")
    vi.add_argument("--anneal-steps", type=int, default=None,
                    help="annealing: steps until beta reaches 1 (default: a tenth of the steps; 0: no annealing)")
    vi.add_argument("--eval-samples", type=_positive(int), default=20000, help="samples for KL, ESS and log Z")
    vi.add_argument("--device", default="cpu")
    vi.add_argument("--float64", action="store_true", help="fit in float64")
    vi.add_argument("--seed", type=int, default=0)
    vi.add_argument("--out", default="pyro_nf_vi.png", help="where to write the picture")
    vi.add_argument("--quiet", action="store_true", help="no progress bar")
    vi.set_defaults(run=_vi)
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["fit", *argv]
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if args.command == "fit":
        if args.data not in datasets.DATASETS:
            args.loaded = _read_data(fit, args.data)
            args.n = args.loaded.shape[0]
        _check_fit_sizes(fit, args)
        args.flow_options = _parse_options(fit, args)
        _check_path_for_writing(fit, "--out", args.out)
        _check_path_for_writing(fit, "--save", args.save)
    if args.command in ("sample", "score"):
        import os

        if not os.path.isfile(args.model):
            (sample if args.command == "sample" else score).error(f"--model {args.model}: no such file")
        if args.command == "score":
            args.loaded = _read_data(score, args.data)
        _check_path_for_writing(sample if args.command == "sample" else score, "--out", args.out)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
