"""The degradation operator y = (x correlated with k) subsampled by s, and LR quantisation (spec 3, 6.3).

Images are HWC (or NHWC) float, channels last; kernels are (k, k) [row, col] and are applied by
CROSS-CORRELATION (no flip), per channel with the same kernel, after circular (wrap-around) padding of
k // 2 on every side; the output keeps rows and columns 0, s, 2s, ... (size ceil(H/s) x ceil(W/s)).
With a kernel centred at ((k - s)/2, (k - s)/2) LR pixel (i, j) is centred at HR (s i - (s-1)/2, ...).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


@functools.partial(jax.jit, static_argnames="sf")
def degrade(x: jax.Array, kernel: jax.Array, sf: int) -> jax.Array:
    """Blur-and-subsample, HWC -> (ceil(H/s), ceil(W/s), C) or NHWC -> NHWC; differentiable in x and kernel.

    Computed as space-to-depth + one dense stride-1 convolution (the s x s polyphase components of the
    padded image are the input channels, the matching kernel taps the weights): the same sums as a
    strided depthwise correlation, but 6-20x faster forward + backward (x and kernel) on XLA:CPU.
    """
    dtype = jnp.result_type(x, kernel, jnp.float32)
    x = jnp.asarray(x, dtype)
    kernel = jnp.asarray(kernel, dtype)
    single = x.ndim == 3
    if single:
        x = x[None]
    n, h, w, c = x.shape
    kh, kw = kernel.shape
    ho, wo = -(-h // sf), -(-w // sf)
    th, tw = -(-kh // sf), -(-kw // sf)  # taps per polyphase component
    padded = jnp.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)), mode="wrap")
    # Output (i, j) reads padded rows s i + r, r < kh; crop / zero-extend to exactly s (ho + th - 1) rows
    # (the extra rows meet only the zero taps added to the kernel below).
    rows, cols = sf * (ho + th - 1), sf * (wo + tw - 1)
    padded = padded[:, :rows, :cols]
    padded = jnp.pad(padded, ((0, 0), (0, rows - padded.shape[1]), (0, cols - padded.shape[2]), (0, 0)))
    # (N, A, s, B, s, C) -> (N*C, A, B, s*s): channel (p, q) holds padded[s a + p, s b + q].
    phases = padded.reshape(n, rows // sf, sf, cols // sf, sf, c)
    phases = phases.transpose(0, 5, 1, 3, 2, 4).reshape(n * c, rows // sf, cols // sf, sf * sf)
    taps = jnp.pad(kernel, ((0, sf * th - kh), (0, sf * tw - kw))).reshape(th, sf, tw, sf)
    taps = taps.transpose(0, 2, 1, 3).reshape(th, tw, sf * sf, 1)
    y = jax.lax.conv_general_dilated(
        phases, taps, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=jax.lax.Precision.HIGHEST,
    )
    y = y.reshape(n, c, ho, wo).transpose(0, 2, 3, 1)
    return y[0] if single else y


def _fma_f32(a: np.float32, b: np.ndarray, acc: np.ndarray) -> np.ndarray:
    """float32(a * b + acc) with ONE rounding (a fused multiply-add), elementwise, in NumPy.

    The float32 product is exact in float64; the float64 sum is made round-to-odd (TwoSum error term,
    then nudge an even result towards the error), after which rounding to float32 is exact FMA rounding.
    """
    prod = np.float64(a) * b.astype(np.float64)
    acc64 = acc.astype(np.float64)
    s = prod + acc64
    bv = s - prod
    err = (prod - (s - bv)) + (acc64 - bv)
    even = (s.view(np.int64) & 1) == 0
    s = np.where((err != 0) & even, np.nextafter(s, np.where(err > 0, np.inf, -np.inf)), s)
    return s.astype(np.float32)


def degrade_exact(hr: np.ndarray, kernel: np.ndarray, sf: int) -> np.ndarray:
    """`degrade` for data synthesis, bit-exact with the original (spec 3 step 4): NumPy float32 HWC.

    The kernel is cast to float32 and the k*k taps are accumulated one at a time in row-major order,
    acc = fma(kernel[r, c], tap, acc), as the original's CPU convolution does; this reproduces the
    golden float LR and the bundled 8-bit LR bit for bit (a plain XLA conv differs in the last bit).
    """
    hr = np.asarray(hr, np.float32)
    kernel = np.asarray(kernel, np.float32)
    h, w = hr.shape[:2]
    kh, kw = kernel.shape
    pad = ((kh // 2, kh // 2), (kw // 2, kw // 2)) + ((0, 0),) * (hr.ndim - 2)
    padded = np.pad(hr, pad, mode="wrap")
    ho, wo = -(-h // sf), -(-w // sf)
    acc = np.zeros((ho, wo) + hr.shape[2:], np.float32)
    for r in range(kh):
        for c in range(kw):
            acc = _fma_f32(kernel[r, c], padded[r : r + sf * (ho - 1) + 1 : sf, c : c + sf * (wo - 1) + 1 : sf], acc)
    return acc


def quantize_floor(v: np.ndarray) -> np.ndarray:
    """uint8 floor(255 clip(v, 0, 1)): the original's LR quantisation (truncation, not rounding; spec 3 step 5)."""
    return np.floor(255 * np.clip(np.asarray(v, np.float32), 0, 1)).astype(np.uint8)


def modcrop(img: np.ndarray, sf: int) -> np.ndarray:
    """Drop the last (H mod s) rows and (W mod s) columns of an HWC (or HW) image (spec 3 step 2)."""
    h, w = img.shape[:2]
    return img[: h - h % sf, : w - w % sf]
