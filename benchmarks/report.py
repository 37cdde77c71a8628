"""Markdown for the benchmark report (``benchmarks/README.md``)."""

from __future__ import annotations

import math

from adapters import LIBRARIES, TRAIN_KIND, architecture_table


class Footnotes:
    """Numbers each distinct n/a or error reason once: cells say ``n/a [2]``."""

    def __init__(self):
        self.items: list[str] = []

    def ref(self, text: str) -> str:
        if text not in self.items:
            self.items.append(text)
        return f"[{self.items.index(text) + 1}]"

    def cell(self, kind: str, value) -> str:
        return f"{kind} {self.ref(str(value))}"

    def markdown(self) -> str:
        return "\n".join(f"[{i}] {text}  " for i, text in enumerate(self.items, 1))


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _ratio(value) -> str:
    median, q1, q3 = value
    if q1 is None:
        return f"{median:.2f}"
    return f"{median:.2f} ({q1:.2f}-{q3:.2f})"


def speed_tables(rows: list[dict], libraries, notes: Footnotes) -> str:
    peers = [lib for lib in libraries if lib != "pyro_nf"]
    out = []
    titles = {
        "log_prob": "`log_prob` of a fresh batch (no gradients)",
        "train": "one training step (loss, `backward`, `Adam.step`)",
        "sample": "`sample` (no gradients)",
    }
    for op, title in titles.items():
        table_rows = []
        for row in rows:
            if row["op"] != op:
                continue
            step = ""
            if op == "train":
                step = " (reverse KL)" if TRAIN_KIND[row["arch"]] == "reverse_kl" else " (max. likelihood)"
            ms = f"{row['pyro_nf_ms']:.2f}" if row["pyro_nf_ms"] is not None else "-"
            cells = []
            for lib in peers:
                kind, value = row["cells"].get(lib, ("n/a", "library not run"))
                cells.append(_ratio(value) if kind == "ratio" else notes.cell(kind, value))
            pyro_nf_kind, pyro_nf_value = row["cells"].get("pyro_nf", ("n/a", "not run"))
            if pyro_nf_kind != "ratio":
                ms = notes.cell(pyro_nf_kind, pyro_nf_value)
            table_rows.append([row["arch"] + step, str(row["dim"]), ms, str(row["repeats"]), *cells])
        if table_rows:
            out.append(f"### {title}\n\n" + _table(
                ["architecture", "D", "pyro_nf ms", "repeats", *peers], table_rows))
    return "\n\n".join(out)


def memory_table(results: dict, archs, dims, libraries, notes: Footnotes) -> str:
    peers = [lib for lib in libraries if lib != "pyro_nf"]
    rows = []
    for arch in archs:
        for dim in dims:
            ref_kind, ref = results.get(("pyro_nf", arch, dim), ("n/a", "not run"))
            if ref_kind == "n/a" and ref == "not run":
                continue
            cells = []
            for lib in peers:
                kind, value = results.get((lib, arch, dim), ("n/a", "not run"))
                if kind == "ok" and ref_kind == "ok":
                    # below 1 MiB a peak is a few pages: no meaningful ratio
                    cells.append(f"{ref / value:.2f} ({value:.1f})" if min(ref, value) >= 1 else f"- ({value:.1f})")
                elif kind == "ok":
                    cells.append(f"({value:.1f})")
                else:
                    cells.append(notes.cell(kind, value))
            shown = f"{ref:.1f}" if ref_kind == "ok" else notes.cell(ref_kind, ref)
            step = " (reverse KL)" if TRAIN_KIND[arch] == "reverse_kl" else ""
            rows.append([arch + step, str(dim), shown, *cells])
    return _table(["architecture", "D", "pyro_nf MiB", *[f"{lib}: ratio (MiB)" for lib in peers]], rows)


def same_tensor_table(results: dict, archs, libraries) -> str:
    rows = []
    for arch in archs:
        if TRAIN_KIND[arch] != "density":
            continue
        rows.append([arch, *[results.get((arch, lib), "not run") for lib in libraries]])
    return _table(["architecture", *libraries], rows)


def quality_table(results: dict, groups, archs, libraries, notes: Footnotes, label: str) -> str:
    rows = []
    for group in groups:
        for arch in archs:
            cells = []
            for lib in libraries:
                kind, value = results.get((group, arch, lib), ("n/a", "not run"))
                cells.append(f"{value:.3f}" if kind == "ok" else notes.cell(kind, value))
            rows.append([group, arch, *cells])
    return _table([label, "architecture", *libraries], rows)


