"""USRNet-tiny (fkp_jax.usrnet): layout, conventions, golden parity (golden README 8), the bundled example
(FKP_SPEC 8 / 11) and the weightless closed-form fallback."""

from functools import partial

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fkp_jax import checkpoint, io, metrics, usrnet
from fkp_jax.convert import ConvertError
from fkp_jax.degrade import degrade
from fkp_jax.torch_state import CheckpointError, load_state_dict

SCALES = (2, 3, 4)


def hwc(a):
    return np.asarray(a)[0].transpose(1, 2, 0)


def u8(x):
    return np.round(np.clip(255 * np.asarray(x, np.float64), 0, 255)).astype(np.uint8)


@pytest.fixture(scope="module")
def state(ref):
    return load_state_dict(ref / "weights" / "usrnet_tiny.pth")


@pytest.fixture(scope="module")
def params(state):
    return usrnet.params_from_state_dict(state)


@pytest.fixture(scope="module")
def example(ref):
    """The bundled x4 example: LR (RGBA png, alpha dropped) in [0, 1], HR uint8, GT kernel (correlation)."""
    layout = io.dataset_layout(ref / "data" / "Test", 4)
    return (io.read_image(layout.lr / "102061.png"), io.read_image_u8(layout.hr / "102061.png"),
            io.read_kernel_mat(layout.gt_kernel / "102061.mat"))


# ----------------------------------------------------------------------------- layout and conversion

def test_layout_roundtrip(state, params):
    assert usrnet.count_params(params) == usrnet.N_PARAMS == sum(a.size for a in state.values())
    named = usrnet.named_parameters(params)
    assert [k for k, _ in named] == list(state)  # file order (FKP_SPEC Appendix B)
    for key, a in named:
        np.testing.assert_array_equal(a, state[key], err_msg=key)
    ours = jax.tree.map(lambda a: a.shape, params)
    assert ours == jax.tree.map(lambda a: a.shape, jax.eval_shape(usrnet.init, jax.random.key(0)))


def test_transposed_conv_layout():
    """out[2i + a, 2j + b, o] = sum_c x[i, j, c] W_torch[c, o, a, b] (FKP_SPEC 10.3), written out by hand."""
    rng = np.random.RandomState(0)
    x = rng.randn(1, 3, 2, 5).astype(np.float32)
    w_torch = rng.randn(5, 4, 2, 2).astype(np.float32)  # (in, out, kh, kw)
    y = usrnet.ConvTranspose2x2(4).apply({"params": {"kernel": w_torch.transpose(2, 3, 0, 1)}}, x)
    ref = np.zeros((1, 6, 4, 4), np.float32)
    for i in range(3):
        for j in range(2):
            for a in range(2):
                for b in range(2):
                    ref[0, 2 * i + a, 2 * j + b] = x[0, i, j] @ w_torch[:, :, a, b]
    np.testing.assert_allclose(y, ref, rtol=1e-6, atol=1e-6)


def test_bad_state_dicts(state):
    with pytest.raises(ConvertError, match="not a USRNet state dict"):
        usrnet.params_from_state_dict({"kernel_size": np.zeros(1)})
    bad = dict(state)
    del bad["p.m_body.1.res.2.weight"]
    with pytest.raises(ConvertError, match=r"missing \['p.m_body.1.res.2.weight'\]"):
        usrnet.params_from_state_dict(bad)
    bad = dict(state, **{"p.m_up2.0.weight": state["p.m_up2.0.weight"].transpose(1, 0, 2, 3)})
    with pytest.raises(ConvertError, match=r"p.m_up2.0.weight has shape \(32, 64, 2, 2\)"):
        usrnet.params_from_state_dict(bad)
    with pytest.raises(ConvertError, match="unexpected"):
        usrnet.params_from_state_dict(dict(state, **{"p.m_up2.9.weight": np.zeros(1, np.float32)}))


def test_load_usrnet_errors(ref, tmp_path):
    with pytest.raises(FileNotFoundError, match="no such USRNet checkpoint"):
        usrnet.load_usrnet(tmp_path / "missing.pth")
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    with pytest.raises(CheckpointError, match="not a"):
        usrnet.load_usrnet(text)
    with pytest.raises(ConvertError, match="not a USRNet state dict"):
        usrnet.load_usrnet(ref / "weights" / "FKP_x2.pt")
    checkpoint.save(tmp_path / "other", {"a": np.zeros(2, np.float32)}, {"model": "fkp_flow"})
    with pytest.raises(ConvertError, match="'fkp_flow', not 'usrnet_tiny'"):
        usrnet.load_usrnet(tmp_path / "other")


# ----------------------------------------------------------------------------- conventions

