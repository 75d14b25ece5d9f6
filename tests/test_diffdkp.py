"""fkp_jax.diffdkp: the Diff-DKP sampler (DKP_SPEC 8 + corrections) against ../shared/reference/golden_diffdkp
(README 4: schedule, 5: pieces, 6: sampler runs with the tiny ADM / classifier and recorded draws injected).

Compiles the tiny-model sampler step ONCE (config "gradfix" = released quirks + kernel gradients). The released
run differs from it only inside `kernel_step` (no Adam step), and a step's image outputs use the kernel from
before its kernel step, so the released run's recorded steps are replayed with the same compiled step, and the
released `kernel_step` (a no-op on G_k) is checked on its own (cheap compile). The defaults (quirks fixed) are
checked on pieces and on a micro-model end-to-end run. The network-free parts of a step are also checked on every
recorded step of all three runs (incl. sampler_torch17) with the golden network outputs as inputs.

Tolerances (AMD EPYC Zen 3 AVX2, XLA:CPU, float32; "measured" = our max abs error vs the float32 golden):
- Schedule: exact (measured 0 in float64 and float32).
- ADM output 2e-5, guidance gradient 2e-7: tests/test_adm.py's (5x the original's f32-vs-f64 spread); measured
  6.3e-6 / 6.7e-8 in the step. x0_pred / x0_hat carry the eps error times sqrt(1/abar_t - 1) (up to 157 at
  t = 99): tolerance 2e-5 * that coefficient (measured 2.9e-4 at t = 99, coefficient x ADM error).
- Posterior mean / sample: 3e-6 (measured 5.4e-7; the eps error enters through coef1 <= 2e-2 at these steps).
- Kernels (values <= 4.2e-3): 5e-7 absolute (no f32-vs-f64 golden; measured <= 4.7e-8 over 3 chained
  Adam steps, ~10x margin). Kernel losses: rtol 1e-5 (measured <= 8e-7 relative).
- KL gradient: the golden's own f32-vs-f64 spread is 9.9e-7 (of |g| <= 14); ours vs f64 1.9e-6 -> 5e-6.
- DC at 256 / synthesis / data loss: 5e-6 / 1e-5 / 1e-6 absolute (measured 6.6e-7 / 1.2e-6 / 4.8e-7, no
  f64 golden; ~8x margin).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fkp_jax import adm, diffdkp as dd, dkp, kernels
from fkp_jax.torch_state import load_state_dict

TOL_ADM, TOL_GRAD = 2e-5, 2e-7
TOL_MEAN = 3e-6
TOL_K = 5e-7
RTOL_LOSS = 1e-5

TINY = dict(adm_config=adm.TINY_ADM, classifier_config=adm.TINY_CLASSIFIER)
REL = dd.DiffDKPConfig(**TINY, released_quirks=True)
GRADFIX = dataclasses.replace(REL, kernel_grad=True)  # golden sampler_gradfix: released + kernel gradients
DEFAULT = dd.DiffDKPConfig(**TINY)


def nhwc(a):
    return jnp.asarray(np.asarray(a)[None].transpose(0, 2, 3, 1))


def chw(a):
    return np.asarray(a)[0].transpose(2, 0, 1)


@pytest.fixture(scope="module")
def gdir(ref):
    d = ref / "golden_diffdkp"
    if not (d / "sampler_released.npz").is_file():
        pytest.skip(f"golden_diffdkp not found at {d}")
    return d


@pytest.fixture(scope="module")
def g(gdir):
    return {n: dict(np.load(gdir / f"{n}.npz", allow_pickle=False))
            for n in ("schedule", "pieces", "sampler_released", "sampler_gradfix")}


@pytest.fixture(scope="module")
def nets(gdir):
    return jax.tree.map(jnp.asarray, {
        "adm": adm.unet_params_from_state_dict(load_state_dict(gdir / "tiny_adm_state.pt", lazy=True)),
        "classifier": adm.classifier_params_from_state_dict(load_state_dict(gdir / "tiny_classifier_state.pt",
                                                                            lazy=True))})


@pytest.fixture(scope="module")
def kv0(gdir, g):
    return dkp.gk_params_from_torch(load_state_dict(gdir / "netkp_init_state.pt"), g["sampler_released"]["kernel_code"])


# ----------------------------------------------------------------------------- schedule, pieces


def test_schedule(g):
    s, ours = g["schedule"], dd.make_schedule()
    np.testing.assert_array_equal(ours["timestep_map"], s["timestep_map"])
    for key in s:
        if key.startswith(("resp_", "base_")):
            name = key[5:] if key.startswith("resp_") else key
            assert ours[name].dtype == s[key].dtype, key
            np.testing.assert_allclose(ours[name], s[key], rtol=1e-15, atol=0, err_msg=key)
    np.testing.assert_array_equal(ours["posterior_variance_f32"], s["ddnm_gamma_t_f32"])  # lambda_t = 1
    np.testing.assert_array_equal(ours["posterior_mean_coef1_f32"], s["ddnm_a_t_f32"])
    t = np.arange(100)[:, None]
    np.testing.assert_allclose(dd.learned_range_logvar(ours, s["learned_range_v"].astype(np.float64)[None], t),
                               s["learned_range_logvar_f64"], rtol=1e-6)  # v is float32 in the golden


def test_synthesis_and_prior_kernels(g):
    p, r = g["pieces"], g["sampler_released"]
    x = nhwc(p["synth_X_u8"].transpose(2, 0, 1).astype(np.float32) / 255)
    y, small = dd.synthesize(x, jnp.asarray(p["synth_K_gt"]))
    np.testing.assert_allclose(chw(small), p["synth_Y_small"], atol=1e-5)
    np.testing.assert_allclose(chw(y), p["synth_Y"], atol=1e-5)
    # gen_kernel_random = kernels.gaussian_kernel with (lambda_1, lambda_2, theta); measured 3.2e-7
    params = jnp.asarray(r["k_random_params"][:8])
    ks = jax.vmap(lambda a: kernels.gaussian_kernel(4, a[0], a[1], a[2], size=19))(params)
    np.testing.assert_allclose(ks, r["k_random"][:8], atol=2e-6)
    np.testing.assert_allclose(kernels.gaussian_kernel(4, *r["K_gt_params"], size=19), r["K_gt"], atol=2e-6)
    lam = r["k_random_params"][:, :2]
    assert lam.min() >= 0.35 and lam.max() <= 7.0 and lam.max() > 5.5  # width_add 2 (prior), not 0.5 (GT)
    draws = jax.vmap(lambda k: dd.random_prior_kernel(k))(jax.random.split(jax.random.key(0), 4))
    np.testing.assert_allclose(draws.sum((1, 2)), 1.0, rtol=1e-5)


def test_data_consistency_256(g):
    p = g["pieces"]
    x0 = nhwc(p["synth_X_u8"].transpose(2, 0, 1).astype(np.float32) / 127.5 - 1)
    out = dd.data_consistency(x0, nhwc(p["synth_Y"]), jnp.asarray(p["dc256_kernel"]), float(p["dc256_alpha"]), 9,
                              magnitude=True)
    np.testing.assert_allclose(chw(out), p["dc256_x0hat"], atol=5e-6)


def test_kernel_losses(g):
    p = g["pieces"]
    kr, ke = jnp.asarray(p["loss_k_random"]), jnp.asarray(p["loss_k_est"])
    kl, grad = jax.value_and_grad(lambda k: dd.kernel_kl(kr, k))(ke)
    np.testing.assert_allclose(kl, p["loss_kl_f64"], rtol=RTOL_LOSS)
    np.testing.assert_allclose(grad, p["loss_kl_grad_f64"], atol=5e-6)
    x, y = nhwc(p["loss_data_x0hat"][0]), nhwc(p["loss_data_y"][0])
    np.testing.assert_allclose(chw(dd.correlate_same(x, ke)), p["loss_data_blurred"][0], atol=1e-6)
    mse, grad = jax.value_and_grad(lambda k: dd.kernel_data_loss(k, x, y, released=True))(ke)
    np.testing.assert_allclose(mse, p["loss_data_mse_f32"], rtol=RTOL_LOSS)
    np.testing.assert_allclose(grad, p["loss_data_grad_f32"], atol=1e-6)


def test_default_forward_model_is_consistent(g):
    """Quirks 3-4: on exact data y = roll(K (*) x, -9) (no bicubic pair) the default data term is 0 at the
    true kernel and DC with x0 = x returns x; the released correlation loss is not minimal there (its
    minimiser is the flipped, displaced kernel) and the released magnitude destroys negative values."""
    p = g["pieces"]
    k = jnp.asarray(p["synth_K_gt"])
    x = nhwc(p["synth_X_u8"][::4, ::4].transpose(2, 0, 1).astype(np.float32) / 127.5 - 1)  # 64x64 in [-1, 1]
    y = jnp.roll(dd.fft_blur(x, k), (-9, -9), axis=(1, 2))
    assert float(dd.kernel_data_loss(k, x, y)) < 1e-12
    assert float(dd.kernel_data_loss(k, x, y, released=True)) > 1e-3
    # y[i] = sum_m K[m] x[i + 9 - m] = corr(x, K[::-1, ::-1])[i]: the released term is minimised by the FLIPPED
    # kernel (centre of mass 10.5, i.e. 3 px off the prior's 7.5); only the zero-padded border differs.
    flipped = k[::-1, ::-1]
    released = float(dd.kernel_data_loss(k, x, y, released=True))
    assert float(dd.kernel_data_loss(flipped, x, y, released=True)) < 0.2 * released
    np.testing.assert_allclose(dd.data_consistency(x, y, k, 0.1), x, atol=2e-5)
    assert float(jnp.min(dd.data_consistency(x, y, k, 0.1, magnitude=True))) >= 0.0
    np.testing.assert_allclose(dd.observation_for_dc(y * 0 + 0.5, DEFAULT), 0.0)
    np.testing.assert_allclose(dd.observation_for_dc(y * 0 + 0.5, REL), 0.5)


def test_windows(g):
    p = g["pieces"]
    for hw in ("320x448", "384x512"):
        h, w = map(int, hw.split("x"))
        origins, owner = dd.window_layout(h, w)
        np.testing.assert_array_equal(origins, p[f"win{hw}_window_origin"])
        np.testing.assert_array_equal(owner, p[f"win{hw}_owner"])
        org = np.asarray(origins)[owner - 1]
        np.testing.assert_array_equal(np.arange(h)[:, None] - org[..., 0], p[f"win{hw}_local_row"])
        np.testing.assert_array_equal(np.arange(w)[None, :] - org[..., 1], p[f"win{hw}_local_col"])


def test_step_pieces_all_runs(g, gdir):
    """The network-free pieces of a step on every recorded step of the three runs (released, gradfix, torch17)
    with the golden model output, guidance gradient, kernel and noise as inputs: x0_pred, the posterior mean
    and the sample match to float32 rounding (measured 0 / 0 / 2.4e-7), x0_hat to the FFT's rounding (8.3e-7)."""
    r = g["sampler_released"]
    sched = dd.make_schedule()
    runs = {"released": r, "gradfix": {**r, **g["sampler_gradfix"]},
            "torch17": {**r, **dict(np.load(gdir / "sampler_torch17.npz", allow_pickle=False))}}
    for name, src in runs.items():
        for nn in (0, 10, 11, 12, 99):
            t, msg = 99 - nn, f"{name} step {nn}"

            def gold(key):
                return src[f"step{nn:02d}_{key}"]

            x_t = nhwc(gold("x_t"))
            x0_pred = dd.predict_x0(sched, x_t, nhwc(gold("model_out")[:3]), t)
            np.testing.assert_allclose(chw(x0_pred), gold("x0_pred"), atol=1e-6, err_msg=msg)
            x0_hat = dd.data_consistency(nhwc(gold("x0_pred")), nhwc(r["y"]), jnp.asarray(src["K_dc"][nn]), 0.1, 9,
                                         magnitude=True)
            np.testing.assert_allclose(chw(x0_hat), gold("x0_hat"), atol=5e-6, err_msg=msg)
            mean, gamma = dd.posterior_mean(sched, nhwc(gold("x0_hat")), x_t, t)
            np.testing.assert_allclose(chw(mean), gold("mean_ddnm"), atol=1e-6, err_msg=msg)
            sample = dd.add_noise(dd.guide(mean, gamma, nhwc(gold("cond_grad"))), gamma, nhwc(gold("noise")))
            np.testing.assert_allclose(chw(sample), gold("sample"), atol=1e-6, err_msg=msg)


