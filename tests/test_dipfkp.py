"""DIP-FKP solver against the original's 150-iteration trace (golden README section 9)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fkp_jax import degrade as degrade_lib
from fkp_jax import dip, dipfkp, kernel_priors, metrics
from fkp_jax.convert import dip_params_from_torch, prior_from_torch

NCHW_TO_NHWC = (0, 2, 3, 1)


@pytest.fixture(scope="module")
def trace(golden):
    return golden("dipfkp_trace_x2")


@pytest.fixture(scope="module")
def prior(ref):
    return kernel_priors.fkp_prior(prior_from_torch(ref / "weights" / "FKP_x2.pt"))


@pytest.fixture(scope="module")
def config():
    return dipfkp.DIPFKPConfig(sf=2, iters=150)


@pytest.fixture(scope="module")
def start(ref, trace, prior, config):
    """The original's initial state: DIP weights, DIP input, latent, and the LR target (NHWC)."""
    params = dip_params_from_torch(ref / "golden" / "dipfkp_init_x2.pt")
    z_x = jnp.asarray(trace["dip_input_noise"].transpose(NCHW_TO_NHWC))
    latent = jnp.asarray(trace["latent_init"].reshape(-1))
    lr = jnp.asarray(trace["lr_input"].transpose(NCHW_TO_NHWC))
    np.testing.assert_array_equal(np.asarray(lr[0]), trace["lr_u8"] / np.float32(255.0))
    return dipfkp.state_from(params, z_x, latent, prior, config), lr


@pytest.fixture(scope="module")
def grads_fn(prior, config):
    """The jitted loss and gradients of a state (compiled once for the module: the iteration counter is an
    argument, so iterations 1, 80 and 81 share it)."""
    return jax.jit(lambda s, y: dipfkp.grads(s, y, prior, config))


@pytest.fixture(scope="module")
def iteration1(start, grads_fn):
    state, lr = start
    return grads_fn(state, lr)


def test_iteration1_loss_kernel_and_sr(iteration1, trace):
    (loss, (sr, kernel)), _ = iteration1
    # Float32 tolerances (docs/tolerances.md): >= 2x the worst measured (AVX2 with each conv algorithm, XLA
    # max_isa AVX / SSE4.2) and >= the original's own f32 vs f64 spread ("orig"), kept if within 10x of that.
    # orig 6.1e-6 rel; ours 7.0e-6 rel (XLA conv) -> 1.5e-5 (was 1e-5)
    np.testing.assert_allclose(float(loss), trace["loss"][0], rtol=1.5e-5)
    # orig 6.1e-6 rel; ours 1.3e-5 rel (XLA conv) -> 3e-5 (was 2e-5)
    np.testing.assert_allclose(float(loss), trace["iter1_f64_loss"], rtol=3e-5)
    # orig 3.0e-8; ours 6.0e-8 -> kept 1e-6 (8x)
    np.testing.assert_allclose(np.asarray(kernel), trace["kernels"][0], atol=1e-6)
    # orig 8.7e-6; ours 1.8e-5 (max_isa AVX, XLA conv) -> 4e-5
    np.testing.assert_allclose(np.asarray(sr), trace["sr_snapshots"][0][None].transpose(NCHW_TO_NHWC), atol=4e-5)


