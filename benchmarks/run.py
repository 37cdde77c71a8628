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
import subprocess
import sys
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import adapters  # noqa: E402
import report  # noqa: E402
import torch  # noqa: E402

MODES = {
    "smoke": dict(
        dims=(2,), archs=adapters.ARCHS, repeats=3, min_time=0.002, budget=0.3,
        memory_dims=(2,), memory_archs=("realnvp", "iaf"), memory_reps=1,
        toy_sets=("moons",), toy_archs=("realnvp",), digits_archs=("realnvp",), toy_seeds=(0,),
        steps={"toy": 20, "digits": 10}, n_train=2000, n_test=1000,
        kl_targets=("U1",), kl_archs=("planar", "iaf"), kl_steps=20, kl_samples=2000,
        compile=False, compile_archs=(), sequential_max_dim=64,
    ),
    "quick": dict(
        dims=(2, 64), archs=adapters.ARCHS, repeats=3, min_time=0.003, budget=0.4,
        memory_dims=(64,), memory_archs=adapters.ARCHS, memory_reps=1,
        toy_sets=("moons",), toy_archs=("realnvp", "nsf_coupling"), digits_archs=("realnvp",), toy_seeds=(0,),
        steps={"toy": 100, "digits": 60}, n_train=10000, n_test=5000,
        kl_targets=("U1",), kl_archs=("planar", "iaf"), kl_steps=100, kl_samples=5000,
        compile=False, compile_archs=("realnvp",), sequential_max_dim=8,
    ),
    "full": dict(
        dims=(2, 8, 64), archs=adapters.ARCHS, repeats=7, min_time=0.01, budget=1.5,
        memory_dims=(2, 8, 64), memory_archs=adapters.ARCHS, memory_reps=1,
        toy_sets=("moons", "8gaussians", "checkerboard"), toy_archs=("realnvp", "nsf_coupling"),
        digits_archs=("realnvp", "maf", "nsf_autoregressive"), steps={"toy": 300, "digits": 300},
        n_train=20000, n_test=10000, toy_seeds=(0, 1, 2),
        kl_targets=("U1", "U2", "U3", "U4"), kl_archs=("planar", "iaf"), kl_steps=300, kl_samples=20000,
        compile=True, compile_archs=("realnvp", "maf"), sequential_max_dim=64,
    ),
}
SECTIONS = ("speed", "memory", "quality", "compile")
# operations that take D sequential network passes (skipped above ``sequential_max_dim`` in quick mode)
SEQUENTIAL = {("maf", "sample"), ("iaf", "log_prob"), ("nsf_autoregressive", "sample")}


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> str:
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "n/a"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="under 2 minutes")
    mode.add_argument("--smoke", action="store_true", help="seconds; for the test suite")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--libraries", default=",".join(adapters.LIBRARIES))
    parser.add_argument("--sections", default=None, help=f"comma-separated subset of {SECTIONS}")
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--output", default=os.path.join(HERE, "README.md"))
    parser.add_argument("--json", default=None, help="also write the raw results here")
    parser.add_argument("--note", default="", help="a line for the report (e.g. 'other jobs were running')")
    args = parser.parse_args(argv)
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

    notes = report.Footnotes()
    parts, raw = [], {}

    if "speed" in sections:
        print("speed:")
        t = time.perf_counter()
        from speed import run as run_speed
        from speed import same_tensor_check

        rows = []
        for arch in cfg["archs"]:
            for dim in cfg["dims"]:
                rows += run_speed([arch], [dim], libraries, args.batch, cfg["repeats"], cfg["min_time"],
                                  cfg["budget"], device, skip=_skipper(dim, cfg))
        checks = same_tensor_check(cfg["archs"], libraries, device=device)
        raw["speed"] = rows
        parts.append("## Speed\n\n" + report.CONVENTIONS + "\n" + report.speed_tables(rows, libraries, notes)
                     + "\n\n### Training on one tensor object\n\nThree maximum-likelihood steps scoring the same "
                     "data tensor object (no clone), D = 2; `stale value` means `log_prob(x)` of that object "
                     "differs from `log_prob(x.clone())` after training.\n\n"
                     + report.same_tensor_table(checks, cfg["archs"], libraries))
        print(f"speed: {time.perf_counter() - t:.0f}s")

    if "memory" in sections:
        print("memory:")
        t = time.perf_counter()
        cases = [[lib, arch, dim] for arch in cfg["memory_archs"] for dim in cfg["memory_dims"] for lib in libraries]
        command = [sys.executable, os.path.join(HERE, "memory.py"), json.dumps(cases), "--batch", str(args.batch),
                   "--device", args.device, "--threads", str(torch.get_num_threads()),
                   "--reps", str(cfg["memory_reps"])]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            print(done.stderr[-2000:])
            parts.append(f"## Memory\n\nThe memory run failed: `{done.stderr.strip().splitlines()[-1:]}`")
        else:
            results = {(lib, arch, dim): (kind, value)
                       for lib, arch, dim, kind, value in json.loads(done.stdout.strip().splitlines()[-1])}
            raw["memory"] = [[*k, *v] for k, v in results.items()]
            for (lib, arch, dim), (kind, value) in results.items():
                shown = f"{value:.1f} MiB" if kind == "ok" else f"{kind}: {value}"
                print(f"  {arch:18s} D={dim:<3d} {lib:10s} {shown}")
            how = ("`torch.cuda.max_memory_allocated` over `memory_allocated` before the step" if args.device == "cuda"
                   else "process peak: `ru_maxrss` after the step minus `ru_maxrss` just before it, in a forked "
                        "child process per case (Linux resets a child's high-water mark at fork)")
            parts.append("## Memory\n\nPeak memory of one training step (the same steps as the speed section: "
                         f"first step, so Adam's state is allocated in it), batch {args.batch}: {how}; median over "
                         f"{cfg['memory_reps']} process(es). Cells: `pyro_nf / peer` (above 1: pyro_nf heavier) and "
                         "the peer's MiB (`-`: a peak below 1 MiB, a few pages, gives no meaningful ratio).\n\n"
                         + report.memory_table(results, cfg["memory_archs"], cfg["memory_dims"], libraries, notes))
        print(f"memory: {time.perf_counter() - t:.0f}s")

    if "quality" in sections:
        print("quality:")
        t = time.perf_counter()
        import quality

        data = {name: quality.toy_data(name, cfg["n_train"], cfg["n_test"]) for name in cfg["toy_sets"]}
        toy_per_seed: dict = {}
        density = quality.run_density(data, cfg["toy_archs"], libraries, cfg["steps"], batch=256, lr=1e-3,
                                      seeds=cfg["toy_seeds"], device=device, per_seed=toy_per_seed)
        digits_text = ""
        try:
            digits = {"digits": quality.digits_data()}
        except Exception as error:  # noqa: BLE001 - scikit-learn missing: say so
            digits = {}
            digits_text = f"\n\nDigits skipped: {type(error).__name__}: {error}"
            print(f"  digits skipped: {error}")
        digits_results = quality.run_density(digits, cfg["digits_archs"], libraries, cfg["steps"], batch=256,
                                             lr=1e-3, device=device) if digits else {}
        kl = quality.run_reverse_kl(cfg["kl_targets"], cfg["kl_archs"], libraries, cfg["kl_steps"], batch=256,
                                    lr=1e-3, num_samples=cfg["kl_samples"], device=device)
        raw["quality"] = [[*k, *v] for k, v in {**density, **digits_results, **kl}.items()]
        raw["quality_toy_seeds"] = [[*k, values] for k, values in toy_per_seed.items()]
        n_seeds = len(cfg["toy_seeds"])
        seeds_text = (f"mean ± sd over seeds {', '.join(map(str, cfg['toy_seeds']))} (each its own initialisation "
                      "and batches), " if n_seeds > 1 else "")
        text = ("## Quality at equal budget\n\nEvery library gets the same data, seed, Adam learning rate 1e-3, "
                f"batch 256 and number of steps. Held-out negative log-likelihood in nats per example (lower is "
                f"better): 2D toy sets from `pyro_nf.datasets` ({cfg['n_train']} training / {cfg['n_test']} test "
                f"points, {cfg['steps']['toy']} steps, {seeds_text}one data set), and scikit-learn's digits "
                "(one seed; 1797 8x8 images, 64-D, dequantised with uniform noise, divided by 17, standardised "
                "with the training split's overall mean and std; "
                f"80/20 split; {cfg['steps']['digits']} steps; NLL in the standardised space).\n\n"
                + report.quality_table(density, cfg["toy_sets"], cfg["toy_archs"], libraries, notes, "data set",
                                       toy_per_seed)
                + ("\n" + report.quality_table(digits_results, ["digits"], cfg["digits_archs"], libraries, notes,
                                               "data set").split("\n", 2)[2] if digits else digits_text)
                + f"\n\nReverse KL(q || p) in nats (lower is better; 0 is exact) to the energies of Rezende & Mohamed "
                f"(`pyro_nf.targets`, log Z by quadrature), one seed, {cfg['kl_steps']} steps of the reparameterised "
                "reverse-KL loss with the target annealed from beta = 0.01 to 1 over the first half, estimated "
                f"from {cfg['kl_samples']} samples of each trained guide.\n\n"
                + report.quality_table(kl, cfg["kl_targets"], cfg["kl_archs"], libraries, notes, "target"))
        parts.append(text)
        print(f"quality: {time.perf_counter() - t:.0f}s")

    if "compile" in sections:
        print("compile:")
        t = time.perf_counter()
        import compile_check

        archs = cfg["compile_archs"] or ("realnvp",)
        rows = compile_check.run(archs, 8, args.batch, max(3, cfg["repeats"]), device)
        raw["compile"] = rows
        parts.append(report.COMPILE_TEXT + report.compile_table(rows))
        print(f"compile: {time.perf_counter() - t:.0f}s")

    if notes.items:
        parts.append("## Reasons for n/a and errors\n\n" + notes.markdown())
    parts.append(report.FINDINGS)
    command = " ".join(["python benchmarks/run.py", *map(shlex.quote, sys.argv[1:] if argv is None else argv)])
    meta = dict(
        command=command.strip(), date=datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), mode=mode_name,
        elapsed=time.perf_counter() - started, machine=f"{platform.system()} {platform.machine()}",
        cpu=cpu_name(), cores=os.cpu_count(), threads=torch.get_num_threads(),
        device=(torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"), batch=args.batch,
        python=platform.python_version(), torch=torch.__version__, load_start=load_start, load_end=load_average(),
        note=f"- note: {args.note}" if args.note else "",
        versions={lib: adapters.version(lib) for lib in adapters.LIBRARIES}, status=status,
    )
    text = report.header(meta) + "\n" + "\n\n".join(parts) + "\n"
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        f.write(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, **raw}, f, indent=1, default=str)
    print(f"wrote {args.output} in {time.perf_counter() - started:.0f}s")
    return 0


def _skipper(dim: int, cfg: dict):
    """The operations skipped at ``dim`` (the sequential ones above ``sequential_max_dim``), with why."""
    def skip(arch, op):
        if (arch, op) in SEQUENTIAL and dim > cfg["sequential_max_dim"]:
            return f"D sequential passes: skipped above D = {cfg['sequential_max_dim']} in this mode (see full mode)"
        return None
    return skip


if __name__ == "__main__":
    sys.exit(main())