# ----------------------------------------------------------------------------- kernel steps


def test_warmup(g, kv0):
    r, gf = g["sampler_released"], g["sampler_gradfix"]
    np.testing.assert_allclose(dd.gk_kernel(kv0), r["K_init"], atol=TOL_K)
    ks, loss = dd.warmup(dd.init_kernel_state(kv0, REL), dd.warmup_target(None, REL, r["K_gt"]), REL)
    np.testing.assert_allclose(loss, r["loss_kl_warmup"], rtol=RTOL_LOSS)
    np.testing.assert_allclose(loss, gf["loss_kl_warmup"], rtol=RTOL_LOSS)
    np.testing.assert_allclose(dd.gk_kernel(ks.kvars), r["K_after_warmup"], atol=TOL_K)
    change = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(ks.kvars), jax.tree.leaves(kv0)))
    np.testing.assert_allclose(change, r["param_maxabs_change_warmup"], rtol=1e-4)
    # Quirk 2: the default targets a random prior kernel (from the key), never the GT; released needs the GT.
    with pytest.raises(ValueError):
        dd.warmup_target(jax.random.key(0), REL)
    t0, t1 = (dd.warmup_target(jax.random.key(i), DEFAULT, r["K_gt"]) for i in (0, 1))
    assert float(jnp.max(jnp.abs(t0 - r["K_gt"]))) > 1e-3 and float(jnp.max(jnp.abs(t0 - t1))) > 1e-4


