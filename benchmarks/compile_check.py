"""Optional: ``torch.compile`` of a whole bijective pyro_nf flow's ``log_prob``.

Two ways to hold the flow, the same density:

* ``nf.transformed(flow)``: a ``FlowDistribution`` over the whole ``Flow``. Its ``log_prob`` asks each
  layer once for its inverse and log-det together (``inverse_and_ladj``), so a compiled call runs each
  conditioner once, as eager does (where the caches answer the rest).
* ``TransformedDistribution(base, list(flow.parts))``: torch's generic walk over the layers, calling each
  layer's inverse and then its log-determinant: two conditioner passes per layer when compiled, since the
  layers' caches are off while compiling (``torch.compiler.is_compiling()``).

``torch._dynamo.explain`` counts graphs and graph breaks; eager (the usual ``nf.transformed(flow)``) and
compiled ``log_prob`` (no gradients, a fresh tensor each call) are timed interleaved.

**Training step** (``train_run``, or ``python benchmarks/compile_check.py``): one maximum-likelihood step
(``zero_grad``, ``-log_prob(x.clone()).mean()``, ``backward``, ``Adam.step``) at D = 64, batch 1024, of
``nf.compile(model).nll_loss`` (inductor) against eager pyro_nf and the eager peers of ``adapters.py`` at matched
sizes, every contestant with the same Adam (``fused=True`` by default: the fastest eager Adam on a CPU; ``--adam
plain`` for the default one). The contestants run round-robin inside each repeat, the first one rotating; a
ratio is taken per repeat. ``gemm_ms`` replays the matrix products of one compiled step (profiled shapes,
contiguous operands) alone: the part of the step that compilation cannot shorten.

    python benchmarks/compile_check.py --threads 1 --repeats 9 --json /tmp/compile_train.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import pyro.distributions as dist  # noqa: E402
import torch  # noqa: E402
from speed import _short, _timed  # noqa: E402

VARIANTS = ("whole Flow", "flow.parts")


def run(archs, dim: int, batch: int, repeats: int, device, log=print) -> list[dict]:
    import pyro_nf as nf

    rows = []
    for arch in archs:
        torch.manual_seed(0)
        flow = nf.build(arch, dim).to(device)
        eager_model = nf.transformed(flow)
        x = torch.randn(batch, dim, device=device)

        def eager(model=eager_model, x=x):
            with torch.no_grad():
                return model.log_prob(x.clone())

        for variant in VARIANTS:
            model = eager_model if variant == "whole Flow" else dist.TransformedDistribution(
                eager_model.base_dist, list(flow.parts))
            row = dict(arch=arch, dim=dim, variant=variant)
            try:
                torch._dynamo.reset()
                explanation = torch._dynamo.explain(model.log_prob)(x.clone())
                row["graphs"], row["breaks"] = explanation.graph_count, explanation.graph_break_count
                reasons = sorted({str(b.reason).splitlines()[0][:80] for b in explanation.break_reasons})
                row["reasons"] = "; ".join(reasons)
                torch._dynamo.reset()
                compiled = torch.compile(model.log_prob)
                start = time.perf_counter()
                with torch.no_grad():
                    compiled(x.clone())
                row["compile_s"] = time.perf_counter() - start

                def fast(compiled=compiled, x=x):
                    with torch.no_grad():
                        return compiled(x.clone())

                row["max_abs_diff"] = float((eager() - fast()).abs().max())
                eager_t, fast_t = [], []
                for _ in range(repeats):
                    eager_t.append(_timed(eager, 3, device))
                    fast_t.append(_timed(fast, 3, device))
                row["eager_ms"] = 1e3 * statistics.median(eager_t)
                row["compiled_ms"] = 1e3 * statistics.median(fast_t)
                row["speedup"] = statistics.median(e / f for e, f in zip(eager_t, fast_t))
            except Exception as error:  # noqa: BLE001 - reported in the table
                row["error"] = _short(error)
            rows.append(row)
            shown = f"{row['speedup']:.2f}x" if "speedup" in row else row.get("error", "")
            log(f"  compile {arch:18s} D={dim} {variant:10s}: graphs {row.get('graphs')}, "
                f"breaks {row.get('breaks')}, {shown}")
    torch._dynamo.reset()
    return rows


# ----------------------------------------------------------------------------- the compiled training step
PEERS = ("pyro", "zuko", "nflows", "normflows")
TRAIN_ARCHS = ("realnvp", "maf", "nsf_coupling")


def _train_step(module, loss_fn, x, fused: bool):
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-4, fused=fused)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(x.clone())
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


def gemm_time(step, calls: int = 5) -> tuple[float, float, int]:
    """Seconds per step of the matrix products that one call of ``step`` runs (profiled, then replayed alone on
    contiguous operands of the same shapes), their GFLOP and their number."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        step()
    products = []
    for event in prof.events():
        name = event.name.split("::")[-1]
        if name not in ("mm", "addmm", "bmm", "baddbmm"):
            continue
        shapes = [tuple(s) for s in event.input_shapes if isinstance(s, list) and s]
        shapes = shapes[:3] if name in ("addmm", "baddbmm") else shapes[:2]
        products.append((getattr(torch, name), [torch.randn(s) for s in shapes]))
    flop = sum(2 * a[-2].shape[-2] * a[-2].shape[-1] * a[-1].shape[-1] * (a[-1].shape[0] if a[-1].dim() == 3 else 1)
               for _, a in products)

    def replay():
        for function, operands in products:
            function(*operands)

    replay()
    best = min(_timed(replay, calls, torch.device("cpu")) for _ in range(5))
    return best, flop / 1e9, len(products)


