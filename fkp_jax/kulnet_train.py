"""KULNet training (spec 3-4 and the golden_kulnet README sections 6-7): online degradation, losses, Adam, one step.

Conventions: images NHWC float32 in [0, 1]; kernels (21, 21) [row, col] applied by CROSS-CORRELATION (as the
original's data synthesis and the network's A). Randomness only through explicit ``jax.random`` keys: the
original's NumPy / torch draws are replaced by ``sample_draws(key, ...)``, whose fields mirror the original's
draws one for one so that recorded draws can be injected (``degrade_batch``) to replay the original exactly.

Public API (all pure, jit / vmap-able):

- ``anisotropic_kernel(sf, sig1, sig2, theta)``: the training / validation / test kernel (golden 7 step 2).
- ``sample_draws(key, batch, lr_hw)`` -> ``DegradationDraws``; ``degrade_batch(hr, draws, sf)`` -> ``Degraded``;
  ``synthesize(key, hr, sf)``: draws + degradation in one call (golden 7 steps 1-5).
- ``losses(params, hr, lr, kernel_gt, eps, cfg)``: (total, metrics) with the original's three terms (golden 6.2).
- ``make_optimizer(cfg)`` -> (optax Adam, schedule) with the original's LR-before-step semantics (golden 6.3).
- ``init_state(params, cfg)``, ``supervised_step(state, hr, lr, kernel_gt, eps, cfg)`` (injected inputs: the
  golden parity path) and ``make_train_step(cfg)`` -> jitted ``train_step(state, hr, key) -> (state, metrics)``
  (degradation and latent noise drawn from ``key`` inside the step); ``step_key(base, t)`` = fold_in(base, t).
- ``data_parallel(n)``, ``place(state, hr, n)``, ``make_train_step(cfg, n)``: the batch axis sharded over n
  devices with ``jax.sharding``, params and optimiser state replicated.

Measured (2 shared AMD EPYC Zen 3 cores, load ~5, float32): one x4 step at batch 4 of 192 x 192 HR patches takes
49-63 s (3.3 GB peak RSS, compilation 32 s more); the original PyTorch took 91 s at batch 6 (golden 11).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from fkp_jax import kulnet

KERNEL_SIZE = kulnet.KERNEL_SIZE
_DN = ("NHWC", "HWIO", "NHWC")
# validation degradation of train.yml (spec 3): fixed anisotropic kernel, noise 10/255
VAL_KERNEL_PARAMS = (3.5, 1.5, 0.5233)
VAL_NOISE = 10.0 / 255.0


@dataclasses.dataclass(frozen=True)
class DegradationConfig:
    """Online synthesis settings of train.yml (spec 3, golden 7): sig1/sig2 are VARIANCES (MANet naming);
    rate_iso 0 (always anisotropic; the iso/aniso draw is still made), noise sigma ~ U(0, noise_high),
    rate_cln -1 (every sample noisy), 8-bit quantisation of clean and noisy LR, replicate padding."""

    sig_min: float = 0.2
    sig_max: float = 4.0
    noise_high: float = 25.0 / 255.0
    rate_cln: float = -1.0
    quantize: bool = True


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """KULNet training hyper-parameters; defaults are the original's train.yml / B_model (golden 6, ``cfg_*``)."""

    sf: int = 4
    batch_size: int = 16
    patch: int | None = None  # HR patch side (GT_size); None -> 48 sf
    lr: float = 2e-4
    b1: float = 0.9
    b2: float = 0.999
    adam_eps: float = 1e-8
    weight_decay: float = 0.0
    lr_milestones: tuple[int, ...] = (120_000, 240_000, 360_000, 480_000)  # 1-based iterations
    lr_gamma: float = 0.5
    niter: int = 480_000
    pixel_weight: float = 1.0
    kernel_weight: float = 1.0
    kl_weight: float = 1e-3  # hard-coded in the original
    kernel_loss_factor: float = 1e4  # hard-coded in the original
    seed: int = 0
    degradation: DegradationConfig = DegradationConfig()
    compute_dtype: str | None = None  # mixed precision: "bfloat16" runs every convolution in it (the original
    # uses torch.cuda.amp, float16 convolutions with a GradScaler, on GPUs); parameters, Adam and losses stay
    # float32; bfloat16 has float32's exponent range, so no loss scaling is needed

    @property
    def patch_size(self) -> int:
        return self.patch if self.patch is not None else 48 * self.sf


# ----------------------------------------------------------------------------- online degradation (golden 7)

