"""The DIP-FKP solver: one jitted step for the image network and the kernel prior (FKP_SPEC 6.4).

Iteration t = 1 .. iters (``state["t"]`` holds the number of the NEXT iteration):
1. sr = DIP(z_x) (NHWC, batch-norm in training mode); kernel = prior.kernel(kernel variables);
   out = degrade(sr, kernel, sf) (circular pad, correlation, subsample from 0; spec 6.3).
2. loss = 1 - SSIM(out, lr) for t <= 80, MSE(out, lr) after.
3. Adam (lr 5e-3) on the DIP parameters; then the prior's optimiser on the kernel variables, applied
   only from ``prior.first_update`` on (77 for the FKP latent, as the original), followed every
   iteration by ``prior.project`` (the sphere of radius k - 1 for FKP).
The kernel and SR of the last iteration's forward pass (before its update) are the results, as in
the original (spec 6.5).

Seeds are a leading axis of the state. ``make_step(..., seeds=True)`` vmaps the step over it, so N
restarts run as one computation; on XLA:CPU that is slower than stepping the seeds one after another
(see `default_seed_mode`), so `make_runner` chooses per backend. The step is jitted once; how it is
driven is chosen by backend too: a Python loop over the jitted step on CPU, ``lax.scan`` over chunks
of iterations on accelerators (`make_runner`'s ``chunk`` argument; measurements in docs/benchmarks.md).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from fkp_jax import dip, metrics
from fkp_jax.degrade import degrade
from fkp_jax.kernel_priors import KernelPrior

State = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class DIPFKPConfig:
    """Solver settings with the original's defaults (FKP_SPEC 6.1, 6.4)."""

    sf: int = 2
    iters: int = 1000
    dip_lr: float = 5e-3
    ssim_until: int = 80  # 1 - SSIM for t <= ssim_until, MSE after
    input_noise_scale: float = 0.1  # DIP input: U[0, 1) * 0.1, fixed for all iterations
    input_channels: int = 3


def dip_optimizer(config: DIPFKPConfig) -> optax.GradientTransformation:
    """Adam (lr 5e-3, PyTorch's betas and eps) on the DIP parameters, per tensor. (One flat vector through
    ``optax.flatten`` measured slower on XLA:CPU, 0.33 vs 0.29 s per 96x96 iteration on AVX2: the ravel
    and unravel of 2.36M values cost more than the ~450 small fused loops they replace.)"""
    return optax.adam(config.dip_lr)


def init_state(key: jax.Array, prior: KernelPrior, lr_hw: tuple[int, int], config: DIPFKPConfig) -> State:
    """A fresh restart for an LR image of size lr_hw: DIP init, DIP input noise and kernel variables
    all from ``key`` (split per purpose)."""
    k_dip, k_noise, k_prior = jax.random.split(key, 3)
    h, w = lr_hw[0] * config.sf, lr_hw[1] * config.sf
    z_x = config.input_noise_scale * jax.random.uniform(k_noise, (1, h, w, config.input_channels), jnp.float32)
    dip_params = dip.init(k_dip, z_x.shape)
    return state_from(dip_params, z_x, prior.init(k_prior), prior, config)


def state_from(dip_params, z_x: jax.Array, kernel_vars, prior: KernelPrior, config: DIPFKPConfig) -> State:
    """A solver state at iteration 1 from given DIP parameters, DIP input (1, H, W, C) and kernel variables."""
    return {
        "t": jnp.asarray(1, jnp.int32),
        "dip": dip_params,
        "dip_opt": dip_optimizer(config).init(dip_params),
        "kvars": kernel_vars,
        "k_opt": prior.optimizer.init(kernel_vars),
        "z_x": z_x,
    }


