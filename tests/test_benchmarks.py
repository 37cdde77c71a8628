"""Smoke test of the benchmark suite: ``benchmarks/run.py --quick`` (D = 2 and 64, every architecture and
peer, about two minutes) as a subprocess, into a temporary report.

It checks that the pipeline runs end to end (every section, every installed peer, or a printed reason for
a missing one) and that the report has the expected tables with finite numbers; it says nothing about
the timings themselves. ``benchmarks/README.md`` is left untouched.
"""

from __future__ import annotations

import copy
import json
import math

from benchmark_scripts import run_report, run_script

HEADINGS = (
    "# Benchmarks: pyro_nf against",
    "## Matched architectures",
    "## Speed",
    "### `log_prob` of a fresh batch",
    "### one training step",
    "### `sample`",
    "### Training on one tensor object",
    "## Memory",
    "## Quality at equal budget",
)


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def test_quick_report(tmp_path):
    text, results = run_report("run.py", "README.md", tmp_path, "--quick", "--threads", "1", timeout=900)
    for heading in HEADINGS:
        assert heading in text, f"missing {heading!r} in the report"
    assert "The memory run failed" not in text
    for word in ("nan", "inf"):
        assert f" {word} " not in text.lower() and f"| {word}" not in text.lower()

    # speed: pyro_nf's own time and every ratio are finite and positive
    speed = results["speed"]
    assert {row["op"] for row in speed} == {"log_prob", "train", "sample"}
    for row in speed:
        cells = row["cells"]
        if cells["pyro_nf"][0] == "ratio":
            assert _finite(row["pyro_nf_ms"]) and row["pyro_nf_ms"] > 0, row
        # "skipped": a sequential direction above the mode's dimension limit, for every library alike
        assert cells["pyro_nf"][0] in ("ratio", "n/a", "skipped"), (row["arch"], row["op"], cells["pyro_nf"])
        if cells["pyro_nf"][0] == "skipped":
            assert {kind for kind, _ in cells.values()} == {"skipped"}, row
        for kind, value in cells.values():  # a peer may fail (its error is reported), pyro_nf may not
            if kind == "ratio":
                assert all(v is None or (_finite(v) and v > 0) for v in value), row
    assert any(row["cells"]["pyro_nf"][0] == "ratio" for row in speed)
    # memory: a finite peak for every case that ran
    memory = results["memory"]
    assert memory
    for library, _arch, _dim, kind, value in memory:
        assert library != "pyro_nf" or kind == "ok", (kind, value)
        if kind == "ok":
            assert _finite(value) and value >= 0
    # quality: finite held-out NLL and reverse KL wherever a fit ran; pyro_nf's always do
    quality = results["quality_toy"] + results["quality_digits"] + results["quality_kl"]
    assert any(lib == "pyro_nf" and kind == "ok" for _group, _arch, lib, kind, _value in quality)
    for group, arch, lib, kind, value in quality:
        assert lib != "pyro_nf" or kind == "ok", (group, arch, kind, value)
        if kind == "ok":
            assert _finite(value)

    _check_merge(results, tmp_path)


def _check_merge(results: dict, tmp_path) -> None:
    """``run.py --merge``: per cell the median of the runs, each run's median shown, ``~`` exactly where the
    runs disagree about which side of 1 the cell is on (or its range holds 1), memory and quality medians."""
    first, second = copy.deepcopy(results), copy.deepcopy(results)
    rows = [i for i, row in enumerate(results["speed"]) if row["cells"]["pyro"][0] == "ratio"]
    split, clear = rows[0], rows[1]
    first["speed"][split]["cells"]["pyro"][1] = [0.8, 0.7, 0.9]
    second["speed"][split]["cells"]["pyro"][1] = [1.2, 1.1, 1.3]
    first["speed"][clear]["cells"]["pyro"][1] = [0.5, 0.45, 0.55]
    second["speed"][clear]["cells"]["pyro"][1] = [0.6, 0.55, 0.65]
    memory = next(i for i, row in enumerate(results["memory"]) if row[3] == "ok")
    first["memory"][memory][4], second["memory"][memory][4] = 10.0, 20.0
    paths = []
    for i, run in enumerate((first, second)):
        paths.append(tmp_path / f"run{i}.json")
        paths[-1].write_text(json.dumps(run))
    merged = tmp_path / "merged.md"
    run_script("run.py", "--merge", *map(str, paths), "--output", str(merged), timeout=120)
    text = merged.read_text()
    assert "Generated from 2 runs of" in text and "**Two runs.**" in text
    assert "| 1.00 ~ (0.80 / 1.20; 0.70-1.30) |" in text
    assert "| 0.55 (0.50 / 0.60; 0.45-0.65) |" in text
    _lib, arch, dim = results["memory"][memory][:3]
    row = next(line for line in text.splitlines() if line.startswith(f"| {arch}") and f"| {dim} | 15.0 |" in line)
    assert row
    for heading in HEADINGS:
        assert heading in text, f"missing {heading!r} in the merged report"
