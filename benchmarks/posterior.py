"""Neural posterior estimation (NPE): pyro_nf's conditional flows against zuko's at matched size.

    python benchmarks/posterior.py --output /tmp/posterior.md   # full: ~3.5 CPU minutes (7-10 min wall when busy)
    python benchmarks/posterior.py --smoke                      # seconds (tests/test_benchmarks_posterior.py)

Each task is a simulator of ``pyro_nf.simulators`` with a reference posterior. Every model ``q(theta | x)`` is
trained on the same ``N`` simulated pairs ``(theta, x) ~ p(theta) p(x | theta)`` with the same plain loop: Adam,
constant learning rate, the same mini-batches in the same order, ``-mean log q(theta | x)``. The context ``x`` is
standardised with the training set's mean and standard deviation (the same for all models); ``theta`` is
not transformed, so every density is in ``theta``'s own units.

Reported per model:

* ``KL``: ``E_{p(theta, x)}[log p(theta | x) - log q(theta | x)]`` on fresh test pairs, an unbiased estimate of
  the expected ``KL(p(. | x) || q(. | x))`` (nats; 0 is perfect), with its standard error;
* for each of several observations ``x_o`` (with the ``theta*`` that produced it): ``log q(theta* | x_o)`` beside
  the reference ``log p(theta* | x_o)``, and C2ST accuracy of ``q``'s samples against exact reference posterior
  samples (0.5 is perfect; samples outside the prior's support are rejected first, as sbi does, and the
  rejected fraction is reported as leakage);
* ms per training step (the mean over the steps after the first 10) and ms to draw the C2ST samples.

``--json`` writes the raw numbers. The markdown goes to ``--output`` (default: printed only).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import math
import os
import platform
import shlex
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pyro_nf as nf  # noqa: E402
from pyro_nf import simulators  # noqa: E402

MODES = {
    "smoke": dict(simulations=600, steps=30, batch_size=64, lr=1e-3, observations=2, c2st_samples=200,
                  c2st_epochs=5, c2st_folds=2, test_pairs=60, evidence_resolution=(200, 20), hidden=(16, 16),
                  layers=2),
    "full": dict(simulations=10_000, steps=3000, batch_size=256, lr=1e-3, observations=5, c2st_samples=2000,
                 c2st_epochs=100, c2st_folds=5, test_pairs=1000, evidence_resolution=(1000, 100), hidden=(64, 64),
                 layers=3),
}
TASKS = {
    "two_moons": simulators.TwoMoons,
    # 5 parameters seen through 10 noisy random projections
    "gaussian_linear": lambda: simulators.GaussianLinear(5, x_dim=10, noise_scale=0.5),
}
MODELS = ("pyro_nf nsf_autoregressive", "zuko NSF", "pyro_nf nsf_coupling")
BOUND = 5.0  # zuko's NSF fixes its splines to [-5, 5]; pyro_nf's are given the same


def version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


class Model:
    """``log_prob(theta, x)`` with one context row per row, ``sample(x_o, n)`` for one context, ``parameters``."""

    def __init__(self, label, module, log_prob, sample, architecture):
        self.label, self.module, self.log_prob, self.sample = label, module, log_prob, sample
        self.architecture = architecture

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.module.parameters() if p.requires_grad)


def build(label: str, theta_dim: int, x_dim: int, cfg: dict) -> Model:
    layers, hidden, bins = cfg["layers"], tuple(cfg["hidden"]), 8
    if label.startswith("pyro_nf"):
        arch = label.split()[1]
        flow = nf.build(arch, theta_dim, context_dim=x_dim, num_layers=layers, hidden_dims=hidden,
                        count_bins=bins, bound=BOUND)
        model = nf.transformed(flow)
        kind = "MADE" if arch == "nsf_autoregressive" else "coupling MLP (half masks)"
        return Model(label, flow, lambda t, x: model.condition(x).log_prob(t),
                     lambda x, n: model.condition(x).sample((n,)),
                     f"`nf.build({arch!r}, {theta_dim}, context_dim={x_dim}, num_layers={layers}, hidden_dims="
                     f"{hidden}, count_bins={bins}, bound={BOUND:g})`: {layers} RQ-spline layers, {kind} "
                     "conditioners, context concatenated to the input")
    if label == "zuko NSF":
        import zuko

        flow = zuko.flows.NSF(theta_dim, x_dim, bins=bins, transforms=layers, hidden_features=hidden)
        return Model(label, flow, lambda t, x: flow(x).log_prob(t), lambda x, n: flow(x).sample((n,)),
                     f"`zuko.flows.NSF({theta_dim}, {x_dim}, bins={bins}, transforms={layers}, hidden_features="
                     f"{hidden})`: {layers} RQ-spline MADE layers on [-5, 5], orders natural/reversed")
    raise ValueError(f"unknown model {label!r}; choose from {MODELS}")


def available(label: str) -> str | None:
    """``None``, or why the model cannot run here."""
    if label.startswith("zuko"):
        try:
            import zuko.flows  # noqa: F401
        except Exception as error:  # noqa: BLE001 - any import failure: skip with the reason
            return f"zuko does not import: {error}"
    return None


def train(model: Model, theta, x, cfg, seed) -> dict:
    """The shared loop: plain Adam, constant lr, the same batches for every model (drawn from ``seed``)."""
    opt = torch.optim.Adam(model.module.parameters(), lr=cfg["lr"])
    gen = torch.Generator().manual_seed(seed)
    n, steps, batch = theta.shape[0], cfg["steps"], cfg["batch_size"]
    model.module.train()
    losses, start, cpu_start, timed_from = [], None, None, min(10, steps - 1)
    order, cursor = torch.randperm(n, generator=gen), 0
    for step in range(steps):
        if step == timed_from:
            start, cpu_start = time.perf_counter(), time.process_time()
        if cursor + batch > n:
            order, cursor = torch.randperm(n, generator=gen), 0
        rows = order[cursor:cursor + batch]
        cursor += batch
        loss = -model.log_prob(theta[rows], x[rows]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    model.module.eval()
    if not all(math.isfinite(v) for v in losses):
        raise RuntimeError(f"{model.label}: the training loss stopped being finite")
    tail = losses[-max(1, steps // 10):]
    timed = steps - timed_from
    return {"ms_per_step": 1e3 * elapsed / timed, "cpu_ms_per_step": 1e3 * cpu / timed,
            "final_train_nll": sum(tail) / len(tail)}


@torch.no_grad()
def posterior_draws(model, sim, x_o, n):
    """``n`` draws of ``q(theta | x_o)`` inside the prior's support, the rejected fraction and the time."""
    start, kept, drawn = time.perf_counter(), [], 0
    while sum(len(k) for k in kept) < n and drawn < 100 * n:
        draws = model.sample(x_o, n)
        drawn += n
        kept.append(draws[sim.in_support(draws)])
    elapsed = time.perf_counter() - start
    draws = torch.cat(kept)
    if len(draws) < n:
        raise RuntimeError(f"{model.label}: fewer than {n} of {drawn} posterior draws inside the prior's support")
    accepted = len(draws) / drawn
    return draws[:n], 1.0 - accepted, 1e3 * elapsed


