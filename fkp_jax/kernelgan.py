"""KernelGAN-FKP (FKP_SPEC 7): a WGAN-GP whose generator is the frozen FKP x2 flow and its latent.

Parts, in data-flow order:
- MATLAB-style bicubic `imresize` (NumPy; spec 7.1) and the crop sampler: `prepare_image` (the 10-pixel
  shave of synthetic inputs), `make_sampler` (NumPy: loss map -> probability maps of crop centres),
  `sample_batch` (pure JAX: a batch of G and D crops from a key). The original KernelGAN baseline
  (``fkp_jax.kernelgan_linear``) uses the same sampler.
- Generator (spec 7.2): kernel = FKP(z) (11 x 11), per-channel VALID correlation, keep every 2nd pixel.
- Discriminator (spec 7.3): pure functions over a parameter dict, train-mode batch norm;
  `discriminator_params_from_state_dict` reads the original's state dict.
- WGAN-GP (spec 7.4) with the original's quirks: one alpha per batch, per-pixel gradient norm over
  channels, 3 D steps then 3 G steps reusing the last fake; Adam on D and on z; sphere projection.
- The solver in the shape of every method (ARCHITECTURE.md): `KernelGANConfig`, `init_state`,
  `make_step` (one jitted ``(state, sampler) -> (state, outputs)``, seeds a leading axis),
  `final_kernel`, `make_runner`.

Images HWC / NHWC float32 in [0, 1]; kernels (k, k) applied by correlation, as ``fkp_jax.degrade``.

Checked against the original (run from outside with torch, CPU): `step_on_batch` and the original's
``KernelGAN_FKP.train`` in float64 from the same D weights, latent, batches and GP alphas agree for 5
iterations to 6e-14 on z, 1e-16 on the kernel and 2e-13 on the D parameters (1e-8 on the conv biases
ahead of a batch norm: their gradient is 0 up to rounding, which Adam's first steps turn into moves). In
float32 the two runs drift apart at about 1e-3 after one iteration for that reason (rounding noise of
near-zero gradients decides the sign of Adam's first updates), as two float32 runs of the original on
different machines would. The probability maps match the original's to 1e-13 (float64 image).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax import lax

from fkp_jax import band
from fkp_jax import kernels as kernels_lib
from fkp_jax import winograd
from fkp_jax.kernel_priors import project_to_sphere
from fkp_jax.seeds import drive, stack_states, unstack  # noqa: F401 (stack_states, unstack: part of this API)

State = dict[str, Any]
PRECISION = lax.Precision.HIGHEST
BN_EPS = 1e-5
LEAKY_SLOPE = 0.2
SHAVE = 10  # border shaved from synthetic inputs (not with --real), spec 7.1


# --------------------------------------------------------------------------------------------
# MATLAB-style bicubic imresize (KernelGAN's imresize.py, restated; spec 7.1)


def _cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5 (MATLAB's 'bicubic')."""
    ax = np.abs(x)
    ax2, ax3 = ax * ax, ax * ax * ax
    return ((1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1)
            + (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2)))


def _resize_weights(in_len: int, out_len: int, scale: float, antialias: bool = True,
                    original_boundary: bool = True):
    """(indices (out_len, P), weights (out_len, P)) of one axis of the MATLAB-style resize.

    Output pixel j (1-based) sits at input coordinate u = j / scale + (1 - 1 / scale) / 2; it reads the
    P = ceil(width) + 2 pixels from floor(u - width / 2) on, weighted by the cubic kernel (widened by
    1 / scale and scaled by scale when antialiasing a downscale), normalised to unit sum. Pixels past the
    end are mirrored with the edge repeated (symmetric padding). Pixels BEFORE the start: with
    ``original_boundary`` (quirk matched) their weights are dropped before the normalisation, which is what
    the original computes on x86 (it casts the negative positions to unsigned integers, which wrap to
    huge values whose cubic weight is 0); MATLAB, and ``original_boundary=False``, mirrors them too.
    Only the first two outputs of a x0.5 resize differ; the sampler never sees them (they lie in the
    zeroed 5-pixel border of the gradient map).
    """
    aa = antialias and scale < 1
    kernel = (lambda t: scale * _cubic(scale * t)) if aa else _cubic
    width = 4.0 / scale if aa else 4.0
    u = np.arange(1, out_len + 1) / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - width / 2)
    taps = int(np.ceil(width)) + 2
    idx = left[:, None] + np.arange(taps)[None, :] - 1  # 0-based positions
    w = kernel(u[:, None] - idx - 1)
    if original_boundary:
        w = np.where(idx < 0, 0.0, w)
    sums = w.sum(axis=1, keepdims=True)
    w = w / np.where(sums == 0, 1.0, sums)
    idx = idx.astype(np.int64) % (2 * in_len)
    idx = np.where(idx < in_len, idx, 2 * in_len - 1 - idx)
    return idx, w