def compile_table(rows: list[dict]) -> str:
    body = []
    for row in rows:
        head = [row["arch"], str(row["dim"]), row["variant"], str(row.get("graphs", "-")),
                str(row.get("breaks", "-"))]
        if "error" in row:
            body.append([*head, "-", "-", "-", "-", row["error"]])
            continue
        body.append([*head, f"{row['compile_s']:.1f}", f"{row['eager_ms']:.2f}", f"{row['compiled_ms']:.2f}",
                     f"{row['speedup']:.2f}x", f"max abs diff {row['max_abs_diff']:.1e}"
                     + (f"; breaks: {row['reasons']}" if row.get("reasons") else "")])
    return _table(["architecture", "D", "compiled distribution", "graphs", "graph breaks", "first call s",
                   "eager ms", "compiled ms", "speed-up", "notes"], body)


def finite_numbers(text: str) -> bool:
    """Whether every number-like token of ``text`` parses as a finite float (used by the smoke test)."""
    for token in text.replace("(", " ").replace(")", " ").replace("|", " ").split():
        try:
            value = float(token)
        except ValueError:
            continue
        if not math.isfinite(value):
            return False
    return True


def header(meta: dict) -> str:
    versions = _table(["library", "version", "status"],
                      [[lib, meta["versions"][lib], meta["status"][lib]] for lib in LIBRARIES])
    return f"""# Benchmarks: pyro_nf against Pyro's built-in transforms, zuko, nflows and normflows

Generated by `{meta['command']}` on {meta['date']} ({meta['mode']} mode, {meta['elapsed']:.0f} s).

- machine: {meta['machine']}; CPU: {meta['cpu']}; {meta['cores']} cores; torch threads: {meta['threads']}
- device: {meta['device']}; float32; batch {meta['batch']}
- Python {meta['python']}, torch {meta['torch']}
- load average (1 min) at start / end: {meta['load_start']} / {meta['load_end']}
{meta['note']}

{versions}

Regenerate with `python benchmarks/run.py` (full, under 15 minutes on 2 quiet CPU cores),
`python benchmarks/run.py --quick` (under 2 minutes; what the test runs) or `--smoke` (seconds).
Options: `--device cuda`, `--threads N`, `--libraries pyro_nf,zuko`, `--sections speed,memory,quality,compile`,
`--output PATH`. `benchmarks/one_pass.py` is the separate pass-count benchmark of the autoregressive and
planar layers.

## Matched architectures

Every library gets the same number of layers, conditioner hidden sizes, bins and spline bound (tails
outside `[-3, 3]` are the identity for every spline); each keeps its own scale parameterisation and
initialisation. Where a library's MADE has only the natural order, a reversing permutation sits between
layers; couplings that only transform a fixed half get a half-swap permutation.

{architecture_table()}
"""


CONVENTIONS = """\
**How to read the ratios.** Every cell is `pyro_nf / peer` (time or memory): **above 1 means pyro_nf is
slower or heavier**, below 1 that it is faster or lighter. A speed cell is the median over repeats of the
per-repeat ratio, with its interquartile range in brackets; the libraries run round-robin inside every
repeat (the first library rotates), so drift of the machine hits them alike. `n/a [k]` and `error [k]`
point to the numbered reasons under the tables.

**Fresh data.** `log_prob` and the maximum-likelihood step score `x.clone()`, a new tensor object at
every call, so no library's one-slot cache of its last `(x, y)` pair gives it a free pass. Scoring the
*same* tensor object at every step is a real pitfall: Pyro's built-in transforms return the previous
step's cached inverse and the second `backward` fails (table "training on one tensor object" below);
pyro_nf's stamped cache sees the new parameters. The reverse-KL step (IAF and planar, which are guides)
draws `rsample` and scores the sample: pyro_nf and Pyro read the log-determinant from their caches,
zuko (`rsample_and_log_prob`), nflows (`sample_and_log_prob`) and normflows (`sample`) compute it in
the same pass.
"""


