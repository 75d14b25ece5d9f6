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
