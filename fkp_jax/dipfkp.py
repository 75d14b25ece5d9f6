"""The DIP solver with a pluggable kernel prior: one jitted step (FKP_SPEC 6.4, DKP_SPEC 6).

Iteration t = 1 .. iters (``state["t"]`` holds the number of the NEXT iteration; for DIP-DKP it is the
original's global DIP-step counter c):
1. sr = DIP(z_x) (NHWC, batch-norm in training mode), kept with its VJP. If the prior has a
   ``prior_step`` it runs now on that sr (DKP: a weighted random-kernel step at the start of every
   outer iteration); sr does not depend on the kernel, so this is the original's order.
2. kernel = prior.kernel(kernel variables); out = degrade(sr, kernel, sf) (circular pad, correlation,
   subsample from 0; spec 6.3); data loss = 1 - SSIM(out, lr) for t <= ssim_until, MSE(out, lr) after
   (ssim_until: the config's, else the prior's: 80, DKP 405); plus ``prior.image_regulariser(sr, lr)``
   when the prior has one (DKP's hyper-Laplacian), which reaches the DIP only.
3. Adam (lr 5e-3) on the DIP parameters with the gradient of the whole loss. The data loss's kernel
   gradient enters the prior's gradient window (``prior.grad_window(t)``: reset and/or apply; by default
   each iteration's own gradient, applied from ``prior.first_update`` on: 77 for the FKP latent, as the
   original); then ``prior.project`` every iteration (the sphere of radius k - 1 for FKP).
Because the kernel depends only on the kernel variables and sr only on the DIP parameters, the one
backward pass gives both the DIP gradient (kernel held fixed) and the kernel gradient (sr held fixed):
DKP's two stop-gradient losses of equal value. The kernel and SR of the last iteration's forward pass
(after any prior step, before the updates) are the results, as in the original (spec 6.5).
A prior's ``warmup`` runs when the state is made (`state_from`). Randomness: the state carries a key;
iteration t hands ``fold_in(key, t)`` to the prior.

Seeds are a leading axis of the state. ``make_step(..., seeds=True)`` vmaps the step over it, so N
restarts run as one computation; on XLA:CPU that is slower than stepping the seeds one after another
(see `default_seed_mode`), so `make_runner` chooses per backend. The step is jitted once; how it is
driven is chosen by backend too: a Python loop over the jitted step on CPU, ``lax.scan`` over chunks
of iterations on accelerators (`make_runner`'s ``chunk`` argument; measurements in docs/benchmarks.md).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from jax import lax

from fkp_jax import dip, kernel_priors, metrics
from fkp_jax.degrade import degrade
from fkp_jax.kernel_priors import KernelPrior
from fkp_jax.seeds import drive, stack_states, unstack  # noqa: F401 (stack_states, unstack: part of this API)

State = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class DIPFKPConfig:
    """Solver settings with the original's defaults (FKP_SPEC 6.1, 6.4)."""

    sf: int = 2
    iters: int = 1000
    dip_lr: float = 5e-3
    ssim_until: int | None = None  # 1 - SSIM for t <= ssim_until, MSE after; None: the prior's (80; DKP 405)
    input_noise_scale: float = 0.1  # DIP input: U[0, 1) * 0.1, fixed for all iterations
    input_channels: int = 3


def dip_optimizer(config: DIPFKPConfig) -> optax.GradientTransformation:
    """Adam (lr 5e-3, PyTorch's betas and eps) on the DIP parameters, per tensor. (One flat vector through
    ``optax.flatten`` measured slower on XLA:CPU, 0.33 vs 0.29 s per 96x96 iteration on AVX2: the ravel
    and unravel of 2.36M values cost more than the ~450 small fused loops they replace.)"""
    return optax.adam(config.dip_lr)


def ssim_until(prior: KernelPrior, config: DIPFKPConfig) -> int:
    """The last iteration with the 1 - SSIM loss: the config's if set, else the prior's."""
    return prior.ssim_until if config.ssim_until is None else config.ssim_until