def test_released_kernel_step_is_frozen(g, kv0):
    """Quirk 1: released in-loop kernel steps change nothing (losses still computed, as recorded)."""
    r = g["sampler_released"]
    ks, _ = dd.warmup(dd.init_kernel_state(kv0, REL), jnp.asarray(r["K_gt"]), REL)
    y = dd.observation_for_dc(nhwc(r["y"]), REL)
    new, aux = jax.jit(dd.kernel_step, static_argnames="config")(ks, nhwc(r["step10_x0_hat"]), y,
                                                                 jnp.asarray(r["k_random"][0]), config=REL)
    for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(ks)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(aux["loss_data"], r["loss_data_mse"][10], rtol=RTOL_LOSS)
    np.testing.assert_allclose(aux["loss_kl"], r["loss_kl"][10], rtol=RTOL_LOSS)
    assert np.all(r["param_maxabs_change_per_step"] == 0)
    np.testing.assert_allclose(r["K_dc"], np.broadcast_to(r["K_after_warmup"], r["K_dc"].shape), atol=0)
    # The default does take steps, keeps a unit-sum kernel, and lowers its own data term on its own data.
    ks_d = dd.init_kernel_state(kv0, DEFAULT)
    x0 = 2 * nhwc(r["step10_x0_hat"]) - 1
    yd = jnp.roll(dd.fft_blur(x0, jnp.asarray(r["K_gt"])), (-9, -9), axis=(1, 2))
    step = jax.jit(dd.kernel_step, static_argnames="config")
    new, aux = step(ks_d, x0, yd, jnp.asarray(r["K_gt"]), config=DEFAULT)
    _, aux2 = step(new, x0, yd, jnp.asarray(r["K_gt"]), config=DEFAULT)
    assert float(aux2["loss_data"]) < float(aux["loss_data"])
    np.testing.assert_allclose(jnp.sum(dd.gk_kernel(new.kvars)), 1.0, rtol=1e-5)