def anisotropic_kernel(sf: int, sig1, sig2, theta, dtype=None):
    """The original's anisotropic Gaussian (golden 7 step 2): covariance R(theta) diag(sig1, sig2) R(theta)^T
    (sig1, sig2 are variances), density at v = (col - m, row - m), m = l/2 - 1/2 on an l x l support, l = 22 - sf;
    values below eps64 x max set to 0, normalised to sum 1, placed TOP-LEFT in a 21 x 21 zero array. Scalars in,
    (21, 21) out, in the inputs' dtype (float64 under x64 with float64 inputs)."""
    dtype = dtype or jnp.result_type(sig1, sig2, theta, jnp.float32)
    sig1, sig2, theta = (jnp.asarray(v, dtype) for v in (sig1, sig2, theta))
    l = KERNEL_SIZE + 1 - sf
    c, s = jnp.cos(theta), jnp.sin(theta)
    c11 = sig1 * c * c + sig2 * s * s
    c22 = sig1 * s * s + sig2 * c * c
    c12 = (sig1 - sig2) * c * s
    det = c11 * c22 - c12 * c12
    g = jnp.arange(l, dtype=dtype) - (l / 2 - 0.5)
    x, y = g[None, :], g[:, None]  # x = column offset (first component), y = row offset
    q = (c22 * x * x - 2 * c12 * x * y + c11 * y * y) / det
    k = jnp.exp(-0.5 * q) / (2 * math.pi * jnp.sqrt(det))
    k = jnp.where(k < np.finfo(np.float64).eps * k.max(), 0, k)
    k = k / k.sum()
    return jnp.zeros((KERNEL_SIZE, KERNEL_SIZE), dtype).at[:l, :l].set(k)


class DegradationDraws(NamedTuple):
    """The random numbers of one batch, one field per draw of the original (golden 7 step 1, 4):
    kernel_u (B, 4) = (iso/aniso choice [unused with rate_iso 0], u_sig1, u_sig2, u_theta) in [0, 1);
    noise_u (B,) noise-level uniform; clean_u (B,) clean/noisy choice; normal (B, h, w, 3) N(0, 1) at LR size."""

    kernel_u: Any
    noise_u: Any
    clean_u: Any
    normal: Any


class Degraded(NamedTuple):
    lr_clean: Any  # (B, h, w, 3) quantised clean LR
    lr_noisy: Any  # (B, h, w, 3) quantised noisy LR: what the network sees
    kernel: Any  # (B, 21, 21) GT kernels (float32)
    kernel_params: Any  # (B, 3) (sig1, sig2, theta)
    noise_sigma: Any  # (B,)


def sample_draws(key, batch: int, lr_hw: tuple[int, int], dtype=jnp.float32) -> DegradationDraws:
    """Fresh draws from ``key`` for a batch with LR size ``lr_hw`` (the JAX stand-in for the original's NumPy calls)."""
    k1, k2, k3, k4 = jax.random.split(key, 4)
    return DegradationDraws(jax.random.uniform(k1, (batch, 4), dtype), jax.random.uniform(k2, (batch,), dtype),
                            jax.random.uniform(k3, (batch,), dtype),
                            jax.random.normal(k4, (batch, *lr_hw, 3), dtype))


def kernel_params_from_uniforms(u, cfg: DegradationConfig = DegradationConfig()):
    """(..., 4) uniforms -> (..., 3) (sig1, sig2, theta): sig1 = lo + (hi - lo) u1, sig2 = lo + (sig1 - lo) u2,
    theta = pi u3; u[..., 0] (the iso/aniso choice) is ignored (rate_iso 0)."""
    sig1 = cfg.sig_min + (cfg.sig_max - cfg.sig_min) * u[..., 1]
    sig2 = cfg.sig_min + (sig1 - cfg.sig_min) * u[..., 2]
    return jnp.stack([sig1, sig2, math.pi * u[..., 3]], axis=-1)


def blur_subsample(hr, kernel, sf: int):
    """corr(replicate-pad_10(hr), kernel) sampled at rows / cols 0, s, 2s, ... (golden 7 step 3): one image
    (H, W, C) with one (21, 21) kernel on every channel -> (ceil(H/s), ceil(W/s), C). vmap for a batch."""
    p = (KERNEL_SIZE - 1) // 2
    c = hr.shape[-1]
    x = jnp.pad(hr, ((p, p), (p, p), (0, 0)), mode="edge")[None]
    ker = jnp.repeat(kernel.astype(hr.dtype)[:, :, None, None], c, axis=3)  # (k, k, 1, C) depthwise
    y = lax.conv_general_dilated(x, ker, (sf, sf), "VALID", dimension_numbers=_DN, feature_group_count=c,
                                 precision=lax.Precision.HIGHEST)
    return y[0]