def stack_states(states: list[State]) -> State:
    """Stack restarts along a new leading seed axis."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *states)


def loss_fn(dip_params, kernel_vars, z_x, lr, t, prior: KernelPrior, config: DIPFKPConfig):
    """Loss of iteration t and its forward results; lr is (1, h, w, C) in [0, 1]."""
    sr = dip.apply(dip_params, z_x)
    kernel = prior.kernel(kernel_vars)
    out = degrade(sr, kernel, config.sf)
    loss = jnp.where(t <= config.ssim_until, 1.0 - metrics.ssim(out, lr), metrics.mse(out, lr))
    return loss, (sr, kernel)


def grads(state: State, lr, prior: KernelPrior, config: DIPFKPConfig):
    """(loss, (sr, kernel)), (DIP gradients, kernel-variable gradients) of the current iteration."""
    f = lambda dip_params, kvars: loss_fn(dip_params, kvars, state["z_x"], lr, state["t"], prior, config)
    return jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(state["dip"], state["kvars"])


def step(state: State, lr, prior: KernelPrior, config: DIPFKPConfig):
    """One iteration (spec 6.4): returns the next state and {loss, kernel, sr} of this iteration's forward."""
    (loss, (sr, kernel)), (g_dip, g_k) = grads(state, lr, prior, config)
    updates, dip_opt_state = dip_optimizer(config).update(g_dip, state["dip_opt"], state["dip"])
    dip_params = optax.apply_updates(state["dip"], updates)

    k_updates, k_opt_state = prior.optimizer.update(g_k, state["k_opt"], state["kvars"])
    kvars = optax.apply_updates(state["kvars"], k_updates)
    active = state["t"] >= prior.first_update  # before that the original's kernel variable has no grad
    kvars = jax.tree.map(lambda new, old: jnp.where(active, new, old), kvars, state["kvars"])
    k_opt_state = jax.tree.map(lambda new, old: jnp.where(active, new, old), k_opt_state, state["k_opt"])
    kvars = prior.project(kvars)

    new_state = {"t": state["t"] + 1, "dip": dip_params, "dip_opt": dip_opt_state,
                 "kvars": kvars, "k_opt": k_opt_state, "z_x": state["z_x"]}
    return new_state, {"loss": loss, "kernel": kernel, "sr": sr}


def make_step(prior: KernelPrior, config: DIPFKPConfig, seeds: bool = False) -> Callable:
    """The jitted step ``(state, lr) -> (state, outputs)``; with seeds=True, vmapped over the state's leading axis.

    The input state is donated (its buffers are reused for the new state): do not read it afterwards.
    """
    fn = lambda s, lr: step(s, lr, prior, config)
    if seeds:
        fn = jax.vmap(fn, in_axes=(0, None))
    return jax.jit(fn, donate_argnums=0)


def make_chunk(prior: KernelPrior, config: DIPFKPConfig, length: int, seeds: bool = False) -> Callable:
    """``length`` iterations as one ``lax.scan`` (for accelerators): ``(state, lr) -> (state, outputs)``
    with the outputs of the last iteration plus ``losses`` of all of them. Donates the input state."""
    one = lambda s, lr: step(s, lr, prior, config)
    if seeds:
        one = jax.vmap(one, in_axes=(0, None))

    def chunk(state, lr):
        state, out = one(state, lr)  # the first iteration outside the scan gives the carry its shapes
        first_loss = out["loss"]

        def body(carry, _):
            s, o = one(carry[0], lr)
            return (s, o), o["loss"]

        (state, out), losses = jax.lax.scan(body, (state, out), None, length=length - 1)
        return state, {**out, "losses": jnp.concatenate([first_loss[None], losses])}

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


def unstack(state: State, n: int) -> list[State]:
    """The inverse of `stack_states`."""
    return [jax.tree.map(lambda x: x[i], state) for i in range(n)]


def make_runner(prior: KernelPrior, config: DIPFKPConfig, seeds: bool = False, chunk: int | None = None,
                seed_mode: str | None = None):
    """A driver ``run(state, lr, iters=None, callback=None) -> (state, last outputs, seconds)``.

    The jitted functions are built once here, so every image of the same size reuses one compilation.
    chunk = 1: a Python loop over the jitted step (the CPU default); chunk > 1: ``lax.scan`` over
    ``chunk`` iterations per dispatch (the accelerator default). With seeds=True the state has a
    leading seed axis, advanced either as one vmapped computation (seed_mode "vmap") or seed by seed
    through the single-seed step ("loop"); see `default_seed_mode`. ``callback(t, outputs)`` is called
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
        iters = config.iters if iters is None else iters
        looped = seeds and not vmapped
        states = unstack(state, jax.tree.leaves(state)[0].shape[0]) if looped else [state]
        start = time.perf_counter()
        outs, done = [None] * len(states), 0
        while done < iters:
            n = min(chunk, iters - done)
            for i, s in enumerate(states):
                states[i], outs[i] = fn(n)(s, lr)
            done += n
            if callback is not None:
                callback(done, stack_states(outs) if looped else outs[0])
        jax.block_until_ready(outs)
        seconds = time.perf_counter() - start
        if looped:
            return stack_states(states), stack_states(outs), seconds
        return states[0], outs[0], seconds

    return run


def run(state: State, lr, prior: KernelPrior, config: DIPFKPConfig, iters: int | None = None,
        seeds: bool = False, chunk: int | None = None, seed_mode: str | None = None,
        callback: Callable[[int, dict], None] | None = None):
    """Drive ``iters`` iterations from ``state`` (see `make_runner`); returns (state, last outputs, seconds)."""
    return make_runner(prior, config, seeds, chunk, seed_mode)(state, lr, iters, callback)