def reference_log_posterior(sim, theta, x, resolution):
    if isinstance(sim, simulators.TwoMoons):
        log_z = torch.stack([sim.log_evidence(row, resolution) for row in x.double()])
        return sim.reference_log_posterior(theta.double(), x.double(), log_evidence=log_z)
    return sim.reference_log_posterior(theta.double(), x.double())


def run_task(name, cfg, seed, models, log) -> dict:
    sim = TASKS[name]()
    theta, x = sim.sample_joint(cfg["simulations"], seed=seed)
    theta_test, x_test = sim.sample_joint(cfg["test_pairs"], seed=seed + 1)
    theta_obs, x_obs = sim.observations(cfg["observations"], seed=seed + 2)
    loc, scale = x.mean(0), x.std(0)

    def standardise(v):
        return (v - loc) / scale

    ref_test = reference_log_posterior(sim, theta_test, x_test, cfg["evidence_resolution"])
    ref_obs = reference_log_posterior(sim, theta_obs, x_obs, cfg["evidence_resolution"])
    references = [sim.reference_posterior_samples(x_o, cfg["c2st_samples"], seed=seed + 3 + i)
                  for i, x_o in enumerate(x_obs)]
    out = {"task": name, "theta_dim": sim.theta_dim, "x_dim": sim.x_dim, "models": [], "skipped": {},
           "observations": {"theta": theta_obs.tolist(), "x": x_obs.tolist(), "reference_log_p": ref_obs.tolist()},
           "reference_test_log_p": float(ref_test.mean())}
    for label in models:
        reason = available(label)
        if reason:
            out["skipped"][label] = reason
            log(f"[{name}] {label}: skipped ({reason})")
            continue
        torch.manual_seed(seed)
        model = build(label, sim.theta_dim, sim.x_dim, cfg)
        row = {"model": label, "parameters": model.num_parameters(), "architecture": model.architecture}
        row.update(train(model, theta, standardise(x), cfg, seed))
        with torch.no_grad():
            log_q_test = model.log_prob(theta_test, standardise(x_test)).double()
            gap = ref_test - log_q_test
            row["kl"] = float(gap.mean())
            row["kl_se"] = float(gap.std() / math.sqrt(len(gap)))
            row["test_log_q"] = float(log_q_test.mean())
            row["test_log_q_per_pair"] = log_q_test.tolist()  # for paired differences between models
            row["log_q_obs"] = model.log_prob(theta_obs, standardise(x_obs)).tolist()
        row["c2st"], row["leakage"], row["sample_ms"] = [], [], []
        for i, (x_o, reference) in enumerate(zip(x_obs, references)):
            torch.manual_seed(seed + 100 + i)
            draws, leak, ms = posterior_draws(model, sim, standardise(x_o), cfg["c2st_samples"])
            row["c2st"].append(simulators.c2st(reference, draws, folds=cfg["c2st_folds"], epochs=cfg["c2st_epochs"],
                                               seed=seed + i))
            row["leakage"].append(leak)
            row["sample_ms"].append(ms)
        log(f"[{name}] {label}: {row['ms_per_step']:.2f} ms/step ({row['cpu_ms_per_step']:.2f} CPU), "
            f"KL {row['kl']:.3f} +- {row['kl_se']:.3f}, C2ST {[round(c, 3) for c in row['c2st']]}")
        out["models"].append(row)
    return out


