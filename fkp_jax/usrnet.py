"""USRNet "tiny" non-blind super-resolution (FKP_SPEC 8, checkpoint layout 10.3 / Appendix B), JAX/Flax.

Public API (images HWC RGB float32 in [0, 1]; kernels (k, k) in OUR correlation convention):

- ``flip_kernel(kernel)``: correlation-convention kernel -> the convolution convention USRNet wants.
- ``super_resolve(params, lr, kernel, sf, sigma=0.0) -> sr``: the network, jitted per (shape, sf).
- ``closed_form_sr(lr, kernel, sf, sigma=0.0, weight=None) -> sr``: a weightless fallback (no checkpoint needed).
- ``load_usrnet(path) -> params`` (official ``usrnet_tiny.pth`` or a converted orbax folder),
  ``params_from_state_dict(sd)``, ``named_parameters(params)``, ``init(key)``, ``save_usrnet``.
- ``forward(params, y, kernel_conv, sf, sigma, data_step_form)``: the pure NHWC network (any float dtype).

Structure (spec 8): hyper-net h([sigma, s]) -> (alpha_1..6, beta_1..6); x0 = nearest upsampling of y;
6 times: x = data_step(x, alpha_i) (closed-form FFT solution of
argmin_x ||(k conv x) down_s - y||^2 + alpha_i ||x - x_prev||^2), then x = ResUNet([x, beta_i]).

Deliberate deviation, same function: the default ``data_step_form="stable"`` writes the closed-form data
step as x + IFFT(FBC * tile((FFT(y) - blockmean(FB FFT(x))) / (blockmean(|FB|^2) + alpha))). The
original's literal form ((FR - FBC invWBR) / alpha, spec 8 step 5; ``data_step_form="original"``) subtracts two
nearly equal spectra and divides by alpha ~ 1e-6, which costs the original ~4e-3..6.5e-3 of float32 error
(golden README 8); the rearranged form is algebraically identical (FFT(zero-upsampled y) = tile(FFT(y))
and blockmean(F2B tile(Fy)) = invW Fy) and in float32 stays within ~1e-5 of the original's float64 output.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

N_ITER = 6  # unfolding iterations
H_NC = 32  # hyper-net width
IN_NC, OUT_NC = 4, 3
NC = (16, 32, 64, 64)  # ResUNet widths per level
NB = 2  # residual blocks per stage
N_PARAMS = 590_332  # spec 8
MODEL_NAME = "usrnet_tiny"
PRECISION = lax.Precision.HIGHEST
DATA_STEPS = ("stable", "original")


def flip_kernel(kernel):
    """THE kernel flip (spec 8): our kernels act by CROSS-CORRELATION (ARCHITECTURE.md conventions); USRNet's
    OTF (``otf``) assumes CONVOLUTION, so it must be given the kernel flipped in both spatial axes. For an odd
    size k, correlating with ``kernel`` after circular padding k // 2 == convolving with ``flip_kernel(kernel)``
    centred at k // 2 (for even k the two differ by a one-pixel shift). Works on (..., k, k) arrays."""
    return kernel[..., ::-1, ::-1]


# ----------------------------------------------------------------------------- data step (pure, NCHW complex)

