"""Variational quality at equal budget (issue 13): reverse KL, importance ESS and mode coverage of planar and
IAF guides fitted to the energies U1..U4 (pyro_nf.targets) by one plain reverse-KL loop, the same for every
library.

The loop: base N(0, I) in 2-D; at every step draw 256 reparameterised samples ``z ~ q`` with their
``log q(z)`` (each library's own one-pass call, see ``adapters.Model.sample_and_log_prob``), loss
``mean(log q(z) - log p~(z))``, Adam at lr 5e-3, 3000 steps, no annealing, no clipping, no schedule.
``torch.manual_seed(seed)`` before building the flow and again before training.

Evaluation from 20000 fresh draws of the fitted q, with log-weights ``log w = log p~(z) - log q(z)``:

* reverse KL ``= -mean(log w) + log Z`` (log Z from ``pyro_nf.targets``: exact for U2..U4, quadrature for U1);
* ESS fraction, Kish's ``(sum w)^2 / (N sum w^2)``;
* mode coverage: each target has two regions A and B (``REGIONS``) whose mass under p is known; with
  ``q(R)`` the fraction of samples in R, the coverage ratio is ``min(q(A)/p(A), q(B)/p(B))`` and both modes
  count as covered when it is at least 0.6 (for U1, where p(A) = p(B) = 1/2: each half holds at least 30% of
  the samples);
* ``min(1+c)``: for planar flows, the smallest ``1 + w.u_hat = softplus(w.u)`` over the layers (the Jacobian
  of a layer is singular at 0; the same reparameterisation in all three libraries).

Planar rows also include ``pyro_nf_old``: pyro_nf's planar layers with the initialisation they had before
issue 13 (the same random draws), the before/after comparison; ``--libraries pyro_nf_wide`` (or ``_x2``,
``_c0``) selects the other initialisations of ``INIT_VARIANTS``.

Usage (from the repository root)::

    python benchmarks/variational.py --smoke            # seconds: the pipeline end to end
    python benchmarks/variational.py --quick --jobs 2   # U1 only, 3 seeds, every guide and peer
    python benchmarks/variational.py --jobs 2 --json out.json --output out.md   # the full table
    python benchmarks/variational.py --diagnose pyro_nf_old   # where a small ESS comes from (one fit to U1)
    python benchmarks/variational.py --spread                 # fresh planar flows: spread, initial KL to U1
    python benchmarks/variational.py --fit-target U1,U4 --seeds 0   # pyro_nf.infer.fit_target defaults, K = 32

``--jobs N`` runs fits in N processes of one torch thread each (every fit is seeded, so the numbers do not
depend on N). Results and their discussion: ``benchmarks/variational.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import adapters  # noqa: E402

TARGETS = ("U1", "U2", "U3", "U4")
PLANAR_LIBS = ("pyro_nf", "pyro_nf_old", "pyro", "normflows")
IAF_LIBS = ("pyro_nf", "pyro", "zuko", "nflows", "normflows")
# (label, architecture, number of layers, libraries)
GUIDES = (
    ("planar K=2", "planar", 2, PLANAR_LIBS),
    ("planar K=8", "planar", 8, PLANAR_LIBS),
    ("planar K=32", "planar", 32, PLANAR_LIBS),
    ("iaf (5 layers)", "iaf", adapters.ARCHITECTURES["iaf"]["layers"], IAF_LIBS),
)
COVERED = 0.6  # the coverage ratio at or above which both regions count as covered


def _w1(z1):
    return torch.sin(0.5 * math.pi * z1)


def _w2(z1):
    return 3.0 * torch.exp(-0.5 * ((z1 - 1.0) / 0.6) ** 2)


def _w3(z1):
    return 3.0 * torch.sigmoid((z1 - 1.0) / 0.3)


# region A of each target (B is its complement): the part a one-mode fit tends to lose
REGIONS = {
    "U1": ("z1 < 0 (the left mode)", lambda z: z[:, 0] < 0),
    "U2": ("z1 < 0 (the left half of the wave)", lambda z: z[:, 0] < 0),
    "U3": ("0 < z1 < 2, z2 < w1 - w2/2 (the split-off lower arc)",
           lambda z: (z[:, 0] > 0) & (z[:, 0] < 2) & (z[:, 1] < _w1(z[:, 0]) - 0.5 * _w2(z[:, 0]))),
    "U4": ("z1 > 1, z2 < w1 - w3/2 (the lower step)",
           lambda z: (z[:, 0] > 1) & (z[:, 1] < _w1(z[:, 0]) - 0.5 * _w3(z[:, 0]))),
}
_REFERENCE = {}


def reference_mass(name: str, n: int = 400_000) -> float:
    """p(A) from n exact samples of the target (U1: from its fine grid; 1/2 by symmetry), in a forked RNG."""
    if name not in _REFERENCE:
        from pyro_nf import targets

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(12345)
            z = targets.load(name).sample((n,)).double()
        _REFERENCE[name] = float(REGIONS[name][1](z).double().mean())
    return _REFERENCE[name]


#: pseudo-libraries: pyro_nf with another initialisation of its planar layers (issue 13's comparison), each from
#: the pre-fix draws of ``u`` and ``w`` (the same random numbers): "old" is the initialisation before the fix,
#: "wide" normflows' scales (fresh draws), "x2" the old draws doubled, "c0" the old draws with ``u``'s component
#: along ``w`` set so that ``c = 0`` exactly (a volume-preserving shear)
INIT_VARIANTS = ("old", "wide", "x2", "c0")


def planar_init(module, variant: str) -> None:
    """Re-initialise the planar layers of ``module`` as ``variant`` (see ``INIT_VARIANTS``)."""
    from pyro_nf.transforms import Planar, planar

    shift = planar._SOFTPLUS_INV_ONE
    with torch.no_grad():
        for m in module.modules():
            if not isinstance(m, Planar):
                continue
            m.u.sub_(shift * m.w / (m.w @ m.w))  # undo the fix: the old initialisation
            d = m.input_dim
            if variant == "wide":
                m.u.uniform_(-math.sqrt(2), math.sqrt(2))
                m.w.uniform_(-math.sqrt(2 / d), math.sqrt(2 / d))
            elif variant == "x2":
                m.u.mul_(2)
                m.w.mul_(2)
            elif variant == "c0":
                m.u.add_((shift - m.w @ m.u) * m.w / (m.w @ m.w))
            elif variant != "old":
                raise ValueError(f"unknown initialisation {variant!r}; valid: {INIT_VARIANTS}")


def build(library: str, arch: str, layers: int, seed: int, device="cpu") -> adapters.Model:
    """``adapters.build`` with the number of layers overridden (the rest of the architecture is the matched one).
    ``library="pyro_nf_<variant>"`` is pyro_nf with its planar layers initialised as ``variant``, e.g.
    ``pyro_nf_old``: as before issue 13."""
    variant = library[len("pyro_nf_"):] if library.startswith("pyro_nf_") else None
    library = "pyro_nf" if variant else library
    reason = adapters.unavailable(library, arch)
    if reason:
        raise adapters.NotAvailable(reason)
    cfg = dict(adapters.ARCHITECTURES[arch], layers=layers)
    torch.manual_seed(seed)
    parts = adapters._BUILDERS[library](arch, 2, cfg, torch.device(device))
    if variant:
        planar_init(parts[0], variant)
    return adapters.Model(library, arch, 2, *parts)


def fit(model, target, steps: int, batch: int, lr: float) -> None:
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for step in range(steps):
        optimizer.zero_grad(set_to_none=True)
        z, log_q = model.sample_and_log_prob(batch)
        loss = (log_q - target.log_prob(z)).mean()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss at step {step}")
        loss.backward()
        optimizer.step()


@torch.no_grad()
def planar_margin(model) -> float | None:
    """min over planar layers of ``1 + w.u_hat = softplus(w.u)`` (0 is the invertibility boundary)."""
    values = [float(torch.nn.functional.softplus((m.w * m.u).sum())) for m in model.module.modules()
              if type(m).__name__ == "Planar"]
    return min(values) if values else None


@torch.no_grad()
def evaluate(model, target, log_z: float, num_samples: int, chunk: int = 5000) -> dict:
    zs, log_ws = [], []
    done = 0
    while done < num_samples:
        n = min(chunk, num_samples - done)
        z, log_q = model.sample_and_log_prob(n)
        zs.append(z.double())
        log_ws.append((target.log_prob(z) - log_q).double())
        done += n
    z, log_w = torch.cat(zs), torch.cat(log_ws)
    if not torch.isfinite(log_w).all():
        raise FloatingPointError(f"{int((~torch.isfinite(log_w)).sum())} non-finite log-weights")
    n = log_w.numel()
    ess = float(torch.exp(2 * torch.logsumexp(log_w, 0) - torch.logsumexp(2 * log_w, 0))) / n
    in_a = REGIONS[target.name][1](z)
    q_a, p_a = float(in_a.double().mean()), reference_mass(target.name)
    ratio = min(q_a / p_a, (1 - q_a) / (1 - p_a))
    return dict(kl=float(-log_w.mean()) + log_z, kl_se=float(log_w.std()) / math.sqrt(n), ess=ess,
                q_a=q_a, p_a=p_a, coverage=ratio, covered=ratio >= COVERED,
                max_log_w=float(log_w.max() - torch.logsumexp(log_w, 0)))


def run_one(task) -> dict:
    """One fit and its evaluation; a failure is a result."""
    target_name, label, arch, layers, library, seed, steps, batch, lr, num_samples = task
    torch.set_num_threads(1)
    from pyro_nf import targets

    row = dict(target=target_name, guide=label, arch=arch, layers=layers, library=library, seed=seed)
    start = time.perf_counter()
    try:
        target = targets.load(target_name)
        log_z = target.exact_log_normalizer()
        log_z = target.log_normalizer() if log_z is None else log_z
        model = build(library, arch, layers, seed)
        torch.manual_seed(seed)
        fit(model, target, steps, batch, lr)
        torch.manual_seed(10_000 + seed)
        row.update(status="ok", **evaluate(model, target, log_z, num_samples), margin=planar_margin(model))
    except adapters.NotAvailable as reason:
        row.update(status="n/a", reason=str(reason))
    except Exception as error:  # noqa: BLE001 - a failed fit is a result
        row.update(status="error", reason=f"{type(error).__name__}: {error}".splitlines()[0][:120])
    row["seconds"] = time.perf_counter() - start
    return row


def diagnose(library: str = "pyro_nf_old", layers: int = 8, seed: int = 0, steps: int = 3000, batch: int = 256,
             lr: float = 5e-3, num_samples: int = 20000, repeats: int = 5, grid: int = 400, box: float = 8.0) -> None:
    """Where a small ESS comes from, for a pyro_nf planar fit to U1 (``library`` "pyro_nf" or "pyro_nf_old"):
    log q from ``rsample``'s cached log-determinants against log q recomputed through the numerical inverse,
    the integral of q on a grid, q's mass on each side, the KL and the ESS by quadrature (the ESS fraction of
    the population, ``1 / E_q[(p/q)^2]``, which 20000 draws estimate) against the ESS of several independent
    draws, the largest log-weights and the layers' distance to the invertibility boundary."""
    from pyro_nf import targets

    target = targets.load("U1")
    log_z = target.log_normalizer()
    model = build(library, "planar", layers, seed)
    torch.manual_seed(seed)
    start = time.perf_counter()
    fit(model, target, steps, batch, lr)
    print(f"{library} planar K={layers} on U1, seed {seed}: {steps} steps in {time.perf_counter() - start:.0f} s")
    with torch.no_grad():
        for m in model.module.modules():
            if type(m).__name__ == "Planar":
                u_hat, c, one_plus_c = m._coefficients()
                print(f"  layer: c = w.u_hat = {float(c):+.3f} (1 + c = {float(one_plus_c):.3f}), |w| = "
                      f"{float(m.w.norm()):.3f}, b = {float(m.bias):+.3f}")
        torch.manual_seed(10_000 + seed)
        for r in range(repeats):
            z, log_q = model.sample_and_log_prob(num_samples)
            recomputed = model.log_prob(z.clone())  # a new tensor: through the numerical inverse
            log_w = (target.log_prob(z) - log_q).double()
            ess = float(torch.exp(2 * torch.logsumexp(log_w, 0) - torch.logsumexp(2 * log_w, 0))) / num_samples
            weights = torch.softmax(log_w, 0)
            top = log_w.topk(3).indices
            print(f"  draw {r}: KL {float(-log_w.mean()) + log_z:.3f}, ESS {ess:.4f}, max |log q cached - log q "
                  f"inverse| {float((log_q - recomputed).abs().max()):.1e}, samples with z1 < 0: "
                  f"{float((z[:, 0] < 0).double().mean()):.4f} holding {float(weights[z[:, 0] < 0].sum()):.2f} of "
                  f"the weight; top log w - logsumexp: "
                  f"{[round(float(v), 2) for v in (log_w[top] - torch.logsumexp(log_w, 0))]} at "
                  f"{[[round(float(a), 2) for a in z[i]] for i in top]}")
        mid = (torch.arange(grid, dtype=torch.float64) + 0.5) * (2 * box / grid) - box
        cell = (2 * box / grid) ** 2
        points = torch.cartesian_prod(mid, mid)
        log_q = torch.cat([model.log_prob(points[i:i + 40000].float()).double() for i in range(0, len(points), 40000)])
        log_p = target.log_prob(points) - log_z
        left = points[:, 0] < 0
        q_cell, p_cell = log_q.exp() * cell, log_p.exp() * cell
        print(f"  quadrature on [-{box:g}, {box:g}]^2, {grid}^2 cells: integral of q {float(q_cell.sum()):.6f}, of p "
              f"{float(p_cell.sum()):.6f}; q(z1 < 0) {float(q_cell[left].sum()):.2e}, p(z1 < 0) "
              f"{float(p_cell[left].sum()):.3f}; KL {float((q_cell * (log_q - log_p)).sum()):.3f}; population ESS "
              f"fraction 1 / E_q[(p/q)^2] = {1 / float(((2 * log_p - log_q).exp() * cell).sum()):.2e}")