def imresize(image: np.ndarray, scale: float, original_boundary: bool = True) -> np.ndarray:
    """Bicubic resize of an (H, W[, C]) image by ``scale`` on both axes, MATLAB ``imresize`` style
    (antialiased when downscaling), to (ceil(H scale), ceil(W scale)); float64. Rows first, then
    columns, as the original for equal scales. ``original_boundary``: see `_resize_weights`."""
    out = np.asarray(image, np.float64)
    for axis in (0, 1):
        n = out.shape[axis]
        idx, w = _resize_weights(n, int(np.ceil(n * scale)), scale, original_boundary=original_boundary)
        moved = np.moveaxis(out, axis, 0)
        moved = np.einsum("op,op...->o...", w, moved[idx])
        out = np.moveaxis(moved, 0, axis)
    return out


# --------------------------------------------------------------------------------------------
# Crop sampler (spec 7.1)


def min_image_size(g_size: int = 64, d_size: int = 27, shave: int = 0) -> int:
    """Smallest side length an image may have for the crops: max(g_size, d_size) for the image handed to
    `make_sampler`, + 2 * shave for the LR before `prepare_image` (64 and 84 with the defaults). Below it
    the original builds crops smaller than the batch shape and fails (spec 7.5); at exactly g_size it
    still runs: the G probability map is empty and it falls back to uniform centres, so every G crop
    starts in row 0 (matched)."""
    return max(g_size, d_size) + 2 * shave


def prepare_image(lr: np.ndarray, real: bool = False) -> np.ndarray:
    """The original's ``shave_edges`` (spec 7.1): shave SHAVE = 10 pixels from every border unless
    ``real``, then crop bottom / right to even sides. (H, W, 3) float32 in [0, 1] in and out; raises
    ValueError when the result is too small for the crops (see `min_image_size`)."""
    image = np.asarray(lr, np.float32)
    shave = 0 if real else SHAVE
    need = min_image_size(shave=shave)
    if min(image.shape[:2]) < need:
        raise ValueError(f"KernelGAN-FKP needs an LR image of at least {need}x{need} pixels"
                         f"{'' if real else f' ({SHAVE}-pixel border shave of synthetic inputs)'};"
                         f" got {image.shape[0]}x{image.shape[1]}")
    if shave:
        image = image[shave:-shave, shave:-shave]
    return _crop_even(image)


