"""Losses and evaluation metrics of DIP-FKP (FKP_SPEC 6.4 training losses, 9 evaluation protocol).

Training losses (JAX, differentiable, NHWC float arrays): ``ssim``, ``ssim_loss``, ``mse``.
Evaluation (float64 NumPy + OpenCV, as the original ``util.py``): ``rgb_to_y``, ``psnr_y``,
``ssim_y``, ``kernel_psnr``.
"""

from __future__ import annotations

import math

import cv2
import jax.numpy as jnp
import numpy as np
from jax import lax

from fkp_jax import band

WINDOW = 11
SIGMA = 1.5


# ----------------------------------------------------------------------------- training losses (6.4)

def gaussian_1d(size: int = WINDOW, sigma: float = SIGMA) -> np.ndarray:
    """Normalised 1-D Gaussian built as the original: exp in float64, cast to float32, divided in float32 by
    its sum, which PyTorch's CPU sum accumulates in double (3.7592328, not the float32 running sum 3.7592325)."""
    g = np.array([math.exp(-((x - size // 2) ** 2) / float(2 * sigma ** 2)) for x in range(size)],
                 np.float32)
    return g / np.float32(g.sum(dtype=np.float64))


def gaussian_window(size: int = WINDOW, sigma: float = SIGMA) -> np.ndarray:
    """The original's (size, size) float32 window: outer product of ``gaussian_1d`` rounded to float32
    (bit-identical to the original's; golden ``train_ssim_window_f32``)."""
    g = gaussian_1d(size, sigma)
    return np.outer(g, g).astype(np.float32)


def _check_pair(a, b):
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {a.shape} vs {b.shape}")
    if a.ndim != 4:
        raise ValueError(f"expected NHWC arrays, got shape {a.shape}")


BLUR_CHUNK = 128  # output columns per band product (`_blur`, CPU)


def blur_algorithm() -> str:
    """How `_blur` computes the depthwise 11 x 11 filter: "band" on CPUs, "xla" (the platform's grouped
    convolution) on accelerators. XLA:CPU runs a grouped convolution at about 2 GFLOP/s: value and gradient of
    the SSIM loss at 48^2 took 13-14 ms with it, 1.7-2.0 ms as band products (96^2 40 / 6-13 ms, 200^2 150 /
    42 ms, 480^2 790 / 360 ms; AMD EPYC Zen 4, 2 cores), which is 7-9 % of a whole 96x96 DIP-FKP step."""
    import jax

    return "xla" if jax.default_backend() != "cpu" else "band"


def _blur(x, algorithm: str | None = None):
    """Depthwise filter with the original's 2-D window, zero padding 5 ('same'), NHWC.

    The 2-D window, not two 1-D passes: the SSIM of a DIP output is sensitive to the window's rounding.
    The separable form (an exact outer product of the float32 1-D window, sum 1 + 9e-8, vs the original's
    float32-rounded 2-D window, sum 1 - 7e-8) moved 1 - SSIM of DIP-DKP's first step by 1.1e-5 relative in
    float64 (golden_dkp).

    ``algorithm`` (default `blur_algorithm`): "xla" = a grouped ``lax.conv_general_dilated``; "band" =
    `fkp_jax.band.correlate_channels` (the same 121-tap sums as matrix products) in chunks of `BLUR_CHUNK`
    output columns (a band matrix multiplies by zero width / 11 times more than the window does, so wide
    images are cut). Same window, same taps: the two differ by float32 rounding only."""
    algorithm = blur_algorithm() if algorithm is None else algorithm
    c = x.shape[-1]
    pad = WINDOW // 2
    if algorithm == "xla":
        w = jnp.tile(jnp.asarray(gaussian_window(), x.dtype).reshape(WINDOW, WINDOW, 1, 1), (1, 1, 1, c))
        return lax.conv_general_dilated(x, w, (1, 1), ((pad, pad), (pad, pad)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=c,
                                        precision=lax.Precision.HIGHEST)
    if algorithm != "band":
        raise ValueError(f"blur algorithm must be 'band' or 'xla', not {algorithm!r}")
    w = x.shape[2]
    xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    window = jnp.asarray(gaussian_window(), x.dtype)
    outs = [band.correlate_channels(xp[:, :, a:min(w, a + BLUR_CHUNK) + 2 * pad], window)
            for a in range(0, w, BLUR_CHUNK)]
    return outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=2)


def ssim(a, b):
    """SSIM of the DIP-FKP training loss on (N, H, W, C) arrays in [0, 1]: 11x11 Gaussian window,
    sigma 1.5, per channel, zero padding 5, C1 = 0.01^2, C2 = 0.03^2, mean over everything."""
    _check_pair(a, b)
    c = a.shape[-1]
    stats = _blur(jnp.concatenate([a, b, a * a, b * b, a * b], axis=-1))
    mu1, mu2, e11, e22, e12 = (stats[..., i * c:(i + 1) * c] for i in range(5))
    mu1_sq, mu2_sq, mu12 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    s1, s2, s12 = e11 - mu1_sq, e22 - mu2_sq, e12 - mu12
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    m = ((2 * mu12 + c1) * (2 * s12 + c2)) / ((mu1_sq + mu2_sq + c1) * (s1 + s2 + c2))
    return jnp.mean(m)


def ssim_loss(a, b):
    """1 - ssim(a, b): the DIP-FKP loss for iterations t <= 80."""
    return 1.0 - ssim(a, b)


def mse(a, b):
    """Mean squared error over all elements: the DIP-FKP loss for iterations t > 80."""
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {a.shape} vs {b.shape}")
    return jnp.mean(jnp.square(a - b))


# ----------------------------------------------------------------------------- evaluation (9)

def rgb_to_y(img) -> np.ndarray:
    """MATLAB BT.601 luma of an HWC RGB image (uint8 0..255 or float 0..1), float64 in [0, 1]:
    Y = (65.481 R + 128.553 G + 24.966 B) / 255 + 16 on 0..255 values, then / 255, not rounded."""
    img = np.asarray(img)
    if img.ndim != 3 or img.shape[-1] != 3:
        raise ValueError(f"expected an HWC RGB image, got shape {img.shape}")
    x = img / 255.0 if img.dtype == np.uint8 else img.astype(np.float64)
    y = np.dot(x * 255.0, [65.481, 128.553, 24.966]) / 255.0 + 16.0
    return y / 255.0


def _eval_pair(hr_u8, sr_u8, sf: int):
    """Modcrop both to a multiple of sf (a no-op for a real SR), Y, shave sf px; values x 255."""
    hr, sr = np.asarray(hr_u8), np.asarray(sr_u8)
    crop = lambda im: im[: im.shape[0] - im.shape[0] % sf, : im.shape[1] - im.shape[1] % sf]
    hr, sr = crop(hr), crop(sr)
    if hr.shape != sr.shape:
        raise ValueError(f"HR {hr.shape} and SR {sr.shape} differ after modcrop to {sf}")
    shave = lambda y: y[sf:-sf, sf:-sf] * 255.0
    return shave(rgb_to_y(hr)), shave(rgb_to_y(sr))


def psnr_y(hr_u8, sr_u8, sf: int) -> float:
    """PSNR (dB, peak 255) on Y of HR vs SR (HWC RGB uint8), spec 9; inf for identical images."""
    a, b = _eval_pair(hr_u8, sr_u8, sf)
    err = np.mean((a - b) ** 2)
    return float("inf") if err == 0 else 20 * math.log10(255.0 / math.sqrt(err))


def _ssim_matlab(a, b) -> float:
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    k = cv2.getGaussianKernel(11, 1.5)
    win = np.outer(k, k.transpose())
    f = lambda x: cv2.filter2D(x, -1, win)[5:-5, 5:-5]
    mu1, mu2 = f(a), f(b)
    mu1_sq, mu2_sq, mu12 = mu1 ** 2, mu2 ** 2, mu1 * mu2
    s1, s2, s12 = f(a ** 2) - mu1_sq, f(b ** 2) - mu2_sq, f(a * b) - mu12
    m = ((2 * mu12 + c1) * (2 * s12 + c2)) / ((mu1_sq + mu2_sq + c1) * (s1 + s2 + c2))
    return float(m.mean())


def ssim_y(hr_u8, sr_u8, sf: int) -> float:
    """MATLAB-style SSIM on Y*255 (OpenCV 11x11 Gaussian sigma 1.5, valid region), spec 9."""
    a, b = _eval_pair(hr_u8, sr_u8, sf)
    if min(a.shape) < 11:
        raise ValueError(f"image too small for an 11x11 SSIM window after shaving: {a.shape}")
    return _ssim_matlab(a, b)


def kernel_psnr(gt, est) -> float:
    """Kernel PSNR = -10 log10(mean((gt - est)^2)) in float64, peak 1, no alignment (spec 9)."""
    gt, est = np.asarray(gt, np.float64), np.asarray(est, np.float64)
    if gt.shape != est.shape:
        raise ValueError(f"kernel shape mismatch: {gt.shape} vs {est.shape}")
    err = np.mean((gt - est) ** 2)
    return float("inf") if err == 0 else 20 * math.log10(1.0 / math.sqrt(err))
