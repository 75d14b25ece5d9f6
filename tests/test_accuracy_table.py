"""benchmarks.accuracy_table: official-run folders and study folders (any of their runs) read into the same rows."""

import numpy as np
import pytest

from benchmarks.accuracy_table import main, rows_of
from fkp_jax import io, metrics


def test_official_and_study_folders(tmp_path, capsys):
    rng = np.random.default_rng(0)
    hr = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
    io.write_image_u8(tmp_path / "data" / "HR" / "a.png", hr)
    sr = np.clip(hr / 255.0 + 0.02 * rng.standard_normal(hr.shape), 0, 1)
    off = tmp_path / "official"
    for s, final in enumerate([40.0, 44.0]):
        (off / "a").mkdir(parents=True, exist_ok=True)
        np.savez(off / "a" / f"seed{s}.npz", record_kernel_psnr=np.array([30.0, final]), sr=sr)
    rows = rows_of(off, tmp_path / "data" / "HR", 2)
    assert [r["kernel_psnr"] for r in rows] == [40.0, 44.0]
    want = metrics.psnr_y(hr, np.clip(np.round(sr * 255), 0, 255).astype(np.uint8), 2)
    assert rows[0]["psnr_y"] == pytest.approx(want) and 20 < want < 40

    study = tmp_path / "study"
    study.mkdir()
    (study / "results.csv").write_text("run,image,seed,kernel_psnr,psnr_y\ndipfkp_x2,a,0,50.0,30.0\n"
                                       "dipfkp_x4,a,0,10.0,10.0\n")
    argv = ["--sf", "2", "--dataset", str(tmp_path / "data"), "--run", f"off={off}", "--run", f"ours={study}"]
    assert main(argv) == 0  # --run repeated: both rows
    out = capsys.readouterr().out
    assert "| off | x2 | 1 x 2 | 42.00 ± 2.00 | 40.00 | 40.00 |" in out
    assert "| ours | x2 | 1 x 1 | 50.00 ± 0.00 | 50.00 | 50.00 | 30.00 |" in out and "| ours | 50.00 |" in out

    other = tmp_path / "study_b"  # the same label twice: one row over both folders (a study split over cores)
    other.mkdir()
    (other / "results.csv").write_text("run,image,seed,kernel_psnr,psnr_y\ndipfkp_x2,b,0,46.0,28.0\n")
    assert main(["--sf", "2", "--dataset", str(tmp_path / "data"), "--run", f"ours={study}", f"ours={other}"]) == 0
    out = capsys.readouterr().out
    assert "| ours | x2 | 2 x 1 | 48.00 ± 2.00 | 46.00 | 48.00 | 29.00 |" in out and "| ours | 50.00 | 46.00 |" in out

    assert main(["--sf", "2", "--dataset", str(tmp_path / "data"), "--seeds", "1", "--run", f"off={off}"]) == 0
    assert "| off | x2 | 1 x 1 | 40.00 ± 0.00 | 40.00 | 40.00 |" in capsys.readouterr().out  # restart 1 left out


def test_a_named_run_of_a_study(tmp_path, capsys):
    """DIR@RUN: one row per method of a multi-method study; an absent run is a one-line error naming those there."""
    study = tmp_path / "study"
    study.mkdir()
    (study / "results.csv").write_text("run,image,seed,kernel_psnr,psnr_y\ndipdkp_x2,a,0,41.0,28.0\n"
                                       "dipdkp-fkp_x2,a,0,47.0,27.0\ndipdkp-fkp_x2,a,1,45.0,27.5\n")
    argv = ["--sf", "2", "--dataset", str(tmp_path), "--run", f"DKP={study}@dipdkp_x2", f"FKP={study}@dipdkp-fkp_x2"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "| DKP | x2 | 1 x 1 | 41.00 ± 0.00 | 41.00 | 41.00 | 28.00 |" in out
    assert "| FKP | x2 | 1 x 2 | 46.00 ± 1.00 | 45.00 | 45.00 | 27.25 |" in out
    assert main(["--sf", "2", "--dataset", str(tmp_path), "--run", f"x={study}@dipdkp-mlp_x2"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "dipdkp-mlp_x2" in err and "dipdkp-fkp_x2" in err


def test_unknown_folder_is_a_one_line_error(tmp_path, capsys):
    assert main(["--sf", "2", "--dataset", str(tmp_path), "--run", f"x={tmp_path}"]) == 2
    assert "neither a study folder" in capsys.readouterr().err


def test_usrnet_psnr_column_when_a_run_has_it(tmp_path, capsys):
    """Runs made with --SR carry psnr_y_usrnet (KernelGAN has no DIP image: PSNR-Y '-'); the column appears
    only then, '-' for rows without it."""
    study = tmp_path / "study"
    study.mkdir()
    (study / "results.csv").write_text(
        "run,image,seed,kernel_psnr,psnr_y,psnr_y_usrnet\nkernelganfkp_x2,a,0,44.0,,25.0\nkernelganfkp_x2,a,1,42.0,,26.0\n"
        "dipfkp_x2,a,0,47.0,27.0,\n")
    argv = ["--sf", "2", "--dataset", str(tmp_path), "--run", f"KG={study}@kernelganfkp_x2", f"DIP={study}@dipfkp_x2"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "| run | scale | images x seeds | kernel PSNR mean ± std (dB) | worst restart | mean of per-image worst | " \
           "PSNR-Y (dB) | PSNR-Y USRNet (dB) |" in out
    assert "| KG | x2 | 1 x 2 | 43.00 ± 1.00 | 42.00 | 42.00 | - | 25.50 |" in out
    assert "| DIP | x2 | 1 x 1 | 47.00 ± 0.00 | 47.00 | 47.00 | 27.00 | - |" in out


def test_official_kernelgan_folder(tmp_path, capsys):
    """official_kernelgan_runs npz: the final kernel PSNR is its ``kernel_psnr`` (the x4 kernel of gan.finish()
    at x4, not the last recorded x2 kernel), and without a DIP image there is no PSNR-Y."""
    io.write_image_u8(tmp_path / "HR" / "a.png", np.zeros((24, 24, 3), np.uint8))
    off = tmp_path / "official"
    (off / "a").mkdir(parents=True)
    np.savez(off / "a" / "seed0.npz", record_kernel_psnr=np.array([30.0, 35.0]), kernel_psnr=41.0)
    np.savez(off / "a" / "seed1.npz", record_kernel_psnr=np.array([]), kernel_psnr=43.0)
    rows = rows_of(off, tmp_path / "HR", 2)
    assert [r["kernel_psnr"] for r in rows] == [41.0, 43.0] and all("psnr_y" not in r for r in rows)
    assert main(["--sf", "2", "--dataset", str(tmp_path), "--run", f"KG official={off}"]) == 0
    assert "| KG official | x2 | 1 x 2 | 42.00 ± 1.00 | 41.00 | 41.00 |" in capsys.readouterr().out