def _crop_even(image: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    return image[:h - h % 2, :w - w % 2]


def _zero_border(a: np.ndarray, edge: int) -> np.ndarray:
    """The original ``pad_edges``: keep [edge:-edge, edge:-edge], zeros elsewhere."""
    out = np.zeros_like(a)
    if a.shape[0] > 2 * edge and a.shape[1] > 2 * edge:
        out[edge:-edge, edge:-edge] = a[edge:-edge, edge:-edge]
    return out


def _clip_top(a: np.ndarray, percent: float = 0.97) -> np.ndarray:
    """The original ``clip_extreme``: clip to [v, v+] minus v, v = the sorted value at int(percent N),
    v+ the next one (v + 1e-5 when equal): almost a binary mask of the top 3 %."""
    flat = np.sort(a.ravel())
    pivot = int(percent * flat.size)
    lo = flat[pivot]
    hi = flat[pivot + 1] if flat[pivot + 1] > lo else lo + 10e-6
    return np.clip(a, lo, hi) - lo


def _box_sum_same(a: np.ndarray, size: int) -> np.ndarray:
    """scipy.signal.convolve2d(a, ones((size, size)), 'same') by an integral image (exact box sums in
    float64 up to rounding): out[i, j] = sum of a[i - size//2 : i + (size-1)//2 + 1, same for j]."""
    h, w = a.shape
    lo, hi = size // 2, (size - 1) // 2
    c = np.zeros((h + 1, w + 1))
    c[1:, 1:] = np.cumsum(np.cumsum(a, axis=0), axis=1)
    r0 = np.clip(np.arange(h) - lo, 0, h)
    r1 = np.clip(np.arange(h) + hi + 1, 0, h)
    c0 = np.clip(np.arange(w) - lo, 0, w)
    c1 = np.clip(np.arange(w) + hi + 1, 0, w)
    return c[r1][:, c1] - c[r0][:, c1] - c[r1][:, c0] + c[r0][:, c0]


def _safe_normalise(a: np.ndarray) -> np.ndarray:
    s = a.sum()
    return a / s if s > 0 else np.zeros_like(a)


def gradient_map(image: np.ndarray, window: int = 5, percent: float = 0.97) -> np.ndarray:
    """The original ``create_gradient_map`` (spec 7.1): (H, W) loss map with mean 1, float64.

    DELIBERATE CHANGE: where a term is identically zero (a flat image) the original divides 0 by 0 and
    its sampler fails on NaN probabilities; here that term is dropped (an all-zero map falls back to
    uniform centres in `probability_map`)."""
    gray = np.dot(np.asarray(image, np.float64), [0.299, 0.587, 0.114])  # as the original, bit for bit:
    # the ~3 % threshold sits on ties in images with repeated gradients, so the rounding of gray matters
    gx, gy = np.gradient(gray)
    gmag = np.sqrt(gx * gx + gy * gy)
    gx, gy, gmag = (_zero_border(np.abs(g), window) for g in (gx, gy, gmag))
    comb = _safe_normalise(_clip_top(gx, percent)) + _safe_normalise(_clip_top(gy, percent)) + _safe_normalise(gmag)
    loss = _box_sum_same(comb, window) / window ** 2
    mean = loss.mean()
    return loss / mean if mean > 0 else loss


def probability_map(loss_map: np.ndarray, crop: int) -> np.ndarray:
    """The original ``create_probability_map`` (spec 7.1): (H, W) probabilities of crop CENTRES, float64:
    box mean of size crop // 2 ('same'), zero border of crop // 2, unit sum; uniform if all zero."""
    half = crop // 2
    prob = _zero_border(_box_sum_same(loss_map, half) / half ** 2, half)
    s = prob.sum()
    return prob / s if s > 0 else np.full(prob.shape, 1.0 / prob.size)


def _nearest_up(a: np.ndarray, factor: int) -> np.ndarray:
    """The original ``nn_interpolation`` (PIL NEAREST on a float32 'F' image): values rounded to float32."""
    a = np.asarray(a, np.float32).astype(np.float64)
    return np.repeat(np.repeat(a, factor, axis=0), factor, axis=1)


CDF_ONE = 2 ** 31  # integer CDFs: exact bins of 2^-31 (float32 CDFs lose small bins on large images)


def _integer_cdf(prob: np.ndarray) -> np.ndarray:
    c = np.cumsum(prob.ravel())
    return np.round(c / c[-1] * CDF_ONE).astype(np.uint32)


@struct.dataclass
class CropSampler:
    """Crop source of one image (a JAX pytree; the sizes are static).

    image: (H, W, 3) float32; g_prob, d_prob: (H * W,) float32 probabilities of the crop CENTRE
    (row-major pixel index r * W + c) for G (g_size crops) and D (d_size crops); g_cdf, d_cdf: the same
    as uint32 cumulative sums scaled to CDF_ONE, what `sample_batch` draws from."""

    image: jax.Array
    g_prob: jax.Array
    d_prob: jax.Array
    g_cdf: jax.Array
    d_cdf: jax.Array
    g_size: int = struct.field(pytree_node=False, default=64)
    d_size: int = struct.field(pytree_node=False, default=27)


def probability_maps(image: np.ndarray, g_size: int = 64, d_size: int = 27) -> tuple[np.ndarray, np.ndarray]:
    """(G map, D map), each (H, W) float64 over crop centres (spec 7.1): D from the gradient map of the
    image; G from that of the bicubic x0.5 image, nearest-upsampled x2. ``image`` must have even sides."""
    d_map = probability_map(gradient_map(image), d_size)
    g_map = probability_map(_nearest_up(gradient_map(imresize(image, 0.5)), 2), g_size)
    return g_map, d_map


def _as_float64(image: np.ndarray) -> np.ndarray:
    """The float64 image the original computes its maps from: for an 8-bit image given as float32 (every
    value k / 255 to float32 rounding) the exact k / 255 in float64, else the values as they are. (The
    ~3 % gradient threshold sits on ties in images with repeated gradients, so these roundings matter.)"""
    u = image.astype(np.float64) * 255.0
    k = np.round(u)
    return k / 255.0 if np.all(np.abs(u - k) < 1e-3) else image.astype(np.float64)


def make_sampler(image: np.ndarray, g_size: int = 64, d_size: int = 27) -> CropSampler:
    """The crop sampler of an (H, W, 3) float32 image in [0, 1] (already shaved, see `prepare_image`;
    odd sides are cropped to even here as in the original). Raises ValueError naming the minimum size
    when a side is below `min_image_size` (spec 7.5)."""
    image = np.asarray(image, np.float32)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) image, got shape {image.shape}")
    need = min_image_size(g_size, d_size)
    if min(image.shape[:2]) < need:
        raise ValueError(f"KernelGAN crops need an image of at least {need}x{need} pixels (after the shave),"
                         f" got {image.shape[0]}x{image.shape[1]}")
    image = _crop_even(image)
    g_map, d_map = probability_maps(_as_float64(image), g_size, d_size)
    return CropSampler(image=jnp.asarray(image), g_prob=jnp.asarray(g_map.ravel(), jnp.float32),
                       d_prob=jnp.asarray(d_map.ravel(), jnp.float32), g_cdf=jnp.asarray(_integer_cdf(g_map)),
                       d_cdf=jnp.asarray(_integer_cdf(d_map)), g_size=g_size, d_size=d_size)


def _draw_centres(key, cdf, n: int):
    """n pixel indices i with probability (cdf[i] - cdf[i-1]) / CDF_ONE (bins of zero mass never drawn)."""
    r = jax.random.bits(key, (n,), jnp.uint32) >> 1  # uniform on [0, 2^31)
    return jnp.searchsorted(cdf, r, side="right", method="scan_unrolled")


