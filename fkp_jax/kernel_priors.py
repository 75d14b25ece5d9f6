"""Kernel priors for the DIP solver, as plug-ins of one interface (FKP_SPEC 6.1, 6.4, 6.6).

A prior owns a pytree of variables (what the solver optimises on the kernel side) and says
- how to initialise them from a key (`init`),
- how they become a (k, k) kernel (`kernel`, pure and differentiable),
- which optax optimiser updates them, from which iteration on (`first_update`), and
- what is done to them after every iteration (`project`).

Three priors, so the paper's baselines run through the same solver:
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
Kernels are (k, k) in the correlation convention of ``fkp_jax.degrade``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from fkp_jax import kernels as kernels_lib

PRIORS = ("fkp", "mlp", "softmax")
LATENT_FIRST_UPDATE = 77  # first iteration whose gradient reaches the latent (spec 6.4 item 5)


@dataclasses.dataclass(frozen=True)
class KernelPrior:
    """A kernel prior plugged into the DIP solver (see module docstring)."""

    name: str
    sf: int
    init: Callable[[jax.Array], Any]
    kernel: Callable[[Any], jax.Array]
    optimizer: optax.GradientTransformation
    first_update: int
    project: Callable[[Any], Any]


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


def mlp_prior(sf: int, lr: float = 1e-4, code_dim: int = 200, hidden: int = 1000) -> KernelPrior:
    """Double-DIP kernel network: fixed code -> MLP -> softmax over k^2 (spec 6.6)."""
    k = kernels_lib.kernel_size(sf)

    def init(key):
        k_code, k1, k2 = jax.random.split(key, 3)
        return {
            "code": 0.1 * jax.random.uniform(k_code, (code_dim,), jnp.float32),
            "dense1": _torch_linear_init(k1, code_dim, hidden),
            "dense2": _torch_linear_init(k2, hidden, k * k),
        }

    def kernel(v):
        code = jax.lax.stop_gradient(v["code"])  # the input code is fixed, never optimised
        h = jnp.clip(code @ v["dense1"]["kernel"] + v["dense1"]["bias"], 0.0, 6.0)  # ReLU6
        return jax.nn.softmax(h @ v["dense2"]["kernel"] + v["dense2"]["bias"]).reshape(k, k)

    return KernelPrior(
        name="mlp", sf=sf, init=init, kernel=kernel, optimizer=optax.adam(lr),
        first_update=1, project=_identity,
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
    raise ValueError(f"unknown kernel prior {name!r}; choose one of {', '.join(PRIORS)}")
