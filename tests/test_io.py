"""fkp_jax.io: image reading edge cases, atomic writers, .mat kernels, the original folder layout."""

import json
import os
import warnings

import cv2
import numpy as np
import pytest
import scipy.io

from fkp_jax import io


def _no_warnings(fn, *args):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn(*args)


def _one_line(exc_info):
    msg = str(exc_info.value)
    assert "\n" not in msg
    return msg


def test_rgb_roundtrip_and_channel_order(tmp_path):
    img = np.random.RandomState(0).rand(5, 7, 3).astype(np.float32)
    img[0, 0] = (1.0, 0.0, 0.0)  # pure red, RGB
    path = tmp_path / "a.png"
    io.write_image(path, img)
    assert tuple(cv2.imread(str(path))[0, 0]) == (0, 0, 255)  # stored as BGR by OpenCV
    back = _no_warnings(io.read_image, path)
    assert back.dtype == np.float32 and back.shape == (5, 7, 3)
    np.testing.assert_array_equal(back, np.round(img * 255).astype(np.float32) / np.float32(255))
    u8 = io.read_image_u8(path)
    assert u8.dtype == np.uint8
    np.testing.assert_array_equal(u8, np.round(img * 255).astype(np.uint8))


def test_write_image_rounds_and_clips(tmp_path):
    path = tmp_path / "r.png"
    io.write_image(path, np.array([[[0.2, 1.3, -0.2], [0.5, 0.998, 0.002]]], np.float32))
    np.testing.assert_array_equal(io.read_image_u8(path), [[[51, 255, 0], [128, 254, 1]]])
    with pytest.raises(io.DataError, match="NaN") as e:
        io.write_image(tmp_path / "n.png", np.full((2, 2, 3), np.nan, np.float32))
    _one_line(e)
    assert not (tmp_path / "n.png").exists()


def test_missing_and_non_image_files(tmp_path):
    with pytest.raises(io.ImageError, match="no such image file") as e:
        io.read_image(tmp_path / "missing.png")
    _one_line(e)
    fake = tmp_path / "fake.png"
    fake.write_text("this is not a PNG\n")
    with pytest.raises(io.ImageError, match="not a readable image") as e:
        io.read_image(fake)
    _one_line(e)
    assert issubclass(io.ImageError, ValueError)


def test_grayscale_is_replicated_with_a_warning(tmp_path):
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    cv2.imwrite(str(tmp_path / "g.png"), gray)
    with pytest.warns(io.ImageWarning, match="grayscale"):
        img = io.read_image(tmp_path / "g.png")
    assert img.shape == (3, 4, 3)
    for c in range(3):
        np.testing.assert_array_equal(img[:, :, c], gray / np.float32(255))


def test_16_bit_is_scaled_with_a_warning(tmp_path):
    v = np.array([[[0, 257, 65535], [1000, 30000, 65534]]], np.uint16)  # RGB
    cv2.imwrite(str(tmp_path / "d.png"), v[:, :, ::-1])
    with pytest.warns(io.ImageWarning, match="16-bit"):
        img = io.read_image(tmp_path / "d.png")
    np.testing.assert_array_equal(img, v.astype(np.float32) / np.float32(65535))
    with pytest.warns(io.ImageWarning):
        np.testing.assert_array_equal(io.read_image_u8(tmp_path / "d.png"), [[[0, 1, 255], [4, 117, 255]]])


def test_rgba_alpha_dropped_warning_only_if_translucent(tmp_path):
    bgra = np.zeros((2, 3, 4), np.uint8)
    bgra[..., 0], bgra[..., 1], bgra[..., 2], bgra[..., 3] = 10, 20, 30, 255
    cv2.imwrite(str(tmp_path / "opaque.png"), bgra)
    img = _no_warnings(io.read_image_u8, tmp_path / "opaque.png")  # like the original's LR PNGs
    np.testing.assert_array_equal(img, np.broadcast_to([30, 20, 10], (2, 3, 3)))
    bgra[0, 0, 3] = 128
    cv2.imwrite(str(tmp_path / "translucent.png"), bgra)
    with pytest.warns(io.ImageWarning, match="alpha"):
        img = io.read_image(tmp_path / "translucent.png")
    np.testing.assert_array_equal(img[0, 0], np.array([30, 20, 10], np.float32) / np.float32(255))