def top_left(centre, size: int, shape: tuple[int, int]):
    """Crop top-left (row, col) of a centre index: clamp(centre - size // 2, 0, side - size), then
    rounded down to even (spec 7.1)."""
    h, w = shape
    row, col = centre // w, centre % w
    top = jnp.clip(row - size // 2, 0, h - size)
    left = jnp.clip(col - size // 2, 0, w - size)
    return top - top % 2, left - left % 2


def _crops(image, centres, size: int):
    tops, lefts = (v.astype(jnp.int32) for v in top_left(centres, size, image.shape[:2]))
    zero = jnp.zeros((), jnp.int32)
    return jax.vmap(lambda t, l: lax.dynamic_slice(image, (t, l, zero), (size, size, image.shape[2])))(tops, lefts)


def sample_batch(key: jax.Array, sampler: CropSampler, batch: int, g_size: int = 64, d_size: int = 27):
    """(g_in (B, g, g, 3), d_in (B, d, d, 3)): independent G and D crops, centres drawn from the
    sampler's maps (the original draws 280,000 centres up front and shuffles them: the same law)."""
    if (g_size, d_size) != (sampler.g_size, sampler.d_size):
        raise ValueError(f"sampler built for crops {sampler.g_size}/{sampler.d_size}, asked for {g_size}/{d_size}")
    kg, kd = jax.random.split(key)
    g_in = _crops(sampler.image, _draw_centres(kg, sampler.g_cdf, batch), g_size)
    d_in = _crops(sampler.image, _draw_centres(kd, sampler.d_cdf, batch), d_size)
    return g_in, d_in


# --------------------------------------------------------------------------------------------
# Generator (spec 7.2)


def generate(kernel: jax.Array, g_in: jax.Array, stride: int = 2) -> jax.Array:
    """Per-channel VALID correlation of g_in (B, H, W, C) with kernel (k, k), keeping rows / cols
    0, stride, 2 stride, ...: (B, (H - k) // stride + 1, ..., C); 64 -> 54 -> 27 for k = 11.

    Computed as band products (`fkp_jax.band.correlate_channels`), not as a convolution: XLA:CPU ran the
    one-channel strided convolution at about 2.6 GFLOP/s, 13.6 ms forward and 5-9 ms more for the kernel
    gradient of the G step per iteration, against 3.4 ms forward and 2.8 ms forward + kernel gradient as band
    products (B = 64 crops of 64 x 64 x 3, AMD EPYC Zen 4, AVX-512). The same k^2 products per output; float32
    rounding differs only."""
    return band.correlate_channels(g_in, kernel, stride)


# --------------------------------------------------------------------------------------------
# Discriminator (spec 7.3)


def _block_names(layers: int) -> list[str]:
    return [f"block{i + 1}" for i in range(layers - 2)]


def _body_order(body: dict) -> list[str]:
    return sorted(body, key=lambda name: int(name[len("block"):]))


def init_discriminator(key: jax.Array, channels: int = 32, layers: int = 5, ksize: int = 3) -> dict:
    """Parameters as the original's init (spec 7.3): conv weights N(0, 0.02), conv biases PyTorch's
    default U(+-1/sqrt(fan_in)), BN scale N(1, 0.02), BN bias 0. Kernels HWIO. (Drawn as one normal and
    one uniform vector cut into pieces on the host, so that a first call compiles little; not jittable.)

    {'head': {'conv': {'kernel', 'bias'}, 'norm': {'scale', 'bias'}}, 'body': {'block1': ..., ...},
     'tail': {'kernel', 'bias'}}"""
    convs = [(3, channels)] + [(channels, channels)] * (layers - 2) + [(channels, 1)]
    n_normal = sum(ksize * ksize * cin * cout for cin, cout in convs) + channels * (layers - 1)
    k_normal, k_uniform = jax.random.split(key)
    normal = np.asarray(jax.random.normal(k_normal, (n_normal,), jnp.float32))
    uniform = np.asarray(jax.random.uniform(k_uniform, (sum(c for _, c in convs),), jnp.float32, -1.0, 1.0))
    pos = {"n": 0, "u": 0}

    def take(kind, source, n):
        out = source[pos[kind]:pos[kind] + n]
        pos[kind] += n
        return out

    def conv(cin, cout):
        w = 0.02 * take("n", normal, ksize * ksize * cin * cout).reshape(ksize, ksize, cin, cout)
        b = take("u", uniform, cout) / np.float32(math.sqrt(cin * ksize * ksize))
        return {"kernel": jnp.asarray(w), "bias": jnp.asarray(b)}

    def block(cin):
        c = conv(cin, channels)
        return {"conv": c, "norm": {"scale": jnp.asarray(1.0 + 0.02 * take("n", normal, channels)),
                                    "bias": jnp.zeros((channels,), jnp.float32)}}

    return {"head": block(3), "body": {n: block(channels) for n in _block_names(layers)},
            "tail": conv(channels, 1)}


def count_params(params) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


CONV_ALGORITHMS = ("winograd", "rows", "im2col", "xla")


def conv_algorithm() -> str:
    """"winograd" on CPU (see `discriminate`), "xla" (the platform's convolution) on accelerators."""
    return "winograd" if jax.default_backend() == "cpu" else "xla"


def _conv_im2col(x, w):
    """VALID k x k correlation as ONE matmul: the k^2 shifted views side by side (K = k^2 C_in)."""
    k = w.shape[0]
    n, h, wd, c = x.shape
    oh, ow = h - k + 1, wd - k + 1
    cols = jnp.concatenate([x[:, dy:dy + oh, dx:dx + ow] for dy in range(k) for dx in range(k)], axis=-1)
    y = jnp.dot(cols.reshape(n * oh * ow, k * k * c), w.reshape(k * k * c, -1), precision=PRECISION)
    return y.reshape(n, oh, ow, -1)


def _shift_columns(x, k: int):
    """(N, H, W, C) -> (N, H, W - k + 1, kC): the k column shifts of every row side by side."""
    ow = x.shape[2] - k + 1
    return jnp.concatenate([x[:, :, dx:dx + ow] for dx in range(k)], axis=-1)


def _taps_by_column(w):
    """HWIO (k, k, C, D) -> (kC, kD): rows [dx, c], columns [dy, d]."""
    k, _, c, d = w.shape
    return w.transpose(1, 2, 0, 3).reshape(k * c, k * d)


def _rows_product(cols, w):
    n, h, ow, kc = cols.shape
    k, d = w.shape[0], w.shape[-1]
    oh = h - k + 1
    p = jnp.dot(cols.reshape(n * h * ow, kc), _taps_by_column(w), precision=PRECISION).reshape(n, h, ow, k * d)
    return sum(p[:, dy:dy + oh, :, dy * d:(dy + 1) * d] for dy in range(k))


@jax.custom_vjp
def _conv_rows(x, w):
    """VALID k x k correlation as one matmul with K = kC, N = kD (the "rows" algorithm of fkp_jax.dip,
    restated): the k column shifts side by side times the taps of all k kernel rows, then k row-shifted
    slices added. A third of im2col's buffer; the VJP is written out as its two matmuls (and is itself
    differentiated by JAX for the penalty's second derivative)."""
    return _rows_product(_shift_columns(x, w.shape[0]), w)


def _conv_rows_fwd(x, w):
    cols = _shift_columns(x, w.shape[0])
    return _rows_product(cols, w), (cols, w)


def _conv_rows_bwd(res, dy):
    cols, w = res
    n, h, ow, kc = cols.shape
    k, c, d = w.shape[0], w.shape[2], w.shape[3]
    # block r of the product feeds output rows shifted by r: its cotangent is dy shifted by r
    dp = jnp.concatenate([jnp.pad(dy, ((0, 0), (r, k - 1 - r), (0, 0), (0, 0))) for r in range(k)], axis=-1)
    dp = dp.reshape(n * h * ow, k * d)
    d_taps = jnp.dot(cols.reshape(n * h * ow, kc).T, dp, precision=PRECISION)  # (kC, kD)
    d_cols = jnp.dot(dp, _taps_by_column(w).T, precision=PRECISION).reshape(n, h, ow, kc)
    dx = sum(jnp.pad(d_cols[..., s * c:(s + 1) * c], ((0, 0), (0, 0), (s, k - 1 - s), (0, 0))) for s in range(k))
    return dx, d_taps.reshape(k, c, k, d).transpose(2, 0, 1, 3)


_conv_rows.defvjp(_conv_rows_fwd, _conv_rows_bwd)


def _conv(x, p, algorithm: str | None = None):
    """VALID stride-1 conv (HWIO kernel) + bias, NHWC; see `discriminate` for the algorithms ("winograd"
    and "rows" fall back to "im2col" for the thin head and tail convs)."""
    algorithm = conv_algorithm() if algorithm is None else algorithm
    w = p["kernel"]
    if algorithm in ("rows", "winograd") and min(w.shape[2:]) < 8:
        algorithm = "im2col"
    if algorithm == "winograd":
        y = winograd.conv3x3_valid(x, w)
    elif algorithm == "xla":
        y = lax.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                     precision=PRECISION)
    elif algorithm == "im2col":
        y = _conv_im2col(x, w)
    elif algorithm == "rows":
        y = _conv_rows(x, w)
    else:
        raise ValueError(f"conv algorithm must be one of {CONV_ALGORITHMS}, not {algorithm!r}")
    return y + p["bias"]


def _batch_norm(x, p):
    """Train-mode BatchNorm2d: batch statistics over (N, H, W), biased variance, eps 1e-5. The running
    statistics are never used (the original's D is always in train mode), so none are kept."""
    mean = jnp.mean(x, axis=(0, 1, 2))
    var = jnp.mean(jnp.square(x - mean), axis=(0, 1, 2))
    return (x - mean) * (lax.rsqrt(var + BN_EPS) * p["scale"]) + p["bias"]


def _leaky_relu(x):
    return jnp.where(x > 0, x, LEAKY_SLOPE * x)


def discriminate(params: dict, x: jax.Array, algorithm: str | None = None) -> jax.Array:
    """D(x) for x (B, 27, 27, 3) in [0, 1] -> (B, 17, 17, 1) (spec 7.3): 2x - 1, head and body blocks
    (3x3 VALID conv, batch norm with THIS batch's statistics, LeakyReLU 0.2), tail conv; no sigmoid.

    ``algorithm`` (default `conv_algorithm`): "winograd" (`fkp_jax.winograd.conv3x3_valid`: forward F(2x2,
    3x3), input and weight gradients F(4x4, 3x3), each map's VJP made of the others, so the penalty's second
    derivative stays in the Winograd domain), "rows" (`_conv_rows`, custom VJP), "im2col" (the k^2 shifted
    views side by side, one matmul) or "xla" (``lax.conv_general_dilated``); the same sums up to float32
    rounding. One D step (batch 64, value and gradient), one thread, AMD EPYC Zen 4: winograd 450-495 ms,
    rows 640-700 ms; the whole iteration with 2 threads 0.69-0.85 s against the official 0.96-1.09 s (rows:
    1.06 s against 0.94 s; docs/benchmarks.md). On AVX2 CPUs, earlier, shared with other jobs: rows 2.1 - 2.5
    CPU-s per iteration, im2col 2.3 - 2.7, xla 6.3 (XLA:CPU runs the convolutions of the penalty's second
    derivative, which have unusual dimension numbers, on a slow path). Tried and dropped: XLA convolutions
    with hand-written first and second derivatives 2.9 - 3.3, real and fake batches in one vmapped call
    (+8 %), the 3 D steps unrolled instead of ``lax.scan`` (same)."""
    h = 2.0 * x - 1.0
    for blk in [params["head"]] + [params["body"][n] for n in _body_order(params["body"])]:
        h = _leaky_relu(_batch_norm(_conv(h, blk["conv"], algorithm), blk["norm"]))
    return _conv(h, params["tail"], algorithm)


def discriminator_params_from_state_dict(sd) -> dict:
    """The original ``Discriminator_KP`` state dict (golden kernelgan_d_state.pt, Appendix B; a path or
    a name -> array mapping) -> our parameters. BN running statistics are ignored (train mode only)."""
    if not isinstance(sd, dict):
        from fkp_jax.torch_state import load_state_dict

        sd = load_state_dict(sd)
    sd = {k: np.asarray(v) for k, v in sd.items()}

    def conv(prefix):
        w = sd[f"{prefix}.weight"]
        if w.ndim != 4:
            raise ValueError(f"{prefix}.weight: expected a conv weight (O, I, kh, kw), got {w.shape}")
        return {"kernel": jnp.asarray(w.transpose(2, 3, 1, 0), jnp.float32),
                "bias": jnp.asarray(sd[f"{prefix}.bias"], jnp.float32)}

    def block(prefix):
        return {"conv": conv(f"{prefix}.conv"),
                "norm": {"scale": jnp.asarray(sd[f"{prefix}.norm.weight"], jnp.float32),
                         "bias": jnp.asarray(sd[f"{prefix}.norm.bias"], jnp.float32)}}

    n_blocks = len({k.split(".")[1] for k in sd if k.startswith("body.")})
    return {"head": block("head"), "body": {f"block{i + 1}": block(f"body.block{i + 1}") for i in range(n_blocks)},
            "tail": conv("tail")}


def discriminator_named_grads(grads: dict) -> dict[str, np.ndarray]:
    """Our D parameter pytree -> {PyTorch name: array in PyTorch layout} (for parity checks)."""
    out = {}

    def conv(prefix, p):
        out[f"{prefix}.weight"] = np.asarray(p["kernel"]).transpose(3, 2, 0, 1)
        out[f"{prefix}.bias"] = np.asarray(p["bias"])

    def block(prefix, p):
        conv(f"{prefix}.conv", p["conv"])
        out[f"{prefix}.norm.weight"] = np.asarray(p["norm"]["scale"])
        out[f"{prefix}.norm.bias"] = np.asarray(p["norm"]["bias"])

    block("head", grads["head"])
    for n in _body_order(grads["body"]):
        block(f"body.{n}", grads["body"][n])
    conv("tail", grads["tail"])
    return out


# --------------------------------------------------------------------------------------------
# WGAN-GP losses (spec 7.4)


def _safe_norm(sq):
    """sqrt with a zero (sub)gradient at 0, as PyTorch's norm backward."""
    pos = sq > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, sq, 1.0)), 0.0)


