"""Files in and out: images (OpenCV), .mat kernels, the original folder layout, atomic writes.

Images at this boundary are HWC, RGB, float32 in [0, 1] (or uint8 where named `_u8`). Every writer goes
through `atomic_write` (temporary name in the same folder, then `os.replace`), so a killed run never
leaves a file that looks complete. Bad inputs raise `DataError` (a ValueError) with a one-line message;
recoverable oddities (grayscale, 16-bit, translucent alpha) are reported as `ImageWarning`s.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import warnings
from pathlib import Path
from typing import IO, Any, Iterator, NamedTuple

import cv2
import numpy as np
import scipy.io

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

class DataError(ValueError):
    """A missing or unusable input file or folder; the message is one line naming it."""


class ImageError(DataError):
    """A file that cannot be read as an RGB image."""


class ImageWarning(UserWarning):
    """An image was read, but converted on the way (grayscale, 16-bit, translucent alpha dropped)."""


def check_finite(array: Any, what: str) -> None:
    """Raise DataError if `array` holds NaN or Inf values (message: what, and how many of each)."""
    a = np.asarray(array)
    if not np.isfinite(a).all():
        raise DataError(f"{what}: {int(np.isnan(a).sum())} NaN and {int(np.isinf(a).sum())} Inf values")


def _read_rgb(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file to HWC RGB, uint8 or uint16, warning about conversions."""
    p = Path(path)
    if not p.is_file():
        raise ImageError(f"{p}: no such image file")
    img = cv2.imdecode(np.fromfile(p, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ImageError(f"{p}: not a readable image (OpenCV cannot decode it)")
    if img.dtype not in (np.uint8, np.uint16):
        raise ImageError(f"{p}: unsupported pixel type {img.dtype} (need 8- or 16-bit)")
    if img.dtype == np.uint16:
        warnings.warn(f"{p}: 16-bit image, scaled by 1/65535", ImageWarning, stacklevel=3)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 2:
        warnings.warn(f"{p}: grayscale image, replicated to RGB", ImageWarning, stacklevel=3)
        return np.repeat(img[:, :, None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        raise ImageError(f"{p}: unsupported image shape {img.shape}")
    if img.shape[2] == 4 and (img[:, :, 3] != np.iinfo(img.dtype).max).any():
        warnings.warn(f"{p}: alpha channel is not fully opaque; it is dropped (not composited)",
                      ImageWarning, stacklevel=3)
    return np.ascontiguousarray(img[:, :, 2::-1])  # BGR(A) -> RGB


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Image file -> float32 HWC RGB in [0, 1] (8-bit / 255, 16-bit / 65535; alpha dropped)."""
    img = _read_rgb(path)
    return img.astype(np.float32) / np.float32(np.iinfo(img.dtype).max)


def read_image_u8(path: str | os.PathLike) -> np.ndarray:
    """Image file -> uint8 HWC RGB, as PIL `convert('RGB')` gives for 8-bit files (16-bit: round(v / 257))."""
    img = _read_rgb(path)
    if img.dtype == np.uint16:
        return np.round(img / 257.0).astype(np.uint8)
    return img


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", encoding: str | None = None) -> Iterator[IO]:
    """Open a temporary file beside `path` for writing; on success it is renamed onto `path`.

    On any exception the temporary file is removed and an existing `path` is left untouched.
    Parent folders are created; the file gets the usual permissions (0666 minus the umask).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write a UTF-8 text file atomically."""
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write(text)


def write_csv(path: str | os.PathLike, rows: list[dict]) -> None:
    """Write dict rows (columns: the first row's keys) as CSV atomically."""
    import csv
    import io as _io

    buf = _io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    write_text(path, buf.getvalue())


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write `obj` as indented JSON atomically."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_npy(path: str | os.PathLike, array: Any) -> None:
    """Write one array as .npy atomically."""
    with atomic_write(path) as f:
        np.save(f, np.asarray(array))


def write_image_u8(path: str | os.PathLike, img: np.ndarray) -> None:
    """Write a uint8 HWC RGB (or HW gray) image atomically; format from the suffix (PNG if none)."""
    img = np.asarray(img)
    if img.dtype != np.uint8 or img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] != 3):
        raise DataError(f"{path}: need a uint8 HW or HWC RGB image, got {img.dtype} {img.shape}")
    suffix = Path(path).suffix.lower() or ".png"
    ok, buf = cv2.imencode(suffix, img[:, :, ::-1] if img.ndim == 3 else img)
    if not ok:
        raise DataError(f"{path}: OpenCV cannot encode {suffix} images")
    with atomic_write(path) as f:
        f.write(buf.tobytes())


def write_image(path: str | os.PathLike, img: np.ndarray) -> None:
    """Write a float HWC RGB image in [0, 1] as 8-bit: round(clip(255 x, 0, 255)), atomically."""
    img = np.asarray(img, np.float32)
    check_finite(img, f"{path}: image to write")
    write_image_u8(path, np.round(np.clip(255 * img, 0, 255)).astype(np.uint8))


def read_kernel_mat(path: str | os.PathLike) -> np.ndarray:
    """MATLAB .mat file with variable `Kernel` -> float64 (k, k) (the original's GT kernel files)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: no such kernel file")
    try:
        contents = scipy.io.loadmat(str(p))
    except Exception as exc:  # scipy raises several types for non-MAT input
        raise DataError(f"{p}: not a readable .mat file ({type(exc).__name__})") from None
    if "Kernel" not in contents:
        names = sorted(k for k in contents if not k.startswith("__"))
        raise DataError(f"{p}: no variable 'Kernel' (found: {', '.join(names) or 'none'})")
    kernel = np.asarray(contents["Kernel"], np.float64)
    if kernel.ndim != 2:
        raise DataError(f"{p}: 'Kernel' must be 2-D, got shape {kernel.shape}")
    check_finite(kernel, f"{p}: Kernel")
    return kernel


def write_kernel_mat(path: str | os.PathLike, kernel: Any) -> None:
    """Write a (k, k) kernel as MATLAB v5 .mat, variable `Kernel`, float64, atomically."""
    with atomic_write(path) as f:
        scipy.io.savemat(f, {"Kernel": np.asarray(kernel, np.float64)}, format="5")


class DatasetLayout(NamedTuple):
    """The original folders of one data set, model and scale: HR/, {model}_lr_x{s}/, {model}_gt_k_x{s}/."""

    hr: Path
    lr: Path
    gt_kernel: Path


def dataset_layout(root: str | os.PathLike, sf: int, model: str = "DIPFKP") -> DatasetLayout:
    """Paths root/HR, root/{model}_lr_x{s}, root/{model}_gt_k_x{s} (spec 3); nothing is checked or created."""
    root = Path(root)
    return DatasetLayout(root / "HR", root / f"{model}_lr_x{sf}", root / f"{model}_gt_k_x{sf}")


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files (IMAGE_EXTENSIONS, any case) directly in `folder`, sorted by name; DataError if none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder")
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not images:
        raise DataError(f"{folder}: no images ({', '.join('*' + e for e in IMAGE_EXTENSIONS)})")
    return images