COMPILE_TEXT = """## torch.compile (optional)

`torch.compile(d.log_prob)` of a pyro_nf flow, D = 8, no gradients, default inductor backend, against eager
`nf.transformed(flow).log_prob`; graphs and graph breaks from `torch._dynamo.explain`; speed-up = eager /
compiled time, median over repeats; the first call includes compilation (or a hit in inductor's on-disk
cache). `whole Flow`: `d = nf.transformed(flow)` (a `FlowDistribution`), whose `log_prob` asks each layer
once for its inverse and log-det together: one conditioner pass per layer, compiled or not. `flow.parts`:
`d = TransformedDistribution(base, list(flow.parts))`, torch's generic walk, the same density; it asks each
layer for its inverse, then its log-det, two conditioner passes per layer when compiled (the layers' caches
are off while compiling; eager: one, from the cache).

"""


FINDINGS = """## Notes

### Where pyro_nf is slower or heavier (ratios above 1), and why

Profiled with `torch.profiler` (aten call counts and self times, one thread) and `cProfile`, and checked by
switching the suspected part off:

- **The stabilised affine scale** (RealNVP, MAF, IAF; the training-step rows most). pyro_nf's log-scale is
  `s = e^c tanh(r / e^c)` with a *learned* bound `c` per coordinate (seed 002), computed as
  `2b sigmoid(2r / b) - b`, `b = e^c`: per layer one more transcendental pass over the batch than the peers
  (a sigmoid; on this CPU a sigmoid of 1024 x 64 floats costs 84 us, an exp 104 us, a tanh 296 us, a multiply
  18 us), three more cheap elementwise passes forward and about six backward, including the batch reduction
  for the gradient of `c`, and one more parameter tensor per layer for Adam. Swapping in Pyro's hard clamp
  (`clamp(r, -5, 3)`, everything else unchanged) moves MAF against Pyro from 1.14 to 1.01 (training step,
  D = 2), 1.11 to 0.90 (`log_prob`, D = 8) and 1.13 to 1.05 (training step, D = 64) in an interleaved run: the
  clamp is the size of the ratios above 1 on the affine rows. A hand-written fused `autograd.Function` for
  the whole affine transformer (one node, analytic backward) gained nothing measurable (1.14 / 1.11 / 1.13)
  and was dropped. normflows' plain `exp(s)` and Pyro's hard clamp are cheaper, and let one step blow a scale
  up (Pyro's also has zero gradient past the clamp). The same clamp keeps about three more (batch, D) tensors
  per layer for backward: saved tensors of one MAF D = 64 step are 14.3 MiB against 11.3 (Pyro), 11.8
  (nflows), 10.5 (normflows), counted with `torch.autograd.graph.saved_tensors_hooks`: the cause of the
  memory ratios above 1 on the MAF and IAF D = 64 rows. (Peaks under about 10 MiB move by 1-2 MiB from run to
  run, with the allocator and page granularity, so the D = 2 and D = 8 memory ratios are at the noise level.)
- **Argument validation.** `TransformedDistribution.log_prob` checks its input (`validate_args` defaults to
  `__debug__` in torch.distributions: support check, `all`, and again in the base `Normal`): ~6% of a RealNVP
  D = 64 `log_prob`. Pyro's built-ins pay it too; zuko, nflows and normflows do not validate.
  `pyro.enable_validation(False)` removes it.
- **The stamped cache.** Every cache store and lookup reads the version counters of the layer's parameters
  and buffers and of `x` and `y`, and every call checks its input (3 us): 19 stamps and 14 checks in one IAF
  reverse-KL step. Since change 6 below a stamp no longer walks the layer's submodules (it was 11% of a MAF
  D = 8 `log_prob` under `cProfile`, now 4%): the price of a cache that cannot go stale (table "training on
  one tensor object"). zuko's `rsample_and_log_prob` also skips the second walk through the layers that
  `TransformedDistribution` makes to score its own sample (the IAF reverse-KL rows).
- D = 2 rows are per-op overhead on 1024 x 2 inputs; ratios within about 10% of 1 there are at the noise level
  of a shared machine (compare the interquartile ranges).

### What was changed in pyro_nf for speed

All with identical behaviour (outputs and gradients bitwise equal to before on realnvp, nice, nsf_coupling
and nsf_autoregressive at D = 2, 3, 8, 64; glow agrees to float rounding) and
`tests/test_properties.py tests/test_layers.py tests/test_autoregressive.py tests/test_spline_planar.py` green:

1. `transforms/base.py`, `_reference_tensor` (run by the input check of every call): a direct walk of
   `_parameters` / `_buffers` instead of `Module.parameters()`, whose `named_modules` memo hashes every
   module: 16 -> 3-6 us per check. It was also the graph break under `torch.compile` (Pyro's
   `TransformModule.__hash__` calls `super().__hash__()`, which dynamo cannot trace): a whole bijective
   flow's `log_prob` went from 4-5 graphs (3-4 breaks) to one graph, no break.
2. `transforms/base.py`, `_cache_lookup`: tests `torch.compiler.is_compiling()` before reading the cache
   entry, so compiled code no longer guards on it (each eager call in between would force a recompile).
3. `transforms/base.py`, `_version`: `try`/`except` instead of an `is_inference()` call per tensor.
4. `transforms/coupling.py`: when both parts of the mask are contiguous blocks (the "half" masks of realnvp,
   nice, glow and nsf_coupling), split by views and merge by one `cat` instead of two `index_select` copies,
   a `cat` and an `index_select`: 6-13% less time at D = 64 (`log_prob` and training step). "alternate" masks
   keep the gather.
5. `transforms/spline.py`: the spline parameters are cut by one `split` instead of three slices (each slice's
   backward zero-fills a params-sized gradient): about 10% off a spline training step at D >= 8.

6. `transforms/base.py`, the cache stamp: each layer keeps the list of its (and its submodules') parameters
   and buffers, rebuilt only after a parameter, buffer or submodule is registered on any module of the
   process (torch's global registration hooks bump a counter), instead of walking the submodules at every
   store and lookup. `tests/test_layers.py` checks that replacing a parameter deep in the conditioner, or the
   conditioner itself, still invalidates the cached pair.
7. `transforms/scalar.py`, `Affine`: `unbind` instead of two `select`s for the (shift, scale) pair. In a
   microbenchmark of the transformer's inverse with backward (40 interleaved repeats) it is 0.99x / 1.02x /
   0.90x the time of the selects at D = 2 / 8 / 64 (the selects' backward zero-fills a params-sized gradient
   each); an earlier, noisier measurement had it slower.

### torch.compile

A whole bijective flow's `log_prob` (realnvp, maf, nsf_coupling, nsf_autoregressive) now compiles into one
graph without breaks; planar still breaks in its Newton loop (a data-dependent stopping test). It gains
little: compiled, the layers skip their caches, so (a) `nf.transformed(flow)` goes through
`ComposeTransform.log_abs_det_jacobian`, which re-runs every layer forward (free in eager mode thanks to the
caches; D sequential passes per MAF layer when compiled: slower than eager), and (b) even over
`flow.parts` each layer runs its conditioner twice (inverse, then log-det) where eager runs it once, which
eats the gain from fused elementwise kernels (about 0.9-1.1x at D = 8 on CPU). Fixing it is outside
`transforms/`: `nf.transformed` could build its distribution over `flow.parts`, and a cache that works
inside one compiled call (storing without reading a stale entry) would bring the conditioner back to one
pass.

### The peers, as met while matching architectures

- Pyro: the built-ins' one-slot cache is keyed by tensor identity, so scoring the same data tensor at every
  step fails at the second `backward` (table above). `spline_autoregressive(..., order="quadratic")` fails
  (`too many values to unpack`): the factory always builds four parameter groups, the quadratic spline takes
  three; the adapter builds `SplineAutoregressive` itself. `spline_coupling` has no `order` argument and also
  transforms the first half by an unconditional spline; the adapter uses `SplineCoupling(order="quadratic",
  identity=True)`. `Planar` has no inverse (no `log_prob` of data).
- normflows: `MaskedAffineAutoregressive` samples in one pass, i.e. it is an IAF in normflows'
  sampling-forward convention; MAF needs `Reverse(...)`. The tanh `Planar` has no inverse.
- zuko: the spline's default bound is 5 (3 is passed here); no planar layer.
- nflows: MADE has the natural order only (a `ReversePermutation` sits between layers); the spline coupling
  warns unless the conditioner declares `hidden_features`; no planar layer.
- Quality numbers come from one seed at a short budget: differences of a few tenths of a nat are within the
  seed-to-seed spread (300 steps, seeds 0-3: planar on U1, pyro_nf 0.94-1.77, Pyro 1.23-2.44, normflows
  1.22-1.58 nats of reverse KL; nsf_coupling on moons, seeds 0-2, pyro_nf -0.26 to -0.21, zuko -0.31 to
  -0.21, Pyro -0.17 to -0.05 nats of test NLL). Digits are standardised with one mean and std for all pixels:
  per-pixel scaling makes pixels that are blank in every training image but not in some test image land
  tens of standard deviations out, and every flow's test NLL explodes.
"""