_LEVELS = np.arange(256, dtype=np.float32) / np.float32(255)  # k / 255 correctly rounded in float32


def quantize_8bit(x):
    """round(x 255) / 255 (round half to even, as torch.round) in float32, for x in [0, 1]. The division is a
    table look-up: XLA rewrites a division by the constant 255 into a multiplication by its reciprocal, which is
    off by an ulp for about half of the levels (measured) -- then LR inputs would differ from the original's."""
    q = jnp.clip(jnp.round(x.astype(jnp.float32) * 255), 0, 255).astype(jnp.int32)
    return jnp.asarray(_LEVELS)[q].astype(x.dtype)


def degrade_batch(hr, draws: DegradationDraws, sf: int, cfg: DegradationConfig = DegradationConfig()) -> Degraded:
    """The original's training synthesis (golden 7 steps 2-5) from given draws: hr (B, H, W, 3) float32 ->
    Degraded. Kernels computed in float64 if x64 is on (then cast to float32, as the original), else float32."""
    kdtype = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
    params = kernel_params_from_uniforms(jnp.asarray(draws.kernel_u, kdtype), cfg)
    kernels = jax.vmap(lambda p: anisotropic_kernel(sf, p[0], p[1], p[2], kdtype))(params).astype(hr.dtype)
    lr = jax.vmap(blur_subsample, (0, 0, None))(hr, kernels, sf)
    sigma = (jnp.asarray(draws.noise_u, kdtype) * cfg.noise_high).astype(hr.dtype)
    noisy = jnp.asarray(draws.clean_u) >= cfg.rate_cln  # rate_cln -1: every sample noisy
    sig = jnp.where(noisy, sigma, 0).astype(hr.dtype)
    lr_noisy = jnp.clip(lr + draws.normal.astype(hr.dtype) * sig[:, None, None, None], 0, 1)
    if cfg.quantize:
        lr, lr_noisy = quantize_8bit(lr), quantize_8bit(lr_noisy)
    return Degraded(lr, lr_noisy, kernels, params.astype(hr.dtype), sigma)


