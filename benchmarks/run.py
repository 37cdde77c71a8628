"""Benchmarks of pyro_nf against Pyro's built-in transforms, zuko, nflows and normflows.

    python benchmarks/run.py            # full: under 15 minutes on 2 quiet CPU cores
    python benchmarks/run.py --quick    # under 2 minutes: what tests/test_benchmarks.py runs
    python benchmarks/run.py --smoke    # seconds
    python benchmarks/run.py --device cuda --output /tmp/report.md

Sections (``--sections``): speed (log_prob, training step, sample at D = 2, 8, 64, batch 1024, float32),
memory (peak of one training step, a fresh process per case), quality (held-out NLL on 2D toy sets and
scikit-learn's digits at equal budget; reverse KL of planar and IAF guides to U1..U4) and compile
(``torch.compile`` of a whole pyro_nf flow's log_prob; in the full mode only unless asked for). The
markdown report goes to ``--output`` (default ``benchmarks/README.md``). A peer that is not installed
is skipped with the reason printed and written into the report.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import adapters  # noqa: E402
import report  # noqa: E402
import torch  # noqa: E402
from machine import cpu_name, load_average  # noqa: E402

MODES = {
    "smoke": dict(
        dims=(2,), archs=adapters.ARCHS, repeats=3, min_time=0.002, budget=0.3,
        memory_dims=(2,), memory_archs=("realnvp", "iaf"), memory_reps=1,
        toy_sets=("moons",), toy_archs=("realnvp",), digits_archs=("realnvp",), toy_seeds=(0,),
        steps={"toy": 20, "digits": 10}, n_train=2000, n_test=1000,
        kl_targets=("U1",), kl_archs=("planar", "iaf"), kl_steps=20, kl_samples=2000,
        compile=False, compile_archs=(), compile_train_archs=(), compile_train_repeats=3,
        sequential_max_dim=64,
    ),
    "quick": dict(
        dims=(2, 64), archs=adapters.ARCHS, repeats=3, min_time=0.003, budget=0.4,
        memory_dims=(64,), memory_archs=adapters.ARCHS, memory_reps=1,
        toy_sets=("moons",), toy_archs=("realnvp", "nsf_coupling"), digits_archs=("realnvp",), toy_seeds=(0,),
        steps={"toy": 100, "digits": 60}, n_train=10000, n_test=5000,
        kl_targets=("U1",), kl_archs=("planar", "iaf"), kl_steps=100, kl_samples=5000,
        compile=False, compile_archs=("realnvp",), compile_train_archs=("realnvp",), compile_train_repeats=3,
        sequential_max_dim=8,
    ),
    "full": dict(
        dims=(2, 8, 64), archs=adapters.ARCHS, repeats=7, min_time=0.01, budget=1.5,
        # a process peak moves by 1-2 MiB from one process to the next: the median of three
        memory_dims=(2, 8, 64), memory_archs=adapters.ARCHS, memory_reps=3,
        toy_sets=("moons", "8gaussians", "checkerboard"), toy_archs=("realnvp", "nsf_coupling"),
        digits_archs=("realnvp", "maf", "nsf_autoregressive"), steps={"toy": 300, "digits": 300},
        n_train=20000, n_test=10000, toy_seeds=(0, 1, 2),
        kl_targets=("U1", "U2", "U3", "U4"), kl_archs=("planar", "iaf"), kl_steps=300, kl_samples=20000,
        compile=True, compile_archs=("realnvp", "maf"), compile_train_archs=("realnvp", "maf", "nsf_coupling"),
        compile_train_repeats=7, sequential_max_dim=64,
    ),
}
SECTIONS = ("speed", "memory", "quality", "compile")
# operations that take D sequential network passes (skipped above ``sequential_max_dim`` in quick mode)
SEQUENTIAL = {("maf", "sample"), ("iaf", "log_prob"), ("nsf_autoregressive", "sample")}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="under 2 minutes")
    mode.add_argument("--smoke", action="store_true", help="seconds; for the test suite")
    mode.add_argument("--merge", nargs="+", metavar="JSON",
                      help="write the report of earlier runs' --json files (medians of the runs) and measure nothing")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--libraries", default=",".join(adapters.LIBRARIES))
    parser.add_argument("--sections", default=None, help=f"comma-separated subset of {SECTIONS}")
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--output", default=os.path.join(HERE, "README.md"))
    parser.add_argument("--json", default=None, help="also write the raw results here")
    parser.add_argument("--note", default="", help="a line for the report (e.g. 'other jobs were running')")
    args = parser.parse_args(argv)
    command = " ".join(["python benchmarks/run.py", *map(shlex.quote, sys.argv[1:] if argv is None else argv)])
    if args.merge:
        runs = []
        for path in args.merge:
            with open(path) as f:
                runs.append(json.load(f))
        modes = {run["meta"]["mode"] for run in runs}
        if len(modes) != 1:
            parser.error(f"--merge: the runs were made in different modes {sorted(modes)}")
        raw = merge(runs)
        raw["meta"]["command"] = command.strip()
        _write(args.output, render(raw))
        print(f"wrote {args.output} from {len(runs)} runs")
        return 0

    mode_name = "smoke" if args.smoke else "quick" if args.quick else "full"
    cfg = MODES[mode_name]
    started, load_start = time.perf_counter(), load_average()
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    device = torch.device(args.device)
    sections = args.sections.split(",") if args.sections else [s for s in SECTIONS if s != "compile" or cfg["compile"]]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {SECTIONS}")

    requested = [lib for lib in args.libraries.split(",") if lib]
    if "pyro_nf" not in requested:
        requested.insert(0, "pyro_nf")
    status, libraries = {}, []
    for lib in adapters.LIBRARIES:
        if lib not in requested:
            status[lib] = "not requested"
            continue
        reason = adapters.import_error(lib)
        if reason:
            print(f"skipping {lib}: {reason}")
            status[lib] = f"skipped: {reason}"
        else:
            status[lib] = "benchmarked"
            libraries.append(lib)
    print(f"pyro_nf benchmarks ({mode_name}): libraries {libraries}, device {device}, "
          f"{torch.get_num_threads()} threads, sections {sections}")

    raw = collect(cfg, sections, libraries, device, args.batch)
    raw["meta"] = dict(
        command=command.strip(), date=datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), mode=mode_name,
        elapsed=time.perf_counter() - started, machine=f"{platform.system()} {platform.machine()}",
        cpu=cpu_name(), cores=os.cpu_count(), threads=torch.get_num_threads(),
        device=(torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"), device_kind=args.device,
        batch=args.batch, python=platform.python_version(), torch=torch.__version__, load_start=load_start,
        load_end=load_average(), note=f"- note: {args.note}" if args.note else "",
        versions={lib: adapters.version(lib) for lib in adapters.LIBRARIES}, status=status,
        libraries=libraries, sections=sections, runs=1,
    )
    _write(args.output, render(raw))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(raw, f, indent=1, default=str)
    print(f"wrote {args.output} in {time.perf_counter() - started:.0f}s")
    return 0


def _write(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def collect(cfg: dict, sections, libraries, device, batch: int) -> dict:
    """Measure the requested sections; every result in JSON-ready form (what ``--json`` writes)."""
    raw: dict = {}
    if "speed" in sections:
        print("speed:")
        t = time.perf_counter()
        from speed import run as run_speed
        from speed import same_tensor_check

        rows = []
        for arch in cfg["archs"]:
            for dim in cfg["dims"]:
                rows += run_speed([arch], [dim], libraries, batch, cfg["repeats"], cfg["min_time"],
                                  cfg["budget"], device, skip=_skipper(dim, cfg))
        raw["speed"] = rows
        raw["same_tensor"] = [[arch, lib, text] for (arch, lib), text in
                              same_tensor_check(cfg["archs"], libraries, device=device).items()]
        print(f"speed: {time.perf_counter() - t:.0f}s")

    if "memory" in sections:
        print("memory:")
        t = time.perf_counter()
        cases = [[lib, arch, dim] for arch in cfg["memory_archs"] for dim in cfg["memory_dims"] for lib in libraries]
        command = [sys.executable, os.path.join(HERE, "memory.py"), json.dumps(cases), "--batch", str(batch),
                   "--device", device.type, "--threads", str(torch.get_num_threads()),
                   "--reps", str(cfg["memory_reps"])]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            print(done.stderr[-2000:])
            raw["memory_error"] = str(done.stderr.strip().splitlines()[-1:])
        else:
            raw["memory"] = json.loads(done.stdout.strip().splitlines()[-1])
            for lib, arch, dim, kind, value in raw["memory"]:
                shown = f"{value:.1f} MiB" if kind == "ok" else f"{kind}: {value}"
                print(f"  {arch:18s} D={dim:<3d} {lib:10s} {shown}")
        print(f"memory: {time.perf_counter() - t:.0f}s")

    if "quality" in sections:
        print("quality:")
        t = time.perf_counter()
        import quality

        def listed(results: dict) -> list:
            return [[*key, *value] for key, value in results.items()]

        data = {name: quality.toy_data(name, cfg["n_train"], cfg["n_test"]) for name in cfg["toy_sets"]}
        toy_per_seed: dict = {}
        density = quality.run_density(data, cfg["toy_archs"], libraries, cfg["steps"], batch=256, lr=1e-3,
                                      seeds=cfg["toy_seeds"], device=device, per_seed=toy_per_seed)
        raw["quality_toy"] = listed(density)
        raw["quality_toy_seeds"] = [[*key, values] for key, values in toy_per_seed.items()]
        try:
            digits = {"digits": quality.digits_data()}
        except Exception as error:  # noqa: BLE001 - scikit-learn missing: say so
            raw["digits_error"] = f"{type(error).__name__}: {error}"
            print(f"  digits skipped: {error}")
        else:
            raw["quality_digits"] = listed(quality.run_density(digits, cfg["digits_archs"], libraries, cfg["steps"],
                                                               batch=256, lr=1e-3, device=device))
        raw["quality_kl"] = listed(quality.run_reverse_kl(cfg["kl_targets"], cfg["kl_archs"], libraries,
                                                          cfg["kl_steps"], batch=256, lr=1e-3,
                                                          num_samples=cfg["kl_samples"], device=device))
        print(f"quality: {time.perf_counter() - t:.0f}s")

    if "compile" in sections:
        print("compile:")
        t = time.perf_counter()
        import compile_check

        archs = cfg["compile_archs"] or ("realnvp",)
        raw["compile"] = compile_check.run(archs, 8, batch, max(3, cfg["repeats"]), device)
        if device.type == "cpu":
            # the compiled training step against the eager peers (issue 13's target), D = 64
            peers = tuple(lib for lib in libraries if lib != "pyro_nf")
            raw["compile_train"] = compile_check.train_run(cfg["compile_train_archs"], 64, batch,
                                                           cfg["compile_train_repeats"], peers=peers)
        print(f"compile: {time.perf_counter() - t:.0f}s")
    return raw


def merge(runs: list[dict]) -> dict:
    """One result from several runs of the same mode: per cell the median of the runs' values (so with two
    runs their mean); speed cells keep every run's median (``runs``) and the widest interquartile range, from
    which the report marks the cells inside the run-to-run noise. Compile rows are kept per run."""
    first = runs[0]
    out: dict = {"meta": dict(first["meta"])}
    out["meta"].update(
        runs=len(runs), measured_by=first["meta"]["command"], date=" and ".join(run["meta"]["date"] for run in runs),
        elapsed=sum(run["meta"]["elapsed"] for run in runs),
        load="; ".join(f"run {i}: {run['meta']['load_start']} / {run['meta']['load_end']}"
                       for i, run in enumerate(runs, 1)),
        note=" ".join(filter(None, (run["meta"].get("note", "") for run in runs))),
    )
    if all("speed" in run for run in runs):
        keyed = [{(row["op"], row["arch"], row["dim"]): row for row in run["speed"]} for run in runs]
        rows = []
        for key, row in keyed[0].items():
            same = [k[key] for k in keyed if key in k]
            merged = dict(row, repeats=sum(r["repeats"] for r in same), cells={})
            times = [r["pyro_nf_ms"] for r in same if r["pyro_nf_ms"] is not None]
            merged["pyro_nf_ms"] = statistics.median(times) if times else None
            for lib in row["cells"]:
                cells = [r["cells"].get(lib, ["n/a", "not run"]) for r in same]
                if all(c[0] == "ratio" for c in cells):
                    medians = [c[1][0] for c in cells]
                    lows = [c[1][1] if c[1][1] is not None else c[1][0] for c in cells]
                    highs = [c[1][2] if c[1][2] is not None else c[1][0] for c in cells]
                    merged["cells"][lib] = ["ratio", [statistics.median(medians), min(lows), max(highs)]]
                    merged.setdefault("runs", {})[lib] = medians
                else:  # a failure in any run is shown
                    merged["cells"][lib] = next(c for c in cells if c[0] != "ratio")
            rows.append(merged)
        out["speed"] = rows
        out["same_tensor"] = first.get("same_tensor", [])
    if all("memory" in run for run in runs):
        out["memory"] = _merge_values([run["memory"] for run in runs], key_len=3)
    for name in ("quality_toy", "quality_digits", "quality_kl"):
        if all(name in run for run in runs):
            out[name] = _merge_values([run[name] for run in runs], key_len=3)
    if all("quality_toy_seeds" in run for run in runs):
        seeds = [{tuple(row[:3]): row[3] for row in run["quality_toy_seeds"]} for run in runs]
        out["quality_toy_seeds"] = [[*key, [statistics.median(v) for v in zip(*(s[key] for s in seeds))]]
                                    for key in seeds[0] if all(key in s for s in seeds)]
    for name in ("memory_error", "digits_error"):
        if name in first:
            out[name] = first[name]
    for name in ("compile", "compile_train"):
        if any(name in run for run in runs):
            out[name] = [dict(row, run=i + 1) for i, run in enumerate(runs) for row in run.get(name, [])]
    return out


def _merge_values(tables: list[list], key_len: int) -> list:
    """Rows ``[*key, kind, value]`` of several runs: the median value where every run has ``ok``, otherwise
    the first run's failure."""
    keyed = [{tuple(row[:key_len]): row[key_len:] for row in table} for table in tables]
    out = []
    for key in keyed[0]:
        same = [k.get(key, ["n/a", "not run"]) for k in keyed]
        if all(s[0] == "ok" for s in same):
            out.append([*key, "ok", statistics.median(s[1] for s in same)])
        else:
            out.append([*key, *next(s for s in same if s[0] != "ok")])
    return out


