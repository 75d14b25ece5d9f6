"""fkp_jax.winograd.conv3x3_valid: the VALID 3x3 maps closed under differentiation (values and derivatives
of every order against XLA's convolution in float64), and the float32 error on inputs with a large mean."""
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from fkp_jax import winograd


def _xla(x, w):
    return lax.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                    precision=lax.Precision.HIGHEST)


def test_valid_conv_and_its_derivatives_of_three_orders_match_xla():
    """Float64, a map that is no whole number of tiles (11 x 9 -> 9 x 7) and C != D: value, the gradients in
    x and w of a nonlinear loss, a penalty on the input gradient differentiated in w and x (the WGAN-GP
    pattern) and one more derivative of that. All agree with XLA's convolution to float64 rounding."""
    with jax.enable_x64(True):
        k = jax.random.split(jax.random.key(0), 3)
        x = jax.random.normal(k[0], (3, 11, 9, 4), jnp.float64)
        w = jax.random.normal(k[1], (3, 3, 4, 5), jnp.float64)
        r = jax.random.normal(k[2], (3, 9, 7, 5), jnp.float64)

        def losses(conv):
            def loss(w, x):
                gx = jax.grad(lambda x: jnp.sum(jnp.tanh(conv(x, w)) * r))(x)
                return jnp.sum(jnp.square(conv(x, w))) + jnp.sum(jnp.sin(gx) * gx)
            first = jax.grad(loss, argnums=(0, 1))(w, x)
            third = jax.grad(lambda w: jnp.sum(jax.grad(loss)(w, x) ** 2))(w)
            return conv(x, w), first, third

        ours, ref = losses(winograd.conv3x3_valid), losses(_xla)
        for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)):
            assert a.shape == b.shape
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-12 * float(jnp.max(jnp.abs(b))))


def test_valid_conv_forward_rounds_like_the_direct_sums():
    """The forward map is F(2x2, 3x3), whose float32 rounding is that of the direct sums (F(4x4, 3x3) rounds
    7 times more, enough to flip a LeakyReLU decision of KernelGAN's golden batch: `winograd.FORWARD_M`). Max error against float64 in
    units of the output's std, 4 x 25 x 25 x 32 -> 32 normal inputs; measured (AMD EPYC Zen 4): 8.6e-7
    (F(4x4, 3x3) 6.3e-6, XLA's conv 1.6e-6)."""
    rs = np.random.RandomState(0)
    x, w = rs.randn(4, 25, 25, 32), rs.randn(3, 3, 32, 32) * 0.1
    with jax.enable_x64(True):
        exact = np.asarray(_xla(jnp.asarray(x), jnp.asarray(w)))
    ours = np.asarray(winograd.conv3x3_valid(jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32)))
    assert np.abs(ours - exact).max() / exact.std() < 3e-6