def gradient_penalty(params: dict, real, fake, alpha, weight: float = 0.1, algorithm: str | None = None):
    """weight * mean over (batch, h, w) of (|grad_xhat sum D(xhat)|_2 - 1)^2, the norm over the CHANNEL
    axis per pixel, xhat = alpha real + (1 - alpha) fake with ONE scalar alpha (quirks matched, spec 7.4)."""
    xhat = alpha * real + (1 - alpha) * fake
    g = jax.grad(lambda x: jnp.sum(discriminate(params, x, algorithm)))(xhat)
    return weight * jnp.mean(jnp.square(_safe_norm(jnp.sum(g * g, axis=-1)) - 1.0))


def d_loss(params: dict, real, fake, alpha, weight: float = 0.1, algorithm: str | None = None):
    """(L_D, {loss_d_real, loss_d_fake, gp}): -mean D(real) + mean D(fake) + GP; three separate D calls,
    each normalised with its own batch statistics, as the original. ``fake`` is not differentiated."""
    fake = lax.stop_gradient(fake)
    real_loss = -jnp.mean(discriminate(params, real, algorithm))
    fake_loss = jnp.mean(discriminate(params, fake, algorithm))
    gp = gradient_penalty(params, real, fake, alpha, weight, algorithm)
    return real_loss + fake_loss + gp, {"loss_d_real": real_loss, "loss_d_fake": fake_loss, "gp": gp}