def render(raw: dict) -> str:
    """The markdown report of :func:`collect`'s (or :func:`merge`'s) results."""
    meta = raw["meta"]
    cfg = MODES[meta["mode"]]
    libraries = meta["libraries"]
    notes = report.Footnotes()
    parts = []
    if "speed" in raw:
        checks = {(arch, lib): text for arch, lib, text in raw["same_tensor"]}
        parts.append("## Speed\n\n" + report.CONVENTIONS + (report.MERGED if meta["runs"] > 1 else "")
                     + "\n" + report.speed_tables(raw["speed"], libraries, notes)
                     + "\n\n### Training on one tensor object\n\nThree maximum-likelihood steps scoring the same "
                     "data tensor object (no clone), D = 2; `stale value` means `log_prob(x)` of that object "
                     "differs from `log_prob(x.clone())` after training.\n\n"
                     + report.same_tensor_table(checks, cfg["archs"], libraries))
    if "memory_error" in raw:
        parts.append(f"## Memory\n\nThe memory run failed: `{raw['memory_error']}`")
    elif "memory" in raw:
        results = {(lib, arch, dim): (kind, value) for lib, arch, dim, kind, value in raw["memory"]}
        how = ("`torch.cuda.max_memory_allocated` over `memory_allocated` before the step"
               if meta.get("device_kind") == "cuda"
               else "process peak: `ru_maxrss` after the step minus `ru_maxrss` just before it, in a forked "
                    "child process per case (Linux resets a child's high-water mark at fork)")
        runs = f"; median of {meta['runs']} runs" if meta["runs"] > 1 else ""
        parts.append("## Memory\n\nPeak memory of one training step (the same steps as the speed section: "
                     f"first step, so Adam's state is allocated in it), batch {meta['batch']}: {how}; median over "
                     f"{cfg['memory_reps']} process(es){runs}. Cells: `pyro_nf / peer` (above 1: pyro_nf heavier) "
                     "and the peer's MiB (`-`: a peak below 1 MiB, a few pages, gives no meaningful ratio).\n\n"
                     + report.memory_table(results, cfg["memory_archs"], cfg["memory_dims"], libraries, notes))
    if "quality_toy" in raw:
        def keyed(rows):
            return {tuple(row[:3]): tuple(row[3:]) for row in rows}

        density, kl = keyed(raw["quality_toy"]), keyed(raw["quality_kl"])
        toy_per_seed = {tuple(row[:3]): row[3] for row in raw.get("quality_toy_seeds", [])}
        n_seeds = len(cfg["toy_seeds"])
        seeds_text = (f"mean ± sd over seeds {', '.join(map(str, cfg['toy_seeds']))} (each its own initialisation "
                      "and batches), " if n_seeds > 1 else "")
        digits_text = (f"\n\nDigits skipped: {raw['digits_error']}" if "digits_error" in raw else
                       "\n" + report.quality_table(keyed(raw["quality_digits"]), ["digits"], cfg["digits_archs"],
                                                   libraries, notes, "data set").split("\n", 2)[2])
        parts.append(
            "## Quality at equal budget\n\nEvery library gets the same data, seed, Adam learning rate 1e-3, "
            f"batch 256 and number of steps. Held-out negative log-likelihood in nats per example (lower is "
            f"better): 2D toy sets from `pyro_nf.datasets` ({cfg['n_train']} training / {cfg['n_test']} test "
            f"points, {cfg['steps']['toy']} steps, {seeds_text}one data set), and scikit-learn's digits "
            "(one seed; 1797 8x8 images, 64-D, dequantised with uniform noise, divided by 17, standardised "
            "with the training split's overall mean and std; "
            f"80/20 split; {cfg['steps']['digits']} steps; NLL in the standardised space).\n\n"
            + report.quality_table(density, cfg["toy_sets"], cfg["toy_archs"], libraries, notes, "data set",
                                   toy_per_seed)
            + digits_text
            + f"\n\nReverse KL(q || p) in nats (lower is better; 0 is exact) to the energies of Rezende & Mohamed "
            f"(`pyro_nf.targets`, log Z by quadrature), one seed, {cfg['kl_steps']} steps of the reparameterised "
            "reverse-KL loss with the target annealed from beta = 0.01 to 1 over the first half, estimated "
            f"from {cfg['kl_samples']} samples of each trained guide.\n\n"
            + report.quality_table(kl, cfg["kl_targets"], cfg["kl_archs"], libraries, notes, "target"))
        if meta["mode"] == "full":
            parts.append(report.variational_section())
    if "compile" in raw:
        parts.append(report.COMPILE_TEXT + report.compile_table(raw["compile"]))
        if raw.get("compile_train"):
            import compile_check

            parts.append(report.COMPILE_TRAIN_TEXT + compile_check.train_table(raw["compile_train"]))
    if notes.items:
        parts.append("## Reasons for n/a and errors\n\n" + notes.markdown())
    parts.append(report.FINDINGS)
    return report.header(meta) + "\n" + "\n\n".join(parts) + "\n"


def _skipper(dim: int, cfg: dict):
    """The operations skipped at ``dim`` (the sequential ones above ``sequential_max_dim``), with why."""
    def skip(arch, op):
        if (arch, op) in SEQUENTIAL and dim > cfg["sequential_max_dim"]:
            return f"D sequential passes: skipped above D = {cfg['sequential_max_dim']} in this mode (see full mode)"
        return None
    return skip


if __name__ == "__main__":
    sys.exit(main())
