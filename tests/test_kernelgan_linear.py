"""The original KernelGAN baseline (fkp_jax.kernelgan_linear; FKP_SPEC 7.6): networks, losses, schedule,
post-processing and the step, by invariants and values worked out by hand.

Checked once against the official PyTorch code (not needed here; torch CPU, the official KernelGAN /
Learner driven with our weights, crops and noise): in float64 with every iteration started from the same
state, losses, curr_k and the spectral-norm vectors agree to 1e-15 and the updated weights to 1e-9
(Adam's g / (|g| + eps) amplifies rounding in near-zero gradients), over 40 iterations that pass
the similarity switch, the three decays, the constraint insertion and lr / 10 (thresholds lowered on
both sides), with and without the kernel flip; float64 D gradients agree to 3e-15 (float32: 2.6e-3,
the original's own float32 spread), float32 G gradients to 2e-5.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fkp_jax import kernels
from fkp_jax import kernelgan_linear as kl

CFG = kl.LinearKernelGANConfig()


@pytest.fixture(scope="module")
def state0():
    return kl.init_state(jax.random.key(0), CFG)


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.abs(a - b).max() / np.abs(b).max()


# ----------------------------------------------------------------------------- networks

def test_sizes_and_parameter_counts(state0):
    assert (CFG.g_kernel_size, CFG.d_size, CFG.d_out_size) == (13, 26, 20)
    assert kl.count_params(state0["g"]) == 150_656  # 64*49 + 64*64*(25 + 9 + 1 + 1) + 64
    assert kl.count_params(state0["d"]) == 30_977  # (7*7*3 + 1)*64 + 5*(64*64 + 64 + 128) + 65
    x = jax.random.uniform(jax.random.key(1), (1, 64, 64, 3))
    assert jax.jit(kl.apply_generator)(state0["g"], x).shape == (1, 26, 26, 3)
    y, sn = jax.jit(kl.apply_discriminator)(state0["d"], state0["sn"], x[:, :26, :26])
    assert y.shape == (1, 20, 20, 1) and bool(jnp.all((y > 0) & (y < 1)))
    assert jax.tree.structure(sn) == jax.tree.structure(state0["sn"])


def test_init_distributions(state0):
    ws = state0["g"]["w"]
    for w, (kh, kw, cin, cout) in zip(ws, kl.generator_shapes(CFG)):
        std = 0.1 * np.sqrt(2 / ((cin + cout) * kh * kw))  # Xavier normal, gain 0.1
        assert abs(float(jnp.std(w)) / std - 1) < (0.5 if w.size < 100 else 0.1)
    d = state0["d"]
    bound = 1 / np.sqrt(7 * 7 * 3)  # PyTorch default (the Xavier init never reaches weight_orig)
    assert float(jnp.abs(d["first"]["w"]).max()) <= bound and float(jnp.std(d["first"]["w"])) > 0.8 * bound / np.sqrt(3)
    assert float(jnp.abs(d["blocks"]["w"]).max()) <= 1 / 8
    assert float(jnp.abs(d["first"]["b"]).max()) == 0 and float(jnp.abs(d["blocks"]["b"]).max()) == 0
    assert abs(float(d["blocks"]["scale"].mean()) - 1) < 0.01 and float(d["blocks"]["scale"].std()) < 0.03
    for u in jax.tree.leaves(state0["sn"]):
        np.testing.assert_allclose(np.linalg.norm(np.asarray(u), axis=-1), 1, rtol=1e-6)


def test_equivalent_kernel_is_the_network():
    """The conv chain == one strided correlation with the flipped delta response (a true convolution
    with generator_kernel), on a random network and image."""
    params = jax.jit(kl.init_generator, static_argnums=1)(jax.random.key(2), CFG)
    x = jax.random.uniform(jax.random.key(3), (1, 40, 36, 3), minval=-1, maxval=1)
    chain = np.asarray(jax.jit(kl.apply_generator_layers)(params, x), np.float64)
    assert chain.shape == (1, 14, 12, 3)
    fast = np.asarray(jax.jit(kl.apply_generator)(params, x))
    np.testing.assert_allclose(fast, chain, atol=1e-5 * np.abs(chain).max())
    k = np.asarray(jax.jit(kl.generator_kernel)(params), np.float64)
    assert k.shape == (13, 13)
    xn = np.asarray(x, np.float64)
    manual = np.zeros_like(chain)
    for i in range(14):
        for j in range(12):
            patch = xn[0, 2 * i:2 * i + 13, 2 * j:2 * j + 13]  # (13, 13, 3)
            manual[0, i, j] = np.einsum("uvc,uv->c", patch, k[::-1, ::-1])
    np.testing.assert_allclose(manual, chain, atol=1e-5 * np.abs(chain).max())
    flipped = jax.jit(lambda p: kl.generator_kernel(p, flip=True))(params)
    np.testing.assert_array_equal(np.asarray(flipped), k.astype(np.float32)[::-1, ::-1])


def test_equivalent_kernel_orientation_by_hand():
    """First conv w0 (7x7), then convs that only pass channel 0 through with their tap at (2, 2), (1, 1),
    (0, 0): G correlates with w0 placed at rows/cols 3..9, so the delta response is w0 flipped there."""
    w0 = jax.random.normal(jax.random.key(4), (7, 7))
    eye = jnp.zeros((64, 64)).at[0, 0].set(1.0)
    ws = [jnp.zeros((7, 7, 1, 64)).at[:, :, 0, 0].set(w0),
          jnp.zeros((5, 5, 64, 64)).at[2, 2].set(eye), jnp.zeros((3, 3, 64, 64)).at[1, 1].set(eye),
          eye[None, None], eye[None, None], eye[:, :1][None, None]]
    k = np.asarray(jax.jit(kl.generator_kernel)({"w": ws}))
    expected = np.zeros((13, 13))
    expected[3:10, 3:10] = np.asarray(w0)[::-1, ::-1]
    np.testing.assert_allclose(k, expected, atol=1e-6)


def test_spectral_norm_against_svd():
    w = jax.random.normal(jax.random.key(5), (7, 7, 3, 64))
    u = kl._normalize(jax.random.normal(jax.random.key(6), (64,)))
    u = jax.jit(lambda w, u: jax.lax.fori_loop(0, 300, lambda _, u: kl.power_iteration(w, u)[0], u))(w, u)
    mat = np.asarray(w, np.float64).reshape(-1, 64).T
    s = np.linalg.svd(mat, compute_uv=False)
    w_sn, _ = kl.spectral_normalize(w, u)
    sigma = float(np.asarray(w)[0, 0, 0, 0] / np.asarray(w_sn)[0, 0, 0, 0])
    np.testing.assert_allclose(sigma, s[0], rtol=1e-4)
    s_sn = np.linalg.svd(np.asarray(w_sn, np.float64).reshape(-1, 64), compute_uv=False)
    np.testing.assert_allclose(s_sn[0], 1, rtol=1e-4)
    # The gradient treats u and v as constants: d<G, W/sigma>/dW = G/sigma - <G, W> u v^T / sigma^2.
    g = jax.random.normal(jax.random.key(7), w.shape)
    grad = jax.grad(lambda w_: jnp.sum(kl.spectral_normalize(w_, u)[0] * g))(w)
    u1, v1 = (np.asarray(a, np.float64) for a in kl.power_iteration(w, u))
    sig = u1 @ mat @ v1
    g64 = np.asarray(g, np.float64)
    expected = g64 / sig - np.sum(g64 * np.asarray(w)) / sig**2 * np.outer(u1, v1).T.reshape(w.shape)
    np.testing.assert_allclose(np.asarray(grad), expected, atol=1e-5 * np.abs(expected).max())


# ----------------------------------------------------------------------------- losses

def test_gan_loss():
    m = jnp.full((1, 20, 20, 1), 0.25)
    assert float(kl.gan_loss(m, True)) == 0.75 and float(kl.gan_loss(m, False)) == 0.25


def test_regularisers_on_hand_made_kernels():
    delta = lambda r, c, v=1.0: jnp.zeros((13, 13)).at[r, c].set(v)
    np.testing.assert_allclose(float(kl.sum2one_loss(jnp.full((13, 13), 0.7 / 169))), 0.3, rtol=1e-5)
    # boundary mask: 30 (1 - exp(-(dr^2 + dc^2) / (2 * 13^2))) outside the zeroed centre [2:11, 2:11]
    np.testing.assert_allclose(float(kl.boundaries_loss(delta(0, 0))), 30 * (1 - np.exp(-72 / 338)) / 169, rtol=1e-5)
    np.testing.assert_allclose(float(kl.boundaries_loss(delta(1, 6, -2.0))), 2 * 30 * (1 - np.exp(-25 / 338)) / 169,
                               rtol=1e-5)
    assert float(kl.boundaries_loss(delta(2, 2))) == 0 and float(kl.boundaries_loss(delta(10, 6))) == 0
    assert float(kl.boundaries_loss(delta(11, 6))) > 0
    # centre of mass (3, 4) against 13 // 2 + 0.5 = 6.5: ((3 - 6.5)^2 + (4 - 6.5)^2) / 2
    np.testing.assert_allclose(float(kl.centralized_loss(delta(3, 4, 3.0))), 9.25, rtol=1e-6)
    two = delta(6, 6) + delta(7, 7)
    assert float(kl.centralized_loss(two)) == 0
    np.testing.assert_allclose(float(kl.sparsity_loss(delta(0, 0, 32.0) + delta(5, 5, -1.0))), 3 / 169, rtol=1e-6)


def test_bicubic_kernel_values():
    k = kl.bicubic_x2_kernel()
    w = np.array([-0.01171875, -0.03515625, 0.11328125, 0.43359375, 0.43359375, 0.11328125, -0.03515625, -0.01171875])
    np.testing.assert_array_equal(k, np.outer(w, w).astype(np.float32))
    # a few entries of the original's table, as float32
    for (r, c), v in {(0, 0): 0.0001373291015625, (3, 3): 0.1880035400390630, (2, 1): -0.0039825439453130,
                      (0, 3): -0.0050811767578125}.items():
        assert k[r, c] == np.float32(v)
    assert abs(float(k.sum()) - 1) < 1e-6


def test_bicubic_loss_by_hand():
    # constant channels (a, b, c): every target channel is a + b + c (dense 3 -> 3 weight, kernel sum 1)
    x = jnp.broadcast_to(jnp.asarray([0.1, -0.2, 0.3]), (1, 64, 64, 3))
    g_out = jnp.broadcast_to(jnp.asarray([0.2, 0.5, -0.1]), (1, 26, 26, 3))
    np.testing.assert_allclose(float(kl.bicubic_loss(x, g_out)), (0 + 0.09 + 0.09) / 3, rtol=1e-5)
    # alignment: one impulse at (20, 20) of channel 0 meets only the odd taps after pad 3, stride 2 and
    # the shave 32 -> 26 ([3:29]); every channel sees it: loss = (sum_odd w^2)^2 / 26^2
    x = jnp.zeros((1, 64, 64, 3)).at[0, 20, 20, 0].set(1.0)
    w = np.array([-0.01171875, -0.03515625, 0.11328125, 0.43359375, 0.43359375, 0.11328125, -0.03515625, -0.01171875])
    expected = np.sum(w[1::2] ** 2) ** 2 / 26**2
    np.testing.assert_allclose(float(kl.bicubic_loss(x, jnp.zeros((1, 26, 26, 3)))), expected, rtol=1e-5)


# ----------------------------------------------------------------------------- schedule

def test_lambda_values_and_lr_schedule():
    assert kl.lambda_bicubic_values(CFG) == (5.0, 0.05, 5e-4, 5e-6)
    lr = kl.lr_schedule(2e-4, CFG)
    # update n (0-based iteration n) uses 2e-4 * 0.1^floor((n - 1) / 750): the original divides after 750
    expected = {0: 2e-4, 1: 2e-4, 750: 2e-4, 751: 2e-5, 1500: 2e-5, 1501: 2e-6, 2250: 2e-6, 2251: 2e-7, 2999: 2e-7}
    for n, v in expected.items():
        np.testing.assert_allclose(float(lr(n)), v, rtol=1e-6)


def _run_schedule(losses):
    def body(sched, xs):
        it, loss = xs
        lam = kl.constraint_weights(sched, CFG)
        seen = (lam["bicubic"], lam["centralized"], lam["sparse"], sched["similar"])
        return kl.update_schedule(sched, it, loss, CFG), seen
    its = jnp.arange(len(losses))
    _, (bic, cen, spa, sim) = jax.lax.scan(body, kl.init_schedule(), (its, jnp.asarray(losses, jnp.float32)))
    return np.asarray(bic), np.asarray(cen), np.asarray(spa), np.asarray(sim)


def test_schedule_switches_as_specified():
    """Values in force at each iteration's G step. Iteration 0 is ignored; three consecutive bicubic
    losses < 0.4 set `similar` (no decay at that call); then / 100 at multiples of 200 down to 5e-6,
    centralisation 1 and sparsity 5 from the decay that goes below 5e-3 (the 2nd)."""
    losses = np.full(1000, 1.0)
    losses[0] = 0.1  # ignored
    losses[[1, 3, 4]] = 0.3  # interrupted at 2: counter back to 0
    losses[[150, 151]] = 0.3  # two only
    losses[198:201] = 0.39  # the third consecutive is iteration 200: similar, but no decay in that call
    bic, cen, spa, sim = _run_schedule(losses)
    assert not sim[:201].any() and sim[201:].all()
    assert (bic[:401] == np.float32(5)).all()
    assert (bic[401:601] == np.float32(0.05)).all() and (cen[:601] == 0).all() and (spa[:601] == 0).all()
    assert (bic[601:801] == np.float32(5e-4)).all() and (cen[601:] == 1).all() and (spa[601:] == 5).all()
    assert (bic[801:] == np.float32(5e-6)).all()
    # a bicubic loss >= 0.4 after the switch changes nothing; a run that never gets below never switches
    bic2, cen2, _, sim2 = _run_schedule(np.full(1000, 0.4))
    assert not sim2.any() and (bic2 == 5).all() and (cen2 == 0).all()


# ----------------------------------------------------------------------------- post-processing

def test_final_kernel_filtering_by_hand():
    """A kernel already centred at (4.5, 4.5) on the kept 11 x 11 (so the shift is the identity):
    subtract 0.75 x its 41st-largest value, clip, normalise; the dropped last 2 rows/cols do not count."""
    f = np.array([1, 2, 3, 4, 5, 5, 4, 3, 2, 1, 0], np.float64)
    k13 = np.zeros((13, 13))
    k13[:11, :11] = np.outer(f, f)
    k13[11:, :] = 7.0  # dropped
    k13[:, 11:] = 7.0
    k11 = k13[:11, :11]
    expected = np.clip(k11 - 0.75 * np.sort(k11.ravel())[-41], 0, None)
    expected /= expected.sum()
    out = np.asarray(kl.final_kernel(jnp.asarray(k13, jnp.float32), 2))
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_final_kernel_invariants(state0):
    # an off-centre anisotropic blob with negative tails, like a trained G's kernel
    r, c = np.mgrid[:13, :13]
    k13 = np.exp(-((r - 5.2) ** 2 / 3 + (c - 7.1) ** 2 / 1.5 + (r - 5.2) * (c - 7.1) / 3)) - 0.01
    k13 = jnp.asarray(k13 / k13.sum(), jnp.float32)
    k2 = np.asarray(kl.final_kernel(k13, 2))
    assert k2.shape == (11, 11)
    np.testing.assert_allclose(k2.sum(), 1, atol=2e-3)  # renormalised before the shift, not after
    assert k2.min() > -1e-2 * k2.max()  # spline ringing only
    np.testing.assert_allclose(np.asarray(kernels.center_of_mass(k2)), [4.5, 4.5], atol=1e-3)
    k4 = np.asarray(kl.final_kernel(k13, 4))
    assert k4.shape == (21, 21)
    np.testing.assert_allclose(k4.sum(), 1, atol=2e-3)
    np.testing.assert_allclose(np.asarray(kernels.center_of_mass(k4)), [8.5, 8.5], atol=1e-3)
    np.testing.assert_allclose(k4, np.asarray(kernels.kernel_shift(kernels.analytic_x4_kernel(k2), 4)), atol=1e-7)
    # from a state: its curr_k; a leading seed axis is mapped over
    np.testing.assert_array_equal(np.asarray(kl.final_kernel(state0, 2)),
                                  np.asarray(kl.final_kernel(state0["curr_k"], 2)))
    both = np.asarray(kl.final_kernel(jnp.stack([k13, k13]), 2))
    np.testing.assert_allclose(both[1], k2, atol=1e-7)


# ----------------------------------------------------------------------------- the step

@pytest.fixture(scope="module")
def sampler():
    from fkp_jax import kernelgan as kg

    key = jax.random.key(11)
    img = jax.random.uniform(key, (24, 24, 3))
    img = jax.image.resize(img, (96, 96, 3), "bicubic").clip(0, 1)  # a smooth texture with edges
    return kg.make_sampler(np.asarray(img, np.float32), CFG.g_size, CFG.d_size)


@pytest.fixture(scope="module")
def stepper():
    return kl.make_step(CFG)


def _run(stepper, sampler, seed, n):
    state = kl.init_state(jax.random.key(seed), CFG)
    outs = []
    for _ in range(n):
        state, out = stepper(state, sampler)
        outs.append(jax.device_get(out))
    return state, outs


def test_steps_finite_and_reproducible(stepper, sampler):
    s1, o1 = _run(stepper, sampler, 0, 3)
    s2, o2 = _run(stepper, sampler, 0, 3)
    s3, o3 = _run(stepper, sampler, 1, 3)
    assert int(s1["t"]) == 4
    for o in o1:
        assert o["kernel"].shape == (11, 11)
        assert all(np.isfinite(v).all() for v in o.values())
        assert float(o["lambda_bicubic"]) == 5
    for a, b in zip(jax.tree.leaves(s1), jax.tree.leaves(s2)):
        if jnp.issubdtype(a.dtype, jnp.floating):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(o1[-1]["kernel"], o2[-1]["kernel"])
    assert o1[-1]["loss_d"] != o3[-1]["loss_d"]
    # G moved; the kernel reported is that of the G step (before its update), kept as curr_k
    np.testing.assert_allclose(np.asarray(kl.final_kernel(s1, 2)), o1[-1]["kernel"], atol=1e-7)
    assert _rel(s1["curr_k"], kl.generator_kernel(s1["g"])) > 0


def test_seeds_axis_matches_single_runs(stepper, sampler):
    vstep = kl.make_step(CFG, seeds=True)
    state = kl.stack_states([kl.init_state(jax.random.key(s), CFG) for s in (0, 1)])
    for _ in range(2):
        state, out = vstep(state, sampler)
    for i, seed in enumerate((0, 1)):
        single, outs = _run(stepper, sampler, seed, 2)
        np.testing.assert_allclose(np.asarray(out["loss_d"][i]), outs[-1]["loss_d"], rtol=1e-5)
        np.testing.assert_allclose(np.asarray(state["curr_k"][i]), np.asarray(single["curr_k"]),
                                   atol=1e-4 * float(jnp.abs(single["curr_k"]).max()))
