"""Diff-DKP: the DKP kernel prior inside a DDNM-style classifier-guided ADM sampler (DKP_SPEC 8 and its
corrections; golden_diffdkp README 4-6), JAX.

Pieces (pure functions; images NHWC, batch 1, RGB):

- ``make_schedule``: linear 1000-step betas respaced to 100 steps (guided-diffusion's ``space_timesteps``),
  every coefficient the sampler uses, float64 NumPy (README 4). ``t`` is always the respaced index 0..99;
  the networks get ``timestep_map[t]`` (original units).
- ``predict_x0`` (clipped eps -> x0), ``data_consistency`` (DDNM in the Fourier domain, README 5.2),
  ``posterior_mean`` (sigma_y = 0: lambda_t = 1, variance = posterior variance), ``guide`` (classifier
  guidance, mean += gamma_t * scale * grad log p(y | x_t)), ``kernel_data_loss`` / ``kernel_kl`` (the two DKP
  kernel losses), ``kernel_step`` (data step then one random-kernel prior step on G_k), ``warmup``.
- ``sampler_step``: one jitted step (ADM -> x0 -> DC -> kernel steps if t < 90 -> mean -> guidance -> noise);
  the random draws (noise z, prior kernel k_r) are arguments, so a recorded run can be injected;
  ``sample_loop`` scans it over t = 99..0; ``draws`` makes the draws from a key; ``run`` wraps everything.
- ``synthesize`` (README 5.1 test-case synthesis), ``bicubic_resize`` (PyTorch's size-based bicubic),
  ``window_layout`` (README 5.4: 256 windows, stride 128, 10-px cut, no blending).

Conventions. G_k = `kernel_priors.mlp_kernel` (DKP's kernel MLP, reused from `fkp_jax.dkp`), Adam =
`dkp.torch_adam` (PyTorch's formula). Kernels (19, 19) indexed [row, col]; in every FFT product the kernel is
zero-padded at the bottom/right (tap (0, 0) at offset 0), i.e. circular CONVOLUTION
``blur(x)[i] = sum_m K[m] x[i - m]``; the observation y satisfies ``roll(y, +9) ~ K (*) x`` (the synthesis rolls
by -9). The released kernel data loss instead uses CROSS-CORRELATION with zero padding 9 against the un-rolled y.

``DiffDKPConfig.released_quirks`` (default False) selects the released behaviour; for each quirk the default:

1. Kernel gradients. Released: the in-loop kernel losses run under ``torch.no_grad`` and reach no G_k parameter;
   with torch >= 2.0 Adam skips every in-loop step (G_k frozen after the warm-up; ``sampler_released.npz``).
   Default: ``jax.grad`` of each kernel loss w.r.t. G_k's parameters with x0_hat held constant (the paper's
   intent; ``sampler_gradfix.npz``). ``kernel_grad`` overrides this one point alone (``released_quirks=True,
   kernel_grad=True`` is exactly the golden "gradfix" run).
2. Warm-up target. Released: the ground-truth kernel (information leak). Default: a random prior kernel
   (``random_prior_kernel``, width_add 2, the same family as the in-loop prior draws).
3. Value ranges. Released: y and the data term in [0, 1], the ADM estimate in [-1, 1], x0_hat = |IFFT(.)| (a
   magnitude, mixing the two ranges), the output read back as a [0, 1] image. Default: y is mapped to [-1, 1]
   (2y - 1; consistent with a unit-sum kernel), x0_hat is the REAL part of the IFFT, the output is (x0_hat+1)/2.
4. Kernel data loss. Released: MSE(corr(x0_hat, K, zero pad 9), y) against the un-rolled y. Since
   y[i] = sum_m K[m] x[i + 9 - m] = corr(x, K[::-1, ::-1])[i], its minimiser is the FLIPPED kernel (centre of
   mass 10.5 instead of the prior's 7.5, 3 px off), not the kernel the DC step uses. Default: the DC step's own
   forward model, MSE(K (*) x0_hat (circular FFT convolution), roll(y, +9)), minimised by K itself.
5. Windows (> 256 px; ``run``). Released: x_t is not re-drawn between windows (window k starts from the final
   sample of window k-1). Default: a fresh x_T per window. G_k and its Adam state carry over in both.

``DiffDKPConfig.quirks`` keeps any subset of them (``config.keeps(n)``), for measuring each fix alone
(docs/results.md, "Diff-DKP ... each fix alone").
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from fkp_jax import adm, dkp, kernel_priors
from fkp_jax import kernels as kernels_lib

HIGHEST = lax.Precision.HIGHEST
KL_EPS = 1e-7
QUIRKS = (1, 2, 3, 4, 5)  # the released code's quirks, module docstring


# ----------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True)
class DiffDKPConfig:
    """Diff-DKP hyper-parameters; defaults = the original's (``inet256.yml``, ``main.py``'s command line,
    constants of its ``gaussian_diffusion.py``), except the quirk switches (module docstring)."""
    adm_config: adm.ADMConfig = adm.REAL_ADM
    classifier_config: adm.ClassifierConfig = adm.REAL_CLASSIFIER
    class_label: int = 950
    classifier_scale: float = 1.0
    num_timesteps: int = 1000
    respacing: int = 100
    beta_start: float = 1e-4
    beta_end: float = 0.02
    alpha: float = 0.1  # DC data/prior balance
    sf: int = 4
    kernel_size: int = 19
    shift: int = 9  # roll between the FFT model and y (= kernel_size // 2)
    kp_lr: float = 5e-3
    kernel_start: int = 90  # kernel steps for respaced t < kernel_start
    width_add_gt: float = 0.5  # GT kernel family (synthesis)
    width_add_prior: float = 2.0  # prior draws (warm-up target by default, in-loop KL)
    window: int = 256
    stride: int = 128
    window_bias: int = 10
    released_quirks: bool = False
    kernel_grad: bool | None = None  # None: not keeps(1)
    quirks: tuple[int, ...] | None = None  # the quirks (1-5, module docstring) kept; None: all if released_quirks
    adm_dtype: str | None = None  # ADM torso dtype ("bfloat16" on accelerators; adm docstring); None: float32

    @property
    def torso_dtype(self):
        return None if self.adm_dtype is None else jnp.dtype(self.adm_dtype)

    def __post_init__(self):
        if self.quirks is not None and not set(self.quirks) <= set(QUIRKS):
            raise ValueError(f"Diff-DKP quirks are numbered {QUIRKS[0]}-{QUIRKS[-1]}, not {self.quirks}")

    def keeps(self, quirk: int) -> bool:
        """Whether the released behaviour of ``quirk`` (1-5, module docstring) is kept: ``quirks`` if given,
        else ``released_quirks``; for quirk 1 ``kernel_grad`` overrides both."""
        if quirk == 1 and self.kernel_grad is not None:
            return not self.kernel_grad
        return quirk in self.quirks if self.quirks is not None else self.released_quirks

    @property
    def grads_on(self) -> bool:
        return not self.keeps(1)


RELEASED = DiffDKPConfig(released_quirks=True)


# ----------------------------------------------------------------------------- schedule (README 4)


def space_timesteps(num_timesteps: int, count: int) -> np.ndarray:
    """Kept original steps: round(i (T - 1)/(count - 1)) with the stride accumulated in floating point
    (Python's round, as guided-diffusion); 0, 10, 20, ..., 989, 999 for (1000, 100)."""
    frac, cur, out = (num_timesteps - 1) / (count - 1), 0.0, []
    for _ in range(count):
        out.append(round(cur))
        cur += frac
    return np.array(sorted(set(out)), np.int64)


def make_schedule(config: DiffDKPConfig = DiffDKPConfig()) -> dict[str, np.ndarray]:
    """The respaced chain's arrays (float64 NumPy, index = respaced t), ``timestep_map`` and ``*_f32`` copies
    (float32, as the original hands them to the per-step arithmetic)."""
    betas = np.linspace(config.beta_start * 1000 / config.num_timesteps, config.beta_end * 1000 / config.num_timesteps,
                        config.num_timesteps, dtype=np.float64)
    abar = np.cumprod(1.0 - betas)
    tmap = space_timesteps(config.num_timesteps, config.respacing)
    last, new_betas = 1.0, []
    for i in tmap:
        new_betas.append(1.0 - abar[i] / last)
        last = abar[i]
    b = np.array(new_betas)
    ac = np.cumprod(1.0 - b)
    ac_prev = np.append(1.0, ac[:-1])
    pv = b * (1.0 - ac_prev) / (1.0 - ac)
    s = {
        "base_betas": betas, "base_alphas_cumprod": abar, "timestep_map": tmap, "betas": b,
        "alphas_cumprod": ac, "alphas_cumprod_prev": ac_prev, "sqrt_alphas_cumprod": np.sqrt(ac),
        "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - ac), "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / ac),
        "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / ac - 1.0), "posterior_variance": pv,
        "posterior_log_variance_clipped": np.log(np.append(pv[1], pv[1:])),
        "posterior_mean_coef1": b * np.sqrt(ac_prev) / (1.0 - ac),
        "posterior_mean_coef2": (1.0 - ac_prev) * np.sqrt(1.0 - b) / (1.0 - ac), "log_betas": np.log(b),
    }
    for name in ("sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod", "posterior_variance",
                 "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2", "log_betas"):
        s[name + "_f32"] = s[name].astype(np.float32)
    return s


