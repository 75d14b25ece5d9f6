"""KULNet (Fang et al., ECCV 2022: uncertainty learning in kernel estimation for multi-stage blind SR), JAX/Flax.

Spec: ``KULNET_SPEC.md`` sections 1-2 plus its appended corrections; numbers in the docstrings below ("spec 2",
"golden 2.4") refer to that spec and to the golden_kulnet README. Layout NHWC inside; kernels (21, 21) applied by
CROSS-CORRELATION as everywhere in fkp_jax (the network's A^T is the one place that flips them).

Public API:

- ``forward(params, lr, scale, key=None, eps=None) -> KULNetOutput(sr, kernel, mean, log_var)``: the whole
  network, jitted per (shape, scale). The latent noise is drawn from ``key`` (the original draws it at test time
  too) unless ``eps`` (N, h, w, 64) is injected.
- ``estimate_kernel(params, lr, eps)``, ``reconstruct(params, lr, kernel, scale)``: the two branches alone.
- ``op_A``, ``op_AT``, ``bicubic_resize``, ``bilinear_up2``, ``recon_step``: the building blocks (pure).
- ``KULNet`` / ``KernelExtra`` / ``DLSM``: the Flax modules (state-free; intermediates via ``sow``).
- ``params_from_state_dict(sd)``, ``named_parameters(params)``, ``is_kulnet_state_dict(sd)``,
  ``save_kulnet``, ``load_kulnet``: the official ``latest_G.pth`` (x2 / x3 / x4, same layout) <-> our params.

Parameter tree: the PyTorch module path with each numeric index merged into its parent's name
(``SR_net.Encoding.E1.0.weight`` -> ``SR_net / Encoding / E1_0 / kernel``); conv kernels HWIO.
The scale is not a parameter (golden 3): the same params serve x2, x3, x4.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

KERNEL_SIZE = 21
N_STAGES = 4
LATENT = 64  # kernel-branch width and latent channels
PAD_MULTIPLE = 16  # DLSM U-Net input padded (reflect, bottom/right) to a multiple of this
CUBIC_A = -0.75  # PyTorch's bicubic
SCALES = (2, 3, 4)
N_PARAMS = 2_888_515  # golden 3 (kernel branch 1,437,817 + DLSM 1,450,698)
MODEL_NAME = "kulnet"
PRECISION = lax.Precision.HIGHEST
_DN = ("NHWC", "HWIO", "NHWC")

# PyTorch default init (kaiming-uniform a = sqrt 5) for the kernel branch; Xavier-normal for the DLSM (golden 2.1/2.2)
_KE_INIT = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")
_SR_INIT = nn.initializers.variance_scaling(1.0, "fan_avg", "normal")


# ----------------------------------------------------------------------------- resampling (pure, NHWC)

def _cubic_weights(t):
    """Keys cubic weights (A = -0.75) of the 4 taps i0-1 .. i0+2 for fraction t, in t's dtype (PyTorch order)."""
    A = CUBIC_A
    c1 = lambda x: ((A + 2) * x - (A + 3)) * x * x + 1  # noqa: E731  |x| <= 1
    c2 = lambda x: ((A * x - 5 * A) * x + 8 * A) * x - 4 * A  # noqa: E731  1 < |x| < 2
    one = t.dtype.type(1)
    return np.stack([c2(t + one), c1(t), c1(one - t), c2((one - t) + one)], axis=-1)


def _bicubic_taps(n_in: int, factor: float, dtype):
    """(index (n_out, 4) int, weight (n_out, 4) dtype) of ``F.interpolate(mode='bicubic', scale_factor=factor,
    align_corners=False)`` along one axis: n_out = floor(n_in factor); source x = (j + 1/2) / factor - 1/2 computed
    in the working precision as PyTorch does (scale 1 / factor rounded to dtype first), NOT clamped; taps
    floor(x) - 1 .. floor(x) + 2 clamped to [0, n_in - 1] (replicated border); no antialiasing."""
    dt = np.dtype(dtype).type
    n_out = int(math.floor(n_in * factor))
    scale = dt(1.0 / factor)
    src = scale * (np.arange(n_out).astype(dt) + dt(0.5)) - dt(0.5)
    i0 = np.floor(src)
    t = (src - i0).astype(dt)
    idx = np.clip(i0.astype(np.int64)[:, None] + np.arange(-1, 3)[None], 0, n_in - 1)
    return idx, _cubic_weights(t).astype(dt)


