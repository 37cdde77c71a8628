"""Smoke test of ``benchmarks/continuous.py --smoke`` (a few seconds) as a subprocess: every model trains, the
tables have their rows and finite numbers, eval-mode densities are deterministic (exact log-dets), the report
re-rendered from the saved JSON (``--report-from``) is the same, and ``benchmarks/continuous.md`` is left untouched.
It says nothing about the timings or NLLs themselves."""

from __future__ import annotations

import math
import re

from benchmark_scripts import run_report, run_script

MODELS = ("pyro_nf ffjord", "zuko CNF", "pyro_nf residual", "normflows Residual", "normflows Residual (exact)",
          "pyro_nf nsf_coupling", "pyro_nf realnvp")
ODE = ("pyro_nf ffjord", "zuko CNF")
TABLES = ("### Held-out NLL at equal steps", "### Held-out NLL at equal wall-clock", "### Time per training step",
          "### Function evaluations of the ODE flows")


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _section(text: str, heading: str) -> str:
    start = text.index(heading)
    following = text.find("\n### ", start + 1)
    return text[start:] if following < 0 else text[start:following]


def test_smoke_run(tmp_path):
    text, saved = run_report("continuous.py", "continuous.md", tmp_path, "--smoke")
    for heading in TABLES:
        assert heading in text, f"missing {heading!r}"
    # every model has a row with a finite number in the NLL and timing tables, and no failure
    for heading in TABLES[:3]:
        section = _section(text, heading)
        for label in MODELS if heading != TABLES[1] else MODELS[:5]:
            rows = [line for line in section.splitlines() if line.startswith(f"| {label} |")]
            assert len(rows) == 1, (heading, label, section)
            cells = rows[0].strip("|").split("|")[1:]
            assert cells and all(re.match(r"^\s*-?\d+\.\d+", c) for c in cells), (heading, rows[0])
            assert "failed" not in rows[0] and "nan" not in rows[0].lower() and "inf" not in rows[0].lower()
    nfe = _section(text, TABLES[3])
    for label in ODE:
        assert any(line.startswith(f"| {label} | 8gaussians | ") for line in nfe.splitlines()), nfe
    assert "every model on every data set" in text

    results = saved["results"]
    rows = results["8gaussians"]
    assert set(MODELS) <= set(rows)
    for label in MODELS:
        r = rows[label]
        assert r["error"] is None, (label, r["error"])
        assert _finite(r["nll"]) and _finite(r["median_step_ms"]) and r["median_step_ms"] > 0, (label, r)
        assert r["deterministic"] is True, label
    for label in ODE:
        r = rows[label]
        assert r["nfe_forward"] > 0 and r["nfe_eval"] > 0 and _finite(r["reference_nll"]), (label, r)
    assert rows["pyro_nf ffjord"]["nfe_backward"] == 0  # backprop through the stored solve: no re-evaluation
    assert rows["zuko CNF"]["nfe_backward"] > 0  # zuko's adjoint evaluates the field again

    # the report re-rendered from the saved results (no training) is the same text
    again = tmp_path / "again.md"
    run_script("continuous.py", "--report-from", str(tmp_path / "raw.json"), "--output", str(again), timeout=120)
    assert again.read_text() == text
