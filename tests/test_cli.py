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