def _resize_axis(x, idx, w, axis: int):
    """sum_k w[:, k] x[idx[:, k]] along ``axis``, the 4 terms added left to right (PyTorch's cubic_interp1d)."""
    shape = [1] * x.ndim
    shape[axis] = -1
    out = None
    for k in range(idx.shape[1]):
        term = jnp.take(x, jnp.asarray(idx[:, k]), axis=axis) * jnp.asarray(w[:, k], x.dtype).reshape(shape)
        out = term if out is None else out + term
    return out


def bicubic_resize(x, factor: float):
    """PyTorch ``F.interpolate(x, scale_factor=factor, mode='bicubic', align_corners=False)`` on NHWC ``x``
    (golden 2.3): A = -0.75, no antialiasing, border taps clamped. ``jax.image.resize`` is NOT this (Keys
    a = -0.5 and antialiased down-sampling). Width first, then height, as PyTorch."""
    dtype = x.dtype
    idx_w, w_w = _bicubic_taps(x.shape[2], factor, dtype)
    idx_h, w_h = _bicubic_taps(x.shape[1], factor, dtype)
    return _resize_axis(_resize_axis(x, idx_w, w_w, 2), idx_h, w_h, 1)


def _bilinear_up2_axis(x, axis: int):
    n = x.shape[axis]
    dt = np.dtype(x.dtype).type
    src = np.maximum(dt(0.5) * (np.arange(2 * n).astype(dt) + dt(0.5)) - dt(0.5), dt(0))
    i0 = np.floor(src).astype(np.int64)
    i1 = np.minimum(i0 + 1, n - 1)
    l1 = (src - i0).astype(dt)
    shape = [1] * x.ndim
    shape[axis] = -1
    l1 = jnp.asarray(l1, x.dtype).reshape(shape)
    return (1 - l1) * jnp.take(x, jnp.asarray(i0), axis=axis) + l1 * jnp.take(x, jnp.asarray(i1), axis=axis)


def bilinear_up2(x):
    """PyTorch bilinear x2, align_corners=False, NHWC (golden 2.3): source (j + 1/2) / 2 - 1/2 clamped below at 0,
    taps floor and min(floor + 1, n - 1)."""
    return _bilinear_up2_axis(_bilinear_up2_axis(x, 2), 1)


def avg_pool2(x):
    """2 x 2 average pool, stride 2 (even sizes: the DLSM pads to a multiple of 16 first)."""
    n, h, w, c = x.shape
    return x.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


# ----------------------------------------------------------------------------- A and A^T (pure, NHWC)

def blur_corr(x, kernels):
    """Per-sample 'same' cross-correlation with zero padding (k - 1) / 2, the sample's kernel on every channel:
    x (N, H, W, C), kernels (N, k, k) -> (N, H, W, C). out[i, j] = sum_{r,c} x[i + r - p, j + c - p] k[r, c]."""
    n, h, w, c = x.shape
    k = kernels.shape[-1]
    p = (k - 1) // 2
    # channels of sample b are grouped as b * C + c: one depthwise convolution for the whole batch
    xs = x.transpose(1, 2, 0, 3).reshape(1, h, w, n * c)
    ker = jnp.repeat(kernels.astype(x.dtype).transpose(1, 2, 0), c, axis=2)[:, :, None, :]  # (k, k, 1, N C)
    y = lax.conv_general_dilated(xs, ker, (1, 1), ((p, p), (p, p)), dimension_numbers=_DN,
                                 feature_group_count=n * c, precision=PRECISION)
    return y.reshape(h, w, n, c).transpose(2, 0, 1, 3)


def op_A(x, kernels, scale: int):
    """The network's A (``DLSM.conv_A``, golden 2.3): corr(x, k) with zero padding 10, then PyTorch bicubic
    down-sampling by 1/scale. x (N, H, W, C) HR, kernels (N, 21, 21) -> (N, H / s, W / s, C)."""
    return bicubic_resize(blur_corr(x, kernels), 1.0 / scale)


def op_AT(y, kernels, scale: int):
    """The network's A^T (``DLSM.conv_AT``, golden 2.3): PyTorch bicubic up-sampling x scale, then TRUE convolution
    with k (correlation with k[::-1, ::-1], zero padding 10). Quirk kept: this is NOT the adjoint of ``op_A``
    (<x, A^T y> ~ s^2 <A x, y>); use this operator, never autodiff's transpose of ``op_A``."""
    return blur_corr(bicubic_resize(y, float(scale)), kernels[..., ::-1, ::-1])