def test_iteration1_gradient_norms(iteration1, trace):
    """Per-tensor gradient norms in the original's named_parameters() order, for every tensor whose
    gradient does not vanish mathematically (the float64 run separates those, golden README 9.4)."""
    _, (g_dip, g_latent) = iteration1
    named = dip.named_parameters(g_dip)
    assert [n for n, _ in named] == list(trace["iter1_param_names"])
    ours = np.array([float(jnp.linalg.norm(g)) for _, g in named])
    live = trace["iter1_f64_grad_norm"] > 1e-10  # vanishing ones are < 1e-12 in float64
    assert live.sum() == 142 - 24 - 33
    # Relative to the original's float32 run: orig f32 vs f64 4.0e-4; ours 1.2e-3 (im2col conv; AVX-512
    # < 1e-3) -> 3e-3. The nine batch-norm scales with gradient norms below 1e-5 are rounding-limited, so
    # against its float64 run: orig 2.5e-3; ours 4.8e-3 (rows conv; AVX-512 < 2e-3) -> 1e-2.
    big = live & (trace["iter1_f64_grad_norm"] > 1e-5)
    assert big.sum() == 76
    np.testing.assert_allclose(ours[big], trace["iter1_grad_norm"][big], rtol=3e-3)
    small = live & ~big
    np.testing.assert_allclose(ours[small], trace["iter1_f64_grad_norm"][small], rtol=1e-2)
    # the latent has a gradient mathematically; the step discards it until t = 77 (see the schedule test)
    assert np.all(np.isfinite(np.asarray(g_latent)))


@pytest.fixture(scope="module")
def step(prior, config):
    return dipfkp.make_step(prior, config)


def test_first_update_and_iteration2(start, step, trace):
    """Adam's first update of every DIP tensor (norms as the original's), the latent only projected, and
    iteration 2 within the chaos band (golden README 9.5: rounding-level differences in the first
    gradients flip Adam's +-lr steps, so iteration 2 is checked loosely)."""
    state, lr = start
    before = [np.asarray(p) for _, p in dip.named_parameters(state["dip"])]
    state1, _ = step(jax.tree.map(jnp.copy, state), lr)
    after = [np.asarray(p) for _, p in dip.named_parameters(state1["dip"])]
    norms = np.array([np.linalg.norm(a - b) for a, b in zip(after, before)])
    live = trace["iter1_f64_grad_norm"] > 1e-10
    level4 = trace["iter1_param_names"] == "1.1.7.1.1.7.1.1.8.1.1.8.1.1.1.1.weight"  # 3 % f32/f64 in the original
    # within 0.5 % of the original's float32 or float64 run (they differ by up to 0.4 % on the tensors
    # whose gradients are at rounding level, where Adam's g / (|g| + eps) is sensitive)
    rel = np.minimum(np.abs(norms / trace["iter1_update_norm"] - 1),
                     np.abs(norms / trace["iter1_f64_update_norm"] - 1))
    # orig 4.1e-3; ours 2.6e-3 (XLA conv; AVX-512 < 5e-3) -> 6e-3 (was 5e-3)
    np.testing.assert_allclose(rel[live & ~level4], 0, atol=6e-3)
    # orig 2.4e-2; ours 9.1e-3 (max_isa AVX; AVX-512 8e-3) -> 3e-2
    np.testing.assert_allclose(norms[level4], trace["iter1_update_norm"][level4], rtol=3e-2)
    assert np.all(norms[trace["iter1_grad_norm"] == 0] == 0)  # the non-local 1x1 convs do not move
    # projection only: ours 4.7e-7 -> 2e-6 (was 1e-5)
    np.testing.assert_allclose(np.asarray(state1["kvars"]), trace["latents"][1], rtol=0, atol=2e-6)
    assert float(jnp.linalg.norm(state1["kvars"])) == pytest.approx(10.0, rel=1e-6)
    _, out2 = step(state1, lr)
    # chaos band (no f64 reference; the original with 1 vs 2 threads: 8.2e-5); ours 2.0e-2 (im2col) -> 5e-2
    np.testing.assert_allclose(float(out2["loss"]), trace["loss"][1], rtol=5e-2)