def learned_range_logvar(schedule, v, t):
    """ADM learned-sigma log variance (computed by the original, unused by Diff-DKP): frac = (v + 1)/2,
    frac log beta_t + (1 - frac) posterior_log_variance_clipped_t."""
    frac = (v + 1) / 2
    return frac * schedule["log_betas"][t] + (1 - frac) * schedule["posterior_log_variance_clipped"][t]


# ----------------------------------------------------------------------------- kernels


def random_prior_kernel(key, sf: int = 4, width_add: float = 2.0, size: int = 19):
    """Diff-DKP's ``gen_kernel_random``: lambda_1, lambda_2 ~ U(0.175 s/2, min(2.5 s, 10)/2 + width_add)
    (variances), theta ~ U(0, pi), anisotropic Gaussian with centre of mass moved to (size - s)/2 (7.5),
    unit sum (`kernels.gaussian_kernel`). width_add 0.5: GT kernels; 2: prior draws."""
    lo, hi = 0.175 * sf / 2, min(2.5 * sf, 10) / 2 + width_add
    u = jax.random.uniform(key, (3,))
    return kernels_lib.gaussian_kernel(sf, lo + u[0] * (hi - lo), lo + u[1] * (hi - lo), math.pi * u[2], size=size)


def gk_kernel(kvars, config: DiffDKPConfig = DiffDKPConfig()):
    """G_k(z): (k, k) unit-sum kernel (DKP's MLP, `kernel_priors.mlp_kernel`)."""
    return kernel_priors.mlp_kernel(kvars, config.kernel_size)


