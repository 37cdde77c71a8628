"""Markdown for the benchmark report (``benchmarks/README.md``)."""

from __future__ import annotations

import math
import os
import statistics

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


def _ratio(value, runs=None) -> str:
    """``median (q1-q3)``; with several runs ``median (run medians; q1-q3)`` and ``~`` where the verdict is
    inside the run-to-run noise (the runs' medians on both sides of 1, or 1 inside the widest range)."""
    median, q1, q3 = value
    if runs:
        noisy = min(runs) <= 1.0 <= max(runs) or (q1 is not None and q1 <= 1.0 <= q3)
        each = " / ".join(f"{r:.2f}" for r in runs)
        return f"{median:.2f}{' ~' if noisy else ''} ({each}; {q1:.2f}-{q3:.2f})"
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
                runs = row.get("runs", {}).get(lib)
                cells.append(_ratio(value, runs) if kind == "ratio" else notes.cell(kind, value))
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


def quality_table(results: dict, groups, archs, libraries, notes: Footnotes, label: str,
                  per_seed: dict | None = None) -> str:
    """Cells: the value, or with several seeds ``mean ± sd`` (sample standard deviation over seeds)."""
    rows = []
    for group in groups:
        for arch in archs:
            cells = []
            for lib in libraries:
                kind, value = results.get((group, arch, lib), ("n/a", "not run"))
                values = (per_seed or {}).get((group, arch, lib), [])
                if kind == "ok" and len(values) > 1:
                    cells.append(f"{value:.3f} ± {statistics.stdev(values):.3f}")
                else:
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


def _generated(meta: dict) -> str:
    if meta.get("runs", 1) == 1:
        return (f"Generated by `{meta['command']}` on {meta['date']} ({meta['mode']} mode, {meta['elapsed']:.0f} s).")
    return (f"Generated from {meta['runs']} runs of `{meta['measured_by']}` on {meta['date']} ({meta['mode']} mode, "
            f"{meta['elapsed']:.0f} s of measuring in all), medians of the runs merged by `python benchmarks/run.py "
            "--merge` of their JSON files.")


VARIATIONAL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "variational.md")


def variational_section() -> str:
    """The full variational table of ``benchmarks/variational.md`` (its own command, minutes per fit), quoted."""
    try:
        with open(VARIATIONAL) as f:
            text = f.read()
    except OSError:
        return "## Variational quality at equal budget\n\n`benchmarks/variational.md` is missing."
    start = text.find("## 4. ")
    end = text.find("\n## 5. ", start)
    if start < 0 or end < 0:
        return "## Variational quality at equal budget\n\nSee `benchmarks/variational.md`."
    body = text[text.index("\n", start) + 1:end].strip().replace("\n#### ", "\n### ")
    return ("## Variational quality at equal budget (planar K = 2/8/32 and IAF on U1-U4)\n\n"
            "Quoted from [`variational.md`](variational.md) (its own command, `python benchmarks/variational.py`, "
            "about an hour on 2 cores; not re-measured by `run.py`); the diagnosis of the planar collapse and the "
            "fix are there.\n\n" + body)


