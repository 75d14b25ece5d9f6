"""DKP, the dynamic kernel prior (DKP_SPEC 3, 4, 6), as a kernel prior of the DIP solver (`fkp_jax.dipfkp`).

G_k is the Double-DIP kernel MLP of `fkp_jax.kernel_priors` (fixed 200-d code U[0, 1) * 0.1 ->
Linear(200, 1000) -> ReLU6 -> Linear(1000, k^2) -> softmax), trained online, per image, with no
pre-training, by ONE Adam optimiser (lr 1e-4, PyTorch's formula: eps outside the square root, bias
corrections 1 - beta^n; `optax.adam` is that formula) shared by three kinds of step:
- warm-up (before the first DIP step, `warmup_steps` = 200): draw one random kernel k_r (RKS), minimise
  MSE(k_r, G_k(z)), one Adam step;
- prior step (first DIP step of every outer iteration of Q = `inner_steps` = 5 DIP steps): with the
  current DIP output x, draw L = `n_samples` = 5 random kernels k_l and compute, in this order,
  e_l = MSE(A_{k_l}(x), y), m_l = MSE(k_l, G_k(z)), p_l = (e_l - min e) / (1e-5 + sum_j (e_j - min e)),
  w_l = -(1 - p_l)^2 log(p_l + 1e-3) (constants, no gradient), loss = sum_l w_l m_l, one Adam step
  (`prior_terms`, golden_dkp README 4.2 (a));
- data step: the kernel gradient of the DIP data loss D(A_{G_k(z)}(stopgrad x), y) is accumulated over
  DIP steps; the sum is reset at the start of every outer iteration and applied (one Adam step, then
  cleared) at every global DIP step c with c % P == 0, P = `data_period` = 3 (`dkp_window`). Sums
  collected after the last data step of an outer iteration are discarded by the reset, as the original.
The DIP loss gains the hyper-Laplacian image prior R(x) (`hyper_laplacian`), and the loss switches from
1 - SSIM to MSE after outer iteration 80, i.e. after global step c = 405 (`KernelPrior.ssim_until`).

Random kernels come from a source ``source(key, index) -> (k, k)`` with index 0 .. warmup_steps - 1 for
the warm-up and warmup_steps + L t + l for kernel l of the prior step of outer iteration t (0-based):
`sampler_source` draws from the DKP Gaussian (or linear-motion) sampler of `fkp_jax.kernels` with
``fold_in(key, index)``; `replay_source` indexes a recorded (N, k, k) array, which replays the original's
kernel stream (golden_dkp ``rk_kernels_f32``).

Optional Langevin update (``langevin=True``; issue 9 item 3; the released code injects no noise, the paper
calls the random-kernel prior signal "network-based Langevin dynamics" but its update equation was not
available to us): after every G_k update (warm-up, prior and data steps) each parameter theta gets
theta <- theta + sqrt(2 lr T) xi, xi ~ N(0, 1) i.i.d., lr the G_k learning rate, T = `temperature`
(`langevin_noise`, chained after Adam, on the two Linear layers, not on the fixed code; its key is the
one the solver hands to that update). Our default T = 1e-4 makes the noise's standard deviation
sqrt(2e-8) ~ 1.4e-4, about one Adam step (lr) per update.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fkp_jax import kernel_priors
from fkp_jax import kernels as kernels_lib
from fkp_jax import metrics
from fkp_jax.degrade import degrade
from fkp_jax.kernel_priors import KernelPrior

KERNEL_TYPES = ("gaussian", "motion")
# The original's constants (DKP_SPEC 6; golden_dkp `constants`)
INNER_STEPS = 5  # Q: DIP steps per outer iteration
DATA_PERIOD = 3  # P: a G_k data step at every global DIP step c with c % P == 0
N_SAMPLES = 5  # L: random kernels per prior step
WARMUP_STEPS = 200
SSIM_OUTER_ITERATIONS = 80  # 1 - SSIM for outer iterations t <= 80, MSE after
HL_WEIGHT = 0.001 * 1 * 0.20  # grad_loss_lr * noise2_mean * 0.2
HL_POWER = 0.67
HL_EPS = 1e-8


# ----------------------------------------------------------------------------- random kernel sources

def sampler_source(sf: int, kernel_type: str = "gaussian") -> Callable[[jax.Array, Any], jax.Array]:
    """``source(key, index)``: a fresh random prior kernel from ``fold_in(key, index)``.

    "gaussian": `kernels.random_dkp_gaussian_kernel` (the branch the released DIP-DKP runs);
    "motion": `kernels.random_linear_motion_kernel` (the original's unreachable 'DIPDKP-motion' branch).
    """
    if kernel_type == "gaussian":
        sample = kernels_lib.random_dkp_gaussian_kernel
    elif kernel_type == "motion":
        sample = kernels_lib.random_linear_motion_kernel
    else:
        raise ValueError(f"unknown DKP kernel type {kernel_type!r}; choose one of {', '.join(KERNEL_TYPES)}")
    return lambda key, index: sample(jax.random.fold_in(key, index), sf)


def replay_source(kernels) -> Callable[[jax.Array, Any], jax.Array]:
    """``source(key, index) = kernels[index]`` (key ignored): replays a recorded (N, k, k) kernel stream in
    the solver's float dtype. Valid for indices < N only (JAX clamps larger ones to the last kernel)."""
    recorded = np.asarray(kernels)

    def source(key, index):
        return jnp.asarray(recorded, jnp.result_type(float))[index]

    return source


# ----------------------------------------------------------------------------- schedule

def outer_iteration(c, inner_steps: int = INNER_STEPS):
    """0-based outer iteration of global DIP step c (1-based): (c - 1) // Q."""
    return (c - 1) // inner_steps


def dkp_window(c, inner_steps: int = INNER_STEPS, data_period: int = DATA_PERIOD):
    """(reset, apply) of the kernel-gradient sum at global DIP step c: reset at the first step of every outer
    iteration ((c - 1) % Q == 0), apply at c % P == 0. With Q = 5, P = 3 the applied windows are {1,2,3},
    {6}, {7,8,9}, {11,12}, {13,14,15}, ... and {4,5}, {10}, {19,20}, ... are discarded (golden README 4.2)."""
    return (c - 1) % inner_steps == 0, c % data_period == 0


def ssim_until(inner_steps: int = INNER_STEPS, last_outer: int = SSIM_OUTER_ITERATIONS) -> int:
    """Last global DIP step with the 1 - SSIM loss: the end of outer iteration 80, c = 81 Q = 405."""
    return (last_outer + 1) * inner_steps


# ----------------------------------------------------------------------------- losses

def kernel_mse(a, b):
    """Mean squared difference of two kernels (MSELoss)."""
    return jnp.mean(jnp.square(a - b))


def prior_weights(e):
    """(p, w, denominator) of the prior step from the L reconstruction errors e (last axis):
    p = (e - min e) / (1e-5 + sum(e - min e)), w = -(1 - p)^2 log(p + 1e-3) (the best kernel gets 6.9078)."""
    d = e - jnp.min(e, axis=-1, keepdims=True)
    denominator = 1e-5 + jnp.sum(d, axis=-1)
    p = d / denominator[..., None]
    return p, -jnp.square(1 - p) * jnp.log(p + 1e-3), denominator


def prior_terms(kernel_vars, sr, lr, prior_kernels, sf: int, k: int):
    """The prior step's terms for random kernels (L, k, k) and DIP output sr (1, H, W, C): dict with
    x_losses e_l, k_losses m_l, prob p_l, weights w_l, denominator and loss = sum_l stopgrad(w_l) m_l."""
    kernel = kernel_priors.mlp_kernel(kernel_vars, k)
    sr = jax.lax.stop_gradient(sr)
    e = jax.vmap(lambda kr: metrics.mse(degrade(sr, kr, sf), lr))(prior_kernels)
    m = jax.vmap(lambda kr: kernel_mse(kr, kernel))(prior_kernels)
    p, w, denominator = prior_weights(e)
    w = jax.lax.stop_gradient(w)
    return {"x_losses": e, "k_losses": m, "prob": p, "weights": w, "denominator": denominator,
            "loss": jnp.sum(w * m)}


def hyper_laplacian(x, n_lr: int, weight: float = HL_WEIGHT, power: float = HL_POWER, eps: float = HL_EPS):
    """DKP's image prior R(x) = weight * sum_d sum((|grad_d x| + eps)^power) / n_lr on NHWC x.

    grad_d over four first differences of x reflect-padded by 1 (PyTorch 'reflect'): pixel minus its up,
    up-left, left and down-left neighbour; all channels and pixels; n_lr = number of LR elements (3 h w);
    weight = 0.001 * 1 * 0.2 (golden_dkp README section 5). |.| has gradient 0 at 0, as in PyTorch.
    """
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    centre = xp[:, 1:-1, 1:-1]
    neighbours = (xp[:, :-2, 1:-1], xp[:, :-2, :-2], xp[:, 1:-1, :-2], xp[:, 2:, :-2])
    abs0 = lambda d: d * jnp.sign(d)  # noqa: E731  |d| with PyTorch's gradient 0 at 0 (jnp.abs has 1 there)
    total = sum(jnp.sum(jnp.power(abs0(centre - nb) + eps, power)) for nb in neighbours)
    return weight * total / n_lr


def image_regulariser(sr, lr):
    """`hyper_laplacian` of the DIP output with the LR element count of the target as divisor."""
    return hyper_laplacian(sr, lr.size)


# ----------------------------------------------------------------------------- optimiser

class TorchAdamState(NamedTuple):
    count: jax.Array
    mu: Any
    nu: Any


def torch_adam(lr: float, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> optax.GradientTransformation:
    """``torch.optim.Adam`` (no weight decay, no amsgrad), its single-tensor CPU formula and order:
    m <- m + (1 - b1)(g - m) (lerp); v <- b2 v + (1 - b2) g^2; n <- n + 1;
    p <- p - (lr / (1 - b1^n)) m / (sqrt(v) / sqrt(1 - b2^n) + eps).

    Why not `optax.adam` (the same formula on paper): in float32 it computes 1 - b^n from b rounded to
    float32 (1 - 0.999f = 9.99987e-4, 1.3e-5 relative off), which moves the first G_k updates by 7e-6
    relative: G_k's gradients (~1e-8) are comparable to eps, so Adam's steps are not sign-like and such
    errors persist (golden_dkp README 3). PyTorch computes the bias corrections in double; here
    1 - b^n = -expm1(n log b) is accurate to the parameters' precision in float32 and float64.
    """
    log_b1, log_b2 = math.log(b1), math.log(b2)

    def init_fn(params):
        zeros = jax.tree.map(jnp.zeros_like, params)
        return TorchAdamState(jnp.zeros([], jnp.int32), zeros, zeros)

    def update_fn(updates, state, params=None):
        del params
        n = state.count + 1
        mu = jax.tree.map(lambda m, g: m + (1 - b1) * (g - m), state.mu, updates)
        nu = jax.tree.map(lambda v, g: v * b2 + (1 - b2) * (g * g), state.nu, updates)

        def one(m, v):
            bc1 = -jnp.expm1(n.astype(m.dtype) * log_b1)
            bc2 = -jnp.expm1(n.astype(m.dtype) * log_b2)
            return -(lr / bc1) * m / (jnp.sqrt(v) / jnp.sqrt(bc2) + eps)

        return jax.tree.map(one, mu, nu), TorchAdamState(n, mu, nu)

    return optax.GradientTransformation(init_fn, update_fn)


# ----------------------------------------------------------------------------- Langevin noise

def langevin_noise(lr: float, temperature: float) -> optax.GradientTransformationExtraArgs:
    """Adds sqrt(2 lr T) N(0, 1) to every update (i.e. to the parameters after the step it is chained
    after). Needs ``key=`` in ``update`` (`kernel_priors.optimizer_update` passes the solver's key)."""
    scale = math.sqrt(2.0 * lr * temperature)

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None, *, key=None, **extra):
        del params, extra
        if key is None:
            raise ValueError("langevin_noise needs a key: update(..., key=key)")
        leaves, treedef = jax.tree.flatten(updates)
        keys = jax.random.split(key, len(leaves))
        noisy = [u + scale * jax.random.normal(kk, u.shape, u.dtype) for u, kk in zip(leaves, keys)]
        return jax.tree.unflatten(treedef, noisy), state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# ----------------------------------------------------------------------------- the prior

def dkp_prior(sf: int, lr: float = 1e-4, kernel_type: str = "gaussian", source=None,
              warmup_steps: int = WARMUP_STEPS, inner_steps: int = INNER_STEPS, data_period: int = DATA_PERIOD,
              n_samples: int = N_SAMPLES, langevin: bool = False, temperature: float = 1e-4,
              code_dim: int = 200, hidden: int = 1000) -> KernelPrior:
    """DIP-DKP's kernel prior (module docstring); the released code's behaviour by default.

    ``source(key, index)`` overrides the random kernels (e.g. `replay_source`); by default
    `sampler_source(sf, kernel_type)`. ``langevin`` adds the Langevin noise of `langevin_noise`.
    """
    k = kernels_lib.kernel_size(sf)
    source = sampler_source(sf, kernel_type) if source is None else source
    optimizer = torch_adam(lr)
    if langevin:  # noise on the trained weights only, not on the fixed code
        noise = optax.masked(langevin_noise(lr, temperature), lambda v: {name: name != "code" for name in v})
        optimizer = optax.chain(optimizer, noise)
    kernel = functools.partial(kernel_priors.mlp_kernel, k=k)

    def update(loss_fn, kvars, opt_state, key):
        grads = jax.grad(loss_fn)(kvars)
        return kernel_priors.optimizer_update(optimizer, grads, opt_state, kvars, key)

    @jax.jit
    def warmup(kvars, opt_state, key):
        k_draw, k_noise = jax.random.split(key)

        def one(carry, i):
            kvars, opt_state = carry
            target = source(k_draw, i)
            return update(lambda v: kernel_mse(target, kernel(v)), kvars, opt_state,
                          jax.random.fold_in(k_noise, i)), None

        (kvars, opt_state), _ = jax.lax.scan(one, (kvars, opt_state), jnp.arange(warmup_steps))
        return kvars, opt_state

    def prior_kernels(key, c):
        """The L random kernels of the prior step at global DIP step c (draws warmup_steps + L t + l)."""
        first = warmup_steps + n_samples * outer_iteration(c, inner_steps)
        return jax.vmap(lambda i: source(key, i))(first + jnp.arange(n_samples))

    def prior_step(kvars, opt_state, sr, lr_image, c, key):
        k_draw, k_noise = jax.random.split(key)

        def act(operands):
            kvars, opt_state = operands
            draws = prior_kernels(k_draw, c)
            loss = lambda v: prior_terms(v, sr, lr_image, draws, sf, k)["loss"]  # noqa: E731
            return update(loss, kvars, opt_state, k_noise)

        starts = (c - 1) % inner_steps == 0
        return jax.lax.cond(starts, act, lambda operands: operands, (kvars, opt_state))

    return KernelPrior(
        name="dkp", sf=sf, init=lambda key: kernel_priors.mlp_init(key, k, code_dim, hidden), kernel=kernel,
        optimizer=optimizer, first_update=data_period, project=lambda v: v, warmup=warmup,
        prior_step=prior_step, window=functools.partial(dkp_window, inner_steps=inner_steps,
                                                        data_period=data_period),
        image_regulariser=image_regulariser, ssim_until=ssim_until(inner_steps),
    )


# ----------------------------------------------------------------------------- the original's G_k

def gk_params_from_torch(state_dict, code, dtype=jnp.float32) -> dict:
    """The original G_k state dict (`1.weight`, `1.bias`, `3.weight`, `3.bias`; golden_dkp README 3) and
    its fixed code (200,) -> variables of `kernel_priors.mlp_kernel` (Linear weights transposed)."""
    expected = {"1.weight", "1.bias", "3.weight", "3.bias"}
    if set(state_dict) != expected:
        raise ValueError(f"not a DKP G_k state dict: keys {sorted(state_dict)}, expected {sorted(expected)}")
    w1, b1, w3, b3 = (np.asarray(state_dict[n]) for n in ("1.weight", "1.bias", "3.weight", "3.bias"))
    code = np.asarray(code).reshape(-1)
    if w1.shape != (b1.shape[0], code.shape[0]) or w3.shape != (b3.shape[0], b1.shape[0]):
        raise ValueError(f"G_k shapes do not fit together: code {code.shape}, 1.weight {w1.shape}, "
                         f"1.bias {b1.shape}, 3.weight {w3.shape}, 3.bias {b3.shape}")
    if round(math.sqrt(b3.shape[0])) ** 2 != b3.shape[0]:
        raise ValueError(f"G_k output size {b3.shape[0]} is not a square k^2")
    a = lambda x: jnp.asarray(x, dtype)  # noqa: E731
    return {"code": a(code), "dense1": {"kernel": a(w1.T), "bias": a(b1)},
            "dense2": {"kernel": a(w3.T), "bias": a(b3)}}
