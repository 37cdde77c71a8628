"""Smoke test of the neural posterior estimation benchmark: ``benchmarks/posterior.py --smoke`` (seconds) as a
subprocess, into a temporary report. It checks that every task and model ran (or was skipped with a reason),
that the report has its tables and that every number is finite; it says nothing about the numbers
themselves. ``benchmarks/posterior.md`` is left untouched."""

from __future__ import annotations

import math

from benchmark_scripts import run_report


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def test_smoke_report(tmp_path):
    text, results = run_report("posterior.py", "posterior.md", tmp_path, "--smoke")
    for heading in ("# Neural posterior estimation", "## Setup", "## two_moons", "## gaussian_linear",
                    "| model | parameters | ms / step (wall)", "Per observation"):
        assert heading in text, f"missing {heading!r} in the report"
    lowered = text.lower()
    for word in ("nan", "inf"):
        assert f" {word} " not in lowered and f"| {word}" not in lowered and f"-{word}" not in lowered

    assert results["mode"] == "smoke"
    assert [t["task"] for t in results["tasks"]] == ["two_moons", "gaussian_linear"]
    for task in results["tasks"]:
        ran = {row["model"] for row in task["models"]} | set(task["skipped"])
        assert ran == {"pyro_nf nsf_autoregressive", "zuko NSF", "pyro_nf nsf_coupling"}
        assert all(task["skipped"].values()), "a skipped model needs a reason"
        n_obs = len(task["observations"]["theta"])
        assert n_obs == results["config"]["observations"]
        assert all(_finite(v) for v in task["observations"]["reference_log_p"])
        for row in task["models"]:
            assert row["parameters"] > 0
            for key in ("ms_per_step", "cpu_ms_per_step", "kl", "kl_se", "test_log_q", "final_train_nll"):
                assert _finite(row[key]), f"{task['task']} {row['model']}: {key} = {row[key]!r}"
            for key in ("log_q_obs", "c2st", "leakage", "sample_ms"):
                assert len(row[key]) == n_obs and all(_finite(v) for v in row[key]), (row["model"], key)
            assert all(0.0 <= c <= 1.0 for c in row["c2st"]) and all(0.0 <= v < 1.0 for v in row["leakage"])