def test_bundled_lr_png_reads_as_rgb(ref):
    path = ref / "data" / "Test" / "DIPFKP_lr_x4" / "102061.png"
    img = _no_warnings(io.read_image_u8, path)
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert raw.shape == (120, 80, 4) and img.shape == (120, 80, 3)
    np.testing.assert_array_equal(img, raw[:, :, 2::-1])


def test_check_finite():
    io.check_finite(np.zeros(3), "fine")
    with pytest.raises(io.DataError, match=r"^kernel: 2 NaN and 1 Inf values$"):
        io.check_finite(np.array([np.nan, 1.0, np.inf, np.nan]), "kernel")


def test_atomic_write_commits_and_leaves_no_temp(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    io.write_text(target, "hello\n")
    assert target.read_text() == "hello\n"
    assert os.listdir(target.parent) == ["out.txt"]
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


def test_atomic_write_failure_does_not_clobber(tmp_path):
    target = tmp_path / "keep.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with io.atomic_write(target) as f:
            f.write(b"partial new content")
            raise RuntimeError("killed")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["keep.bin"]


def test_json_and_npy_writers(tmp_path):
    io.write_json(tmp_path / "a.json", {"seed": 3, "psnr": [1.5]})
    assert json.loads((tmp_path / "a.json").read_text()) == {"seed": 3, "psnr": [1.5]}
    arr = np.arange(6, dtype=np.float32).reshape(2, 3)
    io.write_npy(tmp_path / "a.npy", arr)
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), arr)
    assert sorted(os.listdir(tmp_path)) == ["a.json", "a.npy"]


def test_kernel_mat_roundtrip_and_errors(tmp_path, ref, golden):
    bundled = io.read_kernel_mat(ref / "data" / "Test" / "DIPFKP_gt_k_x4" / "102061.mat")
    assert bundled.dtype == np.float64
    np.testing.assert_array_equal(bundled, golden("degrade")["example_gt_kernel_x4"])
    kernel = np.random.RandomState(1).rand(11, 11).astype(np.float32)
    io.write_kernel_mat(tmp_path / "k.mat", kernel)
    back = io.read_kernel_mat(tmp_path / "k.mat")
    assert back.dtype == np.float64 and back.shape == (11, 11)
    np.testing.assert_array_equal(back, kernel.astype(np.float64))
    with pytest.raises(io.DataError, match="no such kernel file"):
        io.read_kernel_mat(tmp_path / "missing.mat")
    (tmp_path / "bad.mat").write_text("not a mat file")
    with pytest.raises(io.DataError, match="not a readable .mat file") as e:
        io.read_kernel_mat(tmp_path / "bad.mat")
    _one_line(e)
    scipy.io.savemat(str(tmp_path / "other.mat"), {"K": kernel})
    with pytest.raises(io.DataError, match=r"no variable 'Kernel' \(found: K\)"):
        io.read_kernel_mat(tmp_path / "other.mat")


def test_dataset_layout_and_list_images(tmp_path):
    layout = io.dataset_layout(tmp_path, 3)
    assert layout == (tmp_path / "HR", tmp_path / "DIPFKP_lr_x3", tmp_path / "DIPFKP_gt_k_x3")
    assert io.dataset_layout(tmp_path, 4, "KernelGANFKP").gt_kernel == tmp_path / "KernelGANFKP_gt_k_x4"
    with pytest.raises(io.DataError, match="no such folder") as e:
        io.list_images(layout.hr)
    _one_line(e)
    layout.hr.mkdir()
    (layout.hr / "notes.txt").write_text("x")
    with pytest.raises(io.DataError, match="no images"):
        io.list_images(layout.hr)
    for name in ("b.png", "a.PNG", "c.jpg", "0.bmp"):
        (layout.hr / name).write_bytes(b"")
    assert [p.name for p in io.list_images(layout.hr)] == ["0.bmp", "a.PNG", "b.png", "c.jpg"]