def optimizer(config: DiffDKPConfig = DiffDKPConfig()):
    """The one Adam (PyTorch formula, lr = kp_lr) shared by the warm-up, data and prior steps."""
    return dkp.torch_adam(config.kp_lr)


# ----------------------------------------------------------------------------- Fourier pieces


def _fft2(x, hw=None):
    return jnp.fft.fft2(x, s=hw, axes=(-2, -1) if x.ndim == 2 else (1, 2))


def kernel_fft(kernel, hw):
    """FFT of the kernel zero-padded at the bottom/right to hw: (H, W) -> broadcast over NHWC as (1, H, W, 1)."""
    return jnp.fft.fft2(kernel, s=hw)[None, :, :, None]


def fft_blur(x, kernel):
    """Circular convolution K (*) x via FFT (kernel tap (0, 0) at offset 0); real part. x NHWC."""
    hw = x.shape[1:3]
    return jnp.real(jnp.fft.ifft2(_fft2(x) * kernel_fft(kernel, hw), axes=(1, 2)))


def data_consistency(x0, y, kernel, alpha: float = 0.1, shift: int = 9, magnitude: bool = False):
    """DDNM data consistency in the Fourier domain (README 5.2; beta = 1):
    IFFT[(conj(Kh) FFT(roll(y, +shift)) + alpha FFT(x0)) / (|Kh|^2 + alpha)], Kh = FFT of the zero-padded
    kernel (convolution). ``magnitude``: |.| as released (quirk 3), else the real part. x0, y NHWC."""
    kh = kernel_fft(kernel, x0.shape[1:3])
    num = jnp.conj(kh) * _fft2(jnp.roll(y, (shift, shift), axis=(1, 2))) + alpha * _fft2(x0)
    out = jnp.fft.ifft2(num / (jnp.conj(kh) * kh + alpha), axes=(1, 2))
    return (jnp.abs(out) if magnitude else jnp.real(out)).astype(x0.dtype)


