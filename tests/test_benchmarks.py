"""Smoke test of the benchmark suite: ``benchmarks/run.py --quick`` (D = 2 and 64, every architecture and
peer, about two minutes) as a subprocess, into a temporary report.

It checks that the pipeline runs end to end (every section, every installed peer, or a printed reason for
a missing one) and that the report has the expected tables with finite numbers; it says nothing about
the timings themselves. ``benchmarks/README.md`` is left untouched.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "benchmarks" / "run.py"
README = ROOT / "benchmarks" / "README.md"

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
    report, raw = tmp_path / "report.md", tmp_path / "raw.json"
    before = README.read_bytes() if README.exists() else None
    done = subprocess.run(
        [sys.executable, str(RUN), "--quick", "--threads", "1", "--output", str(report), "--json", str(raw)],
        capture_output=True, text=True, timeout=900, cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert (README.read_bytes() if README.exists() else None) == before, "the test run rewrote benchmarks/README.md"

    text = report.read_text()
    for heading in HEADINGS:
        assert heading in text, f"missing {heading!r} in the report"
    assert "The memory run failed" not in text
    for word in ("nan", "inf"):
        assert f" {word} " not in text.lower() and f"| {word}" not in text.lower()

    results = json.loads(raw.read_text())
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
    quality = results["quality"]
    assert any(lib == "pyro_nf" and kind == "ok" for _group, _arch, lib, kind, _value in quality)
    for group, arch, lib, kind, value in quality:
        assert lib != "pyro_nf" or kind == "ok", (group, arch, kind, value)
        if kind == "ok":
            assert _finite(value)
