"""Per-channel 2-D correlation as band products, for the filters that XLA:CPU's convolution runs slowly.

XLA:CPU computes a grouped convolution (one filter per channel) or a one-channel convolution at about
2-3 GFLOP/s. Written instead as matrix products, row dy of the k x k taps becomes a banded matrix over the
input columns (`band_matrices`), and the k row-shifted (and strided) copies of every channel image times
their band, summed in one contraction over (row, column), give the same k^2 products per output at matmul
speed, though the band does (width / k) times more multiplies (by zero) than the taps. Users: the SSIM
loss's 11 x 11 Gaussian window (`fkp_jax.metrics`) and KernelGAN's generator (`fkp_jax.kernelgan.generate`);
measurements in their docstrings and docs/benchmarks.md.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


def band_matrices(taps: jax.Array, width: int, stride: int = 1) -> jax.Array:
    """(k, width, out) with B[dy, v, j] = taps[dy, v - stride j] where 0 <= v - stride j < k, else 0; out =
    (width - k) // stride + 1. Built as taps times a constant 0/1 selector, so it is exact (every entry is one
    tap) and differentiable in the taps."""
    k = taps.shape[0]
    out = (width - k) // stride + 1
    sel = np.zeros((k, width, out), np.float32)
    for j in range(out):
        sel[np.arange(k), stride * j + np.arange(k), j] = 1.0
    return jnp.einsum("ab,bvj->avj", taps, jnp.asarray(sel, taps.dtype), precision=lax.Precision.HIGHEST)


def correlate_channels(x: jax.Array, taps: jax.Array, stride: int = 1) -> jax.Array:
    """VALID correlation of every channel of x (N, H, W, C) with the same taps (k, k), keeping rows / cols 0,
    stride, 2 stride, ...: (N, (H - k) // stride + 1, (W - k) // stride + 1, C). No kernel flip."""
    n, h, w, c = x.shape
    k = taps.shape[0]
    oh, ow = (h - k) // stride + 1, (w - k) // stride + 1
    band = band_matrices(taps.astype(x.dtype), w, stride)  # (k, W, OW)
    xc = x.transpose(0, 3, 1, 2).reshape(n * c, h, w)
    rows = jnp.stack([xc[:, dy:dy + stride * (oh - 1) + 1:stride] for dy in range(k)], axis=2)  # (NC, OH, k, W)
    y = jnp.einsum("niav,avj->nij", rows, band, precision=lax.Precision.HIGHEST)
    return y.reshape(n, c, oh, ow).transpose(0, 2, 3, 1)