# ----------------------------------------------------------------------------- sampler pieces


def predict_x0(schedule, x_t, eps, t):
    """x0 = clip(sqrt(1/abar_t) x_t - sqrt(1/abar_t - 1) eps, -1, 1) (float32 coefficients)."""
    a = jnp.asarray(schedule["sqrt_recip_alphas_cumprod_f32"])[t]
    b = jnp.asarray(schedule["sqrt_recipm1_alphas_cumprod_f32"])[t]
    return jnp.clip(a * x_t - b * eps, -1.0, 1.0)


def posterior_mean(schedule, x0_hat, x_t, t):
    """DDNM posterior with sigma_y = 0 (lambda_t = 1): (coef1_t x0_hat + coef2_t x_t, gamma_t = posterior
    variance_t)."""
    c1 = jnp.asarray(schedule["posterior_mean_coef1_f32"])[t]
    c2 = jnp.asarray(schedule["posterior_mean_coef2_f32"])[t]
    return c1 * x0_hat + c2 * x_t, jnp.asarray(schedule["posterior_variance_f32"])[t]


def guide(mean, gamma, grad):
    """Classifier guidance: mean + gamma_t * grad (grad = scale * d log p(y | x_t) / dx_t)."""
    return mean + gamma * grad


def add_noise(mean, gamma, noise):
    """x_{t-1} = mean + sqrt(gamma_t) z (gamma_0 = 0: the last step adds nothing)."""
    return mean + jnp.sqrt(gamma) * noise


def kernel_kl(k_random, kernel, eps: float = KL_EPS):
    """DKP's prior KL(k_r || K) = sum_px (k_r + eps) log((k_r + eps)/(K + eps))."""
    p = k_random + eps
    return jnp.sum(p * jnp.log(p / (kernel + eps)))