def init_state(key: jax.Array, prior: KernelPrior, lr_hw: tuple[int, int], config: DIPFKPConfig) -> State:
    """A fresh restart for an LR image of size lr_hw: DIP init, DIP input noise, kernel variables and the
    prior's own key all from ``key`` (split per purpose)."""
    k_dip, k_noise, k_prior = jax.random.split(key, 3)
    h, w = lr_hw[0] * config.sf, lr_hw[1] * config.sf
    z_x = config.input_noise_scale * jax.random.uniform(k_noise, (1, h, w, config.input_channels), jnp.float32)
    dip_params = dip.init(k_dip, z_x.shape)
    return state_from(dip_params, z_x, prior.init(k_prior), prior, config, key=jax.random.fold_in(key, 3))


def original_state(prior: KernelPrior, lr_hw: tuple[int, int], config: DIPFKPConfig) -> State:
    """The released code's fixed start for an LR image of size lr_hw (FKP prior only): its DIP input, DIP
    weights and latent rebuilt from PyTorch's seeded streams (`fkp_jax.torch_rng.original_start`). The
    original starts EVERY run on an image of this size here, whatever its seed, so its restarts cannot
    differ; our default (`init_state`) draws all three from the restart's key instead (docs/results.md,
    "DIP-FKP: our loop against the official loop")."""
    from fkp_jax import torch_rng

    if prior.name != "fkp":
        raise ValueError(f"the original's start is defined for the FKP prior only, not {prior.name!r}")
    hr_hw = (lr_hw[0] * config.sf, lr_hw[1] * config.sf)
    z_x, state_dict, latent = torch_rng.original_start(hr_hw, config.sf, config.input_channels,
                                                       config.input_noise_scale)
    return state_from(dip.params_from_torch(state_dict), jnp.asarray(z_x), jnp.asarray(latent), prior, config)


def state_from(dip_params, z_x: jax.Array, kernel_vars, prior: KernelPrior, config: DIPFKPConfig,
               key: jax.Array | None = None) -> State:
    """A solver state at iteration 1 from given DIP parameters, DIP input (1, H, W, C) and kernel variables.

    ``key`` drives the prior's randomness (its warm-up, which runs here, and every iteration); None means
    ``jax.random.key(0)``, fine for priors without randomness or with replayed draws.
    """
    key = jax.random.key(0) if key is None else key
    k_warmup, k_run = jax.random.split(key)
    k_opt = prior.optimizer.init(kernel_vars)
    if prior.warmup is not None:
        kernel_vars, k_opt = prior.warmup(kernel_vars, k_opt, k_warmup)
    return {
        "t": jnp.asarray(1, jnp.int32),
        "dip": dip_params,
        "dip_opt": dip_optimizer(config).init(dip_params),
        "kvars": kernel_vars,
        "k_opt": k_opt,
        "k_acc": jax.tree.map(jnp.zeros_like, kernel_vars),  # the kernel gradient window's running sum
        "key": k_run,
        "z_x": z_x,
    }


def data_loss(sr, kernel_vars, lr, t, prior: KernelPrior, config: DIPFKPConfig):
    """(data loss of iteration t, kernel) for a DIP output sr (1, H, W, C); lr is (1, h, w, C) in [0, 1]."""
    kernel = prior.kernel(kernel_vars)
    out = degrade(sr, kernel, config.sf)
    # lax.cond, not jnp.where: one seed then skips the SSIM (and its gradient) from t = ssim_until + 1 on;
    # vmapped over seeds it becomes a select of both, as jnp.where was.
    loss = lax.cond(t <= ssim_until(prior, config), lambda: 1.0 - metrics.ssim(out, lr),
                    lambda: metrics.mse(out, lr))
    return loss, kernel


def _backward(sr, dip_vjp, kernel_vars, lr, t, prior: KernelPrior, config: DIPFKPConfig):
    """Loss, outputs and (DIP gradients, kernel-variable gradients) given the DIP forward (sr, its VJP)."""
    (loss, kernel), (g_sr, g_k) = jax.value_and_grad(data_loss, argnums=(0, 1), has_aux=True)(
        sr, kernel_vars, lr, t, prior, config)
    out = {"loss": loss, "kernel": kernel, "sr": sr}
    if prior.image_regulariser is not None:  # the DIP's loss only: it does not depend on the kernel
        reg, g_reg = jax.value_and_grad(prior.image_regulariser)(sr, lr)
        g_sr = g_sr + g_reg
        out.update(loss=loss + reg, loss_data=loss, image_reg=reg)
    (g_dip,) = dip_vjp(g_sr)
    return out, (g_dip, g_k)


