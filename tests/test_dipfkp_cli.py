"""`python -m experiments.dipfkp`: outputs, metrics file, and one-line errors on bad input."""

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
import scipy.io as sio

from experiments import dipfkp as cli
from fkp_jax.convert import prior_from_torch, save_prior
from experiments.prepare_dataset import prepare_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Two 36x36 HR images with LR x2 and GT kernels made by our data preparation."""
    root = tmp_path_factory.mktemp("set")
    (root / "HR").mkdir()
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        img = cv2.GaussianBlur(rng.integers(0, 256, (36, 36, 3), dtype=np.uint8), (5, 5), 1.0)
        cv2.imwrite(str(root / "HR" / f"{name}.png"), img)
    prepare_dataset(root, 2, seed=0, progress=False)
    return root


def test_run_writes_every_output(dataset, ref, tmp_path, capsys):
    """Two images, two seeds, with --weights pointing at the official x2 prior converted by us."""
    weights = tmp_path / "fkp_official_x2"
    save_prior(prior_from_torch(ref / "weights" / "FKP_x2.pt"), weights)
    out = tmp_path / "out"
    argv = ["--sf", "2", "--dataset", str(dataset), "--iters", "3", "--seeds", "2", "--out", str(out),
            "--weights", str(weights)]
    assert cli.main(argv) == 0
    record = json.loads((out / "metrics.json").read_text())
    assert set(record["images"]) == {"a", "b"}
    for name, r in record["images"].items():
        assert len(r["kernel_psnr"]) == len(r["psnr_y"]) == len(r["ssim_y"]) == len(r["seconds"]) == 2
        assert all(np.isfinite(r["kernel_psnr"])) and all(0 < v < 1 for v in r["ssim_y"])
        for suffix in ("_sr.png", "_kernel.npy", "_kernel.mat", "_kernel.png", "_kernels_seeds.npy"):
            assert (out / f"{name}{suffix}").is_file()
        sr = cv2.imread(str(out / f"{name}_sr.png"))
        assert sr.shape == (36, 36, 3)
        k = np.load(out / f"{name}_kernel.npy")
        assert k.shape == (11, 11)
        np.testing.assert_array_equal(sio.loadmat(out / f"{name}_kernel.mat")["Kernel"], k.astype(np.float64))
        np.testing.assert_array_equal(np.load(out / f"{name}_kernels_seeds.npy")[0], k)
    assert record["mean"]["kernel_psnr"] == pytest.approx(
        np.mean([np.mean(r["kernel_psnr"]) for r in record["images"].values()]))
    assert "| a | 2 |" in (out / "results.md").read_text()
    assert record["config"]["weights"] == str(weights)
    assert not list(out.glob(".*.tmp"))  # no temporary files left behind


def _fails(argv, capsys, needle):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:") and needle in err, err


def test_bad_inputs_give_one_line_errors(dataset, tmp_path, capsys):
    out = ["--out", str(tmp_path / "o"), "--iters", "1"]
    _fails(["--sf", "5", "--dataset", str(dataset)] + out, capsys, "--sf 5")
    _fails(["--sf", "2", "--input", str(tmp_path / "missing.png")] + out, capsys, "missing.png")
    (tmp_path / "notes.png").write_text("not an image")
    _fails(["--sf", "2", "--input", str(tmp_path / "notes.png")] + out, capsys, "not a readable image")
    cv2.imwrite(str(tmp_path / "tiny.png"), np.zeros((12, 12, 3), np.uint8))
    _fails(["--sf", "2", "--input", str(tmp_path / "tiny.png")] + out, capsys, "too small")
    _fails(["--sf", "2", "--dataset", str(tmp_path / "nowhere")] + out, capsys, "nowhere")
    _fails(["--sf", "3", "--dataset", str(dataset)] + out, capsys, "DIPFKP_lr_x3")


def test_never_overwrites_inputs(dataset, tmp_path, capsys):
    """An --out whose output names would hit an input file is refused before anything runs."""
    root = tmp_path / "clash"
    (root / "DIPFKP_lr_x2").mkdir(parents=True)
    lr = (dataset / "DIPFKP_lr_x2" / "a.png").read_bytes()
    for name in ("a.png", "a_sr.png"):  # a_sr.png is an input and also image a's SR output name
        (root / "DIPFKP_lr_x2" / name).write_bytes(lr)
    _fails(["--sf", "2", "--dataset", str(root), "--out", str(root / "DIPFKP_lr_x2"), "--iters", "1"],
           capsys, "overwrite")
    assert (root / "DIPFKP_lr_x2" / "a_sr.png").read_bytes() == lr
    # nor is any folder that holds inputs used as the output folder, even without a name clash
    (root / "DIPFKP_lr_x2" / "a_sr.png").unlink()
    _fails(["--sf", "2", "--input", str(root / "DIPFKP_lr_x2" / "a.png"), "--out", str(root / "DIPFKP_lr_x2"),
            "--iters", "1"], capsys, "input folder")
    assert sorted(p.name for p in (root / "DIPFKP_lr_x2").iterdir()) == ["a.png"]


def test_converts_grayscale_and_says_so(tmp_path):
    """A fresh process with nothing but an LR image: our shipped x2 prior, no ground truth."""
    gray = cv2.GaussianBlur(np.random.default_rng(1).integers(0, 256, (20, 20), dtype=np.uint8), (5, 5), 1.0)
    cv2.imwrite(str(tmp_path / "g.png"), gray)
    res = subprocess.run([sys.executable, "-m", "experiments.dipfkp", "--sf", "2", "--input", str(tmp_path / "g.png"),
                          "--iters", "2", "--out", str(tmp_path / "o")],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "grayscale" in res.stderr
    record = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert record["images"]["g"]["seconds"][0] > 0 and "kernel_psnr" not in record["images"]["g"]


def test_reads_the_other_methods_layouts():
    """DIP-FKP runs on a KernelGANFKP_* (or DIPDKP_*) data set, so the methods compare on one set: the bundled
    KernelGAN images at x2 (11 x 11 kernels on both sides); at x4 their 21 x 21 kernels against DIP-FKP's
    19 x 19 give the one-line size error, not a wrong kernel PSNR."""
    from fkp_jax import cli as plumbing

    m = cli.method()
    kernelgan_set = cli.DEFAULT_DATASET.parent / "kernelgan"
    args = plumbing.parse_args(m, ["--sf", "2", "--dataset", str(kernelgan_set)])
    jobs = plumbing.find_jobs(m, args)
    assert [j.name for j in jobs] == ["astronaut", "coffee"]
    assert all(j.lr.parent.name == "KernelGANFKP_lr_x2" and j.hr is not None for j in jobs)
    assert plumbing.read_gt_kernel(jobs[0], 11).shape == (11, 11)
    args4 = plumbing.parse_args(m, ["--sf", "4", "--dataset", str(kernelgan_set)])
    with pytest.raises(ValueError, match="21x21, expected 19x19"):
        plumbing.read_gt_kernel(plumbing.find_jobs(m, args4)[0], 19)
