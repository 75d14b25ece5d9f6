"""Blur-kernel synthesis (FKP_SPEC.md section 2): anisotropic Gaussians, their re-centring, analytic x4.

Kernels are (k, k) arrays indexed [row, col], k = min(4 s + 3, 21), applied by CORRELATION (no flip)
after circular padding of k // 2 (see `fkp_jax.degrade`); synthetic kernels are re-centred to a centre
of mass at ((k - s)/2, (k - s)/2) (exact for untruncated Gaussians, close for wide truncated ones).
The array functions are pure, vmap-able and already jitted (the scale factor and kernel size are static
Python ints), and take randomness only from explicit `jax.random` keys.
They compute in JAX's default float dtype (float32, or float64 with `jax_enable_x64`).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

_HIGHEST = jax.lax.Precision.HIGHEST


def kernel_size(sf: int) -> int:
    """Kernel side k = min(4 s + 3, 21) (spec 2.1): 11 (x2), 15 (x3), 19 (x4)."""
    return min(4 * sf + 3, 21)


def variance_range(sf: int) -> tuple[float, float]:
    """(min, max) covariance eigenvalue = (0.175 s, min(2.5 s, 10)) (spec 2.1; lambdas are variances)."""
    return 0.175 * sf, min(2.5 * sf, 10.0)


def _float_dtype():
    return jnp.result_type(float)


def _cubic_bspline(t: jax.Array) -> jax.Array:
    """Centred cubic B-spline beta3(t), support (-2, 2)."""
    t = jnp.abs(t)
    return jnp.where(t < 1, 2.0 / 3.0 - t * t + 0.5 * t * t * t, jnp.where(t < 2, (2 - t) ** 3 / 6.0, 0.0))


@functools.lru_cache(maxsize=None)
def _prefilter_inverse(n: int) -> np.ndarray:
    """Inverse of the cubic-spline sampling matrix with whole-sample mirror boundaries, float64 (n, n).

    SciPy's `spline_filter` (used by `ndimage.shift(..., mode='constant', prefilter=True)`) solves
    f[i] = (c[i-1] + 4 c[i] + c[i+1]) / 6 with c[-1] = c[1], c[n] = c[n-2] exactly (SciPy >= 1.6 filters
    'constant' mode with mirror boundaries); this is that solve as a matrix.
    """
    b = np.zeros((n, n))
    for i in range(n):
        for j, w in ((i - 1, 1.0), (i, 4.0), (i + 1, 1.0)):
            b[i, -j if j < 0 else (2 * n - 2 - j if j > n - 1 else j)] += w / 6.0
    return np.linalg.inv(b)


def _shift_matrix(n: int, shift: jax.Array, dtype) -> jax.Array:
    """(n, n) matrix M with M @ f == scipy.ndimage.shift(f, shift, order=3, mode='constant', cval=0).

    Output sample i is the prefiltered cubic spline evaluated at x = i - shift (coefficients extended by
    whole-sample mirroring), and exactly 0 where x lies outside [0, n - 1]. `shift` may be traced.
    """
    i = np.arange(n)[:, None]
    j = np.arange(n)[None, :]
    # Offsets x - m for the coefficient j and its two mirror images m = -j and m = 2n - 2 - j, written
    # as (integer constant) - shift so that near-integer shifts keep full precision.
    w = _cubic_bspline(jnp.asarray(i - j, dtype) - shift)
    w += jnp.where(j != 0, _cubic_bspline(jnp.asarray(i + j, dtype) - shift), 0.0)
    w += jnp.where(j != n - 1, _cubic_bspline(jnp.asarray(i + j - (2 * n - 2), dtype) - shift), 0.0)
    x = jnp.asarray(np.arange(n), dtype) - shift
    w = jnp.where(((x >= 0) & (x <= n - 1))[:, None], w, 0.0)
    return jnp.matmul(w, jnp.asarray(_prefilter_inverse(n), dtype), precision=_HIGHEST)


def _centre_offsets(kernel: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Centre of mass (row, col) minus the array centre ((rows-1)/2, (cols-1)/2) (kept small for precision)."""
    rows, cols = kernel.shape
    total = kernel.sum()
    r = jnp.asarray(np.arange(rows) - (rows - 1) / 2, kernel.dtype)
    c = jnp.asarray(np.arange(cols) - (cols - 1) / 2, kernel.dtype)
    return (kernel.sum(1) * r).sum() / total, (kernel.sum(0) * c).sum() / total


@jax.jit
def center_of_mass(kernel: jax.Array) -> jax.Array:
    """(row, col) centre of mass, as scipy.ndimage.center_of_mass: sum(k * index) / sum(k)."""
    kernel = jnp.asarray(kernel, _float_dtype())
    rows, cols = kernel.shape
    dr, dc = _centre_offsets(kernel)
    return jnp.stack([dr + (rows - 1) / 2, dc + (cols - 1) / 2])


@functools.partial(jax.jit, static_argnames="sf")
def kernel_shift(kernel: jax.Array, sf: int) -> jax.Array:
    """Translate `kernel` so its centre of mass lands at ((rows - s)/2, (cols - s)/2); NOT renormalised.

    The original `kernel_shift` (spec 2.2 step 5): scipy.ndimage.shift by (wanted - centre of mass),
    cubic B-spline with prefilter, constant 0 outside. Written as the linear operator it is, one
    matrix per axis: M_row @ K @ M_col^T. Spline ringing can leave tiny negative values, as the original.
    """
    kernel = jnp.asarray(kernel, _float_dtype())
    rows, cols = kernel.shape
    dr, dc = _centre_offsets(kernel)
    # wanted - centre = ((n - s)/2 - (n - 1)/2) - offset = (1 - s)/2 - offset.
    m_row = _shift_matrix(rows, (1 - sf) / 2 - dr, kernel.dtype)
    m_col = _shift_matrix(cols, (1 - sf) / 2 - dc, kernel.dtype)
    return jnp.matmul(jnp.matmul(m_row, kernel, precision=_HIGHEST), m_col.T, precision=_HIGHEST)


