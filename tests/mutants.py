"""Mutation checks for the golden-parity tests: a pytest plugin that plants ONE plausible porting mistake.

    FKP_MUTANT=kernel_flipped python -m pytest -p tests.mutants tests/test_degrade.py ...

The mistake is monkeypatched into ``fkp_jax`` when the plugin loads, i.e. before any test module is
imported (so names imported with ``from fkp_jax.x import y`` see it too). The golden-parity tests must
FAIL under every mutant; docs/tolerances.md lists which tests catch which mutant. Without FKP_MUTANT
(or with an empty value) the plugin does nothing. ``FKP_MUTANT=list`` prints the names and exits.
"""

from __future__ import annotations

import os
import types

import pytest

MUTANTS: dict[str, tuple[str, object]] = {}  # name -> (what it plants, function planting it)


def mutant(name: str, doc: str):
    def register(fn):
        MUTANTS[name] = (doc, fn)
        return fn
    return register


@mutant("kernel_flipped", "the degradation applies the kernel flipped (convolution instead of correlation)")
def m_kernel_flipped():
    import jax.numpy as jnp

    from fkp_jax import degrade as mod
    from fkp_jax import dipfkp

    original = mod.degrade

    def degrade(x, kernel, sf):
        return original(x, jnp.asarray(kernel)[::-1, ::-1], sf)

    mod.degrade = dipfkp.degrade = degrade


@mutant("bn_eps_1e-3", "DIP BatchNorm epsilon 1e-3 instead of 1e-5")
def m_bn_eps_1e_3():
    from fkp_jax import dip

    dip.BN_EPS = 1e-3


@mutant("bn_unbiased_var", "DIP BatchNorm normalises with the unbiased batch variance (PyTorch uses the biased one)")
def m_bn_unbiased_var():
    import jax.numpy as jnp
    from jax import lax

    from fkp_jax import dip

    def batch_norm(x, scale, bias):
        n = x.shape[0] * x.shape[1] * x.shape[2]
        mean = jnp.mean(x, axis=(0, 1, 2))
        var = jnp.sum(jnp.square(x - mean), axis=(0, 1, 2)) / (n - 1)
        return (x - mean) * (lax.rsqrt(var + dip.BN_EPS) * scale) + bias

    dip.batch_norm = batch_norm


@mutant("skip_dropped", "the DIP's skip branch is dropped (zeroed before the concatenation)")
def m_skip_dropped():
    from fkp_jax import dip

    original = dip.crop_concat
    dip.crop_concat = lambda skip, deep: original(skip * 0, deep)


@mutant("leaky_slope_0.01", "DIP LeakyReLU slope 0.01 (PyTorch's default) instead of 0.2")
def m_leaky_slope_0_01():
    from fkp_jax import dip

    dip.SLOPE = 0.01


@mutant("upsample_align_corners", "DIP bilinear upsampling with align_corners=True instead of False")
def m_upsample_align_corners():
    import jax.numpy as jnp

    from fkp_jax import dip

    def axis_up(x, axis):
        n = x.shape[axis]
        pos = jnp.arange(2 * n) * (n - 1) / (2 * n - 1)  # align_corners=True source positions
        lo = jnp.floor(pos).astype(int)
        hi = jnp.minimum(lo + 1, n - 1)
        w = (pos - lo).astype(x.dtype)
        shape = [1] * x.ndim
        shape[axis] = 2 * n
        w = w.reshape(shape)
        return jnp.take(x, lo, axis=axis) * (1 - w) + jnp.take(x, hi, axis=axis) * w

    dip.upsample2 = lambda x: axis_up(axis_up(x, 1), 2)


@mutant("flow_bn_eps_1e-4", "FKP flow BatchNorm epsilon 1e-4 instead of 1e-5")
def m_flow_bn_eps_1e_4():
    from fkp_jax import flow

    flow.BN_EPS = 1e-4


@mutant("flow_bn_biased_var", "FKP flow train-mode BatchNorm with the biased batch variance (the original uses the unbiased one)")
def m_flow_bn_biased_var():
    import jax.numpy as jnp

    from fkp_jax import flow

    proxy = types.SimpleNamespace(**{k: getattr(jnp, k) for k in dir(jnp) if not k.startswith("__")})
    proxy.var = lambda x, axis=None, ddof=0, **kw: jnp.var(x, axis=axis, **kw)  # ignores ddof=1
    flow.jnp = proxy


@mutant("ssim_sigma_1.0", "SSIM training-loss window sigma 1.0 instead of 1.5")
def m_ssim_sigma_1_0():
    from fkp_jax import metrics

    metrics.gaussian_1d.__defaults__ = (metrics.WINDOW, 1.0)
    metrics.gaussian_window.__defaults__ = (metrics.WINDOW, 1.0)


@mutant("sphere_radius_k", "FKP latent projected onto the sphere of radius k instead of k - 1")
def m_sphere_radius_k():
    from fkp_jax import kernel_priors

    original = kernel_priors.project_to_sphere
    kernel_priors.project_to_sphere = lambda z, radius: original(z, radius + 1.0)


def pytest_configure(config):
    name = os.environ.get("FKP_MUTANT", "")
    if not name:
        return
    if name == "list":
        for n, (doc, _) in MUTANTS.items():
            print(f"{n}: {doc}")
        pytest.exit("listed the mutants", returncode=0)
    if name not in MUTANTS:
        raise pytest.UsageError(f"FKP_MUTANT={name!r}: choose one of {', '.join(MUTANTS)}")
    MUTANTS[name][1]()
    config._fkp_mutant = name


def pytest_report_header(config):
    name = getattr(config, "_fkp_mutant", None)
    if name:
        return f"FKP_MUTANT={name}: {MUTANTS[name][0]}"