def g_loss(params: dict, fake, algorithm: str | None = None):
    """L_G = -mean D(fake) (train-mode D on the fake batch)."""
    return -jnp.mean(discriminate(params, fake, algorithm))


# --------------------------------------------------------------------------------------------
# The solver (spec 7.1, 7.4, 7.5)


@dataclasses.dataclass(frozen=True)
class KernelGANConfig:
    """KernelGAN-FKP settings with the original's defaults (spec 7.1, 7.3, 7.4). ``iters`` None -> 1000
    for x2, 4000 for x4. The estimated kernel is always the x2 kernel of the FKP x2 prior (11 x 11)."""

    sf: int = 2
    iters: int | None = None
    batch: int = 64
    g_size: int = 64  # G crop (input_crop_size)
    kernel_size: int = 11  # G_kernel_size; must match the prior
    d_channels: int = 32
    d_layers: int = 5
    d_kernel_size: int = 3
    g_lr: float = 5e-4
    d_lr: float = 5e-4
    beta1: float = 0.5
    beta2: float = 0.999
    gp_weight: float = 0.1
    d_steps: int = 3
    g_steps: int = 3

    def __post_init__(self):
        if self.sf not in (2, 4):
            raise ValueError(f"KernelGAN-FKP supports x2 and x4 only, not x{self.sf}")
        if self.iters is None:
            object.__setattr__(self, "iters", 1000 if self.sf == 2 else 4000)

    @property
    def d_size(self) -> int:
        """D crop = G output size: (g_size - k) // 2 + 1 (27)."""
        return (self.g_size - self.kernel_size) // 2 + 1

    @property
    def radius(self) -> float:
        return float(self.kernel_size - 1)