# ----------------------------------------------------------------------------- the report
def _f(value, digits=3):
    return f"{value:.{digits}f}"


def markdown(results: dict) -> str:
    cfg = results["config"]
    lines = [
        "# Neural posterior estimation: pyro_nf against zuko",
        "",
        f"Command: `{results['command']}`  ",
        f"Mode: {results['mode']}; {results['date']}; {results['machine']}; torch threads: {results['threads']}.  ",
        f"Versions: pyro_nf {nf.__version__}, zuko {version('zuko')}, torch {torch.__version__}, "
        f"pyro-ppl {version('pyro-ppl')}.",
        "",
        "## Setup",
        "",
        f"Every model is trained on the same {cfg['simulations']} simulated pairs with the same loop: Adam, "
        f"constant lr {cfg['lr']:g}, {cfg['steps']} steps of batch {cfg['batch_size']} in the same order, loss "
        "`-mean log q(theta | x)`, the context standardised with the training set's statistics. KL is "
        f"`E[log p(theta | x) - log q(theta | x)]` over {cfg['test_pairs']} fresh pairs (nats, 0 is perfect, "
        f"± one standard error). C2ST: {cfg['c2st_samples']} draws of q (inside the prior's support) against "
        f"{cfg['c2st_samples']} exact reference draws, {cfg['c2st_folds']}-fold, MLP (10d, 10d), "
        f"{cfg['c2st_epochs']} epochs; 0.5 is perfect. ms / step: mean wall and CPU (process) time of a training "
        "step after the first 10; on a shared machine the CPU time is the steadier one. ΔKL: the paired "
        "difference to the first model on the same test pairs (negative: better than it), ± its standard error.",
        "",
        "| model | architecture |",
        "| --- | --- |",
    ]
    seen = {}
    for task in results["tasks"]:
        for row in task["models"]:
            seen.setdefault(row["model"], row["architecture"])
    lines += [f"| {label} | {arch} |" for label, arch in seen.items()]
    for task in results["tasks"]:
        lines += ["", f"## {task['task']} (theta in R^{task['theta_dim']}, x in R^{task['x_dim']})", ""]
        for label, reason in task["skipped"].items():
            lines.append(f"{label}: skipped, {reason}.")
        lines += [
            f"Reference mean log p(theta | x) on the test pairs: {_f(task['reference_test_log_p'])} nats.",
            "",
            "| model | parameters | ms / step (wall) | ms / step (CPU) | ms / 1000 draws | train log q (last 10%) | "
            "test log q | KL (nats) | ΔKL | mean C2ST | max leakage |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        first = task["models"][0] if task["models"] else None
        for row in task["models"]:
            per_k = 1000 * sum(row["sample_ms"]) / len(row["sample_ms"]) / cfg["c2st_samples"]
            diff = torch.tensor(first["test_log_q_per_pair"]) - torch.tensor(row["test_log_q_per_pair"])
            se = float(diff.std() / len(diff) ** 0.5)
            delta = "(reference)" if row is first else f"{_f(float(diff.mean()))} ± {_f(se)}"
            lines.append(
                f"| {row['model']} | {row['parameters']} | {_f(row['ms_per_step'], 2)} | "
                f"{_f(row['cpu_ms_per_step'], 2)} | {_f(per_k, 1)} | {_f(-row['final_train_nll'])} | "
                f"{_f(row['test_log_q'])} | {_f(row['kl'])} ± {_f(row['kl_se'])} | {delta} | "
                f"{_f(sum(row['c2st']) / len(row['c2st']))} | {_f(max(row['leakage']))} |")
        obs = task["observations"]
        header = "| observation | theta* | reference log p(theta* \\| x_o) | " + " | ".join(
            f"log q: {row['model']} | C2ST: {row['model']}" for row in task["models"]) + " |"
        lines += ["", "Per observation (log densities at the theta* that produced x_o):", "", header,
                  "| --- | --- | ---: | " + " | ".join("---: | ---:" for _ in task["models"]) + " |"]
        for i, (theta, ref) in enumerate(zip(obs["theta"], obs["reference_log_p"])):
            cells = " | ".join(f"{_f(row['log_q_obs'][i])} | {_f(row['c2st'][i])}" for row in task["models"])
            shown = "(" + ", ".join(f"{v:.2f}" for v in theta) + ")"
            lines.append(f"| {i + 1} | {shown} | {_f(ref)} | {cells} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: seconds")
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated, from {list(TASKS)}")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {list(MODELS)}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=None, help="override the mode's training steps")
    parser.add_argument("--output", default=None, help="write the markdown report here")
    parser.add_argument("--json", default=None, help="write the raw numbers here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    mode = "smoke" if args.smoke else "full"
    cfg = dict(MODES[mode])
    if args.steps is not None:
        cfg["steps"] = args.steps
    tasks = [t for t in args.tasks.split(",") if t]
    models = [m for m in args.models.split(",") if m]
    for t in tasks:
        if t not in TASKS:
            parser.error(f"unknown task {t!r}; choose from {list(TASKS)}")
    for m in models:
        if m not in MODELS:
            parser.error(f"unknown model {m!r}; choose from {list(MODELS)}")

    def log(message):
        print(message, flush=True)

    start = time.perf_counter()
    results = {
        "command": "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__), *sys.argv[1:]]),
        "mode": mode, "date": datetime.date.today().isoformat(), "threads": torch.get_num_threads(),
        "machine": f"{platform.machine()} {platform.processor() or platform.system()}, {os.cpu_count()} CPUs",
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()},
        "tasks": [run_task(t, cfg, args.seed, models, log) for t in tasks],
    }
    results["wall_s"] = time.perf_counter() - start
    text = markdown(results) + f"\nTotal wall time: {results['wall_s']:.0f} s.\n"
    print(text)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
