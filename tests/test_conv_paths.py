"""benchmarks.conv_paths: the triples it times compute the convolution and its derivatives of two orders."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from benchmarks import conv_paths

from fkp_jax import winograd

_plain = conv_paths.xla_valid  # JAX's autodiff of it is the reference


def test_padded_forward_is_the_valid_convolution():
    k = jax.random.split(jax.random.key(1), 2)
    x, w = jax.random.normal(k[0], (2, 9, 8, 3)), jax.random.normal(k[1], (3, 3, 3, 4))
    np.testing.assert_array_equal(jax.jit(conv_paths.xla_padded_valid)(x, w), jax.jit(_plain)(x, w))


@pytest.mark.parametrize("maps", [(), (conv_paths.xla_padded_valid, conv_paths.xla_input_grad,
                                       winograd.conv3x3_valid_w)], ids=["xla", "padded-winograd"])
def test_xla_triple_matches_autodiff_to_second_order(maps):
    fwd, input_grad, weight_grad = conv_paths.xla_triple(*maps)
    k = jax.random.split(jax.random.key(0), 4)
    x = jax.random.normal(k[0], (2, 9, 8, 3))
    w = jax.random.normal(k[1], (3, 3, 3, 4))
    dy = jax.random.normal(k[2], (2, 7, 6, 4))
    cot = jax.random.normal(k[3], x.shape)
    np.testing.assert_allclose(fwd(x, w), _plain(x, w), rtol=1e-5, atol=1e-5)
    ref_dx, ref_dw = jax.vjp(_plain, x, w)[1](dy)
    np.testing.assert_allclose(input_grad(dy, w), ref_dx, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(weight_grad(x, dy), ref_dw, rtol=1e-5, atol=1e-4)

    def penalty(conv_in, w_, dy_):  # <cot, input gradient>, differentiated in taps and cotangent
        return jnp.vdot(cot, conv_in(dy_, w_))

    ours = jax.grad(penalty, argnums=(1, 2))(input_grad, w, dy)
    ref = jax.grad(penalty, argnums=(1, 2))(lambda g, w_: jax.vjp(lambda a: _plain(a, w_), x)[1](g)[0], w, dy)
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    # and a map through the triple differentiated twice (the gradient penalty's pattern)
    g2 = jax.grad(lambda w_: jnp.sum(jax.grad(lambda a: jnp.sum(fwd(a, w_) ** 2))(x) ** 2))(w)
    r2 = jax.grad(lambda w_: jnp.sum(jax.grad(lambda a: jnp.sum(_plain(a, w_) ** 2))(x) ** 2))(w)
    np.testing.assert_allclose(g2, r2, rtol=1e-4, atol=1e-3 * float(jnp.abs(r2).max()))
    # the weight gradient differentiated in its input and cotangent (x -> d/dw of a loss, then d/dx)
    g3 = jax.grad(lambda a: jnp.sum(jax.grad(lambda w_: jnp.sum(fwd(a, w_) ** 2))(w) ** 2))(x)
    r3 = jax.grad(lambda a: jnp.sum(jax.grad(lambda w_: jnp.sum(_plain(a, w_) ** 2))(w) ** 2))(x)
    np.testing.assert_allclose(g3, r3, rtol=1e-4, atol=1e-3 * float(jnp.abs(r3).max()))
