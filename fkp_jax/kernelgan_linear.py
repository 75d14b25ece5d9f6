"""The original KernelGAN baseline: deep linear generator, no learned prior (FKP_SPEC 7.6, 7.1, 2.4).

The FKP repository keeps Bell-Kligler et al.'s KernelGAN beside KernelGAN-FKP (``KernelGANFKP/model/
model.py``, ``networks.py``, ``loss.py``, ``learner.py``); this module is that baseline with the same
shape as the other methods: a config, ``init_state``, one jitted step ``(state, sampler) -> (state,
outputs)`` and ``final_kernel``. One iteration (0-based ``it = t - 1`` as the original's loop) is:

1. G step: ``g_pred = G(g_in)``; ``L_G = mean|D(g_pred) - 1|`` + 5 bicubic + 0.5 sum-to-one + 0.5
   boundary + lambda_c centralisation + lambda_s sparsity, the regularisers on ``curr_k``, the 13 x 13
   kernel of G BEFORE this update; Adam (lr 2e-4, betas (0.5, 0.999)) on G.
2. D step: ``L_D = (mean|D(G'(g_in) + n_f)| + mean|D(d_in) - 1|) / 2`` with the updated G', the fake
   detached; Adam (same settings) on D.
3. Schedule (``Learner.update``): lr / 10 for both after it = 750, 1500, 2250 (an optax schedule);
   the bicubic-similarity switch and lambda decays (`update_schedule`, state inside the jitted step).

Images enter G and D in [-1, 1] (``2 x - 1``), batch 1 by default, 3000 iterations. Crops come from the
shared sampler of ``fkp_jax.kernelgan`` built for (64, 26). Seeds are a leading axis of the state:
``make_step(config, seeds=True)`` steps them with ``lax.map`` on CPU and ``vmap`` elsewhere.

Quirks (matched unless said otherwise):
- G is single-channel: the 3 colour channels go through it as a batch (``swap_axis``). Matched. We
  compute G(x) as ONE strided correlation with its equivalent kernel instead of the 6-conv chain (the
  same linear function and its gradient, ~40x fewer flops; `apply_generator_layers` is the literal
  chain, tested equal).
- ``curr_k`` (pushing a delta through the convs) is the TRUE-CONVOLUTION kernel of G, i.e. the flip
  of the kernel G correlates with. The FKP repository dropped the original KernelGAN's ``.flip([0, 1])``
  (comment: "no need to flip kernel because we use F.conv2d"); matched by default, ``flip_kernel=True``
  restores KernelGAN's flip (then curr_k is in this project's correlation convention and the
  centralisation and bicubic losses agree on the centre: 6.5 in both). For the point-symmetric
  Gaussian kernels of the benchmarks the two differ only by the re-centring.
- Init: G convs Xavier-normal with gain 0.1 (``weights_init_G``; the brief's "PyTorch default" is not
  what the official code does). D: ``weights_init_D``'s Xavier init writes into the spectral-norm
  wrapper's derived ``weight`` tensor, which the next forward overwrites, so the effective D weights
  keep PyTorch's default U(+-1/sqrt(fan_in)); biases 0; BN weight N(1, 0.02), bias 0; each ``u`` starts
  at normalize(N(0, I)) and has had ONE power iteration (the shape-probing forward in ``__init__``).
  All matched (checked against torch, see tests/test_kernelgan_linear.py docstring).
- Spectral norm: one power iteration per D forward in training mode (3 per iteration: the fake in the
  G step, the real and the fake in the D step, in that order); ``u`` is state, not a parameter; sigma
  = u^T W v with u, v constants for the gradient (PyTorch ``spectral_norm``, eps 1e-12). Matched.
- D BatchNorm is always in training mode (batch statistics, biased variance, eps 1e-5); the running
  statistics are never read, so none are kept. Matched in effect.
- Bicubic loss: the fixed 8 x 8 x1/2 bicubic kernel is expanded to a (3, 3, 8, 8) DENSE conv weight, so
  every target channel is the SUM of the three channels' bicubic downscales (zero padding 3, stride 2,
  shaved symmetrically to G's 26 x 26). Matched (it is what the paper's numbers ran). A consequence:
  G's kernel sum drifts above 1 and on some colour images the bicubic loss never gets below 0.4, so
  the lambda switch never fires (ours and the original's logic alike: coffee x2 never, astronaut x2
  does).
- Centralisation target k // 2 + 0.5 (2 - k % 2) = 6.5 for k = 13; boundary mask 30 (1 - Gaussian
  (sigma 13) / max) with the central 9 x 9 zeroed; both matched.
- Noise for D: the real crop gets N(0, 1/255^2) in [0, 1] units (so 2/255 in [-1, 1]), the fake
  N(0, 1/255^2) in [-1, 1] units. Matched. DELIBERATELY NOT matched: the original adds the real-crop
  noise in place into a view of the image (``crop_im += ...`` in ``next_crop``), so noise accumulates in
  the image that later G and D crops read; here every crop is drawn from the clean image.
- Crops: drawn per step from the shared sampler with a key (the original draws all 3000 centres up
  front with NumPy); D crops are G's output size, 26 (not 27).
- Final kernel (``post_process_k_crop2``): drop the LAST 2 rows and columns (13 -> 11), subtract 0.75 x
  the 41st-largest value, clip at 0, divide by the sum, ``kernel_shift(., 2)`` (not renormalised after
  the shift); x4: analytic kernel (spec 2.4) + ``kernel_shift(., 4)``. Matched. The kernel of an
  iteration is that of its G step (before the update), as the original's ``curr_k``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fkp_jax import kernels as kernels_lib
from fkp_jax.seeds import stack_states  # noqa: F401 (part of this API)

State = dict[str, Any]
PRECISION = jax.lax.Precision.HIGHEST
NET_SF = 2  # the network always estimates an x2 kernel (scale_factor 0.5)
BN_EPS = 1e-5
SN_EPS = 1e-12


@dataclasses.dataclass(frozen=True)
class LinearKernelGANConfig:
    """The original KernelGAN's settings (``config/configs.py``, ``model.py``, ``learner.py``; spec 7.6).

    ``sf`` is the wanted SR factor (2 or 4): the network always estimates the x2 kernel; x4 converts it
    analytically in `final_kernel`.
    """

    sf: int = 2
    iters: int = 3000
    batch: int = 1
    g_size: int = 64  # input_crop_size
    g_structure: tuple[int, ...] = (7, 5, 3, 1, 1, 1)  # conv sizes; the last one has stride 2 and 1 output
    g_chan: int = 64
    d_chan: int = 64
    d_kernel_size: int = 7
    d_n_layers: int = 7  # first conv + 5 blocks + last conv
    g_lr: float = 2e-4
    d_lr: float = 2e-4
    beta1: float = 0.5
    lr_update_freq: int = 750
    lr_update_rate: float = 10.0
    n_filtering: int = 40  # subtract 0.75 x the (n + 1)-th largest value
    lambda_sum2one: float = 0.5
    lambda_bicubic: float = 5.0
    lambda_boundaries: float = 0.5
    lambda_centralized_end: float = 1.0
    lambda_sparse_end: float = 5.0
    lambda_update_freq: int = 200
    bic_loss_to_start_change: float = 0.4
    bic_loss_patience: int = 2  # the switch fires on the (patience + 1)-th consecutive iteration below
    lambda_bicubic_decay_rate: float = 100.0
    lambda_bicubic_min: float = 5e-6
    constraints_below: float = 5e-3  # centralisation and sparsity switch on once lambda_bicubic < this
    boundary_penalty: float = 30.0
    sparsity_power: float = 0.2
    real_noise: float = 1.0 / 255.0  # std, [0, 1] units, added to D's real crops
    fake_noise: float = 1.0 / 255.0  # std, [-1, 1] units, added to G's output for D
    flip_kernel: bool = False  # True: the original KernelGAN's curr_k.flip([0, 1]) (FKP repo: False)

    @property
    def g_kernel_size(self) -> int:
        """13: the receptive field of G."""
        return sum(s - 1 for s in self.g_structure) + 1

    @property
    def d_size(self) -> int:
        """26: G's output size = D's input (crop) size."""
        return (self.g_size - self.g_kernel_size) // NET_SF + 1

    @property
    def d_out_size(self) -> int:
        """20: D's output map size."""
        return self.d_size - self.d_kernel_size + 1


