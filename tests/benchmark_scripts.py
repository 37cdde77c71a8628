"""Running a script of ``benchmarks/`` the way its smoke tests do: as a subprocess from the repository root,
into a temporary report and JSON, with a check that the committed report is left untouched."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"


def run_script(script: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python benchmarks/<script> <args>``; fails the test with the output's tail on a non-zero exit."""
    done = subprocess.run([sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return done


def run_report(script: str, committed: str, tmp_path: Path, *args: str, timeout: float = 300) -> tuple[str, dict]:
    """Run ``script`` with ``args`` into ``tmp_path`` (``--output``, ``--json``); check that the committed report
    ``benchmarks/<committed>`` is unchanged; return the report's text and the loaded JSON."""
    report, raw = tmp_path / "report.md", tmp_path / "raw.json"
    kept = BENCHMARKS / committed
    before = kept.read_bytes() if kept.exists() else None
    run_script(script, *args, "--output", str(report), "--json", str(raw), timeout=timeout)
    assert (kept.read_bytes() if kept.exists() else None) == before, f"the test run rewrote benchmarks/{committed}"
    return report.read_text(), json.loads(raw.read_text())