def train_run(archs=TRAIN_ARCHS, dim: int = 64, batch: int = 1024, repeats: int = 9, peers=PEERS, fused: bool = True,
              log=print, **compile_kwargs) -> list[dict]:
    """Per architecture: median ms per training step of every contestant, the ratios to the compiled step, the
    compile time, the loss agreement at the start and the GEMM share (see the module docstring)."""
    import adapters

    import pyro_nf as nf
    from pyro_nf.compiled import compile as nf_compile

    device = torch.device("cpu")
    rows = []
    for arch in archs:
        torch.manual_seed(1)
        x = torch.randn(batch, dim)
        steps, errors = {}, {}
        for lib in ("pyro_nf", *peers):
            try:
                model = adapters.build(lib, arch, dim)
                steps[f"{lib} eager"] = _train_step(model.module, lambda v, m=model: -m.log_prob(v).mean(), x, fused)
            except Exception as error:  # noqa: BLE001 - a failing peer is reported, not fatal
                errors[lib] = _short(error)
        model = adapters.build("pyro_nf", arch, dim)  # the same seed: the same start as "pyro_nf eager"
        fast = nf_compile(model.module, **compile_kwargs)
        row = dict(arch=arch, dim=dim, batch=batch, threads=torch.get_num_threads(), fused_adam=fused, errors=errors,
                   version=nf.__version__)
        with torch.no_grad():
            row["start_loss_diff"] = abs(float(fast.nll_loss(x)) - float(-model.log_prob(x).mean()))
        compiled = _train_step(model.module, fast.nll_loss, x, fused)
        start = time.perf_counter()
        compiled()  # the eager first call of nf.compile
        compiled()  # the compilation
        row["compile_s"] = time.perf_counter() - start
        steps["pyro_nf compiled"] = compiled
        names = list(steps)
        for name in names:  # warm-up, and the calls per timing from the second call
            steps[name]()
        calls = {name: max(1, min(10, round(0.15 / _timed(steps[name], 1, device)))) for name in names}
        times = {name: [] for name in names}
        for r in range(repeats):
            for name in names[r % len(names):] + names[:r % len(names)]:
                times[name].append(_timed(steps[name], calls[name], device))
        row["ms"] = {name: 1e3 * statistics.median(t) for name, t in times.items()}
        peer_names = [f"{lib} eager" for lib in peers if f"{lib} eager" in times]
        fastest = min(peer_names, key=lambda name: row["ms"][name])
        row["fastest_peer"] = fastest.split()[0]
        for label, ref in (("vs_fastest_peer", fastest), ("vs_pyro_nf_eager", "pyro_nf eager")):
            ratios = [a / b for a, b in zip(times[ref], times["pyro_nf compiled"])]
            q = statistics.quantiles(ratios, n=4)
            row[label] = (statistics.median(ratios), q[0], q[2])
        for name, step in (("compiled", compiled), ("fastest_peer", steps[fastest])):
            seconds, gflop, count = gemm_time(step)
            row[f"gemm_ms_{name}"] = 1e3 * seconds
            row[f"gemm_share_{name}"] = 1e3 * seconds / row["ms"]["pyro_nf compiled" if name == "compiled" else fastest]
            row[f"gemm_gflop_{name}"], row[f"gemm_count_{name}"] = gflop, count
        rows.append(row)
        ratio = row["vs_fastest_peer"]
        log(f"  train {arch:14s} D={dim} threads={row['threads']}: compiled {row['ms']['pyro_nf compiled']:.2f} ms, "
            f"eager {row['ms']['pyro_nf eager']:.2f} ms, fastest peer {fastest} {row['ms'][fastest]:.2f} ms -> "
            f"{ratio[0]:.2f}x ({ratio[1]:.2f}-{ratio[2]:.2f}); GEMMs {row['gemm_ms_compiled']:.2f} ms "
            f"({100 * row['gemm_share_compiled']:.0f}% of the compiled step); compile {row['compile_s']:.0f} s")
    torch._dynamo.reset()
    return rows


