"""experiments.trace_study, DIP-DKP mode: its summary of a run, checked on the original's own recorded run.

The restarts themselves take minutes (two compilations of the DIP step, 500 steps each), so they are not run
here; what they are built from is tested in tests/test_dipdkp.py (warm-up replay, prior step and DIP step 1
against the original, the float64 replay). The DIP-FKP mode is tested in tests/test_dipfkp.py.
"""

import numpy as np
import pytest

from fkp_jax import metrics


@pytest.fixture(scope="module")
def trace(ref):
    path = ref / "golden_dkp" / "dipdkp_trace_x2.npz"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return dict(np.load(path, allow_pickle=False))


def _original(trace):
    return {"kernel_psnr": trace["inner_kernel_psnr"], "loss_x": trace["inner_loss_x"],
            "warmup_kernel_psnr": metrics.kernel_psnr(trace["gt_kernel"], trace["warm_kernel_after"][-1]),
            "psnr_y": float(trace["final_eval_psnr_y"]), "ssim_y": float(trace["final_eval_ssim_y"])}


def test_dkp_columns_give_the_original_run_its_readme_numbers(trace):
    """Step c is row c - 1: the summary of the original's curve is golden_dkp README 4.5's list."""
    from experiments.trace_study import dkp_columns

    o = _original(trace)
    # our kernel PSNR of the kernels the original used is the one it recorded
    np.testing.assert_allclose([metrics.kernel_psnr(trace["gt_kernel"], k) for k in trace["inner_kernel"]],
                               trace["inner_kernel_psnr"], rtol=1e-12)
    cols = {k: float(v[0]) for k, v in dkp_columns(o["kernel_psnr"], o["warmup_kernel_psnr"], o["psnr_y"],
                                                   o["ssim_y"]).items()}
    want = {"after warm-up": 39.12, "c = 13": 38.75, "c = 405": 47.36, "c = 460": 47.72, "final (c = 500)": 47.58,
            "min": 38.75, "max": 47.72, "PSNR-Y": 27.03}
    for name, value in want.items():
        assert cols[name] == pytest.approx(value, abs=0.005), name
    assert (cols["argmin"], cols["argmax"]) == (13, 460)
    # a shorter run: the steps it did not reach are NaN, its final is its last step
    short = dkp_columns(o["kernel_psnr"][:100], 39.0, 20.0, 0.5)
    assert np.isnan(short["c = 405"][0]) and short["final (c = 100)"][0] == o["kernel_psnr"][99]


def test_dkp_markdown_and_plot(trace):
    """Table rows per restart, mean ± std, the original's row; a PNG plot. (Two copies of the original's run
    as stand-in restarts.)"""
    from experiments.trace_study import dkp_markdown, dkp_plot_png

    o = _original(trace)
    res = {"kernel_psnr": np.stack([o["kernel_psnr"], o["kernel_psnr"] - 1.0], axis=1),
           "loss_x": np.stack([o["loss_x"]] * 2, axis=1), "warmup_kernel_psnr": np.array([39.12, 39.5]),
           "psnr_y": np.array([27.0, 26.0]), "ssim_y": np.array([0.83, 0.82]), "seconds_run": 1.0,
           "seconds_total": 2.0, "seconds_per_step": 0.1, "original": o}
    text = dkp_markdown(res, 500, "img/x.png")
    assert "| 0 | replayed | 39.12 | 38.75 | 47.36 | 47.72 | 47.58 | 38.75 (13) | 47.72 (460) | 27.00 | 0.8300 |" in text
    assert "| 1 | own | 39.50 | 37.75 |" in text
    assert "| **mean ± std** | | 39.31 ± 0.19 | 38.25 ± 0.50 |" in text
    assert "| **original** (PyTorch, CPU, 1 thread) | recorded | 39.12 | 38.75 |" in text and "27.03 | 0.8302 |" in text
    assert "![kernel PSNR against DIP step](img/x.png)" in text
    assert dkp_plot_png(res, 500)[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("argv", [["--iters", "2"], ["--seeds", "0"]])
def test_too_few_iterations_or_seeds_give_one_line(argv, capsys):
    from experiments.trace_study import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: --seeds must be positive")