# ----------------------------------------------------------------------------- sampler steps (one compile)


def _check_step(aux, src, rel, nn, t):
    coef = float(dd.make_schedule()["sqrt_recipm1_alphas_cumprod"][t])

    def golden(key):
        k = f"step{nn:02d}_{key}"
        return src[k] if k in src else rel[k]

    np.testing.assert_allclose(chw(aux["model_out"]), golden("model_out"), atol=TOL_ADM, err_msg=f"{nn}")
    np.testing.assert_allclose(chw(aux["cond_grad"]), golden("cond_grad"), atol=TOL_GRAD, err_msg=f"{nn}")
    for key in ("x0_pred", "x0_hat"):
        atol = max(TOL_ADM * coef, TOL_MEAN)
        np.testing.assert_allclose(chw(aux[key]), golden(key), atol=atol, err_msg=f"{nn} {key}")
    for key in ("mean_ddnm", "sample"):
        np.testing.assert_allclose(chw(aux[key]), golden(key), atol=TOL_MEAN, err_msg=f"{nn} {key}")


def test_sampler_steps(g, nets, kv0):
    """Released steps 0, 10, 99 (t = 99, 89, 0) from their recorded x_t with the frozen warm-up kernel, and
    the gradfix run's first kernel updates chained over steps 10, 11, 12 (K_dc 11..13, losses, K_at_kl) with
    its recorded x_t, noise and prior kernels injected."""
    r, gf = g["sampler_released"], g["sampler_gradfix"]
    y = nhwc(r["y"])
    ks, _ = dd.warmup(dd.init_kernel_state(kv0, GRADFIX), jnp.asarray(r["K_gt"]), GRADFIX)
    kr = jnp.asarray(r["k_random"])

    def step(src, nn, ks):
        t = 99 - nn
        assert int(r["t"][nn]) == t and int(r[f"step{nn:02d}_model_t"][0]) == dd.make_schedule()["timestep_map"][t]
        k_random = kr[max(nn - 10, 0)]
        x_t = src.get(f"step{nn:02d}_x_t", r[f"step{nn:02d}_x_t"])
        new, aux = dd.sampler_step(nets, dd.SamplerState(nhwc(x_t), ks), t, y, nhwc(r[f"step{nn:02d}_noise"]),
                                   k_random, GRADFIX)
        _check_step(aux, src, r, nn, t)
        return new, aux

    for nn in (0, 99):
        _, aux = step(r, nn, ks)
        np.testing.assert_allclose(aux["K_dc"], r["K_dc"][nn], atol=TOL_K)
    src = {**r, **gf}
    for nn in (10, 11, 12):
        new, aux = step(src if nn > 10 else r, nn, ks)
        np.testing.assert_allclose(aux["K_dc"], gf["K_dc"][nn], atol=TOL_K, err_msg=f"{nn}")
        np.testing.assert_allclose(aux["loss_data"], gf["loss_data_mse"][nn], rtol=RTOL_LOSS, err_msg=f"{nn}")
        np.testing.assert_allclose(aux["loss_kl"], gf["loss_kl"][nn], rtol=RTOL_LOSS, err_msg=f"{nn}")
        np.testing.assert_allclose(aux["K_at_kl"], gf["K_at_kl"][nn - 10], atol=TOL_K, err_msg=f"{nn}")
        np.testing.assert_allclose(dd.gk_kernel(new.kernel.kvars), gf["K_dc"][nn + 1], atol=TOL_K, err_msg=f"{nn}")
        if nn == 10:  # released step 10: same images (its kernel step changes only the state)
            _check_step(aux, r, r, 10, 89)
            np.testing.assert_allclose(aux["loss_data"], r["loss_data_mse"][10], rtol=RTOL_LOSS)
        ks = new.kernel
    assert np.isnan(aux["loss_data"]) == np.isnan(gf["loss_data_mse"][12])