def test_kernel_branch_unit_check(trace, prior):
    """The deterministic kernel-branch check: fixed SR, latent -> kernel -> LR -> MSE -> one spherical Adam step."""
    sr = jnp.asarray(trace["final_sr"].transpose(NCHW_TO_NHWC))
    lr = jnp.asarray(trace["lr_input"].transpose(NCHW_TO_NHWC))
    z = jnp.asarray(trace["unit_latent_in"])

    def loss(z):
        out = degrade_lib.degrade(sr, prior.kernel(z), 2)
        return metrics.mse(out, lr), out

    (mse, out), grad = jax.value_and_grad(loss, has_aux=True)(z)
    # "orig" here: the original's float32 vs this port in float64 (the golden file has no f64 run of this check)
    # orig 4.8e-8; ours 3.0e-8 -> 1e-7
    np.testing.assert_allclose(np.asarray(prior.kernel(z)), trace["unit_kernel"][0, 0], atol=1e-7)
    # orig 4.7e-7; ours 4.8e-7 -> 1e-6
    np.testing.assert_allclose(np.asarray(out), trace["unit_out_lr"].transpose(NCHW_TO_NHWC), atol=1e-6)
    # orig 4.3e-6 rel; ours 4.0e-6 rel -> 1e-5
    np.testing.assert_allclose(float(mse), trace["unit_mse"], rtol=1e-5)
    # relative to max |grad|: orig 5.0e-6; ours 4.4e-6 -> 1e-5 (was 1e-3 rel + 1e-3 of max: 200x looser)
    np.testing.assert_allclose(np.asarray(grad), trace["unit_latent_grad"].reshape(-1), rtol=0,
                               atol=1e-5 * np.abs(trace["unit_latent_grad"]).max())
    updates, _ = prior.optimizer.update(grad, prior.optimizer.init(z), z)
    z1 = prior.project(optax.apply_updates(z, updates))
    # radius-10 latent after one Adam step (float32 bias corrections): orig 3.7e-6; ours 1.7e-5 (max_isa AVX,
    # 9.3e-6 on AVX2) -> 4e-5
    np.testing.assert_allclose(np.asarray(z1), trace["unit_latent_after_step"].reshape(-1), atol=4e-5)


def test_loss_switches_from_ssim_to_mse_after_iteration_80(start, grads_fn):
    state, lr = start
    for t, expect in ((80, "ssim"), (81, "mse")):
        (loss, (sr, kernel)), _ = grads_fn({**state, "t": jnp.asarray(t, state["t"].dtype)}, lr)
        out = degrade_lib.degrade(sr, kernel, 2)
        ref = 1.0 - metrics.ssim(out, lr) if expect == "ssim" else metrics.mse(out, lr)
        assert float(loss) == pytest.approx(float(ref), rel=1e-6)


def test_latent_schedule_and_trace_statistics(start, step, trace):
    """80 iterations from the original's initial state: the latent is frozen (only projected) through
    iteration 77's forward and first changes for iteration 78 (golden: constant up to t = 77); the loss
    stays on the SSIM scale through t = 80."""
    state, lr = start
    state = jax.tree.map(jnp.copy, state)
    latents, losses = [], []
    for _ in range(80):
        latents.append(np.asarray(state["kvars"]))  # the latent iteration len(latents) uses
        state, out = step(state, lr)
        losses.append(float(out["loss"]))
    # iterations 2..77 see the projected initial latent (re-projection moves it only by rounding)
    assert max(np.abs(latents[i] - latents[1]).max() for i in range(1, 77)) < 1e-5
    assert np.abs(latents[77] - latents[76]).max() > 1e-2  # iteration 78 sees the first update
    assert np.linalg.norm(latents[77]) == pytest.approx(10.0, rel=1e-5)
    assert np.all(np.isfinite(losses)) and max(losses) < 1.0
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])  # it fits (original: 0.51 -> 0.003)


def test_same_seed_reproduces_and_vmap_matches_single(start, step, prior, config):
    state, lr = start
    fresh = lambda: dipfkp.init_state(jax.random.key(7), prior, (24, 24), config)
    a = step(fresh(), lr)[1]
    b = step(fresh(), lr)[1]
    np.testing.assert_array_equal(np.asarray(a["sr"]), np.asarray(b["sr"]))
    np.testing.assert_array_equal(np.asarray(a["kernel"]), np.asarray(b["kernel"]))
    batch = dipfkp.stack_states([jax.tree.map(jnp.copy, state), fresh()])
    _, out = dipfkp.make_step(prior, config, seeds=True)(batch, lr)
    single = step(jax.tree.map(jnp.copy, state), lr)[1]
    for i, ref in enumerate((single, a)):  # iteration-1 outputs agree to float32 rounding
        np.testing.assert_allclose(np.asarray(out["sr"][i]), np.asarray(ref["sr"]), atol=2e-4)
        np.testing.assert_allclose(np.asarray(out["kernel"][i]), np.asarray(ref["kernel"]), atol=1e-7)
        assert float(out["loss"][i]) == pytest.approx(float(ref["loss"]), rel=1e-5)
    assert not np.allclose(np.asarray(out["sr"][0]), np.asarray(out["sr"][1]))


