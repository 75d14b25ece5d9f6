"""python -m experiments.diffdkp: the whole pipeline in --tiny mode (golden tiny ADM / classifier, 64 px windows,
10 steps) on a one-image data set made with experiments.prepare_dataset, and its one-line errors.
One tiny run (~45 s here, mostly the sampler's compile); the error cases load no network."""

import json

import numpy as np
import pytest

from experiments import diffdkp, prepare_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """HR 64 x 64 (one tiny window at x4), LR 16 x 16, a 19 x 19 DIPDKP ground-truth kernel."""
    import cv2

    root = tmp_path_factory.mktemp("diffdkp_data")
    (root / "HR").mkdir()
    hr = cv2.imread(str(diffdkp.DEFAULT_DATASET / "HR" / "chelsea.png"), cv2.IMREAD_COLOR)
    cv2.imwrite(str(root / "HR" / "chelsea.png"), cv2.resize(hr, (64, 64), interpolation=cv2.INTER_CUBIC))
    assert prepare_dataset.main(["--sf", "4", "--dataset", str(root), "--model", "DIPDKP", "--no-progress"]) == 0
    return root


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """A 64 x 64 LR image: a 256 x 256 target at x4, one real-size window (the checkpoint errors come after
    the image checks)."""
    import cv2

    path = tmp_path_factory.mktemp("diffdkp_big") / "big.png"
    cv2.imwrite(str(path), np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    return path


def one_line_error(capsys, argv, out, needle):
    capsys.readouterr()
    assert diffdkp.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and needle in err, err
    assert not out.exists()  # nothing written


def test_tiny_end_to_end(ref, dataset, tmp_path, capsys):
    if not all((diffdkp.TINY_DIR / f).is_file() for f in diffdkp.TINY_FILES):
        pytest.skip(f"tiny golden models not found in {diffdkp.TINY_DIR}")
    out = tmp_path / "out"
    assert diffdkp.main(["--sf", "4", "--tiny", "--released-quirks", "--dataset", str(dataset), "--out", str(out)]) == 0
    record = json.loads((out / "metrics.json").read_text())
    cfg = record["config"]
    assert cfg["method"] == "diffdkp" and cfg["released_quirks"] is True and cfg["tiny"] is True
    assert cfg["iters"] == diffdkp.TINY_STEPS
    img = record["images"]["chelsea"]
    for key in ("kernel_psnr", "psnr_y", "ssim_y"):
        assert np.isfinite(img[key]).all(), key
    k = np.load(out / "chelsea_kernel.npy")
    assert k.shape == (19, 19) and abs(k.sum() - 1) < 1e-4
    from fkp_jax import io

    assert io.read_image_u8(out / "chelsea_sr.png").shape == (64, 64, 3)
    for suffix in ("_kernel.mat", "_kernel.png"):
        assert (out / f"chelsea{suffix}").is_file()
    assert (out / "results.md").is_file()


def test_no_checkpoints(big, tmp_path, capsys):
    out = tmp_path / "out"
    one_line_error(capsys, ["--sf", "4", "--input", str(big), "--out", str(out)], out, "256x256_diffusion.pt")
    err_argv = ["--sf", "4", "--input", str(big), "--out", str(out), "--adm", "adm.pt"]
    one_line_error(capsys, err_argv, out, "fkp_jax.convert")  # a classifier is needed too


def test_missing_files(big, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--sf", "4", "--input", str(big), "--out", str(out), "--adm", str(tmp_path / "nope.pt"),
            "--classifier", str(tmp_path / "nope_clf.pt")]
    one_line_error(capsys, argv, out, "no such ADM checkpoint")


def test_tiny_without_reference(dataset, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(diffdkp, "TINY_DIR", tmp_path / "absent")
    out = tmp_path / "out"
    one_line_error(capsys, ["--sf", "4", "--tiny", "--dataset", str(dataset), "--out", str(out)], out, "--tiny needs")


def test_released_quirks_need_kernels_before_anything_runs(big, dataset, tmp_path, capsys):
    """--released-quirks reads every image's ground-truth kernel: refused up front (no networks loaded, no
    output folder) for --input and --real."""
    out = tmp_path / "out"
    one_line_error(capsys, ["--sf", "4", "--tiny", "--released-quirks", "--input", str(big), "--out", str(out)],
                   out, "--released-quirks needs ground-truth kernels, which --input does not give")
    one_line_error(capsys, ["--sf", "4", "--tiny", "--released-quirks", "--real", "--dataset", str(dataset),
                            "--out", str(out)], out, "cannot be combined with --real")


def test_quirks_option(big, tmp_path, capsys):
    """--quirks keeps a subset of the released quirks (to measure each fix alone): parsed as numbers 1-5 or
    'none'; with quirk 2 (the warm-up towards the ground truth) it needs kernels like --released-quirks."""
    assert diffdkp.parse_quirks("4,1,4") == (1, 4) and diffdkp.parse_quirks("none") == ()
    for bad in ("7", "1,x", ""):
        with pytest.raises(Exception, match="quirk numbers 1-5"):
            diffdkp.parse_quirks(bad)
    out = tmp_path / "out"
    one_line_error(capsys, ["--sf", "4", "--tiny", "--quirks", "2,3", "--input", str(big), "--out", str(out)],
                   out, "--quirks needs ground-truth kernels")
    from types import SimpleNamespace as NS

    option = diffdkp.gt_kernel_option
    assert option(NS(quirks=(1, 3, 4, 5), released_quirks=True)) is None  # quirk 2 dropped: no kernel needed
    assert option(NS(quirks=None, released_quirks=True)) == "--released-quirks"
    assert option(NS(quirks=None, released_quirks=False)) is None


def test_help_says_iters_is_not_used(capsys):
    """--iters is refused by Diff-DKP (its schedule fixes the steps); its help line says so (`Method.iters_help`)."""
    with pytest.raises(SystemExit):
        diffdkp.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--iters ITERS not used by Diff-DKP: it runs the 100 respaced steps" in text


def test_weights_refused_before_anything_runs(dataset, tmp_path, capsys):
    """--weights loads nothing in Diff-DKP (its networks come from --adm / --classifier): refused by the shared
    rule (`cli.uses_weights`, `Method.own_weights`) with the method's own words, before any output."""
    out = tmp_path / "out"
    one_line_error(capsys, ["--sf", "4", "--tiny", "--dataset", str(dataset), "--weights", "2", "--out", str(out)],
                   out, "--weights: not used by Diff-DKP (use --adm / --classifier)")
