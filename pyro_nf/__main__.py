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
from .compose import ConditionalFlowDistribution


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


def _fractions(args) -> tuple[float, float, float]:
    """The fit command's training, validation and test fractions of its data."""
    return 1.0 - args.validation - args.test, args.validation, args.test


def _split_sizes(n: int, fractions) -> list[int]:
    """How many of ``n`` points ``datasets.split`` puts in each part of ``fractions``."""
    return [part.shape[0] for part in datasets.split(torch.empty(n, 0), fractions, seed=0)]


def _check_fit_sizes(parser, args) -> None:
    """Exit through ``parser.error`` (status 2), before any training, when ``--n`` leaves a part of the
    split empty: the fit needs training points, validation points and test points."""
    split = _fractions(args)
    if split[0] <= 0:
        parser.error(f"--validation {args.validation:g} and --test {args.test:g} leave no training points; their "
                     "sum must be below 1")
    sizes = _split_sizes(args.n, split)
    if min(sizes) >= 1:
        return
    need = next(m for m in range(1, 100_000) if all(min(_split_sizes(k, split)) >= 1 for k in range(m, m + 20)))
    parser.error(f"--n {args.n} is too small: the {'/'.join(f'{f:.0%}' for f in split)} split leaves "
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
    dim, conditional = data.shape[-1], args.context is not None
    if conditional:  # split the rows of x and c together
        data = torch.cat([data, args.context.to(device=device, dtype=dtype)], -1)
    train, val, test = datasets.split(data, _fractions(args), seed=args.seed)
    (train, train_c), (val, val_c), (test, test_c) = [(part[:, :dim], part[:, dim:] if conditional else None)
                                                      for part in (train, val, test)]
    torch.manual_seed(args.seed)  # the same initial parameters on every process
    flow = flows.build(args.flow, dim, **args.flow_options).to(device=device, dtype=dtype)
    if own and not args.no_standardize:  # fit in standard units, keep the data's units in the model
        units = [train.mean(0), train.std(0).clamp_min(1e-12)]
        if conditional:
            units += [train_c.mean(0), train_c.std(0).clamp_min(1e-12)]
        flow = flows.standardized(flow, *units)
    model = flows.transformed(flow)
    given = f" given columns {args.context_columns}" if conditional else ""
    processes = f", {multiprocess.world_size()} processes" if multiprocess.active() else ""
    say(f"fitting {args.flow!r} to {args.data!r}{given}: {train.shape[0]} training points, {args.steps} steps, "
        f"{sum(p.numel() for p in flow.parameters())} parameters, {device}, {dtype}{processes}")
    start = time.perf_counter()
    if conditional:  # fit_density splits a conditional fit's validation rows itself: give them back as a fraction
        fit_data, fit_c = torch.cat([train, val]), torch.cat([train_c, val_c])
        validation = val.shape[0] / fit_data.shape[0]
    else:
        fit_data, fit_c, validation = train, None, val
    try:
        history = infer.fit_density(model, fit_data, validation=validation, context=fit_c, steps=args.steps,
                                    batch_size=args.batch_size, lr=args.lr, eval_every=args.eval_every,
                                    patience=args.patience, seed=args.seed, progress=not args.quiet)
    except infer.FitDivergedError as error:
        return _diverged(error)
    test_nll = infer.nll(model, test, context=test_c)
    elapsed = time.perf_counter() - start
    if multiprocess.is_main():
        print(f"held-out NLL: {test_nll:.4f} nats  (best validation {history.best_val_nll:.4f} at step "
              f"{history.best_step}; fit {elapsed:.1f} s)")
        title = f"{args.flow} on {args.data}: held-out NLL {test_nll:.3f} nats"
        if conditional:  # x | c drawn at the test rows' contexts, against the test rows
            with torch.no_grad():
                drawn = model.condition(test_c).sample()
            plot.corner(test, drawn, path=args.out, title=title + " (samples at the test contexts)")
        else:
            plot.data_vs_model(test if test.shape[0] >= 500 else data, model, path=args.out, title=title)
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
    conditional = isinstance(model, ConditionalFlowDistribution)
    if conditional != (args.context is not None):
        print("error: " + (f"the model is conditional: give --context with its {model.flow.context_dim} values"
                           if conditional else "--context was given but the model is not conditional"), file=sys.stderr)
        return 2
    if conditional:
        if len(args.context) != model.flow.context_dim:
            print(f"error: the model's context has {model.flow.context_dim} values, --context gave "
                  f"{len(args.context)}", file=sys.stderr)
            return 2
        ref = next(iter(model.flow.parameters()))
        model = model.condition(torch.tensor(args.context, dtype=ref.dtype))
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
    conditional = isinstance(model, ConditionalFlowDistribution)
    flow = model.flow if conditional else model.transforms[0]
    if conditional != (args.context is not None):
        print("error: " + (f"the model is conditional: give --context-columns (its context has {flow.context_dim} "
                           "columns)" if conditional else "--context-columns was given but the model is not "
                           "conditional"), file=sys.stderr)
        return 2
    if args.loaded.shape[1] != flow.dim:
        print(f"error: the model is {flow.dim}-dimensional but {args.data} has {args.loaded.shape[1]} "
              + ("data " if conditional else "") + "columns", file=sys.stderr)
        return 2
    if conditional and args.context.shape[1] != flow.context_dim:
        print(f"error: the model's context has {flow.context_dim} columns, --context-columns gave "
              f"{args.context.shape[1]}", file=sys.stderr)
        return 2
    ref = next(iter(flow.parameters()))
    with torch.no_grad():
        x = args.loaded.to(ref.dtype)
        scored = model.condition(args.context.to(ref.dtype)) if conditional else model
        log_p = scored.log_prob(x).double().numpy()
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
    if multiprocess.launched():  # under torchrun: each process draws its own particles, process 0 reports
        device = multiprocess.setup(device)
    say = print if multiprocess.is_main() else (lambda *a, **k: None)
    target = targets.load(args.target)
    flow = flows.build(args.flow, 2, num_layers=args.layers).to(device=device, dtype=dtype)
    model = flows.transformed(flow)
    anneal_steps = max(1, args.steps // 10) if args.anneal_steps is None else args.anneal_steps
    annealing = (args.beta0, anneal_steps) if anneal_steps > 0 else None
    schedule = f"annealing beta {args.beta0} -> 1 over {anneal_steps} steps" if annealing else "no annealing"
    processes = f", {multiprocess.world_size()} processes" if multiprocess.active() else ""
    say(f"fitting {args.flow!r} ({args.layers} layers, {sum(p.numel() for p in flow.parameters())} parameters) "
        f"to {target.name} by reverse KL: {args.steps} steps x {args.particles} particles, lr {args.lr}, "
        f"{schedule}, {device}, {dtype}{processes}")
    try:
        history = infer.fit_target(model, target, steps=args.steps, lr=args.lr, num_particles=args.particles,
                                   annealing=annealing, seed=args.seed, progress=not args.quiet)
    except infer.FitDivergedError as error:
        return _diverged(error)
    if not multiprocess.is_main():
        multiprocess.cleanup()  # waits there until process 0 has reported
        return 0
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
    multiprocess.cleanup()
    return 0


DESCRIPTION = """Normalizing flows for Pyro from the command line. With no arguments: fit RealNVP to two moons,
print the held-out negative log-likelihood and write a picture (the same as 'fit').

  fit     density estimation on a toy set or your own file; --save writes the model
  sample  draw samples from a saved model into a CSV file
  score   the log density of each row of a file under a saved model
  vi      reverse-KL fit of a flow to an unnormalised 2D energy target (Pyro's ELBO)

'python -m pyro_nf COMMAND --help' lists a command's options and their defaults; the installed script
'pyro-nf' is the same command."""


def _device(text: str) -> str:
    """An argparse type: a torch device this machine has (cpu, cuda, cuda:N, mps)."""
    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text!r}: CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{text!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise argparse.ArgumentTypeError(f"{text!r}: MPS is not available on this machine")
    elif device.type != "cpu":
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}")
    return text


def _in_unit_interval(closed: bool):
    """An argparse type: a number in (0, 1] (``closed``) or in (0, 1)."""
    interval = "(0, 1]" if closed else "(0, 1)"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = None
        if value is None or not (0 < value <= 1 if closed else 0 < value < 1):
            raise argparse.ArgumentTypeError(f"expected a number in {interval}, got {text!r}")
        return value

    parse.__name__ = "fraction"  # argparse names the type in its messages
    return parse


_fraction = _in_unit_interval(closed=True)
_open_fraction = _in_unit_interval(closed=False)


def _count(text: str) -> int:
    """An argparse type: an int >= 0."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an int >= 0, got {text!r}")
    return value


def _columns(text: str) -> list[int]:
    """An argparse type: comma-separated column indices (from 0)."""
    try:
        columns = [int(v) for v in text.split(",")]
    except ValueError:
        columns = []
    if not columns or min(columns) < 0 or len(set(columns)) != len(columns):
        raise argparse.ArgumentTypeError(f"expected distinct comma-separated column indices from 0 such as 2,3, "
                                         f"got {text!r}")
    return columns


def _values(text: str) -> list[float]:
    """An argparse type: comma-separated numbers."""
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers such as 0.5,1, got {text!r}") from None


def _add_run_options(parser, out: str) -> None:
    """The options every training command shares."""
    parser.add_argument("--device", type=_device, default="cpu",
                        help="cpu, cuda or cuda:N: where the model trains (default: %(default)s)")
    parser.add_argument("--float64", action="store_true", help="train in float64 (default: float32)")
    parser.add_argument("--seed", type=int, default=0,
                        help="random seed of the data, the initial parameters and the batches (default: %(default)s)")
    parser.add_argument("--out", default=out, metavar="PNG", help="where to write the picture (default: %(default)s)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar (default: shown)")


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    """The command line's parser and its subcommands' parsers by name."""
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog="python -m pyro_nf", description=DESCRIPTION, formatter_class=formatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    fit = sub.add_parser("fit", help="density estimation on a toy set or your own file (the default job)",
                         description="Fit a flow by maximum likelihood (by default an 80/10/10 split into training, "
                                     "validation and test points), print the held-out NLL in nats and write a "
                                     "picture.")
    fit.add_argument("--data", default="moons",
                     help=f"a toy set ({', '.join(sorted(datasets.DATASETS))}) or a file of N rows and D columns: "
                          ".csv (a header line is detected), .npy, .npz or .pt (default: %(default)s)")
    fit.add_argument("--context-columns", type=_columns, default=None, metavar="I,J,...",
                     help="columns of the data file (counted from 0) that are the context c of a conditional fit "
                          "p(x | c); the other columns are x (default: none, an unconditional fit)")
    fit.add_argument("--flow", default="realnvp", choices=flows.names(), metavar="NAME",
                     help=f"the architecture, one of: {', '.join(flows.names())} (default: %(default)s)")
    fit.add_argument("--layers", type=_positive(int), default=None,
                     help="number of layers (default: the architecture's own)")
    fit.add_argument("--hidden", default=None, metavar="H1,H2,...",
                     help="hidden sizes of the conditioner networks, e.g. 64,64 (default: the architecture's own)")
    fit.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                     help="any other option of the architecture, repeatable; a Python literal or a word "
                          "(nf.flows.options(name) lists them; default: none)")
    fit.add_argument("--no-standardize", action="store_true",
                     help="fit a data file as it is (default: standardise it, the standardisation stored inside "
                          "the saved model)")
    fit.add_argument("--save", default=None, metavar="PATH",
                     help="write the fitted model here; nf.load reads it (default: not saved)")
    fit.add_argument("--n", type=_positive(int), default=5000,
                     help="number of points drawn from a toy set (default: %(default)s)")
    fit.add_argument("--steps", type=_positive(int), default=2000, help="training steps (default: %(default)s)")
    fit.add_argument("--batch-size", type=_positive(int), default=256, help="points per step (default: %(default)s)")
    fit.add_argument("--lr", type=_positive(float), default=2e-3,
                     help="Adam's learning rate, decayed on a cosine (default: %(default)s)")
    fit.add_argument("--validation", type=_open_fraction, default=0.1,
                     help="fraction of the data held out for validation: the best validated parameters are kept "
                          "(default: %(default)s)")
    fit.add_argument("--test", type=_open_fraction, default=0.1,
                     help="fraction of the data held out for the reported NLL (default: %(default)s)")
    fit.add_argument("--eval-every", type=_positive(int), default=100,
                     help="steps between validations (default: %(default)s)")
    fit.add_argument("--patience", type=_positive(int), default=None,
                     help="stop early after this many validations without improvement (default: never)")
    _add_run_options(fit, "pyro_nf_fit.png")
    fit.set_defaults(run=_fit)

    sample = sub.add_parser("sample", help="draw samples from a saved model into a CSV file",
                            description="Draw samples from a model saved by 'fit --save' or nf.save, in the data's "
                                        "own units.")
    sample.add_argument("--model", required=True, metavar="PATH", help="a checkpoint written by fit --save or nf.save")
    sample.add_argument("-n", type=_positive(int), default=1000, help="number of samples (default: %(default)s)")
    sample.add_argument("--context", type=_values, default=None, metavar="C1,C2,...",
                        help="for a conditional model: the context c to sample x | c at (default: none)")
    sample.add_argument("--out", default="samples.csv", metavar="CSV",
                        help="the CSV file to write (default: %(default)s)")
    sample.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    sample.set_defaults(run=_sample)

    score = sub.add_parser("score", help="the log density of each row of a file under a saved model",
                           description="Score each row of a data file under a saved model: log densities in nats, "
                                       "per row to --out, their mean to the screen.")
    score.add_argument("--model", required=True, metavar="PATH", help="a checkpoint written by fit --save or nf.save")
    score.add_argument("--data", required=True, metavar="FILE",
                       help="a .csv, .npy, .npz or .pt file of N rows and D columns")
    score.add_argument("--context-columns", type=_columns, default=None, metavar="I,J,...",
                       help="for a conditional model: the file's context columns, as given to fit (default: none)")
    score.add_argument("--out", default=None, metavar="CSV",
                       help="a CSV file for the per-row log densities (default: not written)")
    score.set_defaults(run=_score)

    vi = sub.add_parser("vi", help="reverse-KL fit of a flow to an unnormalised 2D energy target",
                        description="Fit a flow to an energy target of Rezende & Mohamed (2015) by reverse KL "
                                    "(Pyro's ELBO); print the reverse KL, the effective sample size and log Z.")
    vi.add_argument("--target", default="U1", choices=list(targets.TARGETS),
                    help=f"the energy target, one of: {', '.join(targets.TARGETS)} (default: %(default)s)")
    vi.add_argument("--flow", default="planar", choices=flows.names(), metavar="NAME",
                    help="the architecture (default: %(default)s)")
    vi.add_argument("--layers", type=_positive(int), default=32, help="number of layers (default: %(default)s)")
    vi.add_argument("--steps", type=_positive(int), default=10000, help="training steps (default: %(default)s)")
    vi.add_argument("--lr", type=_positive(float), default=2e-2,
                    help="Adam's learning rate, decayed on a cosine (default: %(default)s)")
    vi.add_argument("--particles", type=_positive(int), default=256,
                    help="samples per step (default: %(default)s)")
    vi.add_argument("--beta0", type=_fraction, default=0.2,
                    help="annealing: the first inverse temperature, in (0, 1] (default: %(default)s)")
    vi.add_argument("--anneal-steps", type=_count, default=None,
                    help="annealing: steps until beta reaches 1; 0: no annealing (default: a tenth of the steps)")
    vi.add_argument("--eval-samples", type=_positive(int), default=20000,
                    help="samples for the reverse KL, ESS and log Z (default: %(default)s)")
    _add_run_options(vi, "pyro_nf_vi.png")
    vi.set_defaults(run=_vi)
    return parser, {"fit": fit, "sample": sample, "score": score, "vi": vi}


def _split_context(parser, args, loaded: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The data file's ``(x, c)`` columns (``c`` is ``None`` without ``--context-columns``)."""
    if args.context_columns is None:
        return loaded, None
    width = loaded.shape[1]
    outside = [i for i in args.context_columns if i >= width]
    if outside:
        parser.error(f"--context-columns {outside}: the data have {width} columns (0 to {width - 1})")
    rest = [i for i in range(width) if i not in args.context_columns]
    if not rest:
        parser.error(f"--context-columns: all {width} columns are context; at least one must be data")
    return loaded[:, rest], loaded[:, args.context_columns]


def main(argv=None) -> int:
    parser, commands = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["fit", *argv]
    args, extra = parser.parse_known_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    command = commands[args.command]
    if extra:  # the command's own usage line, not the top level's
        command.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "fit":
        args.context = None
        if args.data not in datasets.DATASETS:
            args.loaded, args.context = _split_context(command, args, _read_data(command, args.data))
            args.n = args.loaded.shape[0]
        elif args.context_columns is not None:
            command.error("--context-columns needs a data file; a toy set has no context columns")
        if args.context is not None and "context_dim" not in flows.options(args.flow):
            conditional = [n for n in flows.names() if "context_dim" in flows.options(n)]
            command.error(f"--flow {args.flow} takes no context; conditional architectures: {', '.join(conditional)}")
        _check_fit_sizes(command, args)
        args.flow_options = _parse_options(command, args)
        if args.context is not None:
            if "context_dim" in args.flow_options:
                command.error("--option context_dim: the context's size comes from --context-columns")
            args.flow_options["context_dim"] = args.context.shape[1]
        _check_path_for_writing(command, "--out", args.out)
        _check_path_for_writing(command, "--save", args.save)
    if args.command in ("sample", "score"):
        import os

        if not os.path.isfile(args.model):
            command.error(f"--model {args.model}: no such file")
        if args.command == "score":
            args.loaded, args.context = _split_context(command, args, _read_data(command, args.data))
        _check_path_for_writing(command, "--out", args.out)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