def grads(state: State, lr, prior: KernelPrior, config: DIPFKPConfig):
    """(loss, (sr, kernel)), (DIP gradients, kernel-variable gradients) of the current iteration at the
    state's kernel variables (without the prior's own step)."""
    sr, dip_vjp = jax.vjp(lambda p: dip.apply(p, state["z_x"]), state["dip"])
    out, g = _backward(sr, dip_vjp, state["kvars"], lr, state["t"], prior, config)
    return (out["loss"], (out["sr"], out["kernel"])), g


def step(state: State, lr, prior: KernelPrior, config: DIPFKPConfig):
    """One iteration (module docstring): returns the next state and {loss, kernel, sr} of this iteration's
    forward (plus loss_data and image_reg for a prior with an image regulariser; loss is their sum)."""
    t = state["t"]
    k_prior, k_update = jax.random.split(jax.random.fold_in(state["key"], t))
    sr, dip_vjp = jax.vjp(lambda p: dip.apply(p, state["z_x"]), state["dip"])
    kvars, k_opt_state = state["kvars"], state["k_opt"]
    if prior.prior_step is not None:
        kvars, k_opt_state = prior.prior_step(kvars, k_opt_state, jax.lax.stop_gradient(sr), lr, t, k_prior)
    out, (g_dip, g_k) = _backward(sr, dip_vjp, kvars, lr, t, prior, config)

    updates, dip_opt_state = dip_optimizer(config).update(g_dip, state["dip_opt"], state["dip"])
    dip_params = optax.apply_updates(state["dip"], updates)

    reset, apply = prior.grad_window(t)
    acc = jax.tree.map(lambda a, g: jnp.where(reset, g, a + g), state["k_acc"], g_k)
    new_kvars, new_k_opt = kernel_priors.optimizer_update(prior.optimizer, acc, k_opt_state, kvars, k_update)
    keep = lambda new, old: jnp.where(apply, new, old)  # noqa: E731
    kvars = jax.tree.map(keep, new_kvars, kvars)
    k_opt_state = jax.tree.map(keep, new_k_opt, k_opt_state)
    acc = jax.tree.map(lambda a: jnp.where(apply, jnp.zeros_like(a), a), acc)
    kvars = prior.project(kvars)

    new_state = {"t": t + 1, "dip": dip_params, "dip_opt": dip_opt_state, "kvars": kvars,
                 "k_opt": k_opt_state, "k_acc": acc, "key": state["key"], "z_x": state["z_x"]}
    return new_state, out


def over_seeds(fn: Callable) -> Callable:
    """``fn(state, lr)`` vmapped over the state's leading seed axis; lr (1, H, W, 3) is shared by every seed,
    or (N, 1, H, W, 3) gives each seed its own LR image (images of one size batched by a study)."""
    return lambda state, lr: jax.vmap(fn, in_axes=(0, 0 if lr.ndim == 5 else None))(state, lr)


def _step_seeds(state: State, lr, prior: KernelPrior, config: DIPFKPConfig):
    return over_seeds(lambda s, y: step(s, y, prior, config))(state, lr)


# One jit cache for every make_step call: the prior (a frozen dataclass of functions, hashed by their identity)
# and the config are static arguments, so runners, studies and tests that step the same prior object on the
# same shapes share one compilation.
_STEP = jax.jit(step, static_argnames=("prior", "config"), donate_argnums=0)
_STEP_SEEDS = jax.jit(_step_seeds, static_argnames=("prior", "config"), donate_argnums=0)