def recon_step(res, w, u, delta):
    """The proximal step (``DLSM.recon``, golden 2.4), literal floating-point semantics: w' = delta w,
    c1 = where(R < U - w', R + w', R), m1 = (R - c1 != 0); c3 = where(R > U + w', R - w', R), m3 = (R - c3 != 0);
    X = c1 m1 + U (1 - m1 - m3) + c3 m3. For w' > 0 soft-thresholding of R towards U. Quirks kept: w' < 0 inside
    the band gives 2R - U (both masks set) and moves away from U outside it; w' = 0, or |w'| <= ulp(R) / 2 where
    R +- w' rounds back to R, gives U (not R) -- so float32 and float64 can differ there."""
    wd = delta * w
    c1 = jnp.where(res < u - wd, res + wd, res)
    m1 = (res - c1 != 0).astype(res.dtype)
    c3 = jnp.where(res > u + wd, res - wd, res)
    m3 = (res - c3 != 0).astype(res.dtype)
    return c1 * m1 + u * (1 - m1 - m3) + c3 * m3


# ----------------------------------------------------------------------------- Flax modules (NHWC)

def _conv(features: int, name: str, k: int = 3, stride: int = 1, init=_KE_INIT, dtype=None) -> nn.Conv:
    """``dtype``: the convolution's computation dtype (None: its input's); parameters stay as given."""
    p = (k - 1) // 2
    return nn.Conv(features, (k, k), strides=stride, padding=((p, p), (p, p)), precision=PRECISION,
                   kernel_init=init, dtype=dtype, name=name)


class ResBlock(nn.Module):
    """Pre-activation residual block x + conv(relu(conv(relu(x)))) (torch ``body.1`` / ``body.3``)."""
    features: int = LATENT
    dtype: Any = None

    @nn.compact
    def __call__(self, x):
        r = _conv(self.features, "body_1", dtype=self.dtype)(nn.relu(x))
        return x + _conv(self.features, "body_3", dtype=self.dtype)(nn.relu(r))


class EncodingBlock(nn.Module):
    """Conv_head, 2 ResBlocks, ReLU -> skip; 3x3 stride-2 conv (padding 1, ceil(n / 2)) -> out. Returns (out, skip)."""
    dtype: Any = None

    @nn.compact
    def __call__(self, x):
        x = _conv(LATENT, "Conv_head", dtype=self.dtype)(x)
        x = ResBlock(dtype=self.dtype, name="ResBlock1")(x)
        skip = nn.relu(ResBlock(dtype=self.dtype, name="ResBlock2")(x))
        return _conv(LATENT, "downsample", stride=2, dtype=self.dtype)(skip), skip