def header(meta: dict) -> str:
    versions = _table(["library", "version", "status"],
                      [[lib, meta["versions"][lib], meta["status"][lib]] for lib in LIBRARIES])
    return f"""# Benchmarks: pyro_nf against Pyro's built-in transforms, zuko, nflows and normflows

{_generated(meta)}

- machine: {meta['machine']}; CPU: {meta['cpu']}; {meta['cores']} cores; torch threads: {meta['threads']}
- device: {meta['device']}; float32; batch {meta['batch']}
- Python {meta['python']}, torch {meta['torch']}
- load average (1 min) at start / end: {meta.get('load') or f"{meta['load_start']} / {meta['load_end']}"}
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

normflows' MADE (`use_residual_blocks=False`) applies no activation after its first masked layer (input, masked
layer, masked layer, ReLU, output layer), where pyro_nf's, Pyro's, zuko's and nflows' apply one after each hidden
layer: its MADE-based conditioners (maf, iaf, nsf_autoregressive) carry one ReLU fewer, forward and backward, at the
same sizes.
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
pyro_nf never caches the density of data (its records hold only the pairs it sampled), so it sees the new
parameters. The reverse-KL step (IAF and planar, which are guides) draws reparameterised samples and their
log-density in each library's one-walk call: pyro_nf `rsample_and_log_prob`, zuko `rsample_and_log_prob`,
nflows `sample_and_log_prob`, normflows `sample`; Pyro has none and reads the log-determinant of its
`rsample` from its cache. (Scored the Pyro way, `rsample` then `log_prob` of that sample, as SVI's traces
do, pyro_nf reads its record, whose guard copies and compares the parameters: `benchmarks/record_overhead.py`
measures what that costs.)
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


MERGED = """
**Two runs.** This report is the median of the runs listed at the top. A speed cell reads `median (run 1 / run 2;
q1-q3)`: the runs' own medians and the widest interquartile range over both; `~` marks a cell inside the
run-to-run noise (the runs' medians on both sides of 1.00, or 1.00 inside that range), where neither library
is measurably ahead.
"""


COMPILE_TRAIN_TEXT = """### The compiled training step (`nf.compile`), D = 64

One maximum-likelihood step (`zero_grad`, loss, `backward`, fused `Adam.step`), batch 1024, D = 64: pyro_nf's
`nf.compile(model).nll_loss` (inductor, one graph) against eager pyro_nf and the fastest eager peer at matched
sizes (`benchmarks/compile_check.py`, which also runs alone). Round-robin repeats; the speed-up is the median
per-repeat ratio. `GEMMs ms` replays the step's matrix products alone (profiled shapes): the part that
compilation cannot shorten, and so the bound on the speed-up.

"""


FINDINGS = """## Notes

### Where pyro_nf is slower or heavier (ratios above 1), and why

Profiled with `torch.profiler` (aten call counts and self times, one thread), `cProfile`, and by switching
the suspected part off; `python benchmarks/micro.py` reproduces the microbenchmarks quoted here.

- **What is above 1.00, from the two runs of this report** (cells marked `~` are inside the run-to-run noise):
  `sample` of IAF at D = 2 and 8 (1.06-1.12 against Pyro, zuko and normflows): the record of its sample and
  the copy of the parameters that guards it (next bullets; `benchmarks/record_overhead.py`), which Pyro's cache
  does not make and zuko and normflows do not keep; at D = 64 it is paid off. IAF's `log_prob` at D = 2 against
  normflows (1.06): two sequential MADE passes, each with one ReLU more than normflows' MADE (note under the
  architecture table). RealNVP `sample` at D = 64 against normflows (1.05; 1.01-1.02 in `python
  benchmarks/clamp_ab.py realnvp 64 sample normflows`, 21 interleaved rounds): the stabilised log-scale, which
  normflows does not have (its `exp(s)` is unbounded), costs 6-9% of a RealNVP `sample` (0.90-0.95 with it
  switched off, 0.92 with Pyro's hard clamp in its place). Peak memory of MADE-based steps against normflows
  (1.03-1.23): its MADE has one ReLU fewer, so one activation fewer to keep for the backward; cells of 4-10 MiB
  move by about 1 MiB between processes.
- **The stabilised log-scale**, `s = b tanh(r / b)` (seed 002), is kept as the default: in training steps it costs
  no more than Pyro's hard clamp (`python benchmarks/clamp_ab.py iaf 64 train pyro`: soft, hard, none against Pyro
  0.997 / 1.018 / 0.924), and it keeps one step from blowing a scale up with a gradient that never dies; a hard
  clamp would make sampling 6-9% cheaper and stop the gradient of every clamped scale. `python
  benchmarks/micro.py`, D = 64, clamp then `x e^s`, forward and backward: no clamp 280-292 us, Pyro's hard clamp
  502-514, pyro_nf's soft clamp 441-444 (one kernel; two kernels 468-473, `tanh` 664, the former learned bound
  718-750), zuko's softsign 670-705.
- **Argument validation.** `TransformedDistribution.log_prob` checks its input (`validate_args` defaults to
  `__debug__` in torch.distributions). `FlowDistribution` checks with one sum instead of the full support
  test; Pyro's built-ins pay the full check, zuko, nflows and normflows do not validate.
  `pyro.enable_validation(False)` removes it.
- **The records.** `log_prob` of data reads no cache; a sample's record (the pair and log-det of the last
  `rsample`) is read back only if the parameters, buffers and the pair still hold the values they held when
  it was made, which costs one copy when a sample is drawn and one comparison when it is scored (README,
  "Records that cannot go stale"). `sample` (no gradients) makes a record only where an inverse would cost
  more than one pass or give another value: of the tables' flows, IAF and planar, whose `sample` cells carry
  the copy (parameters and pair: the whole gap to Pyro, whose cache keeps the pair without a guard, at
  D = 2 and 8). The reverse-KL rows use the one-walk `rsample_and_log_prob`, as the peers' rows use theirs;
  the Pyro-style `rsample` + `log_prob` through the record is timed by `python benchmarks/record_overhead.py`.
- **normflows' MADE** has one ReLU fewer (see the note under the architecture table): on its maf, iaf and
  nsf_autoregressive cells it runs one elementwise layer less, forward and backward, than the others.