def make_step(prior: KernelPrior, config: DIPFKPConfig, seeds: bool = False) -> Callable:
    """The jitted step ``(state, lr) -> (state, outputs)``; with seeds=True, vmapped over the state's leading axis
    (`over_seeds`). The input state is donated (its buffers are reused for the new state): do not read it afterwards.
    """
    fn = _STEP_SEEDS if seeds else _STEP
    return lambda state, lr: fn(state, lr, prior=prior, config=config)


def make_chunk(prior: KernelPrior, config: DIPFKPConfig, length: int, seeds: bool = False) -> Callable:
    """``length`` iterations as one ``lax.scan`` (for accelerators): ``(state, lr) -> (state, outputs)``
    with the outputs of the last iteration plus ``losses`` of all of them. Donates the input state."""
    one = lambda s, lr: step(s, lr, prior, config)
    if seeds:
        one = over_seeds(one)

    def chunk(state, lr):
        # the carry holds the last outputs; zeros of their shapes to start (one traced copy of the step, not two)
        out = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), jax.eval_shape(one, state, lr)[1])

        def body(carry, _):
            s, o = one(carry[0], lr)
            return (s, o), o["loss"]

        (state, out), losses = jax.lax.scan(body, (state, out), None, length=length)
        return state, {**out, "losses": losses}

    return jax.jit(chunk, donate_argnums=0)


def default_chunk() -> int:
    """Iterations per dispatch: 1 (a Python loop over the jitted step) on CPU, 50 (lax.scan) elsewhere."""
    return 1 if jax.default_backend() == "cpu" else 50


def default_seed_mode() -> str:
    """How restarts share the machine: "loop" on CPU, "vmap" elsewhere.

    Measured on 2 CPU cores, 5 seeds at 96x96, seconds per iteration (docs/benchmarks.md): a loop of
    per-seed jitted steps 0.69, vmap 1.57 (XLA:CPU runs the vmapped small convolutions as slow grouped
    convolutions), vmap with every conv as im2col + batched matmul 0.77.
    """
    return "loop" if jax.default_backend() == "cpu" else "vmap"


def make_runner(prior: KernelPrior, config: DIPFKPConfig, seeds: bool = False, chunk: int | None = None,
                seed_mode: str | None = None):
    """A driver ``run(state, lr, iters=None, callback=None) -> (state, last outputs, seconds)``.

    The jitted functions are built once here, so every image of the same size reuses one compilation.
    chunk = 1: a Python loop over the jitted step (the CPU default); chunk > 1: ``lax.scan`` over
    ``chunk`` iterations per dispatch (the accelerator default). With seeds=True the state has a
    leading seed axis, advanced either as one vmapped computation (seed_mode "vmap") or seed by seed
    through the single-seed step ("loop"); see `default_seed_mode`; lr as in `over_seeds`. ``callback(t, outputs)`` is called
    after every dispatch with the number t of its last iteration (outputs with the seed axis; reading
    them synchronises with the device).
    """
    chunk = default_chunk() if chunk is None else chunk
    seed_mode = default_seed_mode() if seed_mode is None else seed_mode
    if seed_mode not in ("loop", "vmap"):
        raise ValueError(f"seed_mode must be 'loop' or 'vmap', not {seed_mode!r}")
    vmapped = seeds and seed_mode == "vmap"
    fns: dict[int, Callable] = {}

    def fn(n: int) -> Callable:
        if n not in fns:
            fns[n] = make_step(prior, config, vmapped) if n == 1 else make_chunk(prior, config, n, vmapped)
        return fns[n]

    def run(state: State, lr, iters: int | None = None, callback: Callable[[int, dict], None] | None = None):
        looped = seeds and not vmapped
        return drive(fn, state, lr, config.iters if iters is None else iters, looped, chunk,
                     per_seed_arg=looped and lr.ndim == 5, callback=callback)

    return run


def run(state: State, lr, prior: KernelPrior, config: DIPFKPConfig, iters: int | None = None,
        seeds: bool = False, chunk: int | None = None, seed_mode: str | None = None,
        callback: Callable[[int, dict], None] | None = None):
    """Drive ``iters`` iterations from ``state`` (see `make_runner`); returns (state, last outputs, seconds)."""
    return make_runner(prior, config, seeds, chunk, seed_mode)(state, lr, iters, callback)
