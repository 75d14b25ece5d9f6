"""Blur-kernel synthesis (FKP_SPEC.md section 2): anisotropic Gaussians, their re-centring, analytic x4;
DKP's random prior kernels (Gaussian and linear motion, DKP_SPEC.md section 3) and random camera-shake
motion kernels for test data (second half of the module).

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


# ------------------------------------------------------------------------------------------------------
# DKP (DKP_SPEC.md section 3; golden_dkp/README.md section 2): the random kernel sampler (RKS) of the
# dynamic kernel prior, and motion kernels for test data.
#
# The original draws from NumPy's global generator; here every sampler is a pure function of a
# `jax.random` key (same distributions, different stream), and each has a twin that rebuilds the kernel
# from the recorded draws (`dkp_gaussian_kernel(sf, *dkp_gaussian_params(sf, u))`,
# `linear_motion_kernel(sf, 360 u)`), which reproduces golden_dkp/rks.npz.


def dkp_variance_range(sf: int) -> tuple[float, float]:
    """DKP prior (min_var, max_var) = (0.175 s + 3 + (s - 4), min(2.5 s, 10) + 10 + (s - 4)) (spec 3).

    x2 (1.35, 13.0), x3 (2.525, 16.5), x4 (3.7, 20.0), x8 (8.4, 24.0): wider and blurrier than the test
    kernels' `variance_range`. Computed with the original's operations (same float64 values).
    """
    return 0.175 * sf + (3 + (sf - 4)), min(2.5 * sf, 10) + (10 + (sf - 4))


def dkp_prior_centre(sf: int) -> float:
    """Centre-of-mass target (s + 1) 3/2 of DKP's prior kernels (row = col): 4.5, 6.0, 7.5 for x2, x3, x4.

    Equals the data convention (k - s)/2 for s = 2, 3, 4, but not for s = 8 (13.5 instead of 6.5) — the
    original's formula, kept as is (golden_dkp README section 2).
    """
    return (sf + 1) * 3 / 2


@jax.jit
def kernel_move(kernel: jax.Array, centre) -> jax.Array:
    """Translate `kernel` so its centre of mass lands at `centre` ((row, col) or one value for both).

    The original DKP `kernel_move`: scipy.ndimage.shift by (centre - centre of mass), cubic B-spline with
    prefilter, 0 outside; NOT renormalised. `kernel_shift(kernel, s)` is `kernel_move(kernel, (n - s)/2)`.
    The shift is computed from the input's centre of mass, so for truncated kernels the output's centre
    of mass is only near `centre`.
    """
    kernel = jnp.asarray(kernel, _float_dtype())
    rows, cols = kernel.shape
    centre = jnp.broadcast_to(jnp.asarray(centre, kernel.dtype), (2,))
    dr, dc = _centre_offsets(kernel)
    m_row = _shift_matrix(rows, (centre[0] - (rows - 1) / 2) - dr, kernel.dtype)
    m_col = _shift_matrix(cols, (centre[1] - (cols - 1) / 2) - dc, kernel.dtype)
    return jnp.matmul(jnp.matmul(m_row, kernel, precision=_HIGHEST), m_col.T, precision=_HIGHEST)


@functools.partial(jax.jit, static_argnames="sf")
def dkp_gaussian_params(sf: int, u) -> jax.Array:
    """(lambda1, lambda2, theta) from the sampler's three uniforms u = (u1, u2, u3) in [0, 1) (last axis).

    lambda_i = min_var + u_i (max_var - min_var) (variances, `dkp_variance_range`), theta = pi u3, as the
    original (which draws u1, u2, u3 with three np.random.rand() calls, golden key `gauss_u`).
    """
    u = jnp.asarray(u, _float_dtype())
    vmin, vmax = dkp_variance_range(sf)
    return jnp.stack([vmin + u[..., 0] * (vmax - vmin), vmin + u[..., 1] * (vmax - vmin), math.pi * u[..., 2]], -1)


@functools.partial(jax.jit, static_argnames="sf")
def dkp_gaussian_kernel(sf: int, lambda1, lambda2, theta) -> jax.Array:
    """A DKP prior Gaussian (the original's RKS with given parameters): (k, k), unit sum.

    The raw Gaussian of `gaussian_kernel` (mean k//2 + 0.5 (s - k%2), no noise) moved by the spline shift
    to centre of mass `dkp_prior_centre(sf)`, then divided by its sum. Wide prior kernels are truncated by
    the grid and the shift (about -1/-2/-3 px at x2/x3/x4) zeroes their last rows and columns, so the
    final centre of mass is only near the target (x2: 4.45 .. 4.60), as the original.
    """
    k = kernel_size(sf)
    moved = kernel_move(_raw_gaussian(sf, k, lambda1, lambda2, theta, None), dkp_prior_centre(sf))
    return moved / moved.sum()


@functools.partial(jax.jit, static_argnames="sf")
def random_dkp_gaussian_kernel(key: jax.Array, sf: int) -> jax.Array:
    """One DKP prior Gaussian (spec 3, the branch DIP-DKP runs): u ~ U[0, 1)^3 -> `dkp_gaussian_params`.

    lambda1, lambda2 ~ U[min_var, max_var) (`dkp_variance_range`), theta ~ U[0, pi), no kernel noise.
    vmap over keys for the L kernels of a prior step.
    """
    u = jax.random.uniform(key, (3,), _float_dtype())
    lambda1, lambda2, theta = dkp_gaussian_params(sf, u)
    return dkp_gaussian_kernel(sf, lambda1, lambda2, theta)


def _rotation_matrix(cx: float, cy: float, angle_deg: jax.Array) -> jax.Array:
    """cv2.getRotationMatrix2D((cx, cy), angle_deg, 1.0): (2, 3), maps (x, y) = (col, row) source -> output."""
    a = angle_deg * (math.pi / 180)
    alpha, beta = jnp.cos(a), jnp.sin(a)
    return jnp.stack([jnp.stack([alpha, beta, (1 - alpha) * cx - beta * cy]),
                      jnp.stack([-beta, alpha, beta * cx + (1 - alpha) * cy])])


def _invert_affine(m: jax.Array) -> jax.Array:
    """The inverse of a (2, 3) affine map, with OpenCV's operation order (warpAffine without WARP_INVERSE_MAP)."""
    det = m[0, 0] * m[1, 1] - m[0, 1] * m[1, 0]
    d = jnp.where(det != 0, 1 / jnp.where(det != 0, det, 1), 0)
    a00, a01, a10, a11 = m[1, 1] * d, -m[0, 1] * d, -m[1, 0] * d, m[0, 0] * d
    b0 = -a00 * m[0, 2] - a01 * m[1, 2]
    b1 = -a10 * m[0, 2] - a11 * m[1, 2]
    return jnp.stack([jnp.stack([a00, a01, b0]), jnp.stack([a10, a11, b1])])


def _warp_affine_bilinear(image: jax.Array, m: jax.Array) -> jax.Array:
    """cv2.warpAffine(image, m, (w, h)) with INTER_LINEAR and a constant-0 border, OpenCV's arithmetic.

    Output pixel (x, y) = (col, row) samples the source at inverse(m) (x, y, 1), computed in fixed point
    as OpenCV does: 1/1024 px steps rounded half-to-even, then quantised to 1/32 px; bilinear weights
    from that 1/32 grid; neighbours outside the image contribute 0 (golden_dkp README section 2 recipe).
    In float64 (jax_enable_x64) the source positions and weights are OpenCV's exactly (the weighted sums
    may differ in the last bit where XLA fuses them; for DKP's 0/1 segment they are exact); in float32 a
    position lying within ~1e-2 of a rounding boundary (in 1/1024 px units) can round the other way,
    moving that sample by 1/32 px (none does for the 50 golden angles, on AVX2, AVX or SSE4.2).
    """
    h, w = image.shape
    mi = _invert_affine(m)
    dtype = image.dtype
    x = jnp.arange(w, dtype=dtype)
    y = jnp.arange(h, dtype=dtype)
    adelta = jnp.rint(mi[0, 0] * x * 1024).astype(jnp.int32)
    bdelta = jnp.rint(mi[1, 0] * x * 1024).astype(jnp.int32)
    x0 = jnp.rint((mi[0, 1] * y + mi[0, 2]) * 1024).astype(jnp.int32) + 16
    y0 = jnp.rint((mi[1, 1] * y + mi[1, 2]) * 1024).astype(jnp.int32) + 16
    big_x = jnp.right_shift(x0[:, None] + adelta[None, :], 5)  # [row y, col x], 1/32 px units
    big_y = jnp.right_shift(y0[:, None] + bdelta[None, :], 5)
    ix, iy = jnp.right_shift(big_x, 5), jnp.right_shift(big_y, 5)  # arithmetic shift: floor
    fx = jnp.bitwise_and(big_x, 31).astype(dtype) / 32
    fy = jnp.bitwise_and(big_y, 31).astype(dtype) / 32

    def tap(r, c):
        inside = (r >= 0) & (r < h) & (c >= 0) & (c < w)
        return jnp.where(inside, image[jnp.clip(r, 0, h - 1), jnp.clip(c, 0, w - 1)], 0)

    # OpenCV's float weight table: products of multiples of 1/32, exact in float32 and float64.
    return ((1 - fy) * (1 - fx) * tap(iy, ix) + (1 - fy) * fx * tap(iy, ix + 1)
            + fy * (1 - fx) * tap(iy + 1, ix) + fy * fx * tap(iy + 1, ix + 1))


def linear_motion_segment(sf: int) -> np.ndarray:
    """The unrotated DKP motion image: (k, k) zeros with 2L + 1 ones on row M, columns M - L .. M + L.

    L = int(k / 4) (2 / 3 / 4 at x2 / x3 / x4), M = int((3 s + 3) / 2) (4 / 6 / 7), float64 NumPy.
    """
    k = kernel_size(sf)
    half, row = int(k / 4), int((3 * sf + 3) / 2)
    segment = np.zeros((k, k))
    segment[row, row - half:row + half + 1] = 1.0
    return segment


@functools.partial(jax.jit, static_argnames="sf")
def linear_motion_kernel(sf: int, theta_deg) -> jax.Array:
    """DKP's linear-motion prior kernel (branch 'DIPDKP-motion', spec 3) for angle `theta_deg` (degrees).

    `linear_motion_segment(sf)` rotated by theta_deg (counter-clockwise on screen, OpenCV's sign) about
    ((3 s + 3)/2, (3 s + 3)/2) with OpenCV's bilinear warpAffine (`_warp_affine_bilinear`), then divided
    by its sum. NOT re-centred: the segment's centre (M, M) differs from the rotation centre by 0.5 px at
    x2 and x4, so the centre of mass circles within 0.71 px of (3 s + 3)/2 (at x3 it stays there).
    """
    dtype = _float_dtype()
    centre = (3 * sf + 3) / 2
    m = _rotation_matrix(centre, centre, jnp.asarray(theta_deg, dtype))
    rotated = _warp_affine_bilinear(jnp.asarray(linear_motion_segment(sf), dtype), m)
    return rotated / rotated.sum()


@functools.partial(jax.jit, static_argnames="sf")
def random_linear_motion_kernel(key: jax.Array, sf: int) -> jax.Array:
    """One DKP linear-motion prior kernel: theta ~ U[0, 360) degrees (the original: 360 u, u = rand())."""
    return linear_motion_kernel(sf, 360 * jax.random.uniform(key, (), _float_dtype()))


# ------------------------------------------------------------------------------------------------------
# Random camera-shake trajectories (test data; the released DKP code reads motion-kernel files it never
# shipped, DKP_SPEC.md section 3). Our own generator, after the model of Boracchi & Foi (2012), "Modeling
# the performance of image restoration from motion blur", IEEE TIP 21(8): a constant-speed 2-D random walk
# whose direction has inertia, is perturbed by Gaussian jitter, pulled back towards its start
# (centripetal term) and occasionally reversed (abrupt shakes); its positions are splatted bilinearly.

TRAJECTORY_STEPS = 128  # positions per trajectory; step length <= (k - s) / 127 < 0.14 px, so the path is dense


def _trajectory_draws(n_steps: int) -> int:
    """Uniforms one trajectory consumes: 4 per step (2 for the jitter normals, shake, its angle) + 4."""
    return 4 * (n_steps - 1) + 4


def _trajectory(u: jax.Array, n_steps: int) -> jax.Array:
    """`motion_trajectory` from its uniforms u (`_trajectory_draws(n_steps)` values in [0, 1))."""
    dtype = u.dtype
    steps = n_steps - 1
    jitter, pull, p_shake = u[:3] * jnp.asarray([0.25, 0.04, 2.0 / n_steps], dtype)
    phi = 2 * math.pi * u[3]
    per_step = u[4:].reshape(steps, 4)
    radius = jnp.sqrt(-2 * jnp.log1p(-per_step[:, 0]))  # Box-Muller: two N(0, 1) per step
    xi = radius[:, None] * jnp.stack([jnp.cos(2 * math.pi * per_step[:, 1]), jnp.sin(2 * math.pi * per_step[:, 1])], -1)
    shake = per_step[:, 2] < p_shake
    delta = per_step[:, 3] - 0.5
    speed = 1.0 / steps

    def step(carry, inputs):
        pos, direction = carry
        noise, shaken, angle = inputs
        c, s = jnp.cos(angle), jnp.sin(angle)
        turned = -2 * jnp.stack([c * direction[0] - s * direction[1], s * direction[0] + c * direction[1]])
        new = direction + jitter * noise - pull * pos + jnp.where(shaken, turned, 0)
        norm = jnp.sqrt(jnp.sum(new * new))
        direction = jnp.where(norm > 1e-6, new / jnp.where(norm > 1e-6, norm, 1), direction)
        pos = pos + speed * direction
        return (pos, direction), pos

    start = jnp.zeros(2, dtype)
    _, path = jax.lax.scan(step, (start, jnp.stack([jnp.sin(phi), jnp.cos(phi)])), (xi, shake, delta))
    return jnp.concatenate([start[None], path])


@functools.partial(jax.jit, static_argnames="n_steps")
def motion_trajectory(key: jax.Array, n_steps: int = TRAJECTORY_STEPS) -> jax.Array:
    """(n_steps, 2) random camera-shake path (row, col) from (0, 0), total path length 1.

    Per path: jitter a ~ U(0, 0.25), centripetal pull c ~ U(0, 0.04), shake probability per step
    p ~ U(0, 2 / n_steps), initial direction d ~ U[0, 2 pi). Per step: d <- normalise(d + a xi - c x
    + b (-2 R(delta) d)), x <- x + d / (n_steps - 1), with xi ~ N(0, I), b ~ Bernoulli(p) (abrupt shake:
    the direction turns by about pi + delta, delta ~ U(-0.5, 0.5)); the pull c x grows with the distance
    from the start (x in units of the path length). Constant speed, so every position stands for the
    same exposure time. All randomness comes from one `jax.random.uniform` call (each threefry call
    costs compile time). Pure: vmap over keys.
    """
    return _trajectory(jax.random.uniform(key, (_trajectory_draws(n_steps),), _float_dtype()), n_steps)


@functools.partial(jax.jit, static_argnames=("size", "margin"))
def rasterize_trajectory(points: jax.Array, size: int, centre, weights=None, margin: float = 1.0) -> jax.Array:
    """Splat a path (n, 2) (row, col) onto a (size, size) grid: unit sum, centre of mass exactly `centre`.

    The path is translated so its (weighted) mean sits at `centre` and, only if it would not fit inside
    [margin, size - 1 - margin] on both axes, shrunk about that mean until it does; then each position
    adds its weight (default uniform) bilinearly to its 4 neighbouring pixels. Bilinear splatting keeps
    the first moment, so the kernel's centre of mass is the path's mean: the kernel is centred by
    construction (to rounding), with no resampling (a spline shift such as `kernel_shift` would ring
    around a 1-px line and leave negative values), and non-negative. With the default margin of 1 px
    the outer ring of pixels is exactly zero. `centre` must lie inside that box.
    """
    dtype = _float_dtype()
    points = jnp.asarray(points, dtype)
    n = points.shape[0]
    weights = jnp.full((n,), 1.0 / n, dtype) if weights is None else jnp.asarray(weights, dtype) / jnp.sum(weights)
    centre = jnp.broadcast_to(jnp.asarray(centre, dtype), (2,))
    offsets = points - weights @ points
    room_hi = (size - 1 - margin) - centre
    room_lo = centre - margin
    ext_hi, ext_lo = jnp.max(offsets, 0), jnp.max(-offsets, 0)
    fit = jnp.minimum(jnp.where(ext_hi > 0, room_hi / jnp.where(ext_hi > 0, ext_hi, 1), jnp.inf),
                      jnp.where(ext_lo > 0, room_lo / jnp.where(ext_lo > 0, ext_lo, 1), jnp.inf))
    pos = jnp.clip(centre + jnp.minimum(1.0, jnp.min(fit)) * offsets, margin, size - 1 - margin)  # clip: rounding only
    base = jnp.floor(pos)
    frac = pos - base
    base = base.astype(jnp.int32)

    def axis_weights(b, f):  # (n, size): (1 - f) at b, f at b + 1 (one_hot of an out-of-range index is 0)
        return ((1 - f)[:, None] * jax.nn.one_hot(b, size, dtype=dtype)
                + f[:, None] * jax.nn.one_hot(b + 1, size, dtype=dtype))

    rows = axis_weights(base[:, 0], frac[:, 0])
    cols = axis_weights(base[:, 1], frac[:, 1])
    kernel = jnp.einsum("n,nr,nc->rc", weights, rows, cols, precision=_HIGHEST)
    return kernel / kernel.sum()


def motion_length_range(sf: int, size: int | None = None) -> tuple[float, float]:
    """Path length range (pixels) of `random_motion_kernel`: (0.4, 1.0) (k - s), k the grid side."""
    k = kernel_size(sf) if size is None else size
    return 0.4 * (k - sf), 1.0 * (k - sf)


@functools.partial(jax.jit, static_argnames=("sf", "size"))
def random_motion_kernel(key: jax.Array, sf: int, size: int | None = None) -> jax.Array:
    """Random camera-shake motion kernel (k, k) for test data: unit sum, non-negative, centre of mass
    exactly at ((k - s)/2, (k - s)/2) (the data convention; k = `size` or kernel_size(sf)).

    A `motion_trajectory` path (a Boracchi-Foi style random walk with inertia; drawn from the same key
    as the length, so not the path `motion_trajectory(key)` returns) scaled to a path length
    ~ U(`motion_length_range`), then `rasterize_trajectory` (centred by translation, shrunk only if it
    would leave the grid less its 1 px outer ring, bilinear splatting), so the outer ring is zero.
    One `jax.random.uniform` call per kernel. Not a reproduction of the paper's (unreleased) motion
    test kernels.
    """
    k = kernel_size(sf) if size is None else size
    draws = _trajectory_draws(TRAJECTORY_STEPS)
    u = jax.random.uniform(key, (draws + 1,), _float_dtype())
    lo, hi = motion_length_range(sf, k)
    length = lo + u[draws] * (hi - lo)
    return rasterize_trajectory(length * _trajectory(u[:draws], TRAJECTORY_STEPS), k, (k - sf) / 2)
