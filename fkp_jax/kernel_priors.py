"""Kernel priors for the DIP solver, as plug-ins of one interface (FKP_SPEC 6.1, 6.4, 6.6; DKP_SPEC 6).

A prior owns a pytree of variables (what the solver optimises on the kernel side) and says
- how to initialise them from a key (`init`),
- how they become a (k, k) kernel (`kernel`, pure and differentiable),
- which optax optimiser updates them, and in which gradient windows (`first_update`, `window`),
- what is done to them after every iteration (`project`),
and, for a prior that takes its own steps between image steps (DKP), optionally
- a `warmup` run once before the first iteration (when the solver state is made),
- a `prior_step` run inside every iteration before the kernel forward, given that iteration's DIP
  output (the prior decides from the iteration number whether it acts),
- an `image_regulariser` added to the DIP's loss (never to the kernel's), and
- its own `ssim_until` (the last iteration with the 1 - SSIM loss; MSE after).
The defaults reproduce the plain plug-in exactly: no warm-up, no prior step, a window of one
iteration whose gradient is applied iff t >= first_update, no regulariser, SSIM through t = 80.
Every random draw comes from the explicit key the solver hands in (`fold_in(state key, t)`).

Four priors, so the paper's baselines and DKP run through the same solver:
- ``fkp``: the latent of the pretrained FKP flow (eval mode, frozen); Adam lr 0.5; the latent is
  projected onto the sphere of radius k - 1 after EVERY iteration (from t = 1) and receives
  Adam updates from t = 77 on (the original flips ``requires_grad`` at t = 76 after the forward
  pass, so the first gradient arrives at t = 77; matched deliberately, spec 6.4 item 5). The
  initial latent is N(0, I_D).
- ``softmax`` (DIPSoftmax): kernel = softmax of a free k^2 vector initialised to ones; Adam lr 0.5.
  We apply the same warm-up as the FKP latent (updates from t = 77; the spec is silent on it).
- ``mlp`` (Double-DIP): fixed 200-d code U[0,1) * 0.1 -> Linear(200, 1000) -> ReLU6 ->
  Linear(1000, k^2) -> softmax; Adam lr 1e-4 from t = 1 (the original's freeze does not reach it);
  PyTorch default Linear initialisation.
- ``dkp`` (DIP-DKP): the same MLP trained online by random-kernel prior steps and accumulated data
  gradients (`fkp_jax.dkp`).
Kernels are (k, k) in the correlation convention of ``fkp_jax.degrade``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from fkp_jax import kernels as kernels_lib

PRIORS = ("fkp", "mlp", "softmax", "dkp")
LATENT_FIRST_UPDATE = 77  # first iteration whose gradient reaches the latent (spec 6.4 item 5)


@dataclasses.dataclass(frozen=True)
class KernelPrior:
    """A kernel prior plugged into the DIP solver (see module docstring).

    Required: name, sf, init(key) -> kvars, kernel(kvars) -> (k, k), optimizer (optax), first_update,
    project(kvars) -> kvars. Optional (the defaults are the plain plug-in):
    - warmup(kvars, opt_state, key) -> (kvars, opt_state): once, when the solver state is made.
    - prior_step(kvars, opt_state, sr, lr, t, key) -> (kvars, opt_state): in iteration t before the
      kernel forward; sr (1, H, W, C) is this iteration's DIP output (it does not depend on the kernel),
      lr the LR target; must be traceable (decide from t with lax.cond / where whether to act).
    - window(t) -> (reset, apply): gradient accumulation; the kernel gradient g of iteration t enters
      acc = g if reset else acc + g; if apply, the optimiser is applied to acc and acc is cleared.
      None: (True, t >= first_update), i.e. each iteration's own gradient, applied from first_update.
    - image_regulariser(sr, lr) -> scalar: added to the DIP loss only (its gradient reaches the DIP).
    - ssim_until: 1 - SSIM for t <= ssim_until, MSE after (the solver config may override it).
    """

    name: str
    sf: int
    init: Callable[[jax.Array], Any]
    kernel: Callable[[Any], jax.Array]
    optimizer: optax.GradientTransformation
    first_update: int
    project: Callable[[Any], Any]
    warmup: Callable[[Any, Any, jax.Array], tuple[Any, Any]] | None = None
    prior_step: Callable[..., tuple[Any, Any]] | None = None
    window: Callable[[Any], tuple[Any, Any]] | None = None
    image_regulariser: Callable[[jax.Array, jax.Array], jax.Array] | None = None
    ssim_until: int = 80

    def grad_window(self, t):
        """(reset, apply) for iteration t (Python ints or traced scalars)."""
        if self.window is not None:
            return self.window(t)
        return True, t >= self.first_update


def optimizer_update(optimizer: optax.GradientTransformation, grads, opt_state, params, key: jax.Array):
    """One optimiser step -> (new params, new state). ``key`` reaches transforms that take extra arguments
    (e.g. `fkp_jax.dkp.langevin_noise`); plain optax transforms ignore it."""
    if isinstance(optimizer, optax.GradientTransformationExtraArgs):
        updates, opt_state = optimizer.update(grads, opt_state, params, key=key)
    else:
        updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state


def project_to_sphere(z: jax.Array, radius: float) -> jax.Array:
    """z <- radius * z / sqrt(sum z^2 + 1e-9) over the last axis (the original SphericalOptimizer)."""
    return radius * z / jnp.sqrt(jnp.sum(z * z, axis=-1, keepdims=True) + 1e-9)


def _identity(v):
    return v


def fkp_prior(flow, lr: float = 0.5) -> KernelPrior:
    """The FKP latent prior on a loaded ``fkp_jax.flow.FlowPrior`` (spec 6.1, 6.4)."""
    k = flow.config.k
    radius = float(k - 1)
    return KernelPrior(
        name="fkp",
        sf=flow.config.sf,
        init=lambda key: jax.random.normal(key, (k * k,), jnp.float32),
        kernel=lambda z: flow.kernel(z),
        optimizer=optax.adam(lr),
        first_update=LATENT_FIRST_UPDATE,
        project=lambda z: project_to_sphere(z, radius),
    )


def softmax_prior(sf: int, lr: float = 0.5) -> KernelPrior:
    """DIPSoftmax: a free k^2 vector of logits, initialised to ones (a uniform kernel) (spec 6.6)."""
    k = kernels_lib.kernel_size(sf)
    return KernelPrior(
        name="softmax",
        sf=sf,
        init=lambda key: jnp.ones((k * k,), jnp.float32),
        kernel=lambda logits: jax.nn.softmax(logits).reshape(k, k),
        optimizer=optax.adam(lr),
        first_update=LATENT_FIRST_UPDATE,
        project=_identity,
    )


def _torch_linear_init(key, fan_in: int, fan_out: int):
    """PyTorch nn.Linear default: weight and bias uniform in +-1/sqrt(fan_in); kernel (in, out)."""
    kw, kb = jax.random.split(key)
    bound = 1.0 / jnp.sqrt(fan_in)
    return {
        "kernel": jax.random.uniform(kw, (fan_in, fan_out), jnp.float32, -bound, bound),
        "bias": jax.random.uniform(kb, (fan_out,), jnp.float32, -bound, bound),
    }


def mlp_init(key: jax.Array, k: int, code_dim: int = 200, hidden: int = 1000) -> dict:
    """Variables of the Double-DIP / DKP kernel MLP: the fixed code U[0, 1) * 0.1 and two PyTorch-default
    Linear layers (kernels (in, out))."""
    k_code, k1, k2 = jax.random.split(key, 3)
    return {
        "code": 0.1 * jax.random.uniform(k_code, (code_dim,), jnp.float32),
        "dense1": _torch_linear_init(k1, code_dim, hidden),
        "dense2": _torch_linear_init(k2, hidden, k * k),
    }


def mlp_kernel(v: dict, k: int) -> jax.Array:
    """code -> Linear -> ReLU6 -> Linear -> softmax over all k^2 entries -> (k, k) row-major."""
    code = jax.lax.stop_gradient(v["code"])  # the input code is fixed, never optimised
    h = jnp.clip(code @ v["dense1"]["kernel"] + v["dense1"]["bias"], 0.0, 6.0)  # ReLU6
    return jax.nn.softmax(h @ v["dense2"]["kernel"] + v["dense2"]["bias"]).reshape(k, k)


def mlp_prior(sf: int, lr: float = 1e-4, code_dim: int = 200, hidden: int = 1000) -> KernelPrior:
    """Double-DIP kernel network: fixed code -> MLP -> softmax over k^2 (spec 6.6)."""
    k = kernels_lib.kernel_size(sf)
    return KernelPrior(
        name="mlp", sf=sf, init=lambda key: mlp_init(key, k, code_dim, hidden),
        kernel=lambda v: mlp_kernel(v, k), optimizer=optax.adam(lr), first_update=1, project=_identity,
    )


def make_prior(name: str, sf: int, weights=None) -> KernelPrior:
    """Build a prior by name; ``weights`` (int scale or checkpoint path) is used by ``fkp`` only."""
    if name == "fkp":
        from fkp_jax import flow  # the flow is loaded only when asked for

        prior = fkp_prior(flow.load_prior(sf if weights is None else weights))
        if prior.sf != sf:
            raise ValueError(f"the FKP weights are for x{prior.sf}, but --sf is {sf}")
        return prior
    if name == "softmax":
        return softmax_prior(sf)
    if name == "mlp":
        return mlp_prior(sf)
    if name == "dkp":
        from fkp_jax import dkp

        return dkp.dkp_prior(sf)
    raise ValueError(f"unknown kernel prior {name!r}; choose one of {', '.join(PRIORS)}")