def _raw_gaussian(sf: int, k: int, lambda1, lambda2, theta, noise) -> jax.Array:
    """exp(-0.5 z^T Sigma^-1 z) (1 + noise), z = (col - mu, row - mu), mu = k//2 + 0.5 (s - k%2) (spec 2.2)."""
    dtype = _float_dtype()
    lambda1, lambda2, theta = (jnp.asarray(v, dtype) for v in (lambda1, lambda2, theta))
    c, s = jnp.cos(theta), jnp.sin(theta)
    # Sigma^-1 = Q diag(1/l1, 1/l2) Q^T with Q = [[c, -s], [s, c]].
    a = c * c / lambda1 + s * s / lambda2
    b = c * s * (1 / lambda1 - 1 / lambda2)
    d = s * s / lambda1 + c * c / lambda2
    mu = k // 2 + 0.5 * (sf - k % 2)
    x = jnp.asarray(np.arange(k) - mu, dtype)[None, :]  # column offset
    y = jnp.asarray(np.arange(k) - mu, dtype)[:, None]  # row offset
    raw = jnp.exp(-0.5 * (a * x * x + 2 * b * x * y + d * y * y))
    return raw if noise is None else raw * (1 + jnp.asarray(noise, dtype))


@functools.partial(jax.jit, static_argnames=("sf", "size"))
def gaussian_kernel(sf: int, lambda1, lambda2, theta, size: int | None = None, noise=None) -> jax.Array:
    """The original `gen_kernel_fixed` (spec 2.2): (k, k) anisotropic Gaussian, unit sum.

    lambda1, lambda2 are covariance eigenvalues (variances; at theta = 0 lambda1 is along the columns),
    Sigma = Q diag(lambda1, lambda2) Q^T; `noise` (k, k) multiplies the raw kernel by (1 + noise).
    Re-centred with `kernel_shift` to centre of mass ((k - s)/2, (k - s)/2), then divided by its sum.
    """
    k = kernel_size(sf) if size is None else size
    shifted = kernel_shift(_raw_gaussian(sf, k, lambda1, lambda2, theta, noise), sf)
    return shifted / shifted.sum()


@functools.partial(jax.jit, static_argnames="sf")
def random_gaussian_kernel(key: jax.Array, sf: int, noise: float = 0.0) -> jax.Array:
    """Random (k, k) Gaussian kernel (spec 2.3), unit sum, centred at ((k - s)/2, (k - s)/2).

    lambda1, lambda2 ~ U[min_var, max_var) independently, theta ~ U[0, pi), per-pixel multiplicative
    noise ~ U[-noise, noise). One key in, one kernel out: vmap over keys for a batch. The original draws
    from NumPy's global RNG; this draws from `key` (same distribution, different stream).
    """
    dtype = _float_dtype()
    k = kernel_size(sf)
    vmin, vmax = variance_range(sf)
    k_l1, k_l2, k_theta, k_noise = jax.random.split(key, 4)
    lambda1 = jax.random.uniform(k_l1, (), dtype, vmin, vmax)
    lambda2 = jax.random.uniform(k_l2, (), dtype, vmin, vmax)
    theta = jax.random.uniform(k_theta, (), dtype, 0.0, math.pi)
    pixel_noise = jax.random.uniform(k_noise, (k, k), dtype, -noise, noise)
    return gaussian_kernel(sf, lambda1, lambda2, theta, size=k, noise=pixel_noise)


@jax.jit
def analytic_x4_kernel(k2: jax.Array) -> jax.Array:
    """x4 kernel of two successive "blur with k2, subsample by 2" steps (spec 2.4), unit sum.

    For an (n, n) x2 kernel: sum over (r, c) of k2[r, c] * k2 placed at top-left (2r, 2c) of a
    (3n - 2)^2 canvas, cropped by n // 2 on every side ((21, 21) for n = 11). Not re-centred: the x4
    ground truth of the original is `kernel_shift(analytic_x4_kernel(k2), 4)` (not renormalised).
    """
    k2 = jnp.asarray(k2, _float_dtype())
    n = k2.shape[0]
    place = np.zeros((3 * n - 2, n, n))  # place[a, r, u] = 1 where a == 2 r + u
    for r in range(n):
        place[2 * r + np.arange(n), r, np.arange(n)] = 1.0
    place = jnp.asarray(place, k2.dtype)
    big = jnp.einsum("aru,bcv,rc,uv->ab", place, place, k2, k2, precision=_HIGHEST)
    crop = n // 2
    cropped = big[crop:-crop, crop:-crop]
    return cropped / cropped.sum()


def fkp_normalization(sf: int) -> float:
    """FKP pre-processing constant round(max(sharpest isotropic kernel), 5) + 0.01 (spec 4.6).

    0.2335 (x2), 0.31311 (x3), 0.16908 (x4), as the original FKP data loader computes it.
    """
    vmin, _ = variance_range(sf)
    peak = float(np.max(np.asarray(gaussian_kernel(sf, vmin, vmin, 0.0))))
    return float(np.round(peak, 5) + 0.01)
