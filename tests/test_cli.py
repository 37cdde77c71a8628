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
    ess = float(re.search(r"ESS: (\S+) as a fraction of the 2000 samples", text).group(1))
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


def test_fit_with_too_few_points_is_a_usage_error_before_training(monkeypatch, capsys):
    """--n 3 used to train, then die in the test NLL with ZeroDivisionError (an empty test split)."""
    import pyro_nf.__main__ as cli

    monkeypatch.setattr(cli.infer, "fit_density", lambda *a, **k: pytest.fail("trained"))
    with pytest.raises(SystemExit) as caught:
        main(["fit", "--n", "3", "--quiet"])
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert ("--n 3 is too small: the 80%/10%/10% split leaves 2 training, 1 validation and 0 test points, and the "
            "fit needs at least one of each; use --n 8 or more") in err
    for bad in (["--n", "0"], ["--steps", "0"], ["--batch-size", "-1"], ["--lr", "0"]):
        with pytest.raises(SystemExit) as caught:
            main(["fit", *bad])
        assert caught.value.code == 2 and "expected a positive" in capsys.readouterr().err
    with pytest.raises(SystemExit) as caught:
        main(["vi", "--particles", "0"])
    assert caught.value.code == 2
    seen = {}
    monkeypatch.setattr(cli, "_fit", lambda args: seen.setdefault("n", args.n) and 0)
    assert main(["fit", "--n", "8"]) == 0 and seen["n"] == 8  # the smallest size with a point in every part


def test_fit_that_diverges_says_so_and_exits_1(tmp_path, capsys):
    out = tmp_path / "fit.png"
    argv = ["fit", "--flow", "maf", "--lr", "1", "--n", "400", "--steps", "50", "--out", str(out), "--quiet"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert re.search(r"error: fit_density: the (gradient norm|loss) became \S+ at step \d+ \(lr 1, ", err), err
    assert "try a smaller lr (now 1; e.g. 0.1)" in err and not out.exists()


def test_own_data_file_fit_save_sample_score(tmp_path, capsys):
    """A user's 3-D CSV with a header: fit (standardised inside the model), save, sample, score."""
    import numpy as np
    import torch

    import pyro_nf as nf

    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 3)) * [10.0, 1.0, 0.1] + [100.0, 0.0, -5.0]
    csv = tmp_path / "mine.csv"
    np.savetxt(csv, x, delimiter=",", header="a,b,c", comments="")
    model_path, picture = tmp_path / "m.pt", tmp_path / "fit.png"
    assert main(["fit", "--data", str(csv), "--steps", "40", "--quiet", "--layers", "2", "--hidden", "16",
                 "--option", "scale_bound=1.5", "--out", str(picture), "--save", str(model_path)]) == 0
    assert picture.stat().st_size > 0 and model_path.exists()
    model = nf.load(model_path)
    samples = model.sample((2000,))
    assert abs(samples[:, 0].mean().item() - 100.0) < 3.0  # the data's own units
    out = tmp_path / "samples.csv"
    assert main(["sample", "--model", str(model_path), "-n", "50", "--out", str(out)]) == 0
    back = nf.datasets.read_file(out)
    assert back.shape == (50, 3)
    scores = tmp_path / "scores.csv"
    capsys.readouterr()
    assert main(["score", "--model", str(model_path), "--data", str(csv), "--out", str(scores)]) == 0
    printed = float(re.search(r"mean log density: (-?[\d.]+)", capsys.readouterr().out).group(1))
    per_row = nf.datasets.read_file(scores)
    assert per_row.shape == (400, 1) and abs(per_row.mean().item() - printed) < 1e-4
    expected = model.log_prob(torch.as_tensor(x, dtype=torch.float32))
    torch.testing.assert_close(per_row[:, 0], expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".pt"])
def test_other_file_types_are_read(tmp_path, suffix):
    import numpy as np
    import torch

    import pyro_nf as nf

    x = np.random.default_rng(1).normal(size=(30, 2))
    path = tmp_path / f"d{suffix}"
    if suffix == ".npy":
        np.save(path, x)
    elif suffix == ".npz":
        np.savez(path, samples=x)
    else:
        torch.save(torch.as_tensor(x), path)
    torch.testing.assert_close(nf.datasets.read_file(path), torch.as_tensor(x, dtype=torch.float32))