def train_table(rows: list[dict]) -> str:
    """Markdown table of :func:`train_run` rows."""
    runs = any("run" in row for row in rows)  # rows of several runs (``run.py --merge``)
    lines = ["| architecture | " + ("run | " if runs else "") + "threads | compiled ms | eager pyro_nf ms | fastest "
             "eager peer (ms) | speed-up over it (IQR) | over eager pyro_nf | GEMMs ms (share of compiled / of peer "
             "step) | compile s |",
             "| --- " * (10 if runs else 9) + "|"]
    for row in rows:
        ms, (r, q1, q3), e = row["ms"], row["vs_fastest_peer"], row["vs_pyro_nf_eager"]
        peer = f"{row['fastest_peer']} eager"
        run = f"{row['run']} | " if runs else ""
        lines.append(f"| {row['arch']} | {run}{row['threads']} | {ms['pyro_nf compiled']:.2f} | "
                     f"{ms['pyro_nf eager']:.2f} | "
                     f"{row['fastest_peer']} ({ms[peer]:.2f}) | {r:.2f}x ({q1:.2f}-{q3:.2f}) | {e[0]:.2f}x | "
                     f"{row['gemm_ms_compiled']:.2f} ({100 * row['gemm_share_compiled']:.0f}% / "
                     f"{100 * row['gemm_share_fastest_peer']:.0f}%) | {row['compile_s']:.0f} |")
    return "\n".join(lines)


def profile_step(arch: str, dim: int = 64, batch: int = 1024, steps: int = 20, top: int = 12, fused: bool = True):
    """Where the compiled training step of ``arch`` spends its time: the ``top`` operations by self CPU time,
    in ms per step (``torch.profiler``), after the compilation."""
    import adapters
    from torch.profiler import ProfilerActivity, profile

    from pyro_nf.compiled import compile as nf_compile

    torch.manual_seed(1)
    x = torch.randn(batch, dim)
    model = adapters.build("pyro_nf", arch, dim)
    step = _train_step(model.module, nf_compile(model.module).nll_loss, x, fused)
    for _ in range(5):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:top]
    print(f"compiled {arch} D={dim} batch {batch}: ms per step (self CPU time), calls per step")
    for event in events:
        print(f"  {event.key[:64]:66s} {event.self_cpu_time_total / steps / 1e3:7.3f} {event.count // steps:5d}")


def main(argv=None):
    parser = argparse.ArgumentParser(description="The compiled training step against eager pyro_nf and the peers.")
    parser.add_argument("--archs", default=",".join(TRAIN_ARCHS), help="default: %(default)s")
    parser.add_argument("--dim", type=int, default=64, help="default: %(default)s")
    parser.add_argument("--batch", type=int, default=1024, help="default: %(default)s")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=9, help="default: %(default)s")
    parser.add_argument("--adam", choices=("fused", "plain"), default="fused", help="default: %(default)s")
    parser.add_argument("--json", help="write the rows here")
    parser.add_argument("--profile", action="store_true",
                        help="instead of timing: where each compiled step spends its time (torch.profiler)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.profile:
        for arch in args.archs.split(","):
            profile_step(arch, args.dim, args.batch, fused=args.adam == "fused")
        return
    load = os.getloadavg()[0]
    print(f"torch {torch.__version__}, {args.threads} thread(s), load average {load:.2f}")
    rows = train_run(args.archs.split(","), args.dim, args.batch, args.repeats, fused=args.adam == "fused")
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    print(train_table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