def test_restarts_match_the_original_statistically(ref, prior):
    """After iteration 1 the loop is chaotic, so 10 restarts of the trace case (150 iterations) are compared
    with the original's two runs (43.79 and 49.55 dB final kernel PSNR): same latent schedule, and restarts
    that reach the original's range.

    The final kernel PSNR is bimodal over restarts: about 0.4 of them end at 45-59 dB, the rest at 33.7-43
    (44 restarts pooled from docs/results.md and from runs on AVX-512 with 1 and 2 XLA threads, before and
    after the SSIM blur became band products; any change of float32 rounding draws a new sample). So no
    median or per-restart bound: those failed about one time in five when only the rounding changed (the
    median of 6 was 41.6 before and 37.4-39.2 after that change, which computes the same function). A loop
    whose latent never moves ends every restart at its starting kernel (measured: 35.71 dB in all of them);
    it fails "the best of 10 restarts reaches 45 dB", which a working loop misses with probability about
    0.59^10 = 0.5 %."""
    from experiments.trace_study import trace_restarts

    res = trace_restarts(10, 150, ref, prior)  # the module's prior: its compiled step is shared
    f = res["final_kernel_psnr"]
    assert np.all(res["first_latent_change"] == 78)
    assert np.all(np.isfinite(f)) and np.all(f < 70.0), f
    assert np.max(f) >= 45.0, f


@pytest.mark.parametrize("name, n_params", [("mlp", 322_121), ("softmax", 121)])
def test_baseline_priors_run_through_the_same_solver(start, name, n_params):
    """Double-DIP (mlp) and DIPSoftmax (spec 6.6): unit-sum kernels; the mlp learns from iteration 1,
    the softmax logits (like the FKP latent) only from iteration 77."""
    state, lr = start
    prior = kernel_priors.make_prior(name, 2)
    config = dipfkp.DIPFKPConfig(sf=2)
    kvars = prior.init(jax.random.key(1))
    n = sum(x.size for x in jax.tree.leaves(kvars)) - (200 if name == "mlp" else 0)  # the fixed code
    assert n == n_params
    copy = lambda tree: jax.tree.map(jnp.copy, tree)  # the step donates its input state
    s = dipfkp.state_from(copy(state["dip"]), copy(state["z_x"]), copy(kvars), prior, config)
    s, out = dipfkp.run(s, lr, prior, config, iters=2)[:2]
    k = np.asarray(out["kernel"])
    assert k.shape == (11, 11) and float(k.sum()) == pytest.approx(1.0, abs=1e-5) and np.all(k > 0)
    moved = [not np.array_equal(np.asarray(a), np.asarray(b))
             for a, b in zip(jax.tree.leaves(s["kvars"]), jax.tree.leaves(kvars))]
    assert any(moved) == (name == "mlp")


def test_scan_chunk_driver_matches_the_step(start, step, prior, config):
    """The accelerator driver (lax.scan over a chunk of iterations) runs the same step: its first loss is
    the single step's, its iteration counter advances by the chunk length."""
    state, lr = start
    single = step(jax.tree.map(jnp.copy, state), lr)[1]
    after, out = dipfkp.make_chunk(prior, config, 2)(jax.tree.map(jnp.copy, state), lr)
    assert out["losses"].shape == (2,) and int(after["t"]) == 3
    assert float(out["losses"][0]) == pytest.approx(float(single["loss"]), rel=1e-6)
    assert float(out["loss"]) == float(out["losses"][1])