# ----------------------------------------------------------------------------- primitives (NHWC)

def _conv(x, w, stride: int = 1):
    return jax.lax.conv_general_dilated(x, w, (stride, stride), "VALID",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=PRECISION)


def _channels_as_batch(x):
    """(B, H, W, C) -> (B*C, H, W, 1): each colour channel is a separate single-channel image."""
    b, h, w, c = x.shape
    return x.transpose(0, 3, 1, 2).reshape(b * c, h, w, 1)


def _batch_as_channels(y, c: int):
    bc, h, w, _ = y.shape
    return y.reshape(bc // c, c, h, w).transpose(0, 2, 3, 1)


# ----------------------------------------------------------------------------- generator

def generator_shapes(config: LinearKernelGANConfig) -> list[tuple[int, int, int, int]]:
    """HWIO shapes of G's convs: 7x7 1->64, 5x5, 3x3, 1x1, 1x1 64->64, 1x1 64->1 (stride 2)."""
    s, c = config.g_structure, config.g_chan
    return [(s[0], s[0], 1, c)] + [(k, k, c, c) for k in s[1:-1]] + [(s[-1], s[-1], c, 1)]


def init_generator(key: jax.Array, config: LinearKernelGANConfig) -> dict:
    """{"w": [HWIO weights]}, no biases; Xavier normal with gain 0.1 (``weights_init_G``). One normal
    draw for all layers (each random call costs ~1 s of XLA:CPU compile time)."""
    shapes = generator_shapes(config)
    sizes = [int(np.prod(s)) for s in shapes]
    z = jax.random.normal(key, (sum(sizes),), jnp.float32)
    ws, start = [], 0
    for (kh, kw, cin, cout), n in zip(shapes, sizes):
        std = 0.1 * math.sqrt(2.0 / ((cin + cout) * kh * kw))
        ws.append(std * z[start:start + n].reshape(kh, kw, cin, cout))
        start += n
    return {"w": ws}


def count_params(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def generator_kernel(params, flip: bool = False) -> jax.Array:
    """G's (13, 13) equivalent kernel: a delta padded by 12 pushed through the convs (stride 1), as
    ``calc_curr_k``. This is G's TRUE-CONVOLUTION kernel (flip of the kernel it correlates with);
    ``flip=True`` returns the correlation kernel (the original KernelGAN's ``.flip([0, 1])``)."""
    ws = params["w"]
    k = sum(w.shape[0] - 1 for w in ws) + 1
    x = jnp.zeros((1, 2 * k - 1, 2 * k - 1, 1), ws[0].dtype).at[0, k - 1, k - 1, 0].set(1.0)
    for w in ws:
        x = _conv(x, w)
    kern = x[0, :, :, 0]
    return kern[::-1, ::-1] if flip else kern


def apply_generator(params, x: jax.Array, kernel: jax.Array | None = None) -> jax.Array:
    """G(x), (B, H, W, C) -> (B, (H - 13) // 2 + 1, ..., C): per channel, valid correlation with the
    flip of `generator_kernel` (the network's own linear map), keeping rows/cols 0, 2, 4, ...
    ``kernel`` may pass a precomputed ``generator_kernel(params)`` (not flipped)."""
    kernel = generator_kernel(params) if kernel is None else kernel
    y = _conv(_channels_as_batch(x), kernel[::-1, ::-1, None, None], NET_SF)
    return _batch_as_channels(y, x.shape[-1])


def apply_generator_layers(params, x: jax.Array) -> jax.Array:
    """G(x) literally as the original's conv chain (for checking `apply_generator`)."""
    ws = params["w"]
    y = _channels_as_batch(x)
    for i, w in enumerate(ws):
        y = _conv(y, w, NET_SF if i == len(ws) - 1 else 1)
    return _batch_as_channels(y, x.shape[-1])


# ----------------------------------------------------------------------------- discriminator

def _normalize(v):
    return v / jnp.maximum(jnp.linalg.norm(v), SN_EPS)


def _weight_matrix(w):
    """HWIO -> (out, kh*kw*in), PyTorch's ``weight.reshape(out, -1)`` up to a column permutation."""
    return w.reshape(-1, w.shape[-1]).T


def power_iteration(w, u):
    """One power iteration (PyTorch ``spectral_norm``): v = n(W^T u), u' = n(W v); returns (u', v)."""
    mat = _weight_matrix(w)
    v = _normalize(jnp.matmul(mat.T, u, precision=PRECISION))
    u = _normalize(jnp.matmul(mat, v, precision=PRECISION))
    return u, v


def spectral_normalize(w, u):
    """(w / sigma, u') after one power iteration; sigma = u'^T W v with u', v constants for the gradient."""
    u, v = jax.lax.stop_gradient(power_iteration(jax.lax.stop_gradient(w), u))
    sigma = jnp.dot(u, jnp.matmul(_weight_matrix(w), v, precision=PRECISION), precision=PRECISION)
    return w / sigma, u


def init_discriminator(key: jax.Array, config: LinearKernelGANConfig) -> tuple[dict, dict]:
    """(params, sn): params {"first", "blocks", "last"} of HWIO weights, biases (0) and BN scale/bias;
    sn the power-iteration vectors ``u`` per spectral-norm conv, after one iteration (see module doc)."""
    c, kd = config.d_chan, config.d_kernel_size
    shapes = [(kd, kd, 3, c)] + [(1, 1, c, c)] * (config.d_n_layers - 2) + [(1, 1, c, 1)]
    n_blocks = len(shapes) - 2
    sizes = [int(np.prod(s)) for s in shapes]
    k_w, k_n = jax.random.split(key)
    uni = jax.random.uniform(k_w, (sum(sizes),), jnp.float32, -1.0, 1.0)  # one draw each (compile time)
    nor = jax.random.normal(k_n, (n_blocks * c + sum(s[-1] for s in shapes),), jnp.float32)
    ws, us, start, ustart = [], [], 0, n_blocks * c
    for shape, n in zip(shapes, sizes):
        bound = 1.0 / math.sqrt(shape[0] * shape[1] * shape[2])  # kaiming_uniform(a=sqrt(5))
        w = bound * uni[start:start + n].reshape(shape)
        u = _normalize(nor[ustart:ustart + shape[-1]])
        start, ustart = start + n, ustart + shape[-1]
        ws.append(w)
        us.append(power_iteration(w, u)[0])
    bn_scales = 1.0 + 0.02 * nor[:n_blocks * c].reshape(n_blocks, c)
    blocks = {"w": jnp.stack(ws[1:-1]), "b": jnp.zeros((n_blocks, c)), "scale": bn_scales,
              "bias": jnp.zeros((n_blocks, c))}
    params = {"first": {"w": ws[0], "b": jnp.zeros((c,))}, "blocks": blocks,
              "last": {"w": ws[-1], "b": jnp.zeros((1,))}}
    sn = {"first": us[0], "blocks": jnp.stack(us[1:-1]), "last": us[-1]}
    return params, sn


def _batch_norm(x, scale, bias):
    mean = x.mean(axis=(0, 1, 2))
    var = jnp.mean(jnp.square(x - mean), axis=(0, 1, 2))
    return (x - mean) * jax.lax.rsqrt(var + BN_EPS) * scale + bias


def _conv1x1(x, w, b):
    return jnp.einsum("nhwc,cd->nhwd", x, w[0, 0], precision=PRECISION) + b


def apply_discriminator(params, sn, x: jax.Array) -> tuple[jax.Array, dict]:
    """D(x) in (0, 1), (B, 26, 26, 3) -> (B, 20, 20, 1), and the advanced power-iteration state.

    SN conv 7x7 (no activation) -> 5 x [SN conv 1x1, BN (batch statistics), ReLU] -> SN conv 1x1 ->
    sigmoid (spec 7.6)."""
    w, u_first = spectral_normalize(params["first"]["w"], sn["first"])
    y = _conv(x, w) + params["first"]["b"]
    blocks = params["blocks"]
    w_blocks, u_blocks = jax.vmap(spectral_normalize)(blocks["w"], sn["blocks"])

    def block(y, p):
        w, b, scale, bias = p
        return jax.nn.relu(_batch_norm(_conv1x1(y, w, b), scale, bias)), None

    y, _ = jax.lax.scan(block, y, (w_blocks, blocks["b"], blocks["scale"], blocks["bias"]))
    w, u_last = spectral_normalize(params["last"]["w"], sn["last"])
    y = jax.nn.sigmoid(_conv1x1(y, w, params["last"]["b"]))
    return y, {"first": u_first, "blocks": u_blocks, "last": u_last}


# ----------------------------------------------------------------------------- losses

def gan_loss(d_map: jax.Array, is_real: bool) -> jax.Array:
    """mean |D map - label|, label map all 1 (real) or all 0 (fake) (``GANLoss``, L1)."""
    return jnp.mean(jnp.abs(d_map - (1.0 if is_real else 0.0)))


def _cubic(x):
    """MATLAB's bicubic interpolation kernel (a = -0.5)."""
    ax = np.abs(x)
    return np.where(ax <= 1, 1.5 * ax**3 - 2.5 * ax**2 + 1,
                    np.where(ax <= 2, -0.5 * ax**3 + 2.5 * ax**2 - 4 * ax + 2, 0.0))


@functools.lru_cache(maxsize=None)
def bicubic_x2_kernel() -> np.ndarray:
    """The (8, 8) kernel of ``DownScaleLoss``: the outer product of MATLAB's antialiased x1/2 bicubic
    weights 0.5 cubic(0.5 d), d = +-0.5, ..., +-3.5 (computed; equal in float32 to the original's table)."""
    w = 0.5 * _cubic(0.5 * (np.arange(8) - 3.5))
    return np.outer(w, w).astype(np.float32)


def bicubic_downscale(x: jax.Array) -> jax.Array:
    """``resize_tensor_w_kernel`` (B, H, W, C) -> (B, H/2, W/2, C): zero pad 3, correlate with
    `bicubic_x2_kernel`, stride 2, with the kernel expanded to a DENSE C -> C weight, so every output
    channel is the sum over input channels (a quirk of the original, matched)."""
    c = x.shape[-1]
    k = jnp.asarray(bicubic_x2_kernel(), x.dtype)
    w = jnp.broadcast_to(k[:, :, None, None], (8, 8, c, c))
    pad = (8 - 1) // 2
    xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    return _conv(xp, w, 2)


def shave_to(a: jax.Array, size: int) -> jax.Array:
    """``shave_a2b`` on NHWC: crop rows/cols symmetrically to ``size`` (the odd pixel from the end)."""
    s = a.shape[1] - size
    t = a.shape[2] - size
    return a[:, s // 2:a.shape[1] - s // 2 - s % 2, t // 2:a.shape[2] - t // 2 - t % 2]


def bicubic_loss(g_in: jax.Array, g_out: jax.Array) -> jax.Array:
    """``DownScaleLoss``: MSE(G(x), shave(bicubic_downscale(x))), x and G(x) in [-1, 1]."""
    return jnp.mean(jnp.square(g_out - shave_to(bicubic_downscale(g_in), g_out.shape[1])))


def sum2one_loss(kernel: jax.Array) -> jax.Array:
    """|1 - sum k| (``SumOfWeightsLoss``)."""
    return jnp.abs(1.0 - jnp.sum(kernel))


@functools.lru_cache(maxsize=None)
def penalty_mask(k_size: int, penalty_scale: float = 30.0) -> np.ndarray:
    """``create_penalty_mask``: scale (1 - g / max g), g a (k, k) Gaussian of sigma k on offsets
    -k//2+1 .. k//2, with the centre [m:-m, m:-m] zeroed, m = (k - (k//2 + k%2)) // 2 - 1 (2 for 13)."""
    z = np.arange(-k_size // 2 + 1, k_size // 2 + 1, dtype=np.float64)
    g1 = np.exp(-z**2 / (2 * k_size**2)) / np.sqrt(2 * np.pi * k_size**2)
    g = np.outer(g1, g1)
    mask = 1 - g / np.max(g)
    m = (k_size - (k_size // 2 + k_size % 2)) // 2 - 1
    mask[m:-m, m:-m] = 0
    return (penalty_scale * mask).astype(np.float32)


def boundaries_loss(kernel: jax.Array, penalty_scale: float = 30.0) -> jax.Array:
    """mean |k * mask| over the k x k entries (``BoundariesLoss``)."""
    return jnp.mean(jnp.abs(kernel * penalty_mask(kernel.shape[0], penalty_scale)))


def centralized_loss(kernel: jax.Array, sf: int = NET_SF) -> jax.Array:
    """mean over (row, col) of (centre of mass - c)^2, c = k//2 + 0.5 (sf - k%2) (``CentralizedLoss``;
    6.5 for k = 13)."""
    k = kernel.shape[0]
    idx = jnp.arange(k, dtype=kernel.dtype)
    total = jnp.sum(kernel)
    com = jnp.stack([jnp.sum(kernel.sum(1) * idx), jnp.sum(kernel.sum(0) * idx)]) / total
    return jnp.mean(jnp.square(com - (k // 2 + 0.5 * (sf - k % 2))))


def sparsity_loss(kernel: jax.Array, power: float = 0.2) -> jax.Array:
    """mean |k|^0.2 (``SparsityLoss``)."""
    return jnp.mean(jnp.abs(kernel) ** power)


# ----------------------------------------------------------------------------- schedule

def lr_schedule(lr: float, config: LinearKernelGANConfig) -> optax.Schedule:
    """lr / 10 after iterations 750, 1500, 2250 (the 0-based iteration whose update first uses lr/10
    is 751): update number n uses lr * 0.1^floor((n - 1) / 750), n >= 1 (``Learner.update``)."""
    return optax.exponential_decay(lr, config.lr_update_freq, 1.0 / config.lr_update_rate,
                                   transition_begin=1, staircase=True)


def lambda_bicubic_values(config: LinearKernelGANConfig) -> tuple[float, ...]:
    """lambda_bicubic after 0, 1, 2, ... decays: 5, 0.05, 5e-4, 5e-6 (Python floats, as the original)."""
    vals = [config.lambda_bicubic]
    while vals[-1] > config.lambda_bicubic_min:
        vals.append(max(vals[-1] / config.lambda_bicubic_decay_rate, config.lambda_bicubic_min))
    return tuple(vals)


def init_schedule() -> dict:
    """Learner state: consecutive below-threshold count, the similar-to-bicubic flag, decays done."""
    return {"counter": jnp.asarray(0, jnp.int32), "similar": jnp.asarray(False), "n_decay": jnp.asarray(0, jnp.int32)}


def constraint_weights(sched: dict, config: LinearKernelGANConfig) -> dict:
    """The five lambdas in force. Centralisation and sparsity switch on (1, 5) at the decay that takes
    lambda_bicubic below 5e-3; as lambdas only change at decays this is a function of ``n_decay``."""
    table = lambda_bicubic_values(config)
    lam_bic = jnp.asarray(table)[sched["n_decay"]]
    on = jnp.asarray([v < config.constraints_below for v in table])[sched["n_decay"]]
    return {"bicubic": lam_bic, "sum2one": jnp.asarray(config.lambda_sum2one),
            "boundaries": jnp.asarray(config.lambda_boundaries),
            "centralized": jnp.where(on, config.lambda_centralized_end, 0.0),
            "sparse": jnp.where(on, config.lambda_sparse_end, 0.0)}


def update_schedule(sched: dict, iteration, loss_bicubic, config: LinearKernelGANConfig) -> dict:
    """``Learner.update(iteration, gan)`` for the lambdas (the lr part is `lr_schedule`), after the
    0-based ``iteration`` with its G step's bicubic loss. Iteration 0 changes nothing. Until similar:
    count consecutive losses < 0.4; the (2 + 1)-th sets ``similar`` (no decay in that call). After:
    at iterations multiple of 200, while lambda_bicubic > 5e-6, one decay (/ 100)."""
    counter, similar, n_decay = sched["counter"], sched["similar"], sched["n_decay"]
    live = iteration != 0
    below = loss_bicubic < config.bic_loss_to_start_change
    done = counter >= config.bic_loss_patience
    new_similar = similar | (live & below & done)
    new_counter = jnp.where(live & ~similar, jnp.where(below, jnp.where(done, counter, counter + 1), 0), counter)
    n_max = len(lambda_bicubic_values(config)) - 1
    decay = live & similar & (iteration % config.lambda_update_freq == 0) & (n_decay < n_max)
    return {"counter": new_counter.astype(jnp.int32), "similar": new_similar,
            "n_decay": (n_decay + decay).astype(jnp.int32)}


# ----------------------------------------------------------------------------- post-processing

def _post_process_x2(k13: jax.Array, n_filtering: int) -> jax.Array:
    k = k13[:-2, :-2]
    k_min = 0.75 * jnp.sort(k.ravel())[-n_filtering - 1]
    k = jnp.clip(k - k_min, 0.0, 100.0)
    return kernels_lib.kernel_shift(k / k.sum(), NET_SF)


@functools.partial(jax.jit, static_argnames=("sf", "n_filtering"))
def _final(k13, sf: int, n_filtering: int):
    fn = lambda k: _post_process_x2(k, n_filtering)
    k2 = jax.vmap(fn)(k13) if k13.ndim == 3 else fn(k13)
    if sf == 2:
        return k2
    if sf != 4:
        raise ValueError(f"KernelGAN supports sf 2 and 4, not {sf}")
    x4 = lambda k: kernels_lib.kernel_shift(kernels_lib.analytic_x4_kernel(k), 4)
    return jax.vmap(x4)(k2) if k2.ndim == 3 else x4(k2)


def final_kernel(state_or_kernel, sf: int, n_filtering: int = 40) -> jax.Array:
    """The original's output kernel (``finish``): from ``state["curr_k"]`` (the last G step's 13 x 13
    kernel) or a (13, 13) array (or either with a leading seed axis). x2: crop to 11 x 11, filter
    (``zeroize_negligible_val``, n = 40), renormalise, kernel_shift(., 2); x4: analytic 21 x 21 +
    kernel_shift(., 4). Not renormalised after the shifts (as the original)."""
    k13 = state_or_kernel["curr_k"] if isinstance(state_or_kernel, dict) else state_or_kernel
    return _final(jnp.asarray(k13, jnp.float32), sf, n_filtering)


# ----------------------------------------------------------------------------- state and step

def optimizers(config: LinearKernelGANConfig) -> tuple[optax.GradientTransformation, optax.GradientTransformation]:
    """(G, D) Adam with betas (beta1, 0.999), eps 1e-8 (PyTorch's), and the step lr schedule."""
    g = optax.adam(lr_schedule(config.g_lr, config), b1=config.beta1, b2=0.999, eps=1e-8)
    d = optax.adam(lr_schedule(config.d_lr, config), b1=config.beta1, b2=0.999, eps=1e-8)
    return g, d


def init_state(key: jax.Array, config: LinearKernelGANConfig = LinearKernelGANConfig()) -> State:
    """A fresh run: G, D and the power-iteration vectors from ``key`` (split per purpose), and the key
    the steps draw crops and noise from. ``t`` is the number (1-based) of the next iteration."""
    return _init_state(key, config)


@functools.partial(jax.jit, static_argnums=1)
def _init_state(key: jax.Array, config: LinearKernelGANConfig) -> State:
    k_g, k_d, k_run = jax.random.split(key, 3)
    g = init_generator(k_g, config)
    d, sn = init_discriminator(k_d, config)
    g_opt, d_opt = optimizers(config)
    state = {"t": jnp.asarray(1, jnp.int32), "key": k_run, "g": g, "d": d, "sn": sn,
             "g_opt": g_opt.init(g), "d_opt": d_opt.init(d), "sched": init_schedule(),
             "curr_k": generator_kernel(g, config.flip_kernel)}
    return jax.tree.map(jnp.copy, state)  # distinct buffers for every leaf (the step donates them)


def g_loss(g_params, d_params, sn, g_in: jax.Array, lambdas: dict, config: LinearKernelGANConfig):
    """The G step's loss (``train_g`` + ``calc_constraints``) and (L_G, bicubic loss, curr_k, advanced
    sn): the D forward advances the power iteration, as PyTorch's training mode does."""
    k = generator_kernel(g_params)
    g_pred = apply_generator(g_params, g_in, k)
    curr_k = k[::-1, ::-1] if config.flip_kernel else k
    d_fake, sn = apply_discriminator(d_params, sn, g_pred)
    loss_g = gan_loss(d_fake, True)
    l_bic = bicubic_loss(g_in, g_pred)
    reg = (l_bic * lambdas["bicubic"] + sum2one_loss(curr_k) * lambdas["sum2one"]
           + boundaries_loss(curr_k, config.boundary_penalty) * lambdas["boundaries"]
           + centralized_loss(curr_k) * lambdas["centralized"]
           + sparsity_loss(curr_k, config.sparsity_power) * lambdas["sparse"])
    return loss_g + reg, (loss_g, l_bic, curr_k, sn)


def d_loss(d_params, sn, g_params, g_in: jax.Array, d_in: jax.Array, fake_noise: jax.Array):
    """The D step's loss (``train_d``) and the advanced sn: D(real) first, then D of the (updated) G's
    output + noise, detached."""
    d_real, sn = apply_discriminator(d_params, sn, d_in)
    fake = jax.lax.stop_gradient(apply_generator(g_params, g_in) + fake_noise)
    d_fake, sn = apply_discriminator(d_params, sn, fake)
    return 0.5 * (gan_loss(d_fake, False) + gan_loss(d_real, True)), sn


def iteration(state: State, g_in: jax.Array, d_in: jax.Array, fake_noise: jax.Array,
              config: LinearKernelGANConfig) -> tuple[State, dict]:
    """One iteration from given inputs: ``g_in`` (B, 64, 64, 3) and ``d_in`` (B, 26, 26, 3) in [-1, 1]
    (d_in with its noise already), ``fake_noise`` (B, 26, 26, 3) in [-1, 1] units: ``gan.train`` (G step,
    then D step) + ``learner.update`` of the original."""
    g_opt, d_opt = optimizers(config)
    lambdas = constraint_weights(state["sched"], config)

    (total_g, (loss_g, l_bic, curr_k, sn)), grads_g = jax.value_and_grad(g_loss, has_aux=True)(
        state["g"], state["d"], state["sn"], g_in, lambdas, config)
    upd, g_opt_state = g_opt.update(grads_g, state["g_opt"], state["g"])
    g_params = optax.apply_updates(state["g"], upd)

    (loss_d, sn), grads_d = jax.value_and_grad(d_loss, has_aux=True)(state["d"], sn, g_params, g_in, d_in, fake_noise)
    upd, d_opt_state = d_opt.update(grads_d, state["d_opt"], state["d"])
    d_params = optax.apply_updates(state["d"], upd)

    sched = update_schedule(state["sched"], state["t"] - 1, l_bic, config)
    new_state = {"t": state["t"] + 1, "key": state["key"], "g": g_params, "d": d_params, "sn": sn,
                 "g_opt": g_opt_state, "d_opt": d_opt_state, "sched": sched, "curr_k": curr_k}
    outputs = {"kernel": _post_process_x2(curr_k, config.n_filtering), "loss_g": loss_g,
               "loss_g_total": total_g, "loss_d": loss_d, "loss_bicubic": l_bic,
               "lambda_bicubic": lambdas["bicubic"]}
    return new_state, outputs


def _default_sample_fn() -> Callable:
    try:
        from fkp_jax.kernelgan import sample_batch
    except ImportError as e:  # pragma: no cover - until fkp_jax.kernelgan provides the shared sampler
        raise ImportError("fkp_jax.kernelgan.sample_batch (the shared crop sampler) is not available; "
                          "pass sample_fn") from e
    return sample_batch


def step(state: State, sampler, config: LinearKernelGANConfig, sample_fn: Callable) -> tuple[State, dict]:
    """One iteration drawing its crops and noise from ``state["key"]``: ``sample_fn(key, sampler, batch,
    g_size, d_size) -> (g_in, d_in)`` in [0, 1]; D's real crop gets N(0, (1/255)^2) in [0, 1] units, the
    fake N(0, (1/255)^2) in [-1, 1] units; both then go through `iteration`."""
    key, k_batch, k_noise = jax.random.split(state["key"], 3)
    g01, d01 = sample_fn(k_batch, sampler, config.batch, config.g_size, config.d_size)
    g01, d01 = jnp.asarray(g01, jnp.float32), jnp.asarray(d01, jnp.float32)
    noise = jax.random.normal(k_noise, (2,) + d01.shape, jnp.float32)  # one draw (compile time)
    d01 = d01 + config.real_noise * noise[0]
    fake_noise = config.fake_noise * noise[1]
    new_state, out = iteration(state, 2.0 * g01 - 1.0, 2.0 * d01 - 1.0, fake_noise, config)
    return {**new_state, "key": key}, out


def default_seed_mode() -> str:
    """How a seed axis is stepped: "map" (``lax.map``: the seeds one after another inside one jitted
    call) on CPU, "vmap" elsewhere. On XLA:CPU the vmapped convolutions with per-seed weights become
    grouped convolutions that took minutes to compile (2 cores)."""
    return "map" if jax.default_backend() == "cpu" else "vmap"


def _over_seeds(fn: Callable, seed_mode: str | None) -> Callable:
    mode = default_seed_mode() if seed_mode is None else seed_mode
    if mode == "vmap":
        return jax.vmap(fn, in_axes=(0, None))
    if mode == "map":
        return lambda s, sampler: jax.lax.map(lambda one: fn(one, sampler), s)
    raise ValueError(f"seed_mode must be 'map' or 'vmap', not {mode!r}")


def make_step(config: LinearKernelGANConfig = LinearKernelGANConfig(), seeds: bool = False,
              sample_fn: Callable | None = None, seed_mode: str | None = None) -> Callable:
    """The jitted step ``(state, sampler) -> (state, outputs)``; seeds=True steps every seed of the
    state's leading axis (one sampler for all; `default_seed_mode`). ``sample_fn`` defaults to
    ``fkp_jax.kernelgan.sample_batch``, whose sampler must be built for crops (config.g_size,
    config.d_size) = (64, 26): ``make_sampler(image, 64, 26)``. Outputs: "kernel" (this iteration's
    post-processed x2 kernel, 11 x 11), "loss_g", "loss_g_total", "loss_d", "loss_bicubic",
    "lambda_bicubic". The input state is donated: do not read it afterwards."""
    sample_fn = _default_sample_fn() if sample_fn is None else sample_fn
    fn = lambda s, sampler: step(s, sampler, config, sample_fn)
    if seeds:
        fn = _over_seeds(fn, seed_mode)
    return jax.jit(fn, donate_argnums=0)
