"""experiments.train_fkp: a short training run, its checkpoint, --evaluate, the validation grid, CLI errors."""

import csv

import numpy as np
import pytest

from experiments.train_fkp import main, validation_params
from fkp_jax.flow import load_prior


def test_short_run_learns_and_saves(tmp_path, capsys):
    out = tmp_path / "fkp_x2"
    argv = ["--sf", "2", "--steps", "200", "--steps-per-epoch", "100", "--val-size", "200",
            "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    rows = list(csv.DictReader(open(out / "train_log.csv")))
    assert [int(r["step"]) for r in rows] == [100, 200]
    train = [float(r["train_nll"]) for r in rows]
    val = [float(r["val_nll"]) for r in rows]
    assert train[1] < train[0] - 10 and val[1] < val[0]
    prior = load_prior(out)
    assert prior.config.sf == 2
    capsys.readouterr()
    assert main(["--evaluate", str(out), "--val-size", "200"]) == 0  # best == last epoch here
    reported = float(capsys.readouterr().out.split("validation NLL")[1].split()[0])
    np.testing.assert_allclose(reported, min(val), atol=1e-3)
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())


def test_out_keeps_what_the_user_had(tmp_path, capsys):
    """--out never deletes a folder of other files, nor a file; an earlier checkpoint (the default --out is our
    shipped weights) is replaced only with --overwrite. All refused before training starts."""
    from fkp_jax import checkpoint

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    a_file = tmp_path / "file.txt"
    a_file.write_text("keep")
    ckpt = tmp_path / "ckpt"
    checkpoint.save(ckpt, {"w": np.zeros(2, np.float32)}, {"model": "fkp_flow"})
    base = ["--sf", "2", "--steps", "1", "--steps-per-epoch", "1", "--val-size", "10", "--no-progress", "--out"]
    for out, match in [(mine, "other contents (notes.txt)"), (a_file, "not a folder"), (ckpt, "--overwrite")]:
        assert main(base + [str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and match in err, err
    assert (mine / "notes.txt").read_text() == "keep" and sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    assert a_file.read_text() == "keep"
    assert checkpoint.restore(ckpt)[1] == {"model": "fkp_flow"}


def test_evaluate_reads_the_official_file(ref, capsys):
    assert main(["--evaluate", str(ref / "weights" / "FKP_x2.pt"), "--val-size", "20"]) == 0
    assert capsys.readouterr().out.startswith("x2 validation NLL")


@pytest.mark.parametrize("sf, n", [(2, 4624), (3, 10000), (4, 17424)])
def test_validation_grid_sizes(sf, n):
    grid = validation_params(sf)
    assert grid.shape == (n, 3) and grid[:, 2].max() == pytest.approx(3.0)


@pytest.mark.parametrize("argv, match", [
    (["--sf", "5"], "unsupported scale factor 5"),
    (["--steps", "100"], "--sf is required"),
    (["--sf", "2", "--steps", "0"], "--steps must be positive"),
    (["--evaluate", "/nonexistent/dir"], "no FKP checkpoint"),
])
def test_cli_errors(argv, match, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and match in err
