"""experiments.prepare_dataset end to end on a tiny temporary data set, and its error exits."""

import os
import subprocess
import sys
from pathlib import Path

import cv2
import jax
import numpy as np
import pytest

from experiments.prepare_dataset import main, prepare_dataset
from fkp_jax import io, kernels
from fkp_jax.degrade import degrade_exact, modcrop, quantize_floor

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def dataset(tmp_path):
    rng = np.random.RandomState(0)
    (tmp_path / "HR").mkdir()
    cv2.imwrite(str(tmp_path / "HR" / "b.png"), rng.randint(0, 256, (16, 20, 3), dtype=np.uint8))
    cv2.imwrite(str(tmp_path / "HR" / "a.png"), rng.randint(0, 256, (23, 18, 3), dtype=np.uint8))
    return tmp_path


def _run(capsys, *argv):
    code = main([*argv, "--no-progress"])
    out, err = capsys.readouterr()
    return code, out, err


def _files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_end_to_end_x2(dataset, capsys):
    code, out, err = _run(capsys, "--sf", "2", "--dataset", str(dataset), "--seed", "3")
    assert code == 0 and err == ""
    assert "wrote 2 LR images" in out
    assert _files(dataset) == ["DIPFKP_gt_k_x2/a.mat", "DIPFKP_gt_k_x2/b.mat", "DIPFKP_lr_x2/a.png",
                               "DIPFKP_lr_x2/b.png", "HR/a.png", "HR/b.png"]  # and no temporary files
    for index, (name, shape) in enumerate((("a", (11, 9, 3)), ("b", (8, 10, 3)))):
        kernel = io.read_kernel_mat(dataset / "DIPFKP_gt_k_x2" / f"{name}.mat")
        assert kernel.shape == (11, 11) and abs(kernel.sum() - 1) < 1e-5
        # The documented key contract: image i <- fold_in(key(seed), i), in sorted order.
        want = kernels.random_gaussian_kernel(jax.random.fold_in(jax.random.key(3), index), 2)
        np.testing.assert_array_equal(kernel, np.asarray(want, np.float32).astype(np.float64))
        lr = io.read_image_u8(dataset / "DIPFKP_lr_x2" / f"{name}.png")
        assert lr.shape == shape
        hr = modcrop(io.read_image(dataset / "HR" / f"{name}.png"), 2)
        np.testing.assert_array_equal(lr, quantize_floor(degrade_exact(hr, kernel, 2)))
    k_a = io.read_kernel_mat(dataset / "DIPFKP_gt_k_x2" / "a.mat")
    k_b = io.read_kernel_mat(dataset / "DIPFKP_gt_k_x2" / "b.mat")
    assert np.abs(k_a - k_b).max() > 1e-3  # one kernel per image


def _mat_body(path):
    """A .mat file's bytes after its 128-byte header (the header holds the creation time, to the second)."""
    return path.read_bytes()[128:]


def test_same_seed_same_outputs_other_seed_differs(dataset, capsys):
    prepare_dataset(dataset, 3, seed=1, progress=False)
    first = _mat_body(dataset / "DIPFKP_gt_k_x3" / "a.mat"), (dataset / "DIPFKP_lr_x3" / "a.png").read_bytes()
    prepare_dataset(dataset, 3, seed=1, overwrite=True, progress=False)
    again = _mat_body(dataset / "DIPFKP_gt_k_x3" / "a.mat"), (dataset / "DIPFKP_lr_x3" / "a.png").read_bytes()
    assert again == first
    prepare_dataset(dataset, 3, seed=2, overwrite=True, progress=False)
    assert _mat_body(dataset / "DIPFKP_gt_k_x3" / "a.mat") != first[0]
    assert io.read_kernel_mat(dataset / "DIPFKP_gt_k_x3" / "a.mat").shape == (15, 15)


def test_kernelgan_x4_uses_the_analytic_kernel(dataset):
    written = prepare_dataset(dataset, 4, model="KernelGANFKP", progress=False)
    assert written == [dataset / "KernelGANFKP_lr_x4" / "a.png", dataset / "KernelGANFKP_lr_x4" / "b.png"]
    kernel = io.read_kernel_mat(dataset / "KernelGANFKP_gt_k_x4" / "a.mat")
    k2 = kernels.random_gaussian_kernel(jax.random.fold_in(jax.random.key(0), 0), 2)
    np.testing.assert_allclose(kernel, kernels.kernel_shift(kernels.analytic_x4_kernel(k2), 4), atol=1e-7)
    assert kernel.shape == (21, 21) and 0.97 < kernel.sum() < 1.0  # re-centred, not renormalised
    assert io.read_image_u8(written[0]).shape == (5, 4, 3)


def test_motion_kernels_end_to_end(dataset, capsys):
    code, out, err = _run(capsys, "--sf", "2", "--dataset", str(dataset), "--seed", "4", "--kernel-type", "motion")
    assert code == 0 and err == "" and "wrote 2 LR images" in out and "motion kernels" in out
    assert _files(dataset) == ["DIPFKP_gt_k_x2/a.mat", "DIPFKP_gt_k_x2/b.mat", "DIPFKP_lr_x2/a.png",
                               "DIPFKP_lr_x2/b.png", "HR/a.png", "HR/b.png"]
    for index, name in enumerate("ab"):
        kernel = io.read_kernel_mat(dataset / "DIPFKP_gt_k_x2" / f"{name}.mat")
        # the same key contract as the Gaussian kernels: image i <- fold_in(key(seed), i)
        want = kernels.random_motion_kernel(jax.random.fold_in(jax.random.key(4), index), 2)
        np.testing.assert_array_equal(kernel, np.asarray(want, np.float32).astype(np.float64))
        assert kernel.shape == (11, 11) and abs(kernel.sum() - 1) < 1e-5 and kernel.min() >= 0
        np.testing.assert_allclose(kernels.center_of_mass(kernel), [4.5, 4.5], atol=1e-5)  # (k - s)/2
        hr = modcrop(io.read_image(dataset / "HR" / f"{name}.png"), 2)
        lr = io.read_image_u8(dataset / "DIPFKP_lr_x2" / f"{name}.png")
        np.testing.assert_array_equal(lr, quantize_floor(degrade_exact(hr, kernel, 2)))
    # a motion kernel is not the Gaussian drawn from the same key
    gaussian = kernels.random_gaussian_kernel(jax.random.fold_in(jax.random.key(4), 0), 2)
    assert np.abs(io.read_kernel_mat(dataset / "DIPFKP_gt_k_x2" / "a.mat") - np.asarray(gaussian)).max() > 1e-2