def correlate_same(x, kernel):
    """Per-channel cross-correlation with zero padding k//2 (PyTorch conv2d, groups = C). x NHWC."""
    c, k = x.shape[-1], kernel.shape[0]
    w = jnp.broadcast_to(kernel[:, :, None, None], (k, k, 1, c)).astype(x.dtype)
    return lax.conv_general_dilated(x, w, (1, 1), [(k // 2, k // 2)] * 2, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                    feature_group_count=c, precision=HIGHEST)


def kernel_data_loss(kernel, x0_hat, y, released: bool = False, shift: int = 9):
    """The kernel data term with x0_hat held constant. Released (quirk 4): MSE(corr(x0_hat, K, zero pad), y)
    (flipped kernel, offset vs the FFT model). Default: MSE(K (*) x0_hat, roll(y, +shift)), the DC model.
    y is in whatever range the caller's x0_hat is (released: [0, 1] vs a mixed-range x0_hat)."""
    x0_hat = lax.stop_gradient(x0_hat)
    if released:
        return jnp.mean((correlate_same(x0_hat, kernel) - y) ** 2)
    return jnp.mean((fft_blur(x0_hat, kernel) - jnp.roll(y, (shift, shift), axis=(1, 2))) ** 2)


class KernelState(NamedTuple):
    kvars: Any  # G_k variables (`kernel_priors.mlp_kernel`)
    opt_state: Any  # `dkp.torch_adam` state


def init_kernel_state(kvars, config: DiffDKPConfig = DiffDKPConfig()) -> KernelState:
    return KernelState(kvars, optimizer(config).init(kvars))


def _adam_step(ks: KernelState, loss_fn, config):
    grads = jax.grad(loss_fn)(ks.kvars)
    kvars, opt = kernel_priors.optimizer_update(optimizer(config), grads, ks.opt_state, ks.kvars, None)
    return KernelState(kvars, opt)


@functools.partial(jax.jit, static_argnames=("config",))
def warmup(ks: KernelState, target, config: DiffDKPConfig = DiffDKPConfig()) -> tuple[KernelState, jax.Array]:
    """Ki = 1 warm-up Adam step on KL(target || G_k(z)) -> (state, loss before the step). ``target``: a random
    prior kernel by default (``warmup_target``); the released code passes the GT kernel (quirk 2)."""
    loss_fn = lambda v: kernel_kl(target, gk_kernel(v, config))  # noqa: E731
    return _adam_step(ks, loss_fn, config), loss_fn(ks.kvars)


def warmup_target(key, config: DiffDKPConfig = DiffDKPConfig(), k_gt=None):
    """Released (quirk 2): the GT kernel (``k_gt`` required); default: ``random_prior_kernel(key)``."""
    if config.keeps(2):
        if k_gt is None:
            raise ValueError("released quirk 2: the released warm-up targets the ground-truth kernel; pass k_gt")
        return jnp.asarray(k_gt, jnp.float32)
    return random_prior_kernel(key, config.sf, config.width_add_prior, config.kernel_size)


def kernel_step(ks: KernelState, x0_hat, y, k_random, config: DiffDKPConfig = DiffDKPConfig()):
    """One data step (XK = 1) then one prior step (L = 1) on G_k, both Adam, x0_hat constant ->
    (state, aux{loss_data, loss_kl, K_at_kl}). Losses are those entering each step. Without kernel
    gradients (released, quirk 1) nothing changes (torch >= 2: Adam skips parameters whose grad is None)."""
    released = config.keeps(4)
    data_fn = lambda v: kernel_data_loss(gk_kernel(v, config), x0_hat, y, released, config.shift)  # noqa: E731
    loss_data = data_fn(ks.kvars)
    if config.grads_on:
        ks = _adam_step(ks, data_fn, config)
    k_at_kl = gk_kernel(ks.kvars, config)
    kl_fn = lambda v: kernel_kl(k_random, gk_kernel(v, config))  # noqa: E731
    loss_kl = kl_fn(ks.kvars)
    if config.grads_on:
        ks = _adam_step(ks, kl_fn, config)
    return ks, {"loss_data": loss_data, "loss_kl": loss_kl, "K_at_kl": k_at_kl}


# ----------------------------------------------------------------------------- one step


class SamplerState(NamedTuple):
    x_t: jax.Array  # (1, H, W, 3), [-1, 1] scale of the ADM
    kernel: KernelState


def observation_for_dc(y, config: DiffDKPConfig):
    """y in [0, 1] (as Diff-DKP reads it) -> the range the DC step and kernel data loss see: released as is
    (quirk 3), default 2y - 1 (the ADM's range; a unit-sum kernel commutes with it)."""
    return y if config.keeps(3) else 2.0 * y - 1.0


@functools.partial(jax.jit, static_argnames=("config",))
def sampler_step(nets, state: SamplerState, t, y, noise, k_random, config: DiffDKPConfig = DiffDKPConfig()):
    """One Diff-DKP step at respaced t (traced int): nets = {"adm": params, "classifier": params}; y (1, H, W, 3)
    the observation in [0, 1]; noise (1, H, W, 3) the z of this step; k_random (k, k) this step's prior kernel
    (unused for t >= kernel_start). -> (state, aux) with aux the step's intermediates (README 6.1 order)."""
    sched = make_schedule(config)
    x_t, ks = state
    t = jnp.asarray(t, jnp.int32)
    t_model = jnp.asarray(sched["timestep_map"], jnp.int32)[t][None]
    label = jnp.full((1,), config.class_label, jnp.int32)
    model_out = adm.unet_apply(nets["adm"], x_t, t_model, label, config=config.adm_config,
                               dtype=config.torso_dtype)
    x0_pred = predict_x0(sched, x_t, model_out[..., :3], t)
    y_dc = observation_for_dc(y, config)
    k_dc = gk_kernel(ks.kvars, config)
    x0_hat = data_consistency(x0_pred, y_dc, k_dc, config.alpha, config.shift, magnitude=config.keeps(3))

    def update(ks):
        return kernel_step(ks, x0_hat, y_dc, k_random, config)

    def skip(ks):
        nan = jnp.full((), jnp.nan, x0_hat.dtype)
        return ks, {"loss_data": nan, "loss_kl": nan, "K_at_kl": k_dc}

    ks, kaux = lax.cond(t < config.kernel_start, update, skip, ks)
    mean, gamma = posterior_mean(sched, x0_hat, x_t, t)
    cond_grad = adm.classifier_grad(nets["classifier"], x_t, t_model, label, config.classifier_scale,
                                    config=config.classifier_config)
    guided = guide(mean, gamma, cond_grad)
    sample = add_noise(guided, gamma, noise)
    aux = {"model_out": model_out, "x0_pred": x0_pred, "K_dc": k_dc, "x0_hat": x0_hat, "mean_ddnm": mean,
           "cond_grad": cond_grad, "sample": sample, **kaux}
    return SamplerState(sample, ks), aux


# ----------------------------------------------------------------------------- the loop


def draws(key, shape, config: DiffDKPConfig = DiffDKPConfig()):
    """The loop's random draws from one key: (noise (R, *shape), k_random (R, k, k)), index = loop position
    (respaced t = R - 1 - index)."""
    k_noise, k_kern = jax.random.split(key)
    r = config.respacing
    noise = jax.random.normal(k_noise, (r, *shape), jnp.float32)
    k_random = jax.vmap(lambda kk: random_prior_kernel(kk, config.sf, config.width_add_prior, config.kernel_size))(
        jax.random.split(k_kern, r))
    return noise, k_random


@functools.partial(jax.jit, static_argnames=("config",))
def sample_loop(nets, state: SamplerState, y, noise, k_random, config: DiffDKPConfig = DiffDKPConfig()):
    """All steps t = R-1 .. 0 (``lax.scan`` of ``sampler_step``'s body) -> (final state, last x0_hat, trace)
    with trace = per-step K_dc, losses and the means of x_t / x0_hat (README 6.2 summaries)."""
    ts = jnp.arange(config.respacing - 1, -1, -1)

    def body(state, xs):
        t, z, kr = xs
        new, aux = sampler_step.__wrapped__(nets, state, t, y, z, kr, config)
        trace = {"K_dc": aux["K_dc"], "loss_data": aux["loss_data"], "loss_kl": aux["loss_kl"],
                 "x_t_mean": jnp.mean(state.x_t), "x0_hat_mean": jnp.mean(aux["x0_hat"])}
        return new, (trace, aux["x0_hat"])

    state, (trace, x0_hats) = lax.scan(body, state, (ts, noise, k_random))
    return state, x0_hats[-1], trace


def to_image(x0_hat, config: DiffDKPConfig = DiffDKPConfig()):
    """The final estimate as a [0, 1] image: released reads x0_hat as [0, 1] (quirk 3), default (x0_hat + 1)/2."""
    img = x0_hat if config.keeps(3) else (x0_hat + 1.0) / 2.0
    return jnp.clip(img, 0.0, 1.0)


# ----------------------------------------------------------------------------- synthesis (README 5.1)


def _cubic(t, a: float = -0.75):
    """Keys' cubic convolution weights of the 4 taps at offsets -1, 0, 1, 2 for fractional position t."""
    return np.stack([((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a,
                     ((a + 2) * t - (a + 3)) * t * t + 1,
                     ((a + 2) * (1 - t) - (a + 3)) * (1 - t) * (1 - t) + 1,
                     ((a * (2 - t) - 5 * a) * (2 - t) + 8 * a) * (2 - t) - 4 * a], -1)


def bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) matrix of PyTorch's ``interpolate(size=n_out, mode='bicubic', align_corners=False)`` along
    one axis: scale n_in/n_out (float32), source (i + 0.5) scale - 0.5, A = -0.75, taps clamped at the border,
    no antialiasing."""
    scale = np.float32(n_in) / np.float32(n_out)
    src = (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    x0 = np.floor(src)
    w = _cubic((src - x0).astype(np.float64))
    m = np.zeros((n_out, n_in))
    for j in range(4):
        np.add.at(m, (np.arange(n_out), np.clip(x0.astype(np.int64) - 1 + j, 0, n_in - 1)), w[:, j])
    return m


def bicubic_resize(x, size):
    """PyTorch size-based bicubic resize (``bicubic_matrix`` on both axes) of NHWC x to (H', W'); no clipping."""
    mh = jnp.asarray(bicubic_matrix(x.shape[1], size[0]), x.dtype)
    mw = jnp.asarray(bicubic_matrix(x.shape[2], size[1]), x.dtype)
    return jnp.einsum("ph,nhwc,qw->npqc", mh, x, mw, precision=HIGHEST)


def synthesize(x, kernel, shift: int = 9, sf_bic: int = 3):
    """Diff-DKP's test case (README 5.1): |IFFT(FFT(x) Kh)| (circular convolution), roll by -shift, bicubic
    down to size // sf_bic (the hard-coded factor 3) and back up -> (y, y_small). x NHWC in [0, 1]."""
    hw = x.shape[1:3]
    blur = jnp.abs(jnp.fft.ifft2(_fft2(x) * kernel_fft(kernel, hw), axes=(1, 2))).astype(x.dtype)
    small = bicubic_resize(jnp.roll(blur, (-shift, -shift), axis=(1, 2)), (hw[0] // sf_bic, hw[1] // sf_bic))
    return bicubic_resize(small, hw), small


# ----------------------------------------------------------------------------- windows (README 5.4)


def window_origins(size: int, window: int = 256, stride: int = 128) -> list[int]:
    """Window starts along one axis: n = max(1, ceil(size/stride) - 1) windows at stride, the last moved to
    end at ``size`` when size is not a multiple of stride; one window at 0 when size <= window."""
    if size <= window:
        return [0]
    n = max(1, math.ceil(size / stride) - 1)
    starts = [stride * i for i in range(n)]
    starts[-1] = min(starts[-1], size - window)
    return starts


def window_layout(h: int, w: int, config: DiffDKPConfig = DiffDKPConfig()):
    """-> (origins [(row, col)] in processing order (row-major), owner (h, w) 1-based window index per pixel).
    Assembly overwrites in order, dropping the first ``window_bias`` rows (cols) of every window not in the
    first window row (col); no blending."""
    rows, cols = window_origins(h, config.window, config.stride), window_origins(w, config.window, config.stride)
    wh, ww = min(h, config.window), min(w, config.window)
    origins = [(r, c) for r in rows for c in cols]
    owner = np.zeros((h, w), np.int16)
    for i, (r, c) in enumerate(origins):
        r0 = 0 if r == rows[0] else config.window_bias
        c0 = 0 if c == cols[0] else config.window_bias
        owner[r + r0:r + wh, c + c0:c + ww] = i + 1
    return origins, owner


# ----------------------------------------------------------------------------- the whole sampler


@functools.partial(jax.jit, static_argnames=("config",))
def _setup_kernel(kvars, key, k_gt, config: DiffDKPConfig):
    ks, _ = warmup(init_kernel_state(kvars, config), warmup_target(key, config, k_gt), config)
    return ks


@functools.partial(jax.jit, static_argnames=("config",))
def _window(nets, x_t, ks, y, key, config: DiffDKPConfig):
    """One window's full loop: fresh x_T (default) or the carried x_t (released), draws from ``key``."""
    k_x, k_draw = jax.random.split(key)
    if not config.keeps(5):
        x_t = jax.random.normal(k_x, x_t.shape, x_t.dtype)
    noise, k_random = draws(k_draw, x_t.shape, config)
    state, x0_hat, _ = sample_loop.__wrapped__(nets, SamplerState(x_t, ks), y, noise, k_random, config)
    return state, x0_hat


def run(nets, lr, key, config: DiffDKPConfig = DiffDKPConfig(), hr_size=None, kvars=None, k_gt=None):
    """Diff-DKP on an LR image: lr (1, h, w, 3) in [0, 1] -> (SR image (1, H, W, 3) in [0, 1], kernel (k, k)).

    y = bicubic_resize(lr, hr_size) (default 3 h x 3 w, the original's factor-3 pair); G_k from ``kvars`` or
    `kernel_priors.mlp_init`; one warm-up step (``warmup_target``; ``k_gt`` only with quirk 2 kept); then
    the full loop on every ``window_layout`` window (G_k and its Adam state carry over; x_t too with quirk 5
    kept, else a fresh x_T per window), assembled by overwriting (README 5.4). Images smaller than
    the window run as one window of their own size (the released code's 10-px cut at 64 px is not kept).
    """
    lr = jnp.asarray(lr, jnp.float32)
    hr_size = (3 * lr.shape[1], 3 * lr.shape[2]) if hr_size is None else tuple(hr_size)
    y = bicubic_resize(lr, hr_size)
    k_init, k_warm, k_loop = jax.random.split(key, 3)
    if kvars is None:
        kvars = kernel_priors.mlp_init(k_init, config.kernel_size)
    ks = _setup_kernel(kvars, k_warm, None if k_gt is None else jnp.asarray(k_gt, jnp.float32), config)
    origins, owner = window_layout(*hr_size, config)
    wh, ww = min(hr_size[0], config.window), min(hr_size[1], config.window)
    out = np.zeros((1, *hr_size, 3), np.float32)
    x_t = jax.random.normal(jax.random.fold_in(k_loop, len(origins)), (1, wh, ww, 3), jnp.float32)
    for i, (r, c) in enumerate(origins):
        (x_t, ks), x0_hat = _window(nets, x_t, ks, y[:, r:r + wh, c:c + ww], jax.random.fold_in(k_loop, i), config)
        mask = (owner[r:r + wh, c:c + ww] == i + 1)[None, :, :, None]
        out[:, r:r + wh, c:c + ww] = np.where(mask, np.asarray(x0_hat), out[:, r:r + wh, c:c + ww])
    return to_image(jnp.asarray(out), config), gk_kernel(ks.kvars, config)