@torch.no_grad()
def initial_spread(libraries, seeds=range(10), num_samples: int = 4000) -> None:
    """Fresh planar flows (K = 2, 8, 32) before any training: the range over seeds of the samples' standard
    deviation per coordinate (the base's is 1) and of the reverse KL to U1."""
    from pyro_nf import targets

    target = targets.load("U1")
    log_z = target.log_normalizer()
    for layers in (2, 8, 32):
        for library in libraries:
            stds, kls = [], []
            for seed in seeds:
                model = build(library, "planar", layers, seed)
                torch.manual_seed(10_000 + seed)
                z, log_q = model.sample_and_log_prob(num_samples)
                stds += z.std(0).tolist()
                kls.append(float((log_q - target.log_prob(z)).mean()) + log_z)
            kls.sort()
            print(f"K={layers:2d} {library:12s} std per coordinate {min(stds):.3f}-{max(stds):.2f}, initial KL to U1 "
                  f"{kls[0]:.1f}-{kls[-1]:.1f} nats (median {statistics.median(kls):.1f}) over {len(kls)} seeds")


def default_fit_target(target_names, seeds, libraries=("pyro_nf", "pyro_nf_old"), layers: int = 32) -> None:
    """``pyro_nf.infer.fit_target`` with its defaults (annealing, cosine schedule, clipping, 10000 steps) on a
    planar flow of ``layers`` layers, for each initialisation in ``libraries``: the fix's effect on the library's
    own documented fit. Reverse KL and ESS from ``pyro_nf.infer`` (20000 draws)."""
    from pyro_nf import infer, targets

    for name in target_names:
        for seed in seeds:
            for library in libraries:
                model = build(library, "planar", layers, seed)
                start = time.perf_counter()
                infer.fit_target(model.module, targets.load(name), seed=seed, progress=False)
                torch.manual_seed(10_000 + seed)
                kl = infer.reverse_kl(model.module, targets.load(name))
                ess = infer.effective_sample_size(model.module, targets.load(name))
                print(f"{name} planar K={layers} {library:12s} seed {seed}: fit_target defaults, reverse KL {kl:.3f}, "
                      f"ESS {ess:.3f} ({time.perf_counter() - start:.0f} s)", flush=True)