# ----------------------------------------------------------------------------- end to end (micro models)

MICRO_ADM = adm.ADMConfig(image_size=16, model_channels=32, num_res_blocks=1, channel_mult=(1,), attention_ds=(),
                          num_head_channels=16)
MICRO_CLF = adm.ClassifierConfig(image_size=16, model_channels=32, num_res_blocks=1, channel_mult=(1,),
                                 attention_ds=(), num_head_channels=16)


def test_run_micro():
    """``run`` end to end on random micro networks (not a parity test; one compile of the loop): 10 respaced
    steps, 2x2 windows of 16 px on a 24x24 target; output in [0, 1], every pixel written, unit-sum kernel that
    moved away from its warm-up value (kernel steps reach G_k; the released freeze is
    test_released_kernel_step_is_frozen)."""
    shapes = {"adm": adm.init_shapes(MICRO_ADM), "classifier": adm.init_shapes(MICRO_CLF)}  # no eager Flax init
    rng = np.random.default_rng(3)  # NumPy: one jax.random call per leaf shape would compile ~100 kernels
    nets = jax.tree.map(lambda s: jnp.asarray(0.1 * rng.standard_normal(s.shape), s.dtype), shapes)
    cfg = dd.DiffDKPConfig(adm_config=MICRO_ADM, classifier_config=MICRO_CLF, respacing=10, kernel_start=8,
                           window=16, stride=8)
    lr = jax.random.uniform(jax.random.key(4), (1, 8, 8, 3))
    kv = dd.kernel_priors.mlp_init(jax.random.key(6), 19)
    sr, k = dd.run(nets, lr, jax.random.key(5), cfg, hr_size=(24, 24), kvars=kv)
    assert sr.shape == (1, 24, 24, 3) and bool(jnp.all(jnp.isfinite(sr)))
    assert float(sr.min()) >= 0 and float(sr.max()) <= 1 and float(jnp.mean(sr > 0)) > 0.5
    np.testing.assert_allclose(jnp.sum(k), 1.0, rtol=1e-5)
    _, k_warm, _ = jax.random.split(jax.random.key(5), 3)
    ks = dd._setup_kernel(kv, k_warm, None, cfg)
    assert float(jnp.max(jnp.abs(k - dd.gk_kernel(ks.kvars)))) > 1e-6