def test_motion_kernels_for_kernelgan_x4_and_dipdkp_folders(dataset):
    prepare_dataset(dataset, 4, model="KernelGANFKP", kernel_type="motion", progress=False)
    kernel = io.read_kernel_mat(dataset / "KernelGANFKP_gt_k_x4" / "a.mat")
    assert kernel.shape == (21, 21) and abs(kernel.sum() - 1) < 1e-5  # the 21 x 21 grid of its x4 GT kernels
    np.testing.assert_allclose(kernels.center_of_mass(kernel), [8.5, 8.5], atol=1e-5)
    written = prepare_dataset(dataset, 3, model="DIPDKP", progress=False)  # DKP: FKP's data, its own folders
    assert written == [dataset / "DIPDKP_lr_x3" / "a.png", dataset / "DIPDKP_lr_x3" / "b.png"]
    kernel = io.read_kernel_mat(dataset / "DIPDKP_gt_k_x3" / "a.mat")
    want = kernels.random_gaussian_kernel(jax.random.fold_in(jax.random.key(0), 0), 3)
    np.testing.assert_array_equal(kernel, np.asarray(want, np.float32).astype(np.float64))


def test_existing_outputs_are_not_overwritten(dataset, capsys):
    assert _run(capsys, "--sf", "2", "--dataset", str(dataset))[0] == 0
    lr = dataset / "DIPFKP_lr_x2" / "a.png"
    before = lr.read_bytes(), lr.stat().st_mtime_ns
    code, out, err = _run(capsys, "--sf", "2", "--dataset", str(dataset), "--seed", "9")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "4 output file(s) exist, first" in err and "--overwrite" in err
    assert (lr.read_bytes(), lr.stat().st_mtime_ns) == before


def test_an_unreadable_image_stops_the_run_before_anything_is_written(dataset, capsys):
    (dataset / "HR" / "c.png").write_text("not an image")  # sorted last: a, b are fine
    code, out, err = _run(capsys, "--sf", "2", "--dataset", str(dataset))
    assert code == 2 and err.count("\n") == 1 and "c.png" in err
    assert _files(dataset) == ["HR/a.png", "HR/b.png", "HR/c.png"]


@pytest.mark.parametrize("argv,message", [
    (["--sf", "2", "--dataset", "{root}/nowhere"], "nowhere/HR: no such folder"),
    (["--sf", "2", "--dataset", "{root}"], "HR: no images"),
    (["--sf", "5", "--dataset", "{root}"], "unsupported scale factor 5 for DIPFKP (choose 2, 3, 4)"),
    (["--sf", "3", "--dataset", "{root}", "--model", "KernelGANFKP"], "unsupported scale factor 3 for KernelGANFKP"),
    (["--sf", "2", "--dataset", "{root}", "--model", "SRGAN"], "unsupported model 'SRGAN'"),
    (["--sf", "two", "--dataset", "{root}"], "argument --sf: invalid int value: 'two'"),
    (["--sf", "2", "--dataset", "{root}", "--noise-ker", "-0.1"], "kernel noise level must be >= 0"),
    (["--sf", "2", "--dataset", "{root}", "--kernel-type", "blur"], "argument --kernel-type: invalid choice: 'blur'"),
    (["--sf", "2", "--dataset", "{root}", "--kernel-type", "motion", "--noise-ker", "0.1"],
     "--noise-ker applies to Gaussian kernels only"),
    (["--dataset", "{root}"], "the following arguments are required: --sf"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, argv, message):
    (tmp_path / "HR").mkdir()
    (tmp_path / "HR" / "readme.txt").write_text("no images here")
    code, out, err = _run(capsys, *[a.format(root=tmp_path) for a in argv])
    assert code == 2
    assert err.startswith("prepare_dataset: error: ") and err.count("\n") == 1 and message in err


def test_bad_input_from_the_command_line_has_no_traceback(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "experiments.prepare_dataset", "--sf", "5", "--dataset",
                           str(tmp_path)], capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == "prepare_dataset: error: unsupported scale factor 5 for DIPFKP (choose 2, 3, 4)\n"


def test_conversions_are_reported_as_one_line_warnings(tmp_path, capsys):
    (tmp_path / "HR").mkdir()
    cv2.imwrite(str(tmp_path / "HR" / "g.png"), np.full((9, 8), 100, np.uint8))
    code, out, err = _run(capsys, "--sf", "2", "--dataset", str(tmp_path))
    assert code == 0
    assert err == f"prepare_dataset: warning: {tmp_path / 'HR' / 'g.png'}: grayscale image, replicated to RGB\n"
    lr = io.read_image_u8(tmp_path / "DIPFKP_lr_x2" / "g.png")
    assert lr.shape == (4, 4, 3) and (lr == lr[..., :1]).all()