def _line(row) -> str:
    head = f"{row['target']} {row['guide']:14s} {row['library']:9s} seed {row['seed']}"
    if row["status"] != "ok":
        return f"{head}  {row['status']}: {row['reason']}  ({row['seconds']:.0f}s)"
    margin = "" if row["margin"] is None else f" min(1+c) {row['margin']:.2f}"
    return (f"{head}  KL {row['kl']:.3f}  ESS {row['ess']:.3f}  q(A) {row['q_a']:.3f}  coverage "
            f"{row['coverage']:.2f}{margin}  ({row['seconds']:.0f}s)")


def _cells(rows) -> list[str]:
    ok = [r for r in rows if r["status"] == "ok"]
    if not ok:
        return [rows[0]["status"] if rows else "-"] + [""] * 4
    kls = [r["kl"] for r in ok]
    bad = len(rows) - len(ok)
    kl = f"{statistics.mean(kls):.3f} ({' / '.join(f'{v:.2f}' for v in kls)})"
    per_ess = " / ".join(f"{r['ess']:.2f}" for r in ok)
    per_cov = " / ".join(f"{r['coverage']:.2f}" for r in ok)
    ess = f"{statistics.median([r['ess'] for r in ok]):.3f} ({per_ess})"
    cov = f"{sum(r['covered'] for r in ok)}/{len(ok)} ({per_cov})"
    margins = [r["margin"] for r in ok if r["margin"] is not None]
    margin = f"{min(margins):.2f}" if margins else "-"
    if bad:
        kl += f", {bad} failed"
    return [kl, ess, cov, margin, f"{statistics.mean(r['seconds'] for r in rows):.0f}"]