def test_half_torso_reaches_the_adm():
    """``adm_dtype="bfloat16"`` (the CLI's --half) runs the sampler step's ADM torso in bfloat16: its output
    differs from float32 (the dtype reached the network) by no more than bfloat16 rounding (the 0.15 relative
    bound of test_adm's half-precision test), and the step's state stays float32."""
    shapes = {"adm": adm.init_shapes(MICRO_ADM), "classifier": adm.init_shapes(MICRO_CLF)}
    rng = np.random.default_rng(7)
    nets = jax.tree.map(lambda s: jnp.asarray(0.1 * rng.standard_normal(s.shape), s.dtype), shapes)
    cfg = dd.DiffDKPConfig(adm_config=MICRO_ADM, classifier_config=MICRO_CLF, respacing=10, kernel_start=8,
                           window=16, stride=8)
    half = dataclasses.replace(cfg, adm_dtype="bfloat16")
    assert cfg.torso_dtype is None and half.torso_dtype == jnp.bfloat16
    ks = dd.init_kernel_state(dd.kernel_priors.mlp_init(jax.random.key(6), 19), cfg)
    state = dd.SamplerState(jax.random.normal(jax.random.key(1), (1, 16, 16, 3)), ks)
    y = jax.random.uniform(jax.random.key(2), (1, 16, 16, 3))
    noise, k_random = dd.draws(jax.random.key(3), (1, 16, 16, 3), cfg)
    outs = [dd.sampler_step(nets, state, 5, y, noise[0], k_random[0], c) for c in (cfg, half)]
    m32, m16 = (np.asarray(aux["model_out"]) for _, aux in outs)
    assert outs[1][0].x_t.dtype == jnp.float32 and m16.dtype == np.float32
    err = np.max(np.abs(m16 - m32)) / np.max(np.abs(m32))
    assert 0 < err < 0.15, err


