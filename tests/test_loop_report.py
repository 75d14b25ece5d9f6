"""benchmarks.loop_report --curves: official-run folders and any run of a study folder, one row per label."""

import numpy as np

from benchmarks.loop_report import main


def test_curves_of_official_and_study_runs(tmp_path, capsys):
    off = tmp_path / "official" / "a"
    off.mkdir(parents=True)
    t = np.arange(1, 26)  # official runs record every iteration; the last (25) is not a multiple of 10
    np.savez(off / "seed0.npz", record_t=t, record_kernel_psnr=30.0 + 0.4 * t)
    np.savez(off / "seed1.npz", record_t=t, record_kernel_psnr=32.0 + 0.4 * t)
    run = tmp_path / "study" / "runs" / "kernelganfkp_x2"
    for image, final in (("a", 38.0), ("b", 36.0)):
        (run / image).mkdir(parents=True)
        np.savez(run / image / "seed0.npz", record_t=np.array([10, 20]), record_kernel_psnr=np.array([35.0, final]))
    np.savez(tmp_path / "study" / "runs" / "kernelganfkp_x2" / "b" / "seed1.npz", record_t=np.array([10, 20]),
             record_kernel_psnr=np.array([35.0, 40.0]))
    plot = tmp_path / "curves.png"
    assert main(["--curves", f"off={tmp_path / 'official'}", f"ours={tmp_path / 'study'}@kernelganfkp_x2",
                 "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "| off | 41.00 ± 1.00 (2) |  |  |" in out  # the final values (t = 25), not the last multiple of 10
    assert "| ours | 38.00 (1) | 38.00 ± 2.00 (2) | 38.00 |" in out
    assert plot.stat().st_size > 1000