def test_flip_kernel(golden):
    g = golden("usrnet")
    for sf in SCALES:
        k = g[f"kernel_x{sf}"].astype(np.float32)
        np.testing.assert_array_equal(usrnet.flip_kernel(k), g[f"kernel_flipped_x{sf}_f32"][0, 0])
        np.testing.assert_array_equal(usrnet.flip_kernel(usrnet.flip_kernel(k)), k)


@pytest.mark.parametrize("form", usrnet.DATA_STEPS)
def test_data_step_matches_our_degradation(golden, form):
    """With OTF(flip_kernel(k)) the data step inverts exactly OUR operator y = degrade(x, k, s) (correlation,
    circular): a consistent x is a fixed point, and with alpha -> 0 the output reproduces y. The unflipped
    kernel does neither (the asymmetric kernel 6 of golden kernels.npz)."""
    sf, k = 3, golden("usrnet")["kernel_x3"]
    x = np.random.RandomState(1).rand(1, 3, 36, 30)  # NCHW, float64 for a clean check
    with jax.enable_x64(True):
        y = np.asarray(degrade(x.transpose(0, 2, 3, 1), k, sf)).transpose(0, 3, 1, 2)
        Fy = jnp.fft.fft2(y)

        def step(kernel_conv, x_prev, alpha):
            FB = usrnet.otf(jnp.asarray(kernel_conv), x.shape[2:])
            return np.asarray(usrnet.data_step(jnp.asarray(x_prev), FB, usrnet.block_mean(jnp.abs(FB) ** 2, sf),
                                               Fy, alpha, sf, form))

        np.testing.assert_allclose(step(usrnet.flip_kernel(k), x, 1e-3), x, rtol=0, atol=1e-9)
        z = step(usrnet.flip_kernel(k), np.zeros_like(x), 1e-9)
        np.testing.assert_allclose(np.asarray(degrade(z.transpose(0, 2, 3, 1), k, sf)).transpose(0, 3, 1, 2), y,
                                   rtol=0, atol=1e-6)
        assert np.abs(step(k, x, 1e-3) - x).max() > 0.1


# ----------------------------------------------------------------------------- golden parity

def test_hyper_net(params, golden):
    g = golden("usrnet")
    for sf in SCALES:
        a, b = usrnet.hyper(params, jnp.zeros(1), sf)
        ours = np.concatenate([a[0], b[0]])
        # orig f32 vs f64 relative spread <= 1.4e-6 (the alphas are ~1e-6, so relative); ours 1.0e-6 -> 1e-5
        np.testing.assert_allclose(ours, g[f"hyper_ab_x{sf}_f32"], rtol=1e-5, atol=0)
        np.testing.assert_allclose(ours, g[f"hyper_ab_x{sf}_f64"], rtol=1e-5, atol=0)


@pytest.mark.parametrize("sf", SCALES)
def test_parity_f32(params, golden, sf):
    g = golden("usrnet")
    lr, k = hwc(g["lr"]), g[f"kernel_x{sf}"]
    ref32, ref64 = hwc(g[f"sr_x{sf}_f32"]), hwc(g[f"sr_x{sf}_f64"])
    spread = float(g[f"maxdiff_f32_vs_f64_x{sf}"])  # the original's own f32 vs f64: 4.1e-3 / 3.2e-3 / 6.5e-3
    sr = np.asarray(usrnet.super_resolve(params, lr, k, sf))
    assert sr.shape == (24 * sf, 20 * sf, 3) and sr.dtype == np.float32
    # Default (stable) data step in float32 vs the original in float64. Measured on AMD EPYC Zen 3 (AVX2) and
    # under XLA_FLAGS=--xla_cpu_max_isa=AVX / SSE4_2: 8.1e-6 / 7.1e-6 / 3.6e-6 (x2 / x3 / x4) -> 5e-5
    # (>= 6x the worst measured; still 1/60 of the original's own float32 error).
    np.testing.assert_allclose(sr, ref64, rtol=0, atol=5e-5)
    # vs the original's float32 run the difference IS the original's float32 error (ours ~ its float64)
    np.testing.assert_allclose(sr, ref32, rtol=0, atol=2 * spread)
    # The literal spec-8 data step ((FR - FBC invWBR) / alpha) in float32 is as ill-conditioned as the original:
    # measured vs f32 1.2e-3 / 1.5e-3 / 3.2e-3, vs f64 4.7e-3 / 2.7e-3 / 4.1e-3 (same 3 ISAs) -> 2x the
    # original's own f32 vs f64 spread (golden README 8: "about 1e-2 absolute").
    # (x4 only, the largest spread: one more compilation per scale is not worth the test time)
    if sf == 4:
        lit = np.asarray(usrnet.super_resolve(params, lr, k, sf, data_step_form="original"))
        np.testing.assert_allclose(lit, ref32, rtol=0, atol=2 * spread)
        np.testing.assert_allclose(lit, ref64, rtol=0, atol=2 * spread)