def test_each_quirk_switches_alone():
    """``DiffDKPConfig.quirks`` keeps any subset of the five released quirks: the default keeps none, RELEASED all,
    ``kernel_grad`` still decides quirk 1 alone; each piece reads its own quirk (value ranges: 3, the kernel
    data loss: 4, the warm-up target: 2), so a one-quirk config behaves as RELEASED there and as the default
    elsewhere."""
    default, released = dd.DiffDKPConfig(), dd.RELEASED
    assert not any(default.keeps(q) for q in dd.QUIRKS) and all(released.keeps(q) for q in dd.QUIRKS)
    assert not any(dd.DiffDKPConfig(released_quirks=True, quirks=()).keeps(q) for q in dd.QUIRKS)
    assert [dd.DiffDKPConfig(quirks=(3, 5)).keeps(q) for q in dd.QUIRKS] == [False, False, True, False, True]
    assert dd.DiffDKPConfig(quirks=(1,), kernel_grad=True).grads_on and not dd.DiffDKPConfig(quirks=(1,)).grads_on
    with pytest.raises(ValueError, match="numbered 1-5"):
        dd.DiffDKPConfig(quirks=(6,))
    y = jnp.full((1, 4, 4, 3), 0.25)
    q3 = dd.DiffDKPConfig(quirks=(3,))
    np.testing.assert_array_equal(dd.observation_for_dc(y, q3), dd.observation_for_dc(y, released))
    np.testing.assert_array_equal(dd.observation_for_dc(y, dd.DiffDKPConfig(quirks=(2, 4))),
                                  dd.observation_for_dc(y, default))
    np.testing.assert_array_equal(dd.to_image(y, q3), dd.to_image(y, released))
    with pytest.raises(ValueError, match="ground-truth kernel"):
        dd.warmup_target(jax.random.key(0), dd.DiffDKPConfig(quirks=(2,)))
    k_random = dd.warmup_target(jax.random.key(0), dd.DiffDKPConfig(quirks=(1, 3, 4, 5)))  # no GT needed
    assert k_random.shape == (19, 19)
    kv = dd.kernel_priors.mlp_init(jax.random.key(1), 19)
    x = jax.random.uniform(jax.random.key(2), (1, 24, 24, 3))
    ks = dd.init_kernel_state(kv, default)
    for cfg, released_loss in ((dd.DiffDKPConfig(quirks=(4,)), True), (dd.DiffDKPConfig(quirks=(1, 2, 3, 5)), False)):
        _, aux = dd.kernel_step(ks, x, x, k_random, cfg)
        expect = dd.kernel_data_loss(dd.gk_kernel(kv, cfg), x, x, released_loss, cfg.shift)
        np.testing.assert_allclose(float(aux["loss_data"]), float(expect), rtol=1e-6)
    _, aux_rel = dd.kernel_step(ks, x, x, k_random, dd.DiffDKPConfig(quirks=(4,)))
    _, aux_def = dd.kernel_step(ks, x, x, k_random, default)
    assert float(aux_rel["loss_data"]) != float(aux_def["loss_data"])  # the two losses differ on this input
