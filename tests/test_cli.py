import math
import re

import pytest

from pyro_nf.__main__ import main


def test_fit_prints_nll_and_writes_picture(tmp_path, capsys):
    out = tmp_path / "fit.png"
    assert main(["fit", "--steps", "30", "--n", "400", "--out", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "held-out NLL:" in text and "nats" in text
    assert out.stat().st_size > 10_000


def test_no_arguments_runs_the_fit_job(monkeypatch):
    import pyro_nf.__main__ as cli

    seen = {}
    monkeypatch.setattr(cli, "_fit", lambda args: seen.setdefault("args", args) and 0)
    main([])
    args = seen["args"]
    assert (args.data, args.flow, args.steps) == ("moons", "realnvp", 2000)


def test_bad_option_is_rejected():
    with pytest.raises(SystemExit):
        main(["fit", "--flow", "nope"])


def test_vi_prints_its_metrics_and_writes_picture(tmp_path, capsys):
    out = tmp_path / "vi.png"
    argv = ["vi", "--target", "U2", "--flow", "planar", "--layers", "4", "--steps", "40", "--particles", "32",
            "--eval-samples", "2000", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "to U2 by reverse KL: 40 steps x 32 particles" in text and "annealing beta 0.2 -> 1 over 4 steps" in text
    kl = float(re.search(r"reverse KL: (\S+) nats", text).group(1))
    ess = float(re.search(r"ESS: (\S+) of 2000 samples", text).group(1))
    log_z, se = (float(v) for v in re.search(r"log Z: (\S+) \+- (\S+) \(importance sampling\)", text).groups())
    assert kl > 0 and 0 < ess <= 1 and se > 0 and math.isfinite(log_z)
    assert "vs 2.3079 (quadrature; exact 2.3079)" in text
    assert out.stat().st_size > 10_000


def test_vi_defaults_and_bad_options(monkeypatch):
    import pyro_nf.__main__ as cli

    seen = {}
    monkeypatch.setattr(cli, "_vi", lambda args: seen.setdefault("args", args) and 0)
    main(["vi"])
    args = seen["args"]
    assert (args.target, args.flow, args.layers, args.steps, args.anneal_steps) == ("U1", "planar", 32, 10000, None)
    with pytest.raises(SystemExit):
        main(["vi", "--target", "U9"])