- **Memory.** Saved tensors of one MAF D = 64 training step (`torch.autograd.graph.saved_tensors_hooks`,
  unique storages): pyro_nf 11.8 MiB (14.3 before change 8), Pyro 11.3, nflows 11.8, normflows 10.5, zuko
  13.7; RealNVP D = 64: pyro_nf 9.6, Pyro 10.6, nflows 8.6, normflows 12.6, zuko 11.6. The clamp's sigmoid
  output is the one (batch, D) tensor per layer that normflows does not keep. Process peaks under about
  10 MiB move by 1-2 MiB from run to run (allocator, page granularity), so D = 2 and D = 8 memory ratios are
  at the noise level.
- D = 2 rows are per-op overhead on 1024 x 2 inputs; ratios within about 10% of 1 there are at the noise level
  of a shared machine (compare the interquartile ranges).

### What was changed in pyro_nf for speed

Changes 1-3, 6 and 12 were made to the earlier version-stamped cache of `transforms/base.py`, since replaced
by the records of `pyro_nf/base.py`, and `learn_bound` (change 8) was later removed; they are kept here as
the history of the measurements. The others describe the code as it is. All were made with identical
behaviour (outputs and gradients bitwise equal to before on realnvp, nice, nsf_coupling
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
7. `transforms/scalar.py`, `Affine`: `unbind` instead of two `select`s for the (shift, scale) pair (each
   select's backward zero-fills a params-sized gradient).
8. `transforms/scalar.py`, `Affine`: the clamp's bound is fixed by default (`learn_bound=True` keeps the
   learned one). The learned bound's backward reduces over the batch and Adam carries one more tensor per
   layer: clamp + exp forward and backward, D = 64, 718-750 us learned against 441-444 us fixed
   (`micro.py`), and at equal steps it fitted no better (two moons and digits, seeds 0-3).
9. `nn/functional.py`, `soft_clamp`: `-b + 2b sigmoid(2r / b)` as one `torch.add` with a cached 0-d scalar
   and `alpha`, not a multiply and a subtract (441-444 against 468-473 us, as above); above b = 2 it keeps
   `b tanh(r / b)`, whose rounding error does not grow with the bound (tested to 4e-7 relative in float32).
10. `nn/made.py`, `transforms/coupling.py`, `transforms/scalar.py`: the affine transformer reads its parameters
    param-major, `(..., 2, D)`, so shift and log-scale are contiguous blocks. From `(..., D, 2)` the backward
    of the split is an interleaving `stack` (alone, 258 us against 20 us for stacking two 1024 x 64 blocks;
    `micro.py`'s split plus backward, D = 64: 252-286 against 162-174 us), once per layer per step. The
    spline keeps the coordinate-major layout it computes in; MADE and the coupling layer lay their outputs
    out as the transformer asks (`param_major`), and a MADE of the wrong layout is refused.
11. `distributions.py`, `flows.py`: `FlowDistribution.log_prob` asks each layer once for its inverse and
    log-det (`inverse_and_ladj`, from the cache for a pair the layer made); torch's generic walk asks the
    `ComposeTransform` for the inverse, then for the log-det, which runs every layer forward again (free only
    through a second cache lookup per layer) and, under `torch.compile` where the caches are off, really
    runs them: the compiled whole-flow `log_prob` went from 0.3-0.75x to 1.5-2.4x eager. `Flow`'s own
    `log_abs_det_jacobian` walks back through the layer caches too, for a plain `TransformedDistribution`.
12. `transforms/base.py`, `distributions.py`: Python overhead on the cache path: the cache entry is written
    through `__dict__` (`nn.Module.__setattr__` costs microseconds), the input check's reference tensor is
    kept with the stamped tensors, and `StandardNormal.log_prob` skips `torch.broadcast_shapes` (Python code)
    when it has no batch shape.
13. `base.py`, the records: a sample drawn without gradients is recorded only by a flow with a layer whose
    inverse costs more than a pass or gives another value (`cheap_inverse`); the guard's module walk is a loop
    over the modules' dicts, buffers fixed at construction (`constant_buffers`: MADE's masks and orders,
    couplings' index maps) are not copied, and the copy is flattened in C++: a 5-layer IAF's record at D = 2
    went from 155 to 45 us. `FlowDistribution.log_prob` of a recorded sample skips the input validation.
14. `transforms/planar.py`: the forward slope's form is chosen by the sign of `c` read on a CPU (free there)
    instead of computing both forms and blending them (kept on other devices and under `torch.compile`): planar
    steps from 1.02-1.09 to 0.87-0.91 of normflows'.
15. `nn/functional.py`, `dense_rows`: a strided parameter block with rows under 128 bytes is copied to
    contiguous memory before the affine transformer's elementwise chain; CPU kernels vectorise strided rows only
    from two vectors up, so at D = 8-24 the soft clamp's sigmoid ran a scalar loop (48.7 -> 35.9 us per
    transformer call at D = 8, 81.7 -> 47.4 at D = 16, batch 1024; left alone from 128 bytes, where it costs).

### A change for quality: which side the affine shift acts on

`Affine(shift=...)`: `"data"`, `y = x e^s + t`, or `"latent"`, `y = (x + t) e^s`, i.e. `x = y e^{-s} - t`.
The same family, differently conditioned: the shift should come last in the direction whose output is
scored. Maximum likelihood scores the latent: with `x = (y - t) e^{-s}` a step on `t` moves the scored
output `e^{-s}` times as far as with `x = y e^{-s} - t`, and `e^{-s}` is large for exactly the narrow
coordinates (digits' near-constant pixels) that need large scales. Held-out NLL at 300 steps, lr 1e-3, batch
256 (seeds 0-2; moons seeds 0-3), data side -> latent side: digits MAF 4.46 -> 2.17, digits RealNVP 5.46 ->
3.27, two moons RealNVP 1.08 -> 0.74, checkerboard RealNVP 2.509 -> 2.488, eight Gaussians RealNVP 2.585 ->
2.514 (zuko, whose affine is `z = x e^a + b` in its density direction, had digits MAF 3.63 and two moons
RealNVP 0.55 over the same seeds). Reverse KL scores the sample, and there the data side is better for IAF
(U2 / U3 0.36 / 0.59 against 0.40 / 0.63 nats, seeds 0-2) and for RealNVP on U2 (0.55 against 1.01, seeds
0-1). So coupling layers and MAF default to `"latent"`, IAF to `"data"`, and `AutoFlow` passes
`shift="data"` (a guide's samples are what the ELBO scores). Measured with one-off scripts patching the
transformer; the quality table above is the check at the defaults.

### torch.compile

A whole bijective flow's `log_prob` (realnvp, maf, nsf_coupling, nsf_autoregressive) compiles into one
graph without breaks, and so does planar's, its Newton inverse traced as a `while_loop` (`tests/test_compile.py`;
ffjord, residual and snf break at their data-dependent loops). Through
`nf.transformed(flow)` the compiled `log_prob` runs one conditioner pass per layer (change 11) and is
1.5-2.4x faster than eager at D = 8 on this CPU (table above). Over `flow.parts` with torch's generic
`TransformedDistribution` it runs two passes per layer (inverse, then log-det: the layers' caches are off
while compiling, or compiled code would guard on them and recompile after every eager call), so it gains
less.

The compiled training step (`nf.compile`, table above) is 1.8x the fastest eager peer for realnvp and 3.1x for
nsf_coupling, 1.35x for maf, short of 1.5x. What bounds maf: `python benchmarks/compile_check.py --archs maf
--threads 2 --profile` puts 4.0 ms of its 7.0 ms step in matrix products (`mm`, `addmm`: the MADE layers, which
compilation leaves to the same BLAS), 1.4 ms in inductor's two fused elementwise graphs, 0.36 ms in 20 copies of
a broadcast bias into the output of `addmm` (ATen's CPU `addmm` with `out=`; inductor fuses a separate bias
add back into `addmm` on CPUs, so moving the bias into the following ReLU, tried, changed nothing), 0.34 ms in
fused Adam and about 0.3 ms in dynamo and autograd dispatch. The fastest eager peer's step (Pyro's) takes 10.2 ms:
1.5x would need the compiled step under 6.8 ms, the part outside the matrix products under 2.8 ms against about
3.0-3.4 ms now.

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
- Quality at a short budget is noisy. The toy-set cells are means over three seeds with their standard
  deviation; digits and reverse KL are one seed (three would push the full run past 15 minutes). Measured
  spreads at 300 steps (seeds 0-2 unless said): planar on U2, pyro_nf 1.42 / 1.41 / 1.67 nats of reverse
  KL, and with normflows' wider initial `u`, `w` (uniform on +-sqrt(2), +-sqrt(2 / D)) 0.75 / 1.04 / 1.75,
  on U4 1.42 / 1.52 / 1.63 against 0.94 / 2.02 / 1.68 (so normflows' single-seed planar lead is partly its
  draw; the wider init helps early on U2 and U3 but was worse at the 10000-step default of `fit_target` on
  U3 and U4, so it was not adopted); IAF on U1 pyro_nf 0.20 / 0.15 / 0.57, zuko 0.20 / 0.21 / 0.25; two
  moons RealNVP (seeds 0-5, 10000 training points) pyro_nf 0.73 / 0.55 / 0.86 / 0.83 / 1.15 / 0.71, zuko
  0.84 / 0.44 / 1.35 / 0.16 / 0.20 / 0.30. Digits are standardised with one mean and std for all pixels:
  per-pixel scaling makes pixels that are blank in every training image but not in some test image land
  tens of standard deviations out, and every flow's test NLL explodes.
"""
