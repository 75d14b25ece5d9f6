"""benchmarks.kulnet_speed: its bad arguments stop in one line before anything is timed (the timings themselves
need the official code and torch; docs/benchmarks.md has them)."""

from benchmarks import kulnet_speed


def test_official_train_needs_official(capsys, tmp_path):
    assert kulnet_speed.main(["--official-train", "--out", str(tmp_path / "b.md")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["kulnet_speed: error: --official-train needs --official DIR"]
    assert not (tmp_path / "b.md").exists()


def test_official_must_be_a_checkout(capsys, tmp_path):
    assert kulnet_speed.main(["--official", str(tmp_path), "--official-train", "--out", str(tmp_path / "b.md")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a checkout of Fangzhenxuan/UncertaintySR" in err[0]
    assert not (tmp_path / "b.md").exists()