@pytest.mark.parametrize("argv, message", [
    (["fit", "--data", "missing.csv"], "no such file"),
    (["fit", "--option", "nonsense=3"], "has no option"),
    (["fit", "--hidden", "a,b"], "comma-separated"),
    (["fit", "--save", "/no/such/folder/m.pt"], "does not exist"),
    (["sample", "--model", "missing.pt"], "no such file"),
    (["fit", "--steps", "-5"], "expected a positive int, got '-5'"),
    (["fit", "--lr", "0"], "expected a positive float, got '0'"),
    (["fit", "--batch-size", "0"], "expected a positive int"),
    (["fit", "--n", "0"], "expected a positive int"),
    (["vi", "--layers", "0"], "expected a positive int"),
    (["fit", "--device", "gpu"], "expected cpu, cuda or cuda:N, got 'gpu'"),
    (["vi", "--device", "tpu"], "expected cpu, cuda or cuda:N"),
    (["vi", "--beta0", "0"], "expected a number in (0, 1]"),
    (["vi", "--anneal-steps", "-1"], "expected an int >= 0"),
    (["fit", "--out", "/no/such/folder/fit.png"], "does not exist"),
    (["fit", "--context-columns", "1"], "a toy set has no context columns"),
    (["fit", "--context-columns", "a"], "column indices"),
    (["fit", "--validation", "1"], "expected a number in (0, 1)"),
    (["fit", "--validation", "0.5", "--test", "0.5"], "leave no training points"),
    (["fit", "--patience", "0"], "expected a positive int"),
])
def test_bad_arguments_stop_before_training(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2 and message in capsys.readouterr().err


def test_nan_rows_are_named(tmp_path, capsys):
    path = tmp_path / "bad.csv"
    path.write_text("a,b\n1,2\n3,nan\n5,6\ninf,1\n")
    with pytest.raises(SystemExit) as stop:
        main(["fit", "--data", str(path)])
    assert stop.value.code == 2 and "data rows 2, 4" in capsys.readouterr().err


def test_unknown_option_shows_the_commands_usage(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["fit", "--stepz", "3"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "usage: python -m pyro_nf fit" in err and "unrecognized arguments: --stepz" in err


def test_cuda_missing_is_a_usage_error(monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as stop:
        main(["fit", "--device", "cuda"])
    assert stop.value.code == 2 and "CUDA is not available" in capsys.readouterr().err


def test_every_option_has_help_with_its_default_and_no_markup():
    from pyro_nf.__main__ import build_parser

    parser, commands = build_parser()
    for name, command in commands.items():
        for action in command._actions:
            if action.dest == "help":
                continue
            assert action.help, f"{name} {action.option_strings} has no help text"
            if not action.required:
                assert "default" in action.help, f"{name} {action.option_strings}: the help does not give a default"
        text = command.format_help()
        assert "``" not in text and ":func:" not in text and ":class:" not in text, name
    assert "``" not in parser.format_help()


def test_conditional_fit_save_sample_score(tmp_path, capsys):
    """A CSV whose last two columns are a context: p(x | c) fitted, saved, sampled at a context, scored."""
    import numpy as np
    import torch

    import pyro_nf as nf

    rng = np.random.default_rng(0)
    c = rng.normal(size=(600, 2)) * 5.0 + 20.0
    x = (c @ np.array([[1.0, 0.0], [0.0, -1.0]])) + 0.5 * rng.normal(size=(600, 2))
    csv = tmp_path / "xc.csv"
    np.savetxt(csv, np.concatenate([x, c], 1), delimiter=",", header="x0,x1,c0,c1", comments="")
    model_path = tmp_path / "m.pt"
    assert main(["fit", "--data", str(csv), "--context-columns", "2,3", "--flow", "maf", "--steps", "300",
                 "--lr", "5e-3", "--quiet", "--out", str(tmp_path / "fit.png"), "--save", str(model_path)]) == 0
    assert "given columns [2, 3]" in capsys.readouterr().out
    model = nf.load(model_path)
    assert isinstance(model, nf.ConditionalFlowDistribution)
    out = tmp_path / "samples.csv"
    assert main(["sample", "--model", str(model_path), "-n", "500", "--context", "25,15", "--out", str(out)]) == 0
    drawn = nf.datasets.read_file(out)
    assert drawn.shape == (500, 2)
    assert abs(drawn[:, 0].mean().item() - 25.0) < 1.5 and abs(drawn[:, 1].mean().item() + 15.0) < 1.5
    scores = tmp_path / "scores.csv"
    assert main(["score", "--model", str(model_path), "--data", str(csv), "--context-columns", "2,3",
                 "--out", str(scores)]) == 0
    as_float = dict(dtype=torch.float32)
    expected = model.condition(torch.as_tensor(c, **as_float)).log_prob(torch.as_tensor(x, **as_float))
    torch.testing.assert_close(nf.datasets.read_file(scores)[:, 0], expected, rtol=1e-4, atol=1e-4)
    capsys.readouterr()
    assert main(["score", "--model", str(model_path), "--data", str(csv)]) == 2
    assert "give --context-columns" in capsys.readouterr().err
    assert main(["sample", "--model", str(model_path)]) == 2
    assert "give --context with its 2 values" in capsys.readouterr().err


def test_validation_test_fractions_and_patience_reach_the_fit(monkeypatch, tmp_path):
    import pyro_nf.__main__ as cli

    seen = {}
    fit = cli.infer.fit_density

    def spy(model, data, **options):
        seen.update(options, n_train=data.shape[0])
        return fit(model, data, **options)

    monkeypatch.setattr(cli.infer, "fit_density", spy)
    assert main(["fit", "--n", "1000", "--validation", "0.2", "--test", "0.3", "--patience", "2", "--eval-every",
                 "5", "--steps", "20", "--quiet", "--out", str(tmp_path / "f.png")]) == 0
    assert seen["n_train"] == 500 and seen["validation"].shape[0] == 200
    assert seen["patience"] == 2 and seen["eval_every"] == 5