class ConvTransposeTo(nn.Module):
    """PyTorch ConvTranspose2d(3x3, stride 2, padding 1) called with ``output_size`` (golden 2.1): output padding
    op = target - (2 n - 1), 0 or 1 per axis by the skip's parity. Computed as the input dilated by 2, padded
    (1, 1 + op), CORRELATED with ``kernel`` (3, 3, in, out) = torch (in, out, kh, kw) spatially flipped."""
    features: int = LATENT
    dtype: Any = None

    @nn.compact
    def __call__(self, x, out_hw):
        kernel = self.param("kernel", _KE_INIT, (3, 3, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        if self.dtype is not None:
            x = x.astype(self.dtype)
        pads = []
        for n, target in zip(x.shape[1:3], out_hw):
            op = target - (2 * n - 1)
            if op not in (0, 1):
                raise ValueError(f"ConvTranspose: output size {target} unreachable from {n}")
            pads.append((1, 1 + op))
        y = lax.conv_general_dilated(x, kernel.astype(x.dtype), (1, 1), pads, lhs_dilation=(2, 2),
                                     dimension_numbers=_DN, precision=PRECISION)
        return y + bias.astype(x.dtype)


class DecodingBlock(nn.Module):
    """Conv_t up to the skip's size, concat([UPSAMPLED, skip]) (this order, unlike the DLSM U-Net: golden 2.1),
    Conv_head 128 -> 64, 2 ResBlocks, ReLU."""
    dtype: Any = None

    @nn.compact
    def __call__(self, x, skip):
        up = ConvTransposeTo(dtype=self.dtype, name="Conv_t")(x, skip.shape[1:3])
        x = _conv(LATENT, "Conv_head", dtype=self.dtype)(jnp.concatenate([up, skip.astype(up.dtype)], axis=-1))
        x = ResBlock(dtype=self.dtype, name="ResBlock1")(x)
        return nn.relu(ResBlock(dtype=self.dtype, name="ResBlock2")(x))


class KernelExtra(nn.Module):
    """Kernel-estimation branch (spec 1, golden 2.1; class ``kernel_extra_mean_var``): U-Net -> mean = relu(conv),
    log_var = conv (acts as log sigma); z = mean + eps exp(log_var); per-pixel 441 logits, softmax over channels,
    mean over pixels -> kernel (N, 21, 21), channel c = entry (c // 21, c % 21). ``eps`` (N, h, w, 64) is the
    latent noise: the original draws it in eval mode too (quirk kept: pass noise at test time as well).
    ``dtype``: the convolutions' computation dtype (mixed precision); the latent, softmax and kernel stay in
    lr's dtype."""
    dtype: Any = None

    @nn.compact
    def __call__(self, lr, eps):
        x, skip1 = EncodingBlock(dtype=self.dtype, name="Encoding_Block1")(lr)
        self.sow("intermediates", "enc1_skip", skip1)
        self.sow("intermediates", "enc1_out", x)
        x, skip2 = EncodingBlock(dtype=self.dtype, name="Encoding_Block2")(x)
        self.sow("intermediates", "enc2_skip", skip2)
        self.sow("intermediates", "enc2_out", x)
        x = ConvMid(dtype=self.dtype, name="Conv_mid")(x)
        self.sow("intermediates", "mid", x)
        x = DecodingBlock(dtype=self.dtype, name="Decoding_Block1")(x, skip2)
        self.sow("intermediates", "dec1", x)
        x = DecodingBlock(dtype=self.dtype, name="Decoding_Block2")(x, skip1)
        self.sow("intermediates", "dec2", x)
        x = x.astype(lr.dtype)
        mean, log_var, logits = ConvTail(dtype=self.dtype, name="Conv_tail")(x, eps.astype(lr.dtype))
        logits = logits.astype(lr.dtype)
        prob = jax.nn.softmax(logits, axis=-1)
        kernel = prob.mean(axis=(1, 2)).reshape(-1, KERNEL_SIZE, KERNEL_SIZE)
        return kernel, mean, log_var


class ConvMid(nn.Module):
    """5 x (conv 64 -> 64, ReLU) (torch ``body.0, 2, 4, 6, 8``)."""
    dtype: Any = None

    @nn.compact
    def __call__(self, x):
        for i in range(5):
            x = nn.relu(_conv(LATENT, f"body_{2 * i}", dtype=self.dtype)(x))
        return x


class ConvTail(nn.Module):
    """mean = relu(conv), log_var = conv, z = mean + eps exp(log_var), logits = Conv_end(z) (3x3, 64 -> 441).
    With a ``dtype`` the convolutions run in it; mean, log_var and z are formed in eps's dtype."""
    dtype: Any = None

    @nn.compact
    def __call__(self, x, eps):
        mean = nn.relu(_conv(LATENT, "mean_0", dtype=self.dtype)(x)).astype(eps.dtype)
        log_var = _conv(LATENT, "log_var_0", dtype=self.dtype)(x).astype(eps.dtype)
        z = mean + eps * jnp.exp(log_var)
        logits = _conv(KERNEL_SIZE ** 2, "Conv_end", dtype=self.dtype)(z)
        for name, v in (("mean", mean), ("log_var", log_var), ("z", z), ("logits", logits)):
            self.sow("intermediates", name, v)
        return mean, log_var, logits


class Encoding(nn.Module):
    """DLSM U-Net encoder (golden 2.2): E1 = 2 x (conv + ReLU) 32 -> 32; E2..E5 = avg-pool 2 then 2 x (conv + ReLU)
    with 32 -> 64, 64 -> 64, 64 -> 128, 128 -> 128. Returns (E1, ..., E5)."""
    dtype: Any = None

    @nn.compact
    def __call__(self, x):
        outs = []
        for lvl, c in enumerate((32, 64, 64, 128, 128), start=1):
            if lvl > 1:
                x = avg_pool2(x)
            x = nn.relu(_conv(c, f"E{lvl}_0", init=_SR_INIT, dtype=self.dtype)(x))
            x = nn.relu(_conv(c, f"E{lvl}_2", init=_SR_INIT, dtype=self.dtype)(x))
            outs.append(x)
        return tuple(outs)


class Decoding(nn.Module):
    """DLSM U-Net decoder and heads (golden 2.2): D_k = 2 x (conv + ReLU) of concat([ENCODER map, bilinear_up2(deeper)])
    (encoder first, unlike the kernel branch); widths 128, 64, 64, 32. Heads on D4: conv, ReLU, conv, ReLU, 1x1 conv
    -> 3 for w and (separately) for u. Returns (w, u) at the padded size."""
    dtype: Any = None

    @nn.compact
    def __call__(self, enc):
        conv = lambda c, name, k=3: _conv(c, name, k=k, init=_SR_INIT, dtype=self.dtype)  # noqa: E731
        x = enc[4]
        for lvl, (c, skip) in enumerate(zip((128, 64, 64, 32), (enc[3], enc[2], enc[1], enc[0])), start=1):
            x = jnp.concatenate([skip, bilinear_up2(x).astype(skip.dtype)], axis=-1)
            x = nn.relu(conv(c, f"D{lvl}_0")(x))
            x = nn.relu(conv(c, f"D{lvl}_2")(x))
        heads = []
        for head in ("w_generator", "u_generator"):
            h = nn.relu(conv(32, f"{head}_0")(x))
            h = nn.relu(conv(32, f"{head}_2")(h))
            heads.append(conv(3, f"{head}_4", k=1)(h))
        return tuple(heads)


class DLSM(nn.Module):
    """Reconstruction branch (spec 2, golden 2.2; class ``DLSM``), ``scale`` static. X0 = A^T y; for stage i:
    R = X + A^T(y - A X) (unit step); f_i = conv(X) (one shared 3 -> 32 conv); F = Den_con{i+1}(concat[f_0..f_i]);
    reflect-pad F bottom/right to a multiple of 16; shared U-Net -> (W, U) cropped back; X = recon_step(R, W, U,
    delta_i). Output X after 4 stages, not clamped. lr (N, h, w, 3), kernels (N, 21, 21) -> (N, h s, w s, 3).
    ``dtype``: the convolutions' computation dtype (mixed precision); A, A^T and the recon step stay in lr's."""
    scale: int
    dtype: Any = None

    @nn.compact
    def __call__(self, lr, kernels):
        s = self.scale
        deltas = [self.param(f"delta_{i}", lambda key, shape: 0.1 + 0.01 * jax.random.normal(key, shape), (1,))
                  for i in range(N_STAGES)]
        encoding, decoding = Encoding(dtype=self.dtype, name="Encoding"), Decoding(dtype=self.dtype, name="Decoding")
        feat_conv = _conv(32, "conv", init=_SR_INIT, dtype=self.dtype)
        x = op_AT(lr, kernels, s)
        self.sow("intermediates", "X0", x)
        feats = []
        for i in range(N_STAGES):
            ax = op_A(x, kernels, s)
            res = x + op_AT(lr - ax, kernels, s)
            feats.append(feat_conv(x))
            fused = _conv(32, f"Den_con{i + 1}", k=1, init=_SR_INIT, dtype=self.dtype)(jnp.concatenate(feats, axis=-1))
            h, w = fused.shape[1:3]
            if -h % PAD_MULTIPLE >= h or -w % PAD_MULTIPLE >= w:  # the original's ReflectionPad2d refuses too
                raise ValueError(f"KULNet needs an SR size whose reflect padding to a multiple of {PAD_MULTIPLE} "
                                 f"is smaller than the size itself; got {h}x{w}")
            padded = jnp.pad(fused, ((0, 0), (0, -h % PAD_MULTIPLE), (0, -w % PAD_MULTIPLE), (0, 0)), mode="reflect")
            enc = encoding(padded)
            w_full, u_full = decoding(enc)
            wmap, umap = w_full[:, :h, :w].astype(res.dtype), u_full[:, :h, :w].astype(res.dtype)
            x = recon_step(res, wmap, umap, deltas[i].astype(res.dtype))
            for name, v in (("AX", ax), ("res", res), ("w", wmap), ("u", umap), ("out", x), ("fea", feats[-1]),
                            ("fufea", fused), ("W_full", w_full), ("U_full", u_full)):
                self.sow("intermediates", name, v)
            for lvl, e in enumerate(enc, start=1):
                self.sow("intermediates", f"E{lvl}", e)
        return x


class KULNet(nn.Module):
    """The whole network (``BlindNet``): kernel = KernelExtra(lr, eps); sr = DLSM(lr, kernel). Returns
    (sr, kernel, mean, log_var); the original's kernel broadcast to (N, h w s^2, 21, 21) is not materialised.
    ``dtype`` (e.g. bfloat16): every convolution computes in it, the rest in lr's dtype (as the original's
    ``torch.cuda.amp.autocast`` on a GPU runs convolutions in float16)."""
    scale: int
    dtype: Any = None

    @nn.compact
    def __call__(self, lr, eps):
        kernel, mean, log_var = KernelExtra(dtype=self.dtype, name="kernel_extra")(lr, eps)
        sr = DLSM(self.scale, dtype=self.dtype, name="SR_net")(lr, kernel)
        return sr, kernel, mean, log_var


# ----------------------------------------------------------------------------- pure API

class KULNetOutput(NamedTuple):
    sr: Any  # (N, h s, w s, 3), not clamped
    kernel: Any  # (N, 21, 21), sums to 1, correlation convention
    mean: Any  # (N, h, w, 64) latent mean
    log_var: Any  # (N, h, w, 64) latent log-std (named log_var in the original)


def _cast(params, dtype):
    return jax.tree.map(lambda a: jnp.asarray(a, dtype), params)


def latent_noise(key, lr_shape, dtype=jnp.float32):
    """The reparameterisation noise eps ~ N(0, I) of shape (N, h, w, 64) for an LR batch of shape (N, h, w, 3)."""
    n, h, w = lr_shape[:3]
    return jax.random.normal(key, (n, h, w, LATENT), dtype)


def apply(params, lr, eps, scale: int, capture: bool = False, dtype=None):
    """The network, pure and not jitted: params (tree of ``params_from_state_dict``), lr (N, h, w, 3), eps
    (N, h, w, 64) -> KULNetOutput, plus the sown intermediates {'kernel_extra': {...}, 'SR_net': {...}} (each a
    tuple of maps in call order) if ``capture``. Runs in lr's dtype (float64 under ``jax.enable_x64(True)``);
    ``dtype`` (mixed precision, e.g. ``jnp.bfloat16``): the convolutions compute in it (`KULNet`)."""
    out, state = KULNet(scale, dtype).apply({"params": _cast(params, lr.dtype)}, lr, eps.astype(lr.dtype),
                                            mutable=["intermediates"])
    out = KULNetOutput(*out)
    return (out, state["intermediates"]) if capture else out


_forward = jax.jit(apply, static_argnames=("scale", "capture", "dtype"))


def forward(params, lr, scale: int, key=None, eps=None, capture: bool = False, dtype=None):
    """KULNet x``scale`` on NHWC ``lr`` (N, h, w, 3) in [0, 1] -> KULNetOutput [, intermediates if ``capture``]
    (jitted per shape, dtype and scale; float64 under ``jax.enable_x64(True)``). The latent noise is ``eps`` if
    given, else drawn from ``key`` (one of the two is required: the original samples at test time too, spec 7).
    ``dtype``: mixed precision, the convolutions' computation dtype (``apply``)."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    lr = jnp.asarray(lr)
    if lr.ndim != 4 or lr.shape[-1] != 3:
        raise ValueError(f"lr must be (N, h, w, 3), got shape {lr.shape}")
    if eps is None:
        if key is None:
            raise ValueError("pass a jax.random key (or eps): KULNet samples its latent at test time")
        eps = latent_noise(key, lr.shape, lr.dtype)
    return _forward(params, lr, jnp.asarray(eps, lr.dtype), int(scale), bool(capture),
                    None if dtype is None else jnp.dtype(dtype))


REAL_CROP = {4: 3, 3: 6, 2: 11}  # LR pixels added per side for real images (golden 8; KULNET_SPEC 5 correction)
REAL_SIGMA = 10.0


def pad_real_lr(lr, scale: int) -> np.ndarray:
    """The real-image LQ loader's border (golden 8): an LR image (h, w, 3) -> (h + 2r, w + 2r, 3), r =
    ``REAL_CROP[scale]``; the original pixels in the middle, around them a soft border made by nearest x``scale``
    up-sampling, replicate padding by r * scale, an isotropic Gaussian blur (sigma 10, support 22 - scale,
    zero padding, the centre tap at index (size - 1) // 2, i.e. the top-left one of the two middle taps for an
    even support) and subsampling ::scale. The loader's code is not in any copy we could reach, so this follows
    the golden README's description; what it leaves open (the replicate width, the anchor) is chosen as
    stated. ``crop_real_sr`` removes the border from the SR output."""
    lr = np.asarray(lr, np.float64)
    r, s = REAL_CROP[scale], scale
    up = np.repeat(np.repeat(lr, s, axis=0), s, axis=1)
    up = np.pad(up, ((r * s, r * s), (r * s, r * s), (0, 0)), mode="edge")
    size = 22 - s
    x = np.arange(size) - (size - 1) // 2
    g = np.exp(-(x ** 2) / (2 * REAL_SIGMA ** 2))
    g /= g.sum()
    lo, hi = (size - 1) // 2, size - 1 - (size - 1) // 2
    padded = np.pad(up, ((lo, hi), (lo, hi), (0, 0)))  # zero padding
    blur = sum(g[i] * padded[i:i + up.shape[0]] for i in range(size))  # separable correlation, rows then columns
    blur = sum(g[j] * blur[:, j:j + up.shape[1]] for j in range(size))
    out = blur[::s, ::s]
    out[r:-r, r:-r] = lr
    return out.astype(np.float32)


def crop_real_sr(sr, scale: int):
    """The SR output of a ``pad_real_lr`` input (..., H, W, 3) without its border of REAL_CROP[scale] * scale."""
    c = REAL_CROP[scale] * scale
    return sr[..., c:-c, c:-c, :]


def estimate_kernel(params, lr, eps, capture: bool = False):
    """The kernel branch alone: (kernel (N, 21, 21), mean, log_var) [+ intermediates if ``capture``]."""
    out, state = KernelExtra().apply({"params": _cast(params["kernel_extra"], lr.dtype)}, lr, eps.astype(lr.dtype),
                                     mutable=["intermediates"])
    return (out, state["intermediates"]) if capture else out


def reconstruct(params, lr, kernels, scale: int, capture: bool = False):
    """The reconstruction branch alone (``SR_net(lr, kernel)``): kernels (N, 21, 21) -> sr (N, h s, w s, 3)
    [+ intermediates if ``capture``]."""
    out, state = DLSM(scale).apply({"params": _cast(params["SR_net"], lr.dtype)}, lr, kernels.astype(lr.dtype),
                                   mutable=["intermediates"])
    return (out, state["intermediates"]) if capture else out


# ----------------------------------------------------------------------------- PyTorch state dict <-> params

def _torch_layout() -> list[tuple[str, str, tuple[int, ...]]]:
    """(torch key, kind, torch shape) of the 126 tensors of ``latest_G.pth`` in state-dict order (golden 2.5).
    kind: "conv" (out, in, kh, kw) -> HWIO; "convT" (in, out, kh, kw) -> flipped (kh, kw, in, out); "vec" as is."""
    out = []

    def conv(key, o, i, k=3):
        out.append((f"{key}.weight", "conv", (o, i, k, k)))
        out.append((f"{key}.bias", "vec", (o,)))

    def res(key):
        conv(f"{key}.body.1", LATENT, LATENT)
        conv(f"{key}.body.3", LATENT, LATENT)

    ke = "kernel_extra"
    for b, c_in in ((1, 3), (2, LATENT)):
        conv(f"{ke}.Encoding_Block{b}.Conv_head", LATENT, c_in)
        res(f"{ke}.Encoding_Block{b}.ResBlock1")
        res(f"{ke}.Encoding_Block{b}.ResBlock2")
        conv(f"{ke}.Encoding_Block{b}.downsample", LATENT, LATENT)
    for i in range(5):
        conv(f"{ke}.Conv_mid.body.{2 * i}", LATENT, LATENT)
    for b in (1, 2):
        out.append((f"{ke}.Decoding_Block{b}.Conv_t.weight", "convT", (LATENT, LATENT, 3, 3)))
        out.append((f"{ke}.Decoding_Block{b}.Conv_t.bias", "vec", (LATENT,)))
        conv(f"{ke}.Decoding_Block{b}.Conv_head", LATENT, 2 * LATENT)
        res(f"{ke}.Decoding_Block{b}.ResBlock1")
        res(f"{ke}.Decoding_Block{b}.ResBlock2")
    conv(f"{ke}.Conv_tail.mean.0", LATENT, LATENT)
    conv(f"{ke}.Conv_tail.log_var.0", LATENT, LATENT)
    conv(f"{ke}.Conv_tail.Conv_end", KERNEL_SIZE ** 2, LATENT)
    sr = "SR_net"
    for i in range(N_STAGES):
        out.append((f"{sr}.delta_{i}", "vec", (1,)))
    c_prev = 32
    for lvl, c in enumerate((32, 64, 64, 128, 128), start=1):
        conv(f"{sr}.Encoding.E{lvl}.0", c, c_prev)
        conv(f"{sr}.Encoding.E{lvl}.2", c, c)
        c_prev = c
    for lvl, (c, c_in) in enumerate(((128, 256), (64, 192), (64, 128), (32, 96)), start=1):
        conv(f"{sr}.Decoding.D{lvl}.0", c, c_in)
        conv(f"{sr}.Decoding.D{lvl}.2", c, c)
    for head in ("w_generator", "u_generator"):
        conv(f"{sr}.Decoding.{head}.0", 32, 32)
        conv(f"{sr}.Decoding.{head}.2", 32, 32)
        conv(f"{sr}.Decoding.{head}.4", 3, 32, k=1)
    conv(f"{sr}.conv", 32, 3)
    for i in range(1, N_STAGES + 1):
        conv(f"{sr}.Den_con{i}", 32, 32 * i, k=1)
    return out


TORCH_LAYOUT = _torch_layout()
_TO_OURS = {"conv": lambda a: a.transpose(2, 3, 1, 0), "convT": lambda a: a[:, :, ::-1, ::-1].transpose(2, 3, 0, 1),
            "vec": lambda a: a}
_TO_TORCH = {"conv": lambda a: a.transpose(3, 2, 0, 1), "convT": lambda a: a.transpose(2, 3, 0, 1)[:, :, ::-1, ::-1],
             "vec": lambda a: a}


def param_path(torch_key: str) -> tuple[str, ...]:
    """'SR_net.Encoding.E1.0.weight' -> ('SR_net', 'Encoding', 'E1_0', 'kernel'): numeric segments merged into
    the preceding name, 'weight' renamed 'kernel'."""
    path: list[str] = []
    for part in torch_key.split("."):
        if part.isdigit():
            path[-1] = f"{path[-1]}_{part}"
        else:
            path.append(part)
    if path[-1] == "weight":
        path[-1] = "kernel"
    return tuple(path)


def _convert_error(msg: str) -> ValueError:
    from fkp_jax.convert import ConvertError  # convert imports this module lazily: no cycle

    return ConvertError(msg)


def is_kulnet_state_dict(sd: Mapping[str, Any]) -> bool:
    """True if the keys look like KULNet's ('kernel_extra.*' or 'SR_net.*'), right or not."""
    return isinstance(sd, Mapping) and any(str(k).startswith(("kernel_extra.", "SR_net.")) for k in sd)


def params_from_state_dict(sd: Mapping[str, Any], where: str = "state dict") -> dict:
    """The 126 tensors of an official ``latest_G.pth`` (any scale; a leading 'module.' is stripped as the original
    loader does) -> params {'kernel_extra': ..., 'SR_net': ...} (float32). Every key and shape is checked; a wrong
    checkpoint raises ``fkp_jax.convert.ConvertError`` (a ValueError) with a one-line message."""
    if isinstance(sd, Mapping) and sd and all(str(k).startswith("module.") for k in sd):
        sd = {str(k)[len("module."):]: v for k, v in sd.items()}
    if not is_kulnet_state_dict(sd):
        raise _convert_error(f"{where}: not a KULNet state dict (no 'kernel_extra.*' / 'SR_net.*' keys)")
    from fkp_jax.convert import params_from_layout

    layout = [(key, param_path(key), kind, shape) for key, kind, shape in TORCH_LAYOUT]
    return params_from_layout(sd, layout, _TO_OURS, "KULNet", where)


def named_parameters(params) -> list[tuple[str, np.ndarray]]:
    """[(torch key, array in the PyTorch layout)] in state-dict order: the inverse of params_from_state_dict."""
    out = []
    for key, kind, _ in TORCH_LAYOUT:
        node = params
        for p in param_path(key):
            node = node[p]
        out.append((key, np.ascontiguousarray(_TO_TORCH[kind](np.asarray(node)))))
    return out


def count_params(params) -> int:
    return int(sum(np.size(a) for a in jax.tree.leaves(params)))


def save_kulnet(params, dest, overwrite: bool = False) -> Path:
    """Write params as an orbax checkpoint (config {"model": "kulnet"}) that ``load_kulnet`` reads. The scale is
    not stored: the x2 / x3 / x4 files share one layout, the scale is chosen when the network is run."""
    from fkp_jax import checkpoint

    return checkpoint.save(dest, params, {"model": MODEL_NAME, "kernel_size": KERNEL_SIZE, "n_stages": N_STAGES},
                           overwrite=overwrite)


def load_kulnet(path) -> dict:
    """KULNet params from an official ``latest_G.pth`` (read by fkp_jax.torch_state, no pickle code run) or from a
    folder written by ``save_kulnet`` / ``python -m fkp_jax.convert``. Raises FileNotFoundError, ``CheckpointError``
    or ``ConvertError``, each with a one-line message."""
    from fkp_jax.convert import load_params

    return load_params(path, MODEL_NAME, "KULNet", named_parameters, params_from_state_dict)