def d_optimizer(config: KernelGANConfig) -> optax.GradientTransformation:
    """Adam(5e-4, betas (0.5, 0.999)) on D (PyTorch's eps 1e-8 outside the square root, as optax)."""
    return optax.adam(config.d_lr, b1=config.beta1, b2=config.beta2)


def z_optimizer(config: KernelGANConfig) -> optax.GradientTransformation:
    return optax.adam(config.g_lr, b1=config.beta1, b2=config.beta2)


def _check_prior(prior, config: KernelGANConfig):
    if prior.config.k != config.kernel_size:
        raise ValueError(f"KernelGAN-FKP needs the x2 FKP prior ({config.kernel_size}x{config.kernel_size}"
                         f" kernels); got a x{prior.config.sf} prior")


def init_state(key: jax.Array, prior, config: KernelGANConfig) -> State:
    """A fresh run: z ~ N(0, I_121) (not projected, as the original), D init, fresh Adam states, and the
    key every later random draw (crops, GP alphas) comes from; all split from ``key``."""
    _check_prior(prior, config)
    k_z, k_d, k_run = jax.random.split(key, 3)
    z = jax.random.normal(k_z, (prior.config.D,), jnp.float32)
    d = init_discriminator(k_d, config.d_channels, config.d_layers, config.d_kernel_size)
    return state_from(z, d, k_run, config)


def state_from(z, d_params, key, config: KernelGANConfig) -> State:
    """A state at iteration 1 from a given latent (D,), D parameters and step key."""
    z = jnp.asarray(z, jnp.result_type(float)).reshape(-1)  # float32 (float64 under jax_enable_x64)
    return {"t": jnp.asarray(1, jnp.int32), "z": z, "z_opt": z_optimizer(config).init(z),
            "d": d_params, "d_opt": d_optimizer(config).init(d_params), "key": key}


def step(state: State, sampler: CropSampler, prior, config: KernelGANConfig):
    """One iteration (spec 7.4) on a fresh batch drawn from ``state["key"]``.

    d_steps D updates, each: fake = G(g_in) with the current z (z does not move during them, so it is
    computed once), L_D with its own GP alpha ~ U(0, 1), Adam. Then g_steps z updates that all reuse the
    fake of the last D step and the same D, hence the SAME gradient (computed once; quirk matched), each
    followed by the projection to the sphere of radius k - 1. Outputs: ``kernel`` = the kernel of this
    iteration's G forward (before the z updates; the original's final kernel is this one of the last
    iteration), and the losses of the last D step and of the G step."""
    key, k_batch, k_alpha = jax.random.split(state["key"], 3)
    g_in, d_in = sample_batch(k_batch, sampler, config.batch, config.g_size, config.d_size)
    alphas = jax.random.uniform(k_alpha, (config.d_steps,), jnp.float32)
    new_state, outputs = step_on_batch(state, g_in, d_in, alphas, prior, config)
    return {**new_state, "key": key}, outputs


