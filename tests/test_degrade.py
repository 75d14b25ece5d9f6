"""fkp_jax.degrade against golden/degrade.npz and the bundled x4 example (original `degradation`)."""

from fractions import Fraction

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.io

from fkp_jax.degrade import _fma_f32, degrade, degrade_exact, modcrop, quantize_floor


def _nhwc(a):
    return np.ascontiguousarray(np.asarray(a).transpose(0, 2, 3, 1))


def _reference(x, kernel, sf):
    """Literal float64 loop: wrap-pad k//2, correlate, keep 0, s, 2s, ... (HWC)."""
    kh, kw = kernel.shape
    p = np.pad(x.astype(np.float64), ((kh // 2,) * 2, (kw // 2,) * 2, (0, 0)), mode="wrap")
    h, w = x.shape[:2]
    out = np.zeros((-(-h // sf), -(-w // sf), x.shape[2]))
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            out[i, j] = np.einsum("rc,rcx->x", kernel, p[sf * i : sf * i + kh, sf * j : sf * j + kw])
    return out


@pytest.mark.parametrize("sf", (2, 3, 4))
def test_degrade_matches_golden(golden, sf):
    g = golden("degrade")
    hr, want = _nhwc(g["hr"]), _nhwc(g[f"lr_x{sf}"])
    out = degrade(hr, g[f"kernel_x{sf}"], sf)
    assert out.shape == want.shape == (1, -(-30 // sf), -(-26 // sf), 3) and out.dtype == jnp.float32
    # the original's float32 vs float64 (NumPy): 3.4e-7; ours 3.6e-7 on every CPU configuration -> 1e-6
    np.testing.assert_allclose(out, want, rtol=0, atol=1e-6)
    out_hwc = degrade(hr[0], g[f"kernel_x{sf}"], sf)  # HWC in -> HWC out
    np.testing.assert_array_equal(out_hwc, out[0])


@pytest.mark.parametrize("sf", (2, 3, 4))
def test_degrade_exact_is_bit_exact_with_golden(golden, sf):
    g = golden("degrade")
    out = degrade_exact(_nhwc(g["hr"])[0], g[f"kernel_x{sf}"], sf)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, _nhwc(g[f"lr_x{sf}"])[0])


def test_bundled_example_rebuilt_bit_exactly(ref, golden):
    """HR 102061.png (modcrop 4) + GT .mat kernel -> golden float LR and the bundled LR PNG, bit for bit."""
    data = ref / "data" / "Test"
    hr = cv2.imread(str(data / "HR" / "102061.png"), cv2.IMREAD_COLOR)[:, :, ::-1]
    hr = modcrop(hr.astype(np.float32) / np.float32(255), 4)
    assert hr.shape == (480, 320, 3)
    kernel = scipy.io.loadmat(str(data / "DIPFKP_gt_k_x4" / "102061.mat"))["Kernel"]
    np.testing.assert_array_equal(kernel, golden("degrade")["example_gt_kernel_x4"])
    lr = degrade_exact(hr, kernel, 4)
    np.testing.assert_array_equal(lr, _nhwc(golden("degrade")["example_lr_x4_float"])[0])
    bundled = cv2.imread(str(data / "DIPFKP_lr_x4" / "102061.png"), cv2.IMREAD_UNCHANGED)
    assert bundled.shape == (120, 80, 4) and (bundled[..., 3] == 255).all()
    np.testing.assert_array_equal(quantize_floor(lr), bundled[..., 2::-1])  # all 3 x 120 x 80 values
    # The XLA operator agrees to float32 rounding: the original's float32 vs float64 6.2e-7, ours 6.0e-7 -> 2e-6
    np.testing.assert_allclose(degrade(hr, kernel, 4), lr, rtol=0, atol=2e-6)


def _fma_reference(a, b, c):
    """Exact a*b + c rounded once to float32 (round half to even), via fractions."""
    exact = Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c))
    near = np.float32(float(exact))
    cands = [np.nextafter(near, np.float32(-np.inf)), near, np.nextafter(near, np.float32(np.inf))]
    return min(cands, key=lambda v: (abs(Fraction(float(v)) - exact), int(np.float32(v).view(np.int32)) & 1))


def test_fma_emulation_single_rounding():
    # Double rounding trap: exact 1 + 2^-24 + 2^-56 must round up; float64-then-float32 gives 1.0.
    a = np.float32(-(1 - 2.0**-16) * 2.0**-24)
    b = np.array([1 + 2.0**-16], np.float32)
    c = np.array([1 + 2.0**-23], np.float32)
    assert np.float32(np.float64(a) * b.astype(np.float64) + c.astype(np.float64))[0] == np.float32(1.0)
    assert _fma_f32(a, b, c)[0] == np.float32(1 + 2.0**-23) == _fma_reference(a, b[0], c[0])
    rng = np.random.RandomState(0)
    a = rng.randn(1).astype(np.float32)[0]
    b = rng.randn(300).astype(np.float32)
    c = (rng.randn(300) * 10.0 ** rng.randint(-3, 3, 300)).astype(np.float32)
    out = _fma_f32(a, b, c)
    assert out.dtype == np.float32
    assert all(out[i] == _fma_reference(a, b[i], c[i]) for i in range(300))


@pytest.mark.parametrize("shape,sf,ksize", [((17, 23), 2, (11, 11)), ((13, 9), 3, (15, 15)), ((21, 18), 4, (5, 7))])
def test_degrade_equals_literal_loop(shape, sf, ksize):
    rng = np.random.RandomState(1)
    x = rng.rand(*shape, 3).astype(np.float32)
    kernel = rng.rand(*ksize).astype(np.float32)
    want = _reference(x, kernel.astype(np.float64), sf)
    np.testing.assert_allclose(degrade(x, kernel, sf), want, rtol=2e-6, atol=0)
    np.testing.assert_allclose(degrade_exact(x, kernel, sf), want, rtol=2e-6, atol=0)


def test_degrade_constant_image_gives_kernel_sum():
    kernel = jnp.asarray(np.random.RandomState(2).rand(11, 11), jnp.float32)
    out = degrade(jnp.full((2, 20, 14, 3), 0.25), kernel, 2)
    assert out.shape == (2, 10, 7, 3)
    np.testing.assert_allclose(out, 0.25 * float(kernel.sum()), rtol=1e-6)


def test_degrade_gradients_match_a_literal_implementation():
    rng = np.random.RandomState(3)
    x = jnp.asarray(rng.rand(2, 14, 11, 3), jnp.float32)
    kernel = jnp.asarray(rng.rand(7, 7), jnp.float32)
    target = jnp.asarray(rng.rand(2, 5, 4, 3), jnp.float32)

    def literal(x, k):  # the textbook form: wrap pad, stride-3 correlation with channels as batch
        p = jnp.pad(x, ((0, 0), (3, 3), (3, 3), (0, 0)), mode="wrap").transpose(0, 3, 1, 2).reshape(6, 1, 20, 17)
        y = jax.lax.conv_general_dilated(p, k[None, None], (3, 3), "VALID", precision=jax.lax.Precision.HIGHEST)
        return y.reshape(2, 3, 5, 4).transpose(0, 2, 3, 1)

    def loss(fn):
        return lambda x, k: jnp.sum((fn(x, k) - target) ** 2)

    gx, gk = jax.jit(jax.grad(loss(lambda x, k: degrade(x, k, 3)), argnums=(0, 1)))(x, kernel)
    rx, rk = jax.jit(jax.grad(loss(literal), argnums=(0, 1)))(x, kernel)
    assert np.isfinite(gx).all() and np.isfinite(gk).all()
    np.testing.assert_allclose(gx, rx, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gk, rk, rtol=1e-5, atol=1e-5)
    # vmap over (image, kernel) pairs equals a loop.
    ks = jnp.stack([kernel, kernel[::-1]])
    batched = jax.vmap(lambda xi, ki: degrade(xi, ki, 3))(x, ks)
    np.testing.assert_allclose(batched[1], degrade(x[1], ks[1], 3), rtol=1e-6)


def test_quantize_floor_and_modcrop():
    v = np.array([-0.1, 0.0, 0.5, 0.99999, 1.0, 1.2, 254.9 / 255, 3.0 / 255], np.float32)
    np.testing.assert_array_equal(quantize_floor(v), [0, 0, 127, 254, 255, 255, 254, 3])
    assert quantize_floor(v).dtype == np.uint8
    img = np.arange(7 * 10 * 3).reshape(7, 10, 3)
    np.testing.assert_array_equal(modcrop(img, 3), img[:6, :9])
    np.testing.assert_array_equal(modcrop(img, 2), img[:6, :10])
    assert modcrop(img[..., 0], 4).shape == (4, 8)