def markdown(rows, settings: dict) -> str:
    out = [f"Settings: {settings['steps']} steps, batch {settings['batch']}, Adam lr {settings['lr']}, no annealing; "
           f"{settings['num_samples']} evaluation samples; seeds {settings['seeds']}.", ""]
    for name in dict.fromkeys(r["target"] for r in rows):
        p_a = next((r["p_a"] for r in rows if r["target"] == name and r["status"] == "ok"), float("nan"))
        out += [f"### {name}", "",
                f"Region A: {REGIONS[name][0]}, p(A) = {p_a:.3f}.", "",
                "| guide | library | reverse KL, mean (per seed) | ESS, median (per seed) "
                "| both covered (ratio per seed) | min(1+c) | s/fit |",
                "| --- | --- | --- | --- | --- | --- | --- |"]
        for label in dict.fromkeys(r["guide"] for r in rows if r["target"] == name):
            for library in dict.fromkeys(r["library"] for r in rows if r["target"] == name and r["guide"] == label):
                group = [r for r in rows if (r["target"], r["guide"], r["library"]) == (name, label, library)]
                out.append(f"| {label} | {library} | " + " | ".join(_cells(group)) + " |")
        out.append("")
    failures = [r for r in rows if r["status"] != "ok"]
    if failures:
        out += ["Failures and gaps:", ""]
        out += [f"- {r['target']} {r['guide']} {r['library']} seed {r['seed']}: {r['status']}: {r['reason']}"
                for r in failures]
    return "\n".join(out) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--smoke", action="store_true", help="seconds: U1, K=2 planar and IAF, 20 steps, 1 seed")
    mode.add_argument("--quick", action="store_true", help="U1 only, every guide and peer, 3 seeds")
    mode.add_argument("--diagnose", metavar="LIBRARY", help="the ESS diagnosis of one planar fit to U1 (pyro_nf or "
                      "pyro_nf_old, K from --layers, seed: the first of --seeds)")
    mode.add_argument("--spread", action="store_true", help="fresh planar flows' spread and initial KL to U1, "
                      "K = 2, 8, 32, seeds 0-9, for --libraries (default pyro_nf,pyro_nf_old,pyro,normflows)")
    mode.add_argument("--fit-target", metavar="TARGETS", help="pyro_nf.infer.fit_target with its defaults on a "
                      "32-layer planar flow, pyro_nf against pyro_nf_old, for these targets (comma-separated), --seeds")
    parser.add_argument("--layers", type=int, default=8, help="K for --diagnose")
    parser.add_argument("--targets", help="comma-separated, default U1,U2,U3,U4")
    parser.add_argument("--guides", help="comma-separated labels among: " + ", ".join(g[0] for g in GUIDES))
    parser.add_argument("--libraries", help="comma-separated, default every installed one")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--num-samples", type=int, default=20000)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--json", help="write every per-seed row here")
    parser.add_argument("--output", help="write the markdown tables here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.diagnose:
        diagnose(args.diagnose, args.layers, int(args.seeds.split(",")[0]), args.steps, args.batch, args.lr,
                 args.num_samples)
        return []
    if args.fit_target:
        default_fit_target(args.fit_target.split(","), [int(v) for v in args.seeds.split(",")])
        return []
    if args.spread:
        initial_spread(args.libraries.split(",") if args.libraries else ["pyro_nf", "pyro_nf_old", "pyro", "normflows"])
        return []

    targets, guides, seeds = list(TARGETS), list(GUIDES), [int(s) for s in args.seeds.split(",")]
    steps, num_samples = args.steps, args.num_samples
    if args.smoke:
        targets, seeds, steps, num_samples = ["U1"], [0], 20, 2000
        guides = [g for g in GUIDES if g[0] in ("planar K=2", "iaf (5 layers)")]
    elif args.quick:
        targets = ["U1"]
    if args.targets:
        targets = args.targets.split(",")
    if args.guides:
        wanted = args.guides.split(",")
        guides = [g for g in GUIDES if g[0] in wanted]
    libraries = args.libraries.split(",") if args.libraries else [*adapters.LIBRARIES, "pyro_nf_old"]
    skipped = {lib: adapters.import_error("pyro_nf" if lib.startswith("pyro_nf") else lib) for lib in libraries}
    for lib, reason in skipped.items():
        if reason:
            print(f"skipping {lib}: {reason}")
    libraries = [lib for lib in libraries if not skipped[lib]]

    variants = [lib for lib in libraries if lib.startswith("pyro_nf_")]
    tasks = [(t, label, arch, layers, lib, seed, steps, args.batch, args.lr, num_samples)
             for t in targets for label, arch, layers, libs in guides
             for lib in [*libs, *(v for v in variants if arch == "planar" and v not in libs)] if lib in libraries
             for seed in seeds]
    print(f"{len(tasks)} fits, {args.jobs} process(es), torch {torch.__version__}, {platform.machine()}, "
          f"{os.cpu_count()} CPUs", flush=True)
    settings = dict(steps=steps, batch=args.batch, lr=args.lr, num_samples=num_samples, seeds=seeds)
    start = time.perf_counter()
    rows = []

    def record(row):
        print(_line(row), flush=True)
        rows.append(row)
        if args.json:  # after every fit, so that a long run can be followed and a broken one keeps its rows
            Path(args.json).write_text(json.dumps(dict(settings=settings, rows=rows), indent=1))

    if args.jobs > 1:
        import multiprocessing

        # the longest fits first (planar cost grows with K), so that the processes finish together
        ordered = sorted(tasks, key=lambda task: -(task[3] if task[2] == "planar" else 8))
        with multiprocessing.get_context("fork").Pool(args.jobs) as pool:
            for row in pool.imap_unordered(run_one, ordered):
                record(row)
        rows.sort(key=lambda row: tasks.index(next(t for t in tasks if (t[0], t[1], t[4], t[5]) == (
            row["target"], row["guide"], row["library"], row["seed"]))))
    else:
        for task in tasks:
            record(run_one(task))
    wall = time.perf_counter() - start
    text = markdown(rows, settings)
    print(f"\n{text}\nwall time {wall:.0f} s")
    if args.output:
        Path(args.output).write_text(text + f"\nWall time {wall:.0f} s with --jobs {args.jobs}.\n")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(settings=settings, wall_seconds=wall, rows=rows), indent=1))
    return rows


if __name__ == "__main__":
    main()