def otf(kernel_conv, shape):
    """Optical transfer function of a convolution kernel (spec 8 step 1, the original ``p2o``): (..., kh, kw)
    zero-padded to ``shape`` = (H, W) at the top-left, rolled by -(kh // 2, kw // 2), 2-D FFT (complex).
    (The original's zeroing of imaginary parts below ~1e-13 is omitted: below float32 resolution.)"""
    kh, kw = kernel_conv.shape[-2:]
    H, W = shape
    if kh > H or kw > W:
        raise ValueError(f"kernel {kh}x{kw} larger than the {H}x{W} super-resolved image")
    pad = [(0, 0)] * (kernel_conv.ndim - 2) + [(0, H - kh), (0, W - kw)]
    k = jnp.roll(jnp.pad(kernel_conv, pad), (-(kh // 2), -(kw // 2)), axis=(-2, -1))
    return jnp.fft.fft2(k)


def block_mean(a, sf: int):
    """Mean of the sf x sf distinct blocks of (..., H, W) (H, W split into sf equal chunks each; the
    original ``splits`` + mean) -> (..., H / sf, W / sf). In Fourier space: the spectrum of x down-sampled."""
    H, W = a.shape[-2:]
    a = a.reshape(a.shape[:-2] + (sf, H // sf, sf, W // sf))
    return a.mean(axis=(-4, -2))


def tile(a, sf: int):
    """(..., h, w) -> (..., sf h, sf w), sf x sf copies (the original ``repeat(1, 1, sf, sf)``)."""
    return jnp.tile(a, (1,) * (a.ndim - 2) + (sf, sf))


def data_step(x, FB, F2B_mean, Fy, alpha, sf: int, form: str = "stable"):
    """Closed-form argmin_z ||(k conv z) down_sf - y||^2 + alpha ||z - x||^2 (spec 8 step 5), NCHW real x.

    ``FB`` = otf(flipped kernel) (N or 1, 1, H, W); ``F2B_mean`` = block_mean(|FB|^2); ``Fy`` = FFT of the
    LR y at its own size (N, C, h, w); ``alpha`` broadcastable to (N, 1, 1, 1). ``form`` "stable" (default,
    see the module docstring) or "original" (the literal spec 8 formula, inverse FFT by a C2R transform of
    the half spectrum as the golden data's port of the original)."""
    Fx = jnp.fft.fft2(x)
    FBC = jnp.conj(FB)
    if form == "stable":
        r = (Fy - block_mean(FB * Fx, sf)) / (F2B_mean + alpha)
        return jnp.real(jnp.fft.ifft2(Fx + FBC * tile(r, sf))).astype(x.dtype)
    if form != "original":
        raise ValueError(f"data step form must be one of {DATA_STEPS}, not {form!r}")
    FR = FBC * tile(Fy, sf) + alpha * Fx  # FBFy + FFT(alpha x); FFT(zero-upsampled y) == tile(FFT(y))
    FBR = block_mean(FB * FR, sf)
    invWBR = FBR / (F2B_mean + alpha)
    FX = (FR - FBC * tile(invWBR, sf)) / alpha
    H, W = x.shape[-2:]
    return jnp.fft.irfft2(FX[..., : W // 2 + 1], s=(H, W)).astype(x.dtype)


# ----------------------------------------------------------------------------- Flax modules (NHWC)

def _conv3x3(features: int, name: str) -> nn.Conv:
    return nn.Conv(features, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, precision=PRECISION, name=name)


class ResBlock(nn.Module):
    """x + conv3x3(relu(conv3x3(x))), no biases (torch ``res.0`` / ``res.2``)."""
    features: int

    @nn.compact
    def __call__(self, x):
        r = _conv3x3(self.features, "res_0")(x)
        return x + _conv3x3(self.features, "res_2")(nn.relu(r))


class ConvTranspose2x2(nn.Module):
    """PyTorch ConvTranspose2d(kernel 2, stride 2, padding 0, no bias): every input pixel writes its own 2 x 2
    output block, out[2i + a, 2j + b, o] = sum_c x[i, j, c] W[c, o, a, b] (spec 10.3; no kernel flip).
    ``kernel`` is stored (a, b, c, o) = torch (in, out, kh, kw).transpose(2, 3, 0, 1)."""
    features: int

    @nn.compact
    def __call__(self, x):
        w = self.param("kernel", nn.initializers.lecun_normal(), (2, 2, x.shape[-1], self.features))
        n, h, wd, _ = x.shape
        y = jnp.einsum("nhwc,abco->nhawbo", x, w, precision=PRECISION)
        return y.reshape(n, 2 * h, 2 * wd, self.features)


class Down(nn.Module):
    """NB residual blocks ("0", "1") then a 2x2 stride-2 conv ("2")."""
    features: int
    out_features: int

    @nn.compact
    def __call__(self, x):
        for i in range(NB):
            x = ResBlock(self.features, name=str(i))(x)
        return nn.Conv(self.out_features, (2, 2), strides=2, padding="VALID", use_bias=False,
                       precision=PRECISION, name=str(NB))(x)


class Up(nn.Module):
    """A 2x2 stride-2 transposed conv ("0") then NB residual blocks ("1", "2")."""
    features: int

    @nn.compact
    def __call__(self, x):
        x = ConvTranspose2x2(self.features, name="0")(x)
        for i in range(NB):
            x = ResBlock(self.features, name=str(i + 1))(x)
        return x


class ResUNet(nn.Module):
    """The prior step (spec 8): replicate-pad bottom/right to a multiple of 8, 3 levels down, body, 3 up with
    additive skips, crop back. (N, H, W, 4) -> (N, H, W, 3); no biases."""

    @nn.compact
    def __call__(self, x):
        h, w = x.shape[1:3]
        x = jnp.pad(x, ((0, 0), (0, -h % 8), (0, -w % 8), (0, 0)), mode="edge")
        x1 = _conv3x3(NC[0], "m_head")(x)
        x2 = Down(NC[0], NC[1], name="m_down1")(x1)
        x3 = Down(NC[1], NC[2], name="m_down2")(x2)
        x4 = Down(NC[2], NC[3], name="m_down3")(x3)
        b = x4
        for i in range(NB):
            b = ResBlock(NC[3], name=f"m_body_{i}")(b)
        x = Up(NC[2], name="m_up3")(b + x4)
        x = Up(NC[1], name="m_up2")(x + x3)
        x = Up(NC[0], name="m_up1")(x + x2)
        x = _conv3x3(OUT_NC, "m_tail")(x + x1)
        return x[:, :h, :w]


class HyPaNet(nn.Module):
    """Hyper-net (spec 8 step 4): [sigma, s] (N, 2) -> softplus(MLP) + 1e-6, (N, 2 N_ITER): alphas then betas."""

    @nn.compact
    def __call__(self, x):
        dense = lambda n, name: nn.Dense(n, precision=PRECISION, name=name)  # noqa: E731 (1x1 convs on 1x1 maps)
        x = nn.relu(dense(H_NC, "mlp_0")(x))
        x = nn.relu(dense(H_NC, "mlp_2")(x))
        return nn.softplus(dense(2 * N_ITER, "mlp_4")(x)) + 1e-6


_P, _H = ResUNet(), HyPaNet()


def hyper(params, sigma, sf: int):
    """(alpha (N, N_ITER), beta (N, N_ITER)) for noise levels ``sigma`` (N,) at scale ``sf``."""
    sigma = jnp.asarray(sigma)
    ab = _H.apply({"params": params["h"]}, jnp.stack([sigma, jnp.full_like(sigma, sf)], axis=-1))
    return ab[:, :N_ITER], ab[:, N_ITER:]


def forward(params, y, kernel_conv, sf: int, sigma, data_step_form: str = "stable"):
    """USRNet forward (spec 8), pure: y (N, h, w, 3) NHWC, ``kernel_conv`` (k, k) or (N, k, k) ALREADY in the
    convolution convention (see ``flip_kernel``), sigma (N,) -> (N, h sf, w sf, 3), not clipped. Runs in the
    dtype of ``y`` and ``params`` (float64 under ``jax.enable_x64(True)``)."""
    n, h, w, _ = y.shape
    H, W = h * sf, w * sf
    kernel_conv = jnp.asarray(kernel_conv, y.dtype)
    if kernel_conv.ndim == 2:
        kernel_conv = kernel_conv[None]
    FB = otf(kernel_conv, (H, W))[:, None]  # (N or 1, 1, H, W)
    F2B_mean = block_mean(jnp.abs(FB) ** 2, sf).astype(y.dtype)
    y_nchw = y.transpose(0, 3, 1, 2)
    Fy = jnp.fft.fft2(y_nchw)
    alphas, betas = hyper(params, jnp.broadcast_to(jnp.asarray(sigma, y.dtype), (n,)), sf)
    x = jnp.repeat(jnp.repeat(y_nchw, sf, axis=2), sf, axis=3)  # nearest upsampling

    def stage(x, ab):
        alpha, beta = ab
        x = data_step(x, FB, F2B_mean, Fy, alpha[:, None, None, None], sf, data_step_form)
        z = jnp.concatenate([x.transpose(0, 2, 3, 1), jnp.broadcast_to(beta[:, None, None, None], (n, H, W, 1))],
                            axis=-1)
        return _P.apply({"params": params["p"]}, z).transpose(0, 3, 1, 2), None

    x, _ = lax.scan(stage, x, (alphas.T, betas.T))
    return x.transpose(0, 2, 3, 1)


@partial(jax.jit, static_argnames=("sf", "data_step_form"))
def _super_resolve(params, lr, kernel, sf, sigma, data_step_form):
    return forward(params, lr[None], flip_kernel(kernel), sf, sigma[None], data_step_form)[0]


def _check_inputs(lr, kernel, sf):
    if not isinstance(sf, (int, np.integer)) or sf < 1:
        raise ValueError(f"scale factor must be a positive integer, got {sf!r}")
    if lr.ndim != 3 or lr.shape[2] != 3:
        raise ValueError(f"LR image must be (h, w, 3), got shape {lr.shape}")
    if kernel.ndim != 2:
        raise ValueError(f"kernel must be (k, k), got shape {kernel.shape}")
    if kernel.shape[0] > lr.shape[0] * sf or kernel.shape[1] > lr.shape[1] * sf:
        raise ValueError(f"kernel {kernel.shape} larger than the {lr.shape[0] * sf}x{lr.shape[1] * sf} SR image")


def super_resolve(params, lr, kernel, sf: int, sigma: float = 0.0, data_step_form: str = "stable"):
    """USRNet-tiny SR: ``lr`` (h, w, 3) float32 in [0, 1], ``kernel`` (k, k) in OUR correlation convention
    (flipped here by ``flip_kernel``), noise level ``sigma`` (in [0, 1] units, e.g. 10 / 255) ->
    (h sf, w sf, 3) float32, NOT clipped (callers save round(clip(255 x))). Jitted per shape and sf."""
    lr = jnp.asarray(lr, jnp.float32)
    kernel = jnp.asarray(kernel, jnp.float32)
    _check_inputs(lr, kernel, sf)
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)
    return _super_resolve(params, lr, kernel, int(sf), jnp.asarray(sigma, jnp.float32), data_step_form)


# ----------------------------------------------------------------------------- weightless fallback

QUANTISATION_VAR = 1.0 / (12 * 255.0**2)  # variance of 8-bit rounding noise, [0, 1] units
GRAD_PRIOR_VAR = 0.04  # prior variance of a finite difference of a natural image, [0, 1] units (fitted below)


def closed_form_weight(sigma: float = 0.0) -> float:
    """The default regularisation weight of ``closed_form_sr``: noise variance / gradient prior variance,
    (sigma^2 + 1 / (12 255^2)) / 0.04 (the MAP weight for Gaussian noise and a Gaussian gradient prior)."""
    return (float(sigma) ** 2 + QUANTISATION_VAR) / GRAD_PRIOR_VAR


@partial(jax.jit, static_argnames=("sf",))
def _closed_form(lr, kernel, sf, weight):
    h, w, _ = lr.shape
    H, W = h * sf, w * sf
    FB = otf(flip_kernel(kernel), (H, W))
    # |FFT of the periodic forward differences|^2 along rows + columns (the symbol of the discrete Laplacian)
    fr = 2 - 2 * jnp.cos(2 * jnp.pi * jnp.fft.fftfreq(H))
    fc = 2 - 2 * jnp.cos(2 * jnp.pi * jnp.fft.fftfreq(W))
    Q = weight * (fr[:, None] + fc[None, :] + 1e-8)
    Wm = block_mean(jnp.abs(FB) ** 2 / Q, sf)
    Fy = jnp.fft.fft2(lr.transpose(2, 0, 1))
    X = jnp.conj(FB) * tile(Fy / (1 + Wm), sf) / Q
    return jnp.real(jnp.fft.ifft2(X)).transpose(1, 2, 0).astype(jnp.float32)


def closed_form_sr(lr, kernel, sf: int, sigma: float = 0.0, weight: float | None = None):
    """Weightless non-blind SR, used when no USRNet weights are given: the exact minimiser of

        ||(x corr kernel) down_sf - y||^2 + weight ||grad x||^2      (circular boundaries, as USRNet's data step)

    i.e. Tikhonov-regularised SR with a finite-difference gradient prior, solved in one FFT step (the
    analytical l2-l2 solution of Zhao et al., "Fast single image super-resolution using a new analytical
    solution for l2-l2 problems", IEEE TIP 2016): with Q = weight (|F grad|^2 + 1e-8) (> 0 at DC),
    X = conj(FB) tile(Y / (1 + blockmean(|FB|^2 / Q))) / Q, FB = otf(flip_kernel(kernel)): the same data
    model, OTF and block means as the USRNet data step; no iterations, no learned weights.
    ``lr`` (h, w, 3) in [0, 1], ``kernel`` (k, k) in our correlation convention, ``sigma`` the LR noise level
    in [0, 1] units -> (h sf, w sf, 3) float32, not clipped. ``weight`` defaults to closed_form_weight(sigma).
    Measured on the bundled x4 example (GT kernel, PSNR-Y): 25.37 dB at sigma 0 (cv2 bicubic 21.59 dB,
    USRNet 26.11 dB); with added Gaussian noise 5 / 10 (/255) the default weight is within 0.1 dB of the
    best of a 1e-3 .. 1 grid (24.7 / 24.2 dB vs bicubic 21.5 / 21.3 dB)."""
    lr = jnp.asarray(lr, jnp.float32)
    kernel = jnp.asarray(kernel, jnp.float32)
    _check_inputs(lr, kernel, sf)
    weight = closed_form_weight(sigma) if weight is None else weight
    if not weight > 0:
        raise ValueError(f"regularisation weight must be > 0, got {weight!r}")
    return _closed_form(lr, kernel, int(sf), jnp.float32(weight))


# ----------------------------------------------------------------------------- parameters and checkpoints

def init(key) -> dict:
    """Randomly initialised parameters {'p': ResUNet, 'h': HyPaNet} (for tests and shapes; USRNet is used with
    the released weights): kernels N(0, 1 / fan_in) (LeCun normal), biases 0. Drawn as ONE flat normal
    array: Flax's per-parameter initialisers take ~40 s to run on 2 CPU cores."""
    shapes = jax.eval_shape(lambda: {"p": _P.init(jax.random.key(0), jnp.zeros((1, 8, 8, IN_NC)))["params"],
                                     "h": _H.init(jax.random.key(0), jnp.zeros((1, 2)))["params"]})
    leaves, treedef = jax.tree.flatten(shapes)
    flat = jax.random.normal(key, (sum(int(np.prod(s.shape)) for s in leaves),), jnp.float32)
    out, offset = [], 0
    for s in leaves:
        n = int(np.prod(s.shape))
        fan_in = int(np.prod(s.shape[:-1])) if len(s.shape) > 1 else 0
        out.append(flat[offset:offset + n].reshape(s.shape) / np.sqrt(fan_in) if fan_in else jnp.zeros(s.shape))
        offset += n
    return jax.tree.unflatten(treedef, out)


def _torch_layout() -> list[tuple[str, tuple[str, ...], str, tuple[int, ...]]]:
    """(torch key, our path, kind, torch shape) for the 42 tensors of usrnet_tiny.pth, in file order (App. B).
    kind: "conv" (out, in, kh, kw) -> HWIO; "convT" (in, out, kh, kw) -> (kh, kw, in, out);
    "dense" (out, in, 1, 1) -> (in, out); "bias" unchanged."""
    out = []

    def conv(key, path, o, i, k=3):
        out.append((f"{key}.weight", path + ("kernel",), "conv", (o, i, k, k)))

    def res(key, path, c):
        conv(f"{key}.res.0", path + ("res_0",), c, c)
        conv(f"{key}.res.2", path + ("res_2",), c, c)

    conv("p.m_head", ("p", "m_head"), NC[0], IN_NC)
    for lvl in range(3):
        name, c, c_out = f"m_down{lvl + 1}", NC[lvl], NC[lvl + 1]
        for b in range(NB):
            res(f"p.{name}.{b}", ("p", name, str(b)), c)
        conv(f"p.{name}.{NB}", ("p", name, str(NB)), c_out, c, 2)
    for b in range(NB):
        res(f"p.m_body.{b}", ("p", f"m_body_{b}"), NC[3])
    for lvl in (3, 2, 1):
        name, c_in, c = f"m_up{lvl}", NC[lvl], NC[lvl - 1]
        out.append((f"p.{name}.0.weight", ("p", name, "0", "kernel"), "convT", (c_in, c, 2, 2)))
        for b in range(NB):
            res(f"p.{name}.{b + 1}", ("p", name, str(b + 1)), c)
    conv("p.m_tail", ("p", "m_tail"), OUT_NC, NC[0])
    for i, (o, n) in {0: (H_NC, 2), 2: (H_NC, H_NC), 4: (2 * N_ITER, H_NC)}.items():
        out.append((f"h.mlp.{i}.weight", ("h", f"mlp_{i}", "kernel"), "dense", (o, n, 1, 1)))
        out.append((f"h.mlp.{i}.bias", ("h", f"mlp_{i}", "bias"), "bias", (o,)))
    return out


TORCH_LAYOUT = _torch_layout()
_TO_OURS = {"conv": lambda a: a.transpose(2, 3, 1, 0), "convT": lambda a: a.transpose(2, 3, 0, 1),
            "dense": lambda a: a[:, :, 0, 0].T, "bias": lambda a: a}
_TO_TORCH = {"conv": lambda a: a.transpose(3, 2, 0, 1), "convT": lambda a: a.transpose(2, 3, 0, 1),
             "dense": lambda a: a.T[:, :, None, None], "bias": lambda a: a}


def _convert_error(msg: str) -> ValueError:
    from fkp_jax.convert import ConvertError  # convert imports this module lazily: no cycle

    return ConvertError(msg)


def is_usrnet_state_dict(sd: Mapping[str, Any]) -> bool:
    """True if the keys look like USRNet's (a ResUNet 'p.m_*' or hyper-net 'h.mlp.*' key), right or not."""
    return isinstance(sd, Mapping) and any(str(k).startswith(("p.m_", "h.mlp.")) for k in sd)


def params_from_state_dict(sd: Mapping[str, Any], where: str = "state dict") -> dict:
    """The 42 tensors of usrnet_tiny.pth -> params {'p': ..., 'h': ...} (float32). Every key and shape is
    checked; a wrong checkpoint raises ``fkp_jax.convert.ConvertError`` (a ValueError), one line naming the key."""
    if not isinstance(sd, Mapping) or not is_usrnet_state_dict(sd):
        raise _convert_error(f"{where}: not a USRNet state dict (no 'p.m_*' / 'h.mlp.*' keys)")
    from fkp_jax.convert import params_from_layout

    return params_from_layout(sd, TORCH_LAYOUT, _TO_OURS, "USRNet-tiny", where)


def named_parameters(params) -> list[tuple[str, np.ndarray]]:
    """[(torch key, array in the original layout)] in the file's order: the inverse of params_from_state_dict."""
    out = []
    for key, path, kind, _ in TORCH_LAYOUT:
        node = params
        for p in path:
            node = node[p]
        out.append((key, _TO_TORCH[kind](np.asarray(node))))
    return out


def count_params(params) -> int:
    return int(sum(np.size(a) for a in jax.tree.leaves(params)))


def save_usrnet(params, dest, overwrite: bool = False) -> Path:
    """Write params as an orbax checkpoint (config {"model": "usrnet_tiny", ...}) that load_usrnet reads."""
    from fkp_jax import checkpoint

    config = {"model": MODEL_NAME, "n_iter": N_ITER, "h_nc": H_NC, "in_nc": IN_NC, "out_nc": OUT_NC,
              "nc": list(NC), "nb": NB}
    return checkpoint.save(dest, params, config, overwrite=overwrite)


def load_usrnet(path) -> dict:
    """USRNet-tiny params from the official ``usrnet_tiny.pth`` (read by fkp_jax.torch_state, no pickle code
    run) or from a folder written by ``save_usrnet`` / ``python -m fkp_jax.convert``. Raises
    FileNotFoundError (missing), ``CheckpointError`` (not a PyTorch checkpoint) or ``ConvertError`` (another
    model), all ValueErrors but the first, each with a one-line message."""
    from fkp_jax.convert import load_params

    return load_params(path, MODEL_NAME, "USRNet", named_parameters, params_from_state_dict)
