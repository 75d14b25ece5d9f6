"""Losses and evaluation metrics (fkp_jax.metrics) against golden/losses.npz (spec 6.4, 9)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fkp_jax import metrics as M


@pytest.fixture(scope="module")
def L(golden):
    return golden("losses")


@pytest.fixture(scope="module")
def pair(L):
    t = lambda a: jnp.asarray(a.transpose(0, 2, 3, 1))
    return t(L["train_img_out_f32"]), t(L["train_img_lr_f32"])


def test_window(L):
    # bit for bit: the normalising sum is accumulated in double, as PyTorch's (a float32 sum gave 1.5e-8 off)
    np.testing.assert_array_equal(M.gaussian_window(), L["train_ssim_window_f32"])


def test_training_losses(L, pair):
    a, b = pair
    # SSIM 0.963 (float32 ulp 6e-8): orig f32 vs f64 1.9e-8, ours 6.0e-8 (1 ulp) on every CPU configuration;
    # a float32 mean of 1,728 terms may round up to ~log2(1728) ulps in another order -> 1e-6
    np.testing.assert_allclose(float(M.ssim(a, b)), L["train_ssim_f32"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(float(M.ssim_loss(a, b)), L["train_ssim_loss_f32"], rtol=0, atol=1e-6)
    # MSE 5.9e-3: orig 7.8e-8 rel, ours 7.9e-8 rel (1 ulp); same summation bound -> 1e-6 rel (was 1e-6 abs = 1.7e-4 rel)
    np.testing.assert_allclose(float(M.mse(a, b)), L["train_mse_f32"], rtol=1e-6, atol=0)
    np.testing.assert_allclose(float(M.ssim(a, b)), L["train_ssim_f64"], rtol=0, atol=1e-6)
    with jax.enable_x64(True):  # float64: the original's window exactly (golden_dkp: loss_x to 1e-15)
        a64, b64 = (jnp.asarray(x, jnp.float64) for x in pair)
        np.testing.assert_allclose(float(M.ssim(a64, b64)), L["train_ssim_f64"], rtol=0, atol=1e-14)


@pytest.mark.parametrize("shape", [(1, 24, 37, 5), (2, 19, M.BLUR_CHUNK + 22, 3)])
def test_blur_band_matches_grouped_convolution(shape):
    """The CPU's band products (`metrics._blur`, "band"; the wider shape is cut into two column chunks) compute
    the grouped convolution's 121-tap sums: equal to float64 rounding, with the gradient (the SSIM loss's)."""
    x = jax.random.uniform(jax.random.key(0), shape)
    with jax.enable_x64(True):
        x64 = jnp.asarray(x, jnp.float64)
        band, xla = (M._blur(x64, algorithm) for algorithm in ("band", "xla"))
        assert band.shape == x.shape and band.dtype == jnp.float64
        np.testing.assert_allclose(band, xla, rtol=0, atol=1e-14)
        ct = jax.random.normal(jax.random.key(1), shape, jnp.float64)
        g_band, g_xla = (jax.grad(lambda v, a=a: jnp.sum(ct * M._blur(v, a)))(x64) for a in ("band", "xla"))
        np.testing.assert_allclose(g_band, g_xla, rtol=0, atol=1e-13)
    # float32: the same sums in another order (|blur| <= 1: a few ulps)
    np.testing.assert_allclose(M._blur(x, "band"), M._blur(x, "xla"), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="blur algorithm"):
        M._blur(x, "fft")


def test_training_losses_invariants(pair):
    a, b = pair
    assert abs(float(M.ssim(a, a)) - 1.0) < 1e-6
    assert float(M.mse(a, a)) == 0.0
    g = jax.grad(M.ssim_loss)(a, b)
    assert g.shape == a.shape and bool(jnp.all(jnp.isfinite(g)))
    with pytest.raises(ValueError):
        M.ssim(a, b[:, :-1])
    with pytest.raises(ValueError):
        M.mse(a, b[..., :2])


@pytest.mark.parametrize("sf", [2, 3, 4])
def test_eval_psnr_ssim_y(L, sf):
    hr, sr = L["eval_hr_u8"], L["eval_sr_u8"]
    # float64 evaluation as the original's: measured <= 8.2e-15
    np.testing.assert_allclose(M.psnr_y(hr, sr, sf), L[f"eval_psnr_y_s{sf}"], rtol=0, atol=1e-10)
    np.testing.assert_allclose(M.ssim_y(hr, sr, sf), L[f"eval_ssim_y_s{sf}"], rtol=0, atol=1e-10)


def test_rgb_to_y(L):
    np.testing.assert_allclose(M.rgb_to_y(L["eval_hr_u8"]), L["eval_hr_y_full"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(M.rgb_to_y(L["eval_sr_u8"] / 255.0), L["eval_sr_y_full"], rtol=0, atol=1e-12)
    with pytest.raises(ValueError):
        M.rgb_to_y(np.zeros((4, 4)))


def test_eval_invariants_and_errors(L):
    hr = L["eval_hr_u8"]
    assert M.psnr_y(hr, hr, 2) == float("inf")
    assert abs(M.ssim_y(hr, hr, 2) - 1.0) < 1e-12
    with pytest.raises(ValueError):
        M.psnr_y(hr, hr[:-4], 2)
    with pytest.raises(ValueError):
        M.ssim_y(hr, hr[:, :-4], 2)


def test_kernel_psnr(L):
    for i in (1, 2):
        gt, est = L[f"kpsnr_pair{i}_gt"], L[f"kpsnr_pair{i}_est"]
        np.testing.assert_allclose(M.kernel_psnr(gt, est), L[f"kpsnr_pair{i}"], rtol=0, atol=1e-10)  # float64: 0
        assert M.kernel_psnr(gt, est) == M.kernel_psnr(est, gt)
    assert M.kernel_psnr(gt, gt) == float("inf")
    with pytest.raises(ValueError):
        M.kernel_psnr(np.zeros((11, 11)), np.zeros((19, 19)))
