"""`python -m experiments.kulnet`: the test protocol's metrics, a run on the bundled set with the golden (seeded)
state converted, and one-line errors for missing or wrong weights."""

import json

import numpy as np
import pytest

from experiments import kulnet as cmd
from fkp_jax import cli, metrics


def test_metrics_follow_the_test_protocol(ref):
    """golden_kulnet README 8: PSNR-Y / SSIM-Y of the network's and of bicubic's SR against the GT (uint8 BGR as
    the original's tensor2img returns), and kernel PSNR, as the original's test.py computes them."""
    g = dict(np.load(ref / "golden_kulnet" / "test_protocol.npz", allow_pickle=False))
    sf = int(g["crop_border"])
    gt = g["net_gt_u8_bgr"][..., ::-1]
    for name in ("net", "bic"):
        sr = g[f"{name}_sr_u8_bgr"][..., ::-1]
        assert metrics.psnr_y(gt, sr, sf) == pytest.approx(float(g[f"{name}_psnr_y"]), abs=1e-9)
        assert metrics.ssim_y(gt, sr, sf) == pytest.approx(float(g[f"{name}_ssim_y"]), abs=1e-9)
    assert metrics.kernel_psnr(g["kernel_gt"][0], g["kernel_est_idx300"]) == pytest.approx(float(g["kernel_psnr"]), abs=1e-4)
    assert metrics.kernel_psnr(g["kpsnr_a"], g["kpsnr_b"]) == pytest.approx(float(g["kpsnr_ab"]), abs=1e-4)


@pytest.fixture(scope="module")
def weights(ref, tmp_path_factory):
    """The golden seeded x4 state (a stand-in for the official weights), converted by our tool."""
    from fkp_jax import convert

    dest = tmp_path_factory.mktemp("kulnet") / "x4"
    assert convert.main([str(ref / "golden_kulnet" / "kulnet_x4_init_state.pt"), str(dest)]) == 0
    return dest


def test_runs_on_the_bundled_set(weights, tmp_path):
    out = tmp_path / "out"
    assert cmd.main(["--sf", "4", "--weights", str(weights), "--seeds", "2", "--out", str(out)]) == 0
    record = json.loads((out / "metrics.json").read_text())
    assert record["config"]["sr"] == "KULNet" and record["config"]["weights"] == str(weights)
    assert record["config"]["iters"] == 1 and set(record["images"]) == {"astronaut", "chelsea", "coffee"}
    for r in record["images"].values():
        assert len(r["kernel_psnr"]) == 2 and all(np.isfinite(r["kernel_psnr"] + r["psnr_y"] + r["ssim_y"]))
    k = np.load(out / "astronaut_kernels_seeds.npy")
    assert k.shape == (2, 21, 21) and np.allclose(k.sum((1, 2)), 1.0, atol=1e-5) and k.min() >= 0
    assert not np.array_equal(k[0], k[1])  # the latent is sampled per restart
    assert (out / "astronaut_sr.png").is_file()


def test_ground_truth_kernels_are_padded_to_21(tmp_path):
    """x4 data hold 19 x 19 kernels: zero-padded by one pixel per side (same sum, same centre)."""
    m = cmd.method()
    args = cli.parse_args(m, ["--sf", "4", "--weights", "w"])
    job = cli.find_jobs(m, args)[0]
    small = cli.read_gt_kernel(job, None)
    padded = cli.read_gt_kernel(job, 21, m.pad_gt_kernel)
    assert small.shape == (19, 19) and padded.shape == (21, 21)
    assert np.array_equal(padded[1:-1, 1:-1], small) and padded.sum() == pytest.approx(small.sum())
    with pytest.raises(ValueError, match="expected 21x21"):
        cli.read_gt_kernel(job, 21)  # other methods keep refusing a kernel of another size


@pytest.mark.parametrize("extra, message", [
    ([], "KULNet needs trained weights"),
    (["--weights", "no/such/dir"], "no such KULNet checkpoint"),
    (["--weights", "{ref}/weights/FKP_x2.pt"], "not a KULNet state dict"),
    (["--weights", "{ref}/weights/FKP_x2.pt", "--iters", "5"], "--iters does not apply"),
    (["--weights", "w", "--sf", "5"], "unsupported scale factor"),
])
def test_bad_input_one_line_errors(ref, tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    argv = ["--sf", "4", "--out", str(out)] + [a.format(ref=ref) for a in extra]
    assert cmd.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1
    assert not (out / "metrics.json").exists()


def test_too_small_image_refused_before_any_output(tmp_path, capsys):
    import cv2

    cv2.imwrite(str(tmp_path / "tiny.png"), np.full((5, 6, 3), 128, np.uint8))
    out = tmp_path / "out"
    assert cmd.main(["--sf", "4", "--weights", "w", "--input", str(tmp_path / "tiny.png"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: tiny: image too small for KULNet") and len(err.splitlines()) == 1
    assert not out.exists()  # checked before the output folder is made


@pytest.mark.parametrize("sf", [2, 3, 4])
def test_real_image_border(sf):
    """The real-image loader's border (golden 8): the image itself in the middle, REAL_CROP[sf] pixels a side, a
    constant image stays constant where the blur does not reach the zero padding (the outer pixels darken),
    the border follows the nearest image edge, and crop_real_sr removes exactly sf x the border."""
    from fkp_jax import kulnet

    r = kulnet.REAL_CROP[sf]
    rng = np.random.default_rng(sf)
    lr = rng.uniform(0, 1, (9, 7, 3)).astype(np.float32)
    out = kulnet.pad_real_lr(lr, sf)
    assert out.shape == (9 + 2 * r, 7 + 2 * r, 3) and out.dtype == np.float32
    np.testing.assert_array_equal(out[r:-r, r:-r], lr)
    const = kulnet.pad_real_lr(np.full((9, 7, 3), 0.5, np.float32), sf)
    m = -(-(21 - sf) // 2 // sf)  # LR pixels whose blur window reaches the zero padding outside the HR border
    np.testing.assert_allclose(const[m:-m, m:-m], 0.5, atol=1e-6)  # replicate padding + a unit-sum blur
    assert const[0, 0, 0] < 0.5 and const[-1, -1, 0] < 0.5  # the zero padding darkens the outermost pixels
    # a dark left half and a bright right half: the border just outside each side follows it
    split = np.zeros((16, 16, 3), np.float32)
    split[:, 8:] = 1.0
    side = kulnet.pad_real_lr(split, sf)
    assert side[r + 8, r - 1, 0] < 0.25 and side[r + 8, -r, 0] > 0.75
    sr = np.zeros((1, (9 + 2 * r) * sf, (7 + 2 * r) * sf, 3))
    assert kulnet.crop_real_sr(sr, sf).shape == (1, 9 * sf, 7 * sf, 3)


def test_real_images_keep_their_size(weights, tmp_path):
    """--real: the bordered LR goes through the network and the SR comes back at sf x the LR size."""
    from fkp_jax import io

    src = tmp_path / "in.png"
    io.write_image_u8(src, (np.random.default_rng(0).uniform(0, 255, (13, 11, 3))).astype(np.uint8))
    out = tmp_path / "out"
    assert cmd.main(["--sf", "4", "--weights", str(weights), "--input", str(src), "--real", "--out", str(out)]) == 0
    assert io.read_image(out / "in_sr.png").shape == (52, 44, 3)