def synthesize(key, hr, sf: int, cfg: DegradationConfig = DegradationConfig()) -> Degraded:
    """``degrade_batch`` with fresh draws from ``key``."""
    b, h, w = hr.shape[:3]
    return degrade_batch(hr, sample_draws(key, b, (-(-h // sf), -(-w // sf)), hr.dtype), sf, cfg)


def degrade_fixed(hr, sf: int, key, sig1=VAL_KERNEL_PARAMS[0], sig2=VAL_KERNEL_PARAMS[1],
                  theta=VAL_KERNEL_PARAMS[2], noise=VAL_NOISE):
    """Validation synthesis (spec 3): one fixed kernel and noise level for every image; hr (B, H, W, 3) ->
    (quantised noisy LR, kernel (21, 21))."""
    kernel = anisotropic_kernel(sf, sig1, sig2, theta).astype(hr.dtype)
    lr = jax.vmap(blur_subsample, (0, None, None))(hr, kernel, sf)
    lr = jnp.clip(lr + noise * jax.random.normal(key, lr.shape, lr.dtype), 0, 1)
    return quantize_8bit(lr), kernel


# ----------------------------------------------------------------------------- losses and optimiser (golden 6)

def losses(params, hr, lr, kernel_gt, eps, cfg: TrainConfig):
    """(total, {l_pix, l_ker, l_kl}) of ``B_Model.optimize_parameters`` (golden 6.2): l_pix = w_pix mean|SR - HR|;
    l_ker = w_ker mean|f K_est - f K_gt| / P (f = 1e4, P = h w s^2 the original's broadcast positions);
    l_kl = 0.001 mean(-1/2 (1 + 2 log_var - mean^2 - exp(2 log_var))). hr (B, H, W, 3), lr (B, h, w, 3)."""
    dtype = None if cfg.compute_dtype is None else jnp.dtype(cfg.compute_dtype)
    out = kulnet.apply(params, lr, eps, cfg.sf, dtype=dtype)
    l_pix = cfg.pixel_weight * jnp.mean(jnp.abs(out.sr - hr))
    positions = lr.shape[1] * lr.shape[2] * cfg.sf ** 2
    f = cfg.kernel_loss_factor
    l_ker = cfg.kernel_weight * jnp.mean(jnp.abs(f * out.kernel - f * kernel_gt)) / positions
    kl = -0.5 * (1 + 2 * out.log_var - jnp.square(out.mean) - jnp.exp(2 * out.log_var))
    l_kl = cfg.kl_weight * jnp.mean(kl)
    total = l_pix + l_ker + l_kl
    return total, {"loss": total, "l_pix": l_pix, "l_ker": l_ker, "l_kl": l_kl}


def make_schedule(cfg: TrainConfig) -> optax.Schedule:
    """LR as a function of optax's update count c = n - 1 (n the original's 1-based iteration): the original steps
    its scheduler BEFORE the optimiser, so iteration n uses lr gamma^{#milestones <= n} (golden 6.3)."""
    return optax.piecewise_constant_schedule(cfg.lr, {m - 1: cfg.lr_gamma for m in cfg.lr_milestones})


class TorchAdamState(NamedTuple):
    count: Any  # int32 number of updates made
    mu: Any
    nu: Any


def scale_by_torch_adam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> optax.GradientTransformation:
    """Adam's direction with ``torch.optim.Adam``'s arithmetic (golden 6.3): m = b1 m + (1 - b1) g,
    v = b2 v + (1 - b2) g^2, direction (m / c1) / (sqrt(v) / sqrt(c2) + eps) with the bias corrections
    c_i = 1 - b_i^t. Unlike ``optax.scale_by_adam``, c_i is computed as -expm1(t log b_i): in float32
    1 - 0.999^1 by subtraction is off by 1.3e-5 relative (0.999 is inexact), which moved optax's first update
    6e-6 relative away from PyTorch's (measured on the golden step); -expm1 is accurate to an ulp."""
    log_b1, log_b2 = math.log(b1), math.log(b2)

    def init(params):
        zeros = jax.tree.map(jnp.zeros_like, params)
        return TorchAdamState(jnp.zeros((), jnp.int32), zeros, jax.tree.map(jnp.zeros_like, params))

    def update(updates, state, params=None):
        del params
        count = state.count + 1
        mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, updates)
        nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * (g * g), state.nu, updates)
        def direction(m, v):
            t = count.astype(m.dtype)
            c1, c2 = -jnp.expm1(t * log_b1), -jnp.expm1(t * log_b2)
            return (m / c1) / (jnp.sqrt(v) / jnp.sqrt(c2) + eps)

        out = jax.tree.map(direction, mu, nu)
        return out, TorchAdamState(count, mu, nu)

    return optax.GradientTransformation(init, update)


def make_optimizer(cfg: TrainConfig) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(PyTorch-style Adam: L2 weight decay added to the gradient [0 here], eps outside the sqrt; schedule)."""
    schedule = make_schedule(cfg)
    tx = optax.chain(scale_by_torch_adam(cfg.b1, cfg.b2, cfg.adam_eps), optax.scale_by_learning_rate(schedule))
    if cfg.weight_decay:
        tx = optax.chain(optax.add_decayed_weights(cfg.weight_decay), tx)
    return tx, schedule


class TrainState(NamedTuple):
    params: Any
    opt_state: Any
    step: Any  # number of completed steps (int32 scalar)


def init_state(params, cfg: TrainConfig) -> TrainState:
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)
    return TrainState(params, make_optimizer(cfg)[0].init(params), jnp.zeros((), jnp.int32))


def _init_torch_layout(key) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())  # seeded by the jax key
    weight_shape = {n: shape for n, _, shape in kulnet.TORCH_LAYOUT}
    out = {}
    for name, kind, shape in kulnet.TORCH_LAYOUT:
        if name.startswith("kernel_extra."):  # PyTorch defaults: kaiming-uniform(a = sqrt 5) and uniform bias
            w = weight_shape[name.rsplit(".", 1)[0] + ".weight"]
            fan_in = w[1] * w[2] * w[3]  # PyTorch takes dim 1 for ConvTranspose2d's (in, out, k, k) weight too
            bound = 1 / math.sqrt(fan_in)
            out[name] = rng.uniform(-bound, bound, shape)
        elif name.startswith("SR_net.delta_"):
            out[name] = rng.normal(0.1, 0.01, shape)
        elif kind == "conv":  # DLSM: Xavier-normal weights, zero biases
            rf = shape[2] * shape[3]
            out[name] = rng.normal(0, math.sqrt(2 / (shape[0] * rf + shape[1] * rf)), shape)
        else:
            out[name] = np.zeros(shape)
    return {k: v.astype(np.float32) for k, v in out.items()}


def init_params(key, cfg: TrainConfig | None = None):
    """Fresh KULNet params drawn as the original initialises them (golden 2.1-2.2): kernel branch with PyTorch's
    defaults (weights and biases U(+-1/sqrt(fan_in)), fan_in = dim 1 x k x k of the PyTorch weight, also for
    the ConvTranspose), DLSM Xavier-normal weights and zero biases, delta_i ~ N(0.1, 0.01^2). Built directly in
    the PyTorch layout (NumPy generator seeded by ``key``'s data) and converted: Flax's ``init`` would trace and
    compile the whole network (~30 s on 2 CPU cores). The scale is not a parameter (``cfg`` unused)."""
    del cfg
    return kulnet.params_from_state_dict(_init_torch_layout(key))


def _step(state: TrainState, hr, lr, kernel_gt, eps, cfg: TrainConfig, return_grads: bool = False):
    tx, schedule = make_optimizer(cfg)
    (_, metrics), grads = jax.value_and_grad(losses, has_aux=True)(state.params, hr, lr, kernel_gt, eps, cfg)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    metrics["lr"] = schedule(state.step)
    new = TrainState(optax.apply_updates(state.params, updates), opt_state, state.step + 1)
    return (new, metrics, grads) if return_grads else (new, metrics)


@functools.partial(jax.jit, static_argnames=("cfg", "return_grads"))
def supervised_step(state: TrainState, hr, lr, kernel_gt, eps, cfg: TrainConfig, return_grads: bool = False):
    """One optimisation step on given inputs (the golden parity path): hr (B, H, W, 3), network input lr
    (B, h, w, 3), GT kernels (B, 21, 21), latent noise eps (B, h, w, 64) -> (state, metrics[, grads])."""
    return _step(state, hr, lr, kernel_gt, eps, cfg, return_grads)


def train_step_fn(state: TrainState, hr, key, cfg: TrainConfig):
    """One step of online training, pure: degradation (golden 7) and latent noise drawn from ``key`` inside."""
    k_deg, k_eps = jax.random.split(key)
    deg = synthesize(k_deg, hr, cfg.sf, cfg.degradation)
    eps = kulnet.latent_noise(k_eps, deg.lr_noisy.shape, hr.dtype)
    return _step(state, hr, deg.lr_noisy, deg.kernel, eps, cfg)


def data_parallel(n_devices: int | None = None):
    """(batch sharding, replicated sharding) on a 1-D mesh ``data`` over the first ``n_devices`` visible devices
    (default all): the batch axis is split across devices, params and optimiser state are replicated, and XLA
    inserts the gradient all-reduce. The random draws do not depend on the sharding (partitionable threefry)."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    devices = jax.devices()[: n_devices or jax.device_count()]
    mesh = Mesh(np.array(devices), ("data",))
    return NamedSharding(mesh, PartitionSpec("data")), NamedSharding(mesh, PartitionSpec())


@functools.lru_cache(maxsize=8)
def make_train_step(cfg: TrainConfig, n_devices: int = 1):
    """Jitted ``train_step(state, hr, key) -> (state, metrics)`` for ``cfg`` (cached: one compilation per config
    and batch shape). The state is donated (updated in place). ``n_devices`` > 1: data parallel (``data_parallel``);
    the batch must divide evenly; the caller places the state replicated and hr sharded (``place``)."""
    fn = functools.partial(train_step_fn, cfg=cfg)
    if n_devices == 1:
        return jax.jit(fn, donate_argnums=0)
    batch, rep = data_parallel(n_devices)
    return jax.jit(fn, in_shardings=(rep, batch, rep), out_shardings=rep, donate_argnums=0)


def place(state: TrainState, hr, n_devices: int = 1):
    """Put the state (replicated; None: left alone) and the HR batch (split along the batch axis) on
    ``n_devices`` devices."""
    if n_devices == 1:
        return state, jnp.asarray(hr)
    batch, rep = data_parallel(n_devices)
    if hr.shape[0] % n_devices:
        raise ValueError(f"batch {hr.shape[0]} does not split over {n_devices} devices")
    return (None if state is None else jax.device_put(state, rep)), jax.device_put(hr, batch)


def step_key(base_key, step):
    """The key of (0-based) step ``step``: fold_in(base key, step), so a resumed run draws what an uninterrupted
    one would."""
    return jax.random.fold_in(base_key, step)