def step_on_batch(state: State, g_in, d_in, alphas, prior, config: KernelGANConfig):
    """`step` on a given batch g_in (B, 64, 64, 3), d_in (B, 27, 27, 3) and GP alphas (d_steps,); the
    state's key is passed through unchanged."""

    def fake_of(z):
        kernel = prior.kernel(z)
        return generate(kernel, g_in), kernel

    fake, kernel = fake_of(state["z"])
    opt_d = d_optimizer(config)

    def d_step(carry, alpha):
        d, d_opt = carry
        (_, parts), grads = jax.value_and_grad(d_loss, has_aux=True)(d, d_in, fake, alpha, config.gp_weight)
        updates, d_opt = opt_d.update(grads, d_opt, d)
        return (optax.apply_updates(d, updates), d_opt), parts

    (d, d_opt), parts = lax.scan(d_step, (state["d"], state["d_opt"]), alphas)
    parts = jax.tree.map(lambda v: v[-1], parts)

    loss_g, g_grad = jax.value_and_grad(lambda z: g_loss(d, fake_of(z)[0]))(state["z"])
    opt_z = z_optimizer(config)
    z, z_opt = state["z"], state["z_opt"]
    for _ in range(config.g_steps):
        updates, z_opt = opt_z.update(g_grad, z_opt, z)
        z = project_to_sphere(optax.apply_updates(z, updates), config.radius)

    new_state = {"t": state["t"] + 1, "z": z, "z_opt": z_opt, "d": d, "d_opt": d_opt, "key": state["key"]}
    outputs = {"kernel": kernel, "loss_d": parts["loss_d_real"] + parts["loss_d_fake"] + parts["gp"],
               **parts, "loss_g": loss_g}
    return new_state, outputs


def _step_seeds(state: State, sampler: CropSampler, prior, config: KernelGANConfig):
    return jax.vmap(lambda s: step(s, sampler, prior, config))(state)


# One jit cache for every make_step call: the prior is an argument (a pytree), the config static, so
# runners, tests and images of the same size share compilations.
_STEP = jax.jit(step, static_argnames="config", donate_argnums=0)
_STEP_SEEDS = jax.jit(_step_seeds, static_argnames="config", donate_argnums=0)


def make_step(prior, config: KernelGANConfig, seeds: bool = False) -> Callable:
    """The jitted ``(state, sampler) -> (state, outputs)``; seeds=True vmaps over the state's leading axis
    (the sampler is shared). The input state is donated: do not read it afterwards."""
    _check_prior(prior, config)
    fn = _STEP_SEEDS if seeds else _STEP
    return lambda state, sampler: fn(state, sampler, prior, config=config)


def final_kernel(kernel11: jax.Array, sf: int) -> jax.Array:
    """The estimate handed back (spec 7.5): x2 the 11 x 11 kernel as is (not renormalised); x4 the
    analytic x4 kernel (spec 2.4, unit sum) re-centred by kernel_shift(., 4) -> 21 x 21, centre of mass
    (8.5, 8.5), not renormalised after the shift (as the original)."""
    if sf == 2:
        return jnp.asarray(kernel11)
    if sf == 4:
        return kernels_lib.kernel_shift(kernels_lib.analytic_x4_kernel(kernel11), 4)
    raise ValueError(f"KernelGAN-FKP supports x2 and x4 only, not x{sf}")


def default_seed_mode() -> str:
    """"loop" on CPU (one jitted single-seed step per seed), "vmap" elsewhere, as DIP-FKP."""
    return "loop" if jax.default_backend() == "cpu" else "vmap"


def make_runner(prior, config: KernelGANConfig, seeds: bool = False, seed_mode: str | None = None):
    """A driver ``run(state, sampler, iters=None, callback=None) -> (state, last outputs, seconds)``: a
    Python loop over the jitted step (built once here). With seeds=True the state has a leading seed
    axis, stepped as one vmapped computation ("vmap") or seed by seed ("loop", the CPU default).
    ``callback(t, outputs)`` runs after every iteration t."""
    seed_mode = default_seed_mode() if seed_mode is None else seed_mode
    if seed_mode not in ("loop", "vmap"):
        raise ValueError(f"seed_mode must be 'loop' or 'vmap', not {seed_mode!r}")
    vmapped = seeds and seed_mode == "vmap"
    fn = make_step(prior, config, vmapped)

    def run(state: State, sampler: CropSampler, iters: int | None = None, callback=None):
        return drive(lambda n: fn, state, sampler, config.iters if iters is None else iters,
                     seeds and not vmapped, callback=callback)

    return run
