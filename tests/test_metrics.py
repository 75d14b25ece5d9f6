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
    np.testing.assert_allclose(M.gaussian_window(), L["train_ssim_window_f32"], rtol=0, atol=1e-7)


def test_training_losses(L, pair):
    a, b = pair
    assert abs(float(M.ssim(a, b)) - L["train_ssim_f32"]) < 1e-6
    assert abs(float(M.ssim_loss(a, b)) - L["train_ssim_loss_f32"]) < 1e-6
    assert abs(float(M.mse(a, b)) - L["train_mse_f32"]) < 1e-6
    assert abs(float(M.ssim(a, b)) - L["train_ssim_f64"]) < 1e-6


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
    assert abs(M.psnr_y(hr, sr, sf) - L[f"eval_psnr_y_s{sf}"]) < 1e-6
    assert abs(M.ssim_y(hr, sr, sf) - L[f"eval_ssim_y_s{sf}"]) < 1e-6


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
        assert abs(M.kernel_psnr(gt, est) - L[f"kpsnr_pair{i}"]) < 1e-6
        assert M.kernel_psnr(gt, est) == M.kernel_psnr(est, gt)
    assert M.kernel_psnr(gt, gt) == float("inf")
    with pytest.raises(ValueError):
        M.kernel_psnr(np.zeros((11, 11)), np.zeros((19, 19)))