@pytest.mark.parametrize("sf, form", [(2, "stable"), (3, "stable"), (4, "stable"), (4, "original")])
def test_parity_f64(params, golden, sf, form):
    g = golden("usrnet")
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
        y = jnp.asarray(g["lr"].transpose(0, 2, 3, 1), jnp.float64)
        k = usrnet.flip_kernel(jnp.asarray(g[f"kernel_x{sf}"].astype(np.float32), jnp.float64))  # as the golden run
        f = jax.jit(partial(usrnet.forward, sf=sf, data_step_form=form))
        sr = np.asarray(f(p64, y, k, sigma=jnp.zeros(1, jnp.float64)))
        assert sr.dtype == np.float64
        # measured stable 8.2e-12 / 1.4e-11 / 1.4e-11, original (x4) 6.6e-12 (float64 rounding amplified by the
        # 1/alpha ~ 1e6 conditioning; the original's own f32 vs f64 spread is 4e-3) -> 1e-9
        np.testing.assert_allclose(hwc(sr.transpose(0, 3, 1, 2)), hwc(g[f"sr_x{sf}_f64"]), rtol=0, atol=1e-9)


# ----------------------------------------------------------------------------- the bundled example

def test_example_x4_gt_kernel(params, golden, example):
    """FKP_SPEC 8: GT kernel flipped -> 26.11 dB PSNR-Y / 0.7994 SSIM-Y; unflipped -> 20.30 dB. Measured here:
    26.1128 / 0.79936 and 20.3002 (golden 26.1125 / 0.79936 and 20.3001)."""
    lr, hr, k = example
    g = golden("usrnet")
    sr = u8(usrnet.super_resolve(params, lr, k, 4))
    assert sr.shape == (480, 320, 3)
    psnr, ssim = metrics.psnr_y(hr, sr, 4), metrics.ssim_y(hr, sr, 4)
    assert abs(psnr - 26.11) < 0.05 and abs(psnr - float(g["example_x4_gtkernel_flipped_psnr_y"])) < 0.05
    assert abs(ssim - float(g["example_x4_gtkernel_flipped_ssim_y"])) < 1e-3
    # super_resolve flips the kernel itself; handing it the flipped kernel = the original without the flip
    wrong = u8(usrnet.super_resolve(params, lr, usrnet.flip_kernel(k), 4))
    assert abs(metrics.psnr_y(hr, wrong, 4) - float(g["example_x4_gtkernel_unflipped_psnr_y"])) < 0.05


def test_closed_form_fallback(example):
    """The weightless solver on the example (GT kernel): 25.37 dB measured vs 21.59 dB for cv2 bicubic and
    26.11 dB for USRNet; with N(0, (10/255)^2) noise and sigma given: 24.2 dB vs bicubic 21.3 dB."""
    lr, hr, k = example
    bicubic = lambda im: cv2.resize(im, (320, 480), interpolation=cv2.INTER_CUBIC)  # noqa: E731
    sr = usrnet.closed_form_sr(lr, k, 4)
    assert sr.shape == (480, 320, 3) and sr.dtype == np.float32
    psnr = metrics.psnr_y(hr, u8(sr), 4)
    psnr_bicubic = metrics.psnr_y(hr, u8(bicubic(lr)), 4)
    assert psnr > psnr_bicubic + 3.0 and 25.0 < psnr < 26.11
    # it explains the data: re-degrading the SR gives back the LR (up to the 8-bit quantisation of the LR)
    assert np.abs(np.asarray(degrade(sr, k, 4)) - lr).max() < 2.0 / 255
    noisy = (lr + np.random.RandomState(0).normal(0, 10 / 255, lr.shape)).astype(np.float32)
    psnr_noisy = metrics.psnr_y(hr, u8(usrnet.closed_form_sr(noisy, k, 4, sigma=10 / 255)), 4)
    assert psnr_noisy > metrics.psnr_y(hr, u8(bicubic(noisy)), 4) + 2.0
    assert psnr_noisy > metrics.psnr_y(hr, u8(usrnet.closed_form_sr(noisy, k, 4)), 4) + 2.0  # sigma matters


def test_input_checks(params):
    k = np.ones((11, 11), np.float32) / 121
    with pytest.raises(ValueError, match="must be"):
        usrnet.super_resolve(params, np.zeros((8, 8)), k, 2)
    with pytest.raises(ValueError, match="larger than"):
        usrnet.closed_form_sr(np.zeros((4, 4, 3)), k, 2)
    with pytest.raises(ValueError, match="positive integer"):
        usrnet.closed_form_sr(np.zeros((8, 8, 3)), k, 1.5)
