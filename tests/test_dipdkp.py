"""DIP-DKP: the DKP kernel prior (fkp_jax.dkp) in the DIP solver (fkp_jax.dipfkp) against golden_dkp.

Golden (../shared/reference/golden_dkp, README sections 3-5): G_k converted from the original's state dict
(kernel, MSE gradient, one PyTorch Adam step), the 200-step warm-up and the first prior step replayed with
the original's recorded random kernels, the first DIP step in float32, a float64 replay of DIP steps
c = 1..10 (prior steps t = 0, 1; data steps c = 3, 6, 9), the exact data-step / discard schedule, the
hyper-Laplacian image prior and the prior-step weights. Plus invariants (unit-sum kernels, seeds,
the Langevin option). Compiles: the float64 step once, the float32 DIP forward once (the float32 step is
the same code; the existing priors' float32 step is covered by tests/test_dipfkp.py).

Tolerances follow docs/tolerances.md: float32 >= 2x the worst we measured (this AVX2 machine, and XLA
--xla_cpu_max_isa=AVX / SSE4.2) and >= the original's own float32-vs-float64 spread ("orig"). Float64 is
limited by the loop's chaos only (golden README 4.6: a 1e-14 relative perturbation of the input grows to
1e-9 .. 9e-9 relative in loss_x by c = 7..11); measured here <= 2e-9 relative through c = 10.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fkp_jax import dip, dipfkp, dkp, kernel_priors
from fkp_jax.convert import dip_params_from_torch
from fkp_jax.torch_state import load_state_dict

NHWC = (0, 2, 3, 1)
F64_STEPS = 10
DTYPES = {"f32": jnp.float32, "f64": jnp.float64}


@pytest.fixture(scope="module")
def gd(ref):
    path = ref / "golden_dkp"
    if not path.is_dir():
        pytest.skip(f"{path} not found")
    return path


@pytest.fixture(scope="module")
def trace(gd):
    return dict(np.load(gd / "dipdkp_trace_x2.npz", allow_pickle=False))


@pytest.fixture(scope="module")
def gk_golden(gd):
    return dict(np.load(gd / "gk.npz", allow_pickle=False))


@pytest.fixture(scope="module")
def metrics_golden(gd):
    return dict(np.load(gd / "metrics_dkp.npz", allow_pickle=False))


def replay_prior(trace):
    return dkp.dkp_prior(2, source=dkp.replay_source(trace["rk_kernels_f32"]))


def _gk_tensors(v):
    """G_k variables in the original's named_parameters() order, PyTorch layout."""
    return [v["dense1"]["kernel"].T, v["dense1"]["bias"], v["dense2"]["kernel"].T, v["dense2"]["bias"]]


def _relmax(got, want):
    return float(np.abs(np.asarray(got, np.float64) - want).max() / np.abs(want).max())


# ----------------------------------------------------------------------------------------- G_k (README 3)

@pytest.mark.parametrize("sf, prec", [(2, "f32"), (2, "f64"), (4, "f64")])
def test_gk_conversion_gradient_and_one_adam_step(gd, gk_golden, sf, prec):
    g = {k[3:]: v for k, v in gk_golden.items() if k.startswith(f"x{sf}_")}
    with jax.enable_x64(prec == "f64"):
        v = dkp.gk_params_from_torch(load_state_dict(gd / f"gk_init_x{sf}.pt"), g[f"code_{prec}"], DTYPES[prec])
        k = int(g["k"])
        assert sum(x.size for x in _gk_tensors(v)) == g["n_params"]
        hidden_pre = v["code"] @ v["dense1"]["kernel"] + v["dense1"]["bias"]
        assert int(jnp.sum(hidden_pre <= 0)) == g["hidden_n_nonpositive"] == 493
        tx = dkp.torch_adam(float(g["kp_lr"]))

        @jax.jit
        def one_step(v, target):
            loss, grad = jax.value_and_grad(lambda p: dkp.kernel_mse(target, kernel_priors.mlp_kernel(p, k)))(v)
            v1 = optax.apply_updates(v, tx.update(grad, tx.init(v), v)[0])
            return kernel_priors.mlp_kernel(v, k), loss, grad, v1, kernel_priors.mlp_kernel(v1, k)

        kern, loss, grad, v1, kern1 = one_step(v, jnp.asarray(g["grad_target_f32"], DTYPES[prec]))
        grad_norms = np.array([float(jnp.linalg.norm(x)) for x in _gk_tensors(grad)])
        upd_norms = np.array([float(jnp.linalg.norm(a - b)) for a, b in zip(_gk_tensors(v1), _gk_tensors(v))])
        got = dict(kernel=np.asarray(kern), kernel1=np.asarray(kern1), loss=float(loss),
                   b1=np.asarray(grad["dense1"]["bias"]), b3=np.asarray(grad["dense2"]["bias"]))
    if prec == "f32":
        # kernel (values ~ 0.008): orig 1.4e-9, ours 1.9e-9 -> 5e-9; after one Adam step orig 9.2e-10, ours 9.3e-10
        np.testing.assert_allclose(got["kernel"], g["kernel_f32"], rtol=0, atol=5e-9)
        np.testing.assert_allclose(got["kernel1"], g["adam1_kernel_f32"], rtol=0, atol=5e-9)
        # MSE gradient: orig 1.4e-7 rel (loss), 4.9e-7 of the max (biases); ours 2.9e-7, 4.9e-7 -> 1e-6, 2e-6
        np.testing.assert_allclose(got["loss"], g["grad_loss_f32"], rtol=1e-6)
        assert _relmax(got["b1"], g["grad_bias1_f32"]) < 2e-6 and _relmax(got["b3"], g["grad_bias3_f32"]) < 2e-6
        np.testing.assert_allclose(grad_norms, g["grad_norm_f32"], rtol=1e-6)
        # Adam update norms per tensor: orig 6.6e-7, ours 1.1e-7 -> 1e-6. (optax.adam: 7.3e-6, its bias
        # corrections are computed from float32-rounded betas; see dkp.torch_adam)
        np.testing.assert_allclose(upd_norms, g["adam1_update_norm_f32"], rtol=1e-6)
    else:  # measured <= 2.4e-15 relative, 3.5e-18 absolute on the kernels
        np.testing.assert_allclose(got["kernel"], g["kernel_f64"], rtol=0, atol=1e-15)
        np.testing.assert_allclose(got["kernel1"], g["adam1_kernel_f64"], rtol=0, atol=1e-15)
        np.testing.assert_allclose(got["loss"], g["grad_loss_f64"], rtol=1e-13)
        assert _relmax(got["b1"], g["grad_bias1_f64"]) < 1e-13 and _relmax(got["b3"], g["grad_bias3_f64"]) < 1e-13
        np.testing.assert_allclose(grad_norms, g["grad_norm_f64"], rtol=1e-13)
        np.testing.assert_allclose(upd_norms, g["adam1_update_norm_f64"], rtol=1e-13)


def test_torch_adam_is_optax_adam_in_float64():
    """Same formula as optax.adam (eps outside the square root, bias corrections 1 - b^n); they differ only in
    float32 rounding of the bias corrections."""
    def run(tx):
        params = {"a": jnp.linspace(-1.0, 1.0, 7), "b": jnp.ones((2, 3))}
        state = tx.init(params)
        for i in range(5):
            g = jax.tree.map(lambda x: jnp.sin(x * (i + 1)) * 10.0 ** -(i + 6), params)  # ~eps and above
            updates, state = tx.update(g, state, params)
            params = optax.apply_updates(params, updates)
        return params

    with jax.enable_x64(True):
        ours, ref = jax.jit(lambda: run(dkp.torch_adam(1e-4)))(), jax.jit(lambda: run(optax.adam(1e-4)))()
        assert jax.tree.leaves(ours)[0].dtype == jnp.float64
        for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-17)


# ----------------------------------------------------------------------------------------- warm-up (4.4-4.6)

@pytest.fixture(scope="module")
def warm(gd, trace):
    """G_k after the 200 replayed warm-up steps, float32 and float64: {prec: (kvars, opt_state)}."""
    out = {}
    prior = replay_prior(trace)
    for prec in ("f32", "f64"):
        with jax.enable_x64(prec == "f64"):
            v = dkp.gk_params_from_torch(load_state_dict(gd / "gk_init_x2.pt"), trace["kernel_code"], DTYPES[prec])
            out[prec] = jax.tree.map(np.asarray, prior.warmup(v, prior.optimizer.init(v), jax.random.key(0)))
    return out


def test_warmup_replay(trace, warm):
    prior = replay_prior(trace)
    k32 = np.asarray(prior.kernel(warm["f32"][0]))
    # orig f32 vs f64 1.5e-8 (max over the 200 steps; 5.6e-9 after the last); ours 2.2e-8 vs either (native,
    # AVX, SSE4.2) -> 5e-8 (the golden README suggests ~1e-8: below the original's own spread)
    np.testing.assert_allclose(k32, trace["warm_kernel_after"][-1], rtol=0, atol=5e-8)
    np.testing.assert_allclose(k32, trace["replay_f64_warm_kernel_after"][-1], rtol=0, atol=5e-8)
    with jax.enable_x64(True):
        k64 = np.asarray(prior.kernel(jax.tree.map(jnp.asarray, warm["f64"][0])))
    assert k64.dtype == np.float64
    np.testing.assert_allclose(k64, trace["replay_f64_warm_kernel_after"][-1], rtol=0, atol=1e-14)  # ours 3e-17
    assert int(warm["f64"][1].count) == 200  # one Adam state for warm-up, prior and data steps


# ----------------------------------------------------------------------------------------- DIP step c = 1, float32

@pytest.fixture(scope="module")
def start32(gd, trace):
    params = dip_params_from_torch(gd / "dipdkp_init_x2.pt")
    z_x = jnp.asarray(trace["dip_input_noise"].transpose(NHWC))
    lr = jnp.asarray(trace["lr_input"].transpose(NHWC))
    return params, z_x, lr


def test_prior_step_and_dip_step1_float32(trace, warm, start32):
    """Prior step t = 0 on the DIP output of c = 1 (the same forward as the inner step's, README 4.5), then
    the DIP loss terms of c = 1 with the updated kernel (forward only; the float64 replay covers the update)."""
    prior, config = replay_prior(trace), dipfkp.DIPFKPConfig(sf=2)
    params, z_x, lr = start32
    kvars, opt = jax.tree.map(jnp.asarray, warm["f32"])
    sr = jax.jit(dip.apply)(params, z_x)
    # orig f32 vs f64 1.7e-5 (README 4.6); ours 1.8e-5 vs the original's float32 -> 4e-5, as tests/test_dipfkp
    np.testing.assert_allclose(np.asarray(sr[0]).transpose(2, 0, 1), trace["sr_snapshots"][0], rtol=0, atol=4e-5)

    kernels0 = jnp.asarray(trace["rk_kernels_f32"][200:205])
    terms = jax.jit(lambda v: dkp.prior_terms(v, sr, lr, kernels0, 2, 11))(kvars)
    # e_l: orig 1.2e-6 rel, ours 2.7e-6 (AVX; 1.6e-6 native) -> 6e-6; m_l: orig 2.8e-7, ours 7.2e-7 -> 2e-6
    np.testing.assert_allclose(terms["x_losses"], trace["prior_x_losses"][0], rtol=6e-6)
    np.testing.assert_allclose(terms["k_losses"], trace["prior_k_losses"][0], rtol=2e-6)
    # p_l, w_l are ratios of small differences of nearly equal e_l: orig 1.4e-5 (w), the original with
    # 2 threads 2.0e-4 (w, README 4.7); ours 2.7e-6 (p), 2.0e-4 (w) -> 1e-5, 5e-4
    np.testing.assert_allclose(terms["prob"], trace["prior_prob"][0], rtol=0, atol=1e-5)
    np.testing.assert_allclose(terms["weights"], trace["prior_weights"][0], rtol=0, atol=5e-4)
    assert float(terms["weights"][np.argmin(trace["prior_x_losses"][0])]) == pytest.approx(-np.log(1e-3), rel=1e-6)

    step = jax.jit(prior.prior_step)
    key = jax.random.key(0)
    kv1, opt1 = step(kvars, opt, sr, lr, jnp.int32(1), key)
    kernel = np.asarray(prior.kernel(kv1))
    # orig 5.4e-9 (1.5e-8 during the warm-up), ours 3.0e-8 -> 6e-8
    np.testing.assert_allclose(kernel, trace["prior_kernel_after"][0], rtol=0, atol=6e-8)
    assert int(opt1.count) == 201
    kv2, opt2 = step(kv1, opt1, sr, lr, jnp.int32(2), key)  # not the first step of an outer iteration: no-op
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(kv2), jax.tree.leaves(kv1)))
    assert int(opt2.count) == 201

    loss_x, k = dipfkp.data_loss(sr, kv1, lr, 1, prior, config)
    reg = prior.image_regulariser(sr, lr)
    # orig f32 vs f64 1.1e-5 rel (loss_x), 4.3e-7 (R); ours 9.5e-6, 1.2e-6 -> 2.5e-5 (README 4.8: ~2e-5), 3e-6
    np.testing.assert_allclose(float(loss_x), trace["inner_loss_x"][0], rtol=2.5e-5)
    np.testing.assert_allclose(float(reg), trace["inner_grad_loss"][0], rtol=3e-6)
    np.testing.assert_allclose(float(loss_x + reg), trace["inner_loss_total"][0], rtol=2.5e-5)
    np.testing.assert_allclose(np.asarray(k), trace["inner_kernel"][0], rtol=0, atol=6e-8)


# ----------------------------------------------------------------------------------------- float64 replay, c = 1..10

@pytest.fixture(scope="module")
def replay64(gd, trace, warm):
    """The solver in float64 from the original's initial state: DIP steps c = 1..F64_STEPS.
    Returns per step: outputs, kernel variables before the step, the gradient accumulator after it."""
    prior, config = replay_prior(trace), dipfkp.DIPFKPConfig(sf=2)
    rec = {"out": [], "kvars_before": [], "acc_after": []}
    # XLA's convolution for this float64 run: it compiles in ~60 % of the time of the per-machine choice
    # (Winograd on AVX2), and every algorithm equals it to float64 rounding (tests/test_dip.py)
    conv_algorithm, dip.conv_algorithm = dip.conv_algorithm, lambda positions, stride: "xla"
    try:
        _replay64(gd, trace, prior, config, rec)
    finally:
        dip.conv_algorithm = conv_algorithm
    return rec


def _replay64(gd, trace, prior, config, rec):
    with jax.enable_x64(True):
        f64 = lambda tree: jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), tree)  # noqa: E731
        params = f64(dip_params_from_torch(gd / "dipdkp_init_x2.pt"))
        v = dkp.gk_params_from_torch(load_state_dict(gd / "gk_init_x2.pt"), trace["kernel_code"], jnp.float64)
        state = dipfkp.state_from(params, f64(trace["dip_input_noise"].transpose(NHWC)), v, prior, config)
        lr = f64(trace["lr_input"].transpose(NHWC))
        step = dipfkp.make_step(prior, config)
        rec["warm_kvars"] = jax.tree.map(np.asarray, state["kvars"])
        for c in range(1, F64_STEPS + 1):
            assert int(state["t"]) == c
            rec["kvars_before"].append(jax.tree.map(np.asarray, state["kvars"]))
            state, out = step(state, lr)
            rec["out"].append({k: np.asarray(x) for k, x in out.items()})
            rec["acc_after"].append(float(sum(jnp.abs(x).sum() for x in jax.tree.leaves(state["k_acc"]))))
        rec["final_kernel"] = np.asarray(prior.kernel(state["kvars"]))
        rec["lr"] = np.asarray(lr)


def test_float64_replay_losses_kernels_and_sr(trace, replay64):
    out = replay64["out"]
    assert out[0]["sr"].dtype == np.float64
    c = np.arange(F64_STEPS)
    for mine, ref in (("loss_data", "loss_x"), ("image_reg", "grad_loss"), ("loss", "loss_total")):
        np.testing.assert_allclose([o[mine] for o in out], trace[f"replay_f64_inner_{ref}"][c], rtol=1e-7, err_msg=mine)
    # the kernel data loss of a step has the value of its DIP data loss (README 8.7)
    np.testing.assert_array_equal(trace["replay_f64_inner_loss_k"][c], trace["replay_f64_inner_loss_x"][c])
    # losses: ours <= 2.8e-9 relative; kernels (~0.01): <= 1.1e-12; SR (in [0, 1]): 1.4e-8 at c = 10 (native,
    # AVX, SSE4.2 alike)
    np.testing.assert_allclose(np.stack([o["kernel"] for o in out]), trace["replay_f64_inner_kernel"][c],
                               rtol=0, atol=1e-10)
    for i, counter in enumerate(trace["replay_f64_inner_sr_counters"]):
        if counter <= F64_STEPS:
            np.testing.assert_allclose(out[counter - 1]["sr"][0].transpose(2, 0, 1), trace["replay_f64_inner_sr"][i],
                                       rtol=0, atol=1e-7, err_msg=f"c = {counter}")
    for o in out:
        assert np.all(o["kernel"] >= 0) and o["kernel"].sum() == pytest.approx(1.0, abs=1e-12)


def test_float64_replay_prior_and_data_steps(trace, replay64):
    out, before = replay64["out"], replay64["kvars_before"]
    lr = replay64["lr"]
    with jax.enable_x64(True):
        for t in range(-(-F64_STEPS // 5)):  # prior steps at c = 1, 6, ...: terms from that step's DIP output
            c = 5 * t + 1
            kernels = jnp.asarray(trace["rk_kernels_f32"][200 + 5 * t:205 + 5 * t], jnp.float64)
            terms = dkp.prior_terms(jax.tree.map(jnp.asarray, before[c - 1]), jnp.asarray(out[c - 1]["sr"]),
                                    jnp.asarray(lr), kernels, 2, 11)
            # t = 0: ours <= 7.5e-15 relative (e, m), 7.7e-13 (w); t = 1: 3.6e-10 (e), 9.4e-10 (w) (chaos)
            for name in ("x_losses", "k_losses"):
                np.testing.assert_allclose(terms[name], trace[f"replay_f64_prior_{name}"][t], rtol=1e-8, err_msg=name)
            for name in ("prob", "weights"):
                np.testing.assert_allclose(terms[name], trace[f"replay_f64_prior_{name}"][t], rtol=0, atol=1e-7,
                                           err_msg=name)
            np.testing.assert_allclose(float(terms["loss"]), trace["replay_f64_prior_lossk"][t], rtol=1e-7)
            # the kernel of step c is G_k right after this prior step
            np.testing.assert_allclose(out[c - 1]["kernel"], trace["replay_f64_prior_kernel_after"][t], rtol=0,
                                       atol=1e-10)
    # data steps: G_k after the step at c (3, 6, 9) is the kernel of step c + 1; the summed loss is the DIP
    # data losses of the window {1,2,3}, {6}, {7,8,9}
    windows = {3: (1, 2, 3), 6: (6,), 9: (7, 8, 9)}
    for i, c in enumerate(trace["replay_f64_data_counter"]):
        if c + 1 <= F64_STEPS:
            after = out[c]["kernel"] if c % 5 != 0 else None
            if after is not None:
                np.testing.assert_allclose(after, trace["replay_f64_data_kernel_after"][i], rtol=0, atol=1e-10)
            np.testing.assert_allclose(sum(out[w - 1]["loss_data"] for w in windows[c]),
                                       trace["replay_f64_data_ac_loss"][i], rtol=1e-7)
    np.testing.assert_allclose(replay64["final_kernel"], trace["replay_f64_data_kernel_after"][2], rtol=0, atol=1e-10)
    # the gradient sum in the state: cleared after a data step (3, 6, 9), carried otherwise (4, 5 are later
    # discarded by the reset at c = 6; 10 is discarded at c = 11)
    acc = replay64["acc_after"]
    assert [c for c in range(1, F64_STEPS + 1) if acc[c - 1] == 0] == [3, 6, 9]


# ----------------------------------------------------------------------------------------- schedule (README 4.2)

def _schedule(n: int, window):
    """Replays a (reset, apply) rule over steps 1..n: (data counters, windows, discarded (t, counters))."""
    counters, windows, discarded, acc = [], [], [], []
    for c in range(1, n + 1):
        reset, apply = window(c)
        if reset and acc:
            discarded.append((dkp.outer_iteration(acc[0]), acc))
        acc = [c] if reset else acc + [c]
        if apply:
            counters.append(c)
            windows.append(acc)
            acc = []
    if acc:
        discarded.append((dkp.outer_iteration(acc[0]), acc))
    return counters, windows, discarded


def _pad(rows, width):
    return np.array([list(r) + [-1] * (width - len(r)) for r in rows])


def test_schedule_matches_the_original_exactly(trace):
    prior = kernel_priors.make_prior("dkp", 2)
    assert prior.name == "dkp" and "dkp" in kernel_priors.PRIORS
    n = len(trace["inner_counter"])
    counters, windows, discarded = _schedule(n, prior.grad_window)
    np.testing.assert_array_equal(counters, trace["data_counter"])
    np.testing.assert_array_equal(_pad(windows, 3), trace["data_window"])
    np.testing.assert_array_equal(_pad([(t, *w) for t, w in discarded], 4), trace["discarded_windows"])
    assert sum(len(w) for w in windows) + sum(len(w) for _, w in discarded) == n  # every loss once
    # outer iterations and the prior step (first step of each), SSIM -> MSE after c = 405
    c = trace["inner_counter"]
    np.testing.assert_array_equal(dkp.outer_iteration(c), trace["inner_outer_iter"])
    until = dipfkp.ssim_until(prior, dipfkp.DIPFKPConfig(sf=2))
    constants = dict(zip(trace["constants_names"], trace["constants"]))
    assert until == 405 == (constants["ssim_last_outer_iteration"] + 1) * constants["Q_inner_dip_steps"]
    np.testing.assert_array_equal(c > until, trace["inner_loss_is_mse"].astype(bool))
    assert dipfkp.ssim_until(prior, dipfkp.DIPFKPConfig(sf=2, ssim_until=10)) == 10  # the config overrides
    assert dipfkp.ssim_until(kernel_priors.make_prior("mlp", 2), dipfkp.DIPFKPConfig(sf=2)) == 80
    # the random-kernel draw numbers: warm-up 0..199, then 200 + 5 t + l (README 4.4)
    phase, outer = trace["rk_phase"], trace["rk_outer_iter"]
    assert np.all(phase[:200] == 0) and np.all(outer[:200] == -1)
    np.testing.assert_array_equal(outer[200:], np.repeat(np.arange(100), 5))


def test_default_window_is_the_plain_plug_in():
    """Every other prior: each step's own gradient, applied from first_update on (today's behaviour)."""
    for name, first in (("mlp", 1), ("softmax", 77)):
        prior = kernel_priors.make_prior(name, 2)
        assert prior.warmup is None and prior.prior_step is None and prior.image_regulariser is None
        assert [prior.grad_window(t) for t in (first - 1, first)] == [(True, False), (True, True)]


# ----------------------------------------------------------------------------------------- losses (README 5)

@pytest.mark.parametrize("prec", ("f32", "f64"))
def test_hyper_laplacian(metrics_golden, prec):
    m = metrics_golden
    with jax.enable_x64(prec == "f64"):
        x = jnp.asarray(m["hl_input"].transpose(NHWC), DTYPES[prec])
        value, grad = jax.value_and_grad(lambda x: dkp.hyper_laplacian(x, int(m["hl_num_pixels"])))(x)
        grad = np.asarray(grad).transpose(0, 3, 1, 2)
    # the input has an exactly zero difference: |.| must have gradient 0 there, as in PyTorch
    if prec == "f32":  # orig 4.9e-9 rel (value), 6.2e-8 of the max (gradient); ours 1.6e-7, 1.7e-7 -> 5e-7
        np.testing.assert_allclose(float(value), m["hl_value_f32"], rtol=5e-7)
        assert _relmax(grad, m["hl_input_grad_f32"]) < 5e-7
    else:  # ours 2.2e-16, 2.1e-16
        np.testing.assert_allclose(float(value), m["hl_value_f64"], rtol=1e-14)
        assert _relmax(grad, m["hl_input_grad_f64"]) < 1e-14


@pytest.mark.parametrize("prec", ("f32", "f64"))
def test_prior_weights_designed_cases(metrics_golden, prec):
    """Ties at the minimum, all equal, an outlier with a slightly negative weight (README 5.6)."""
    m = metrics_golden
    with jax.enable_x64(prec == "f64"):
        p, w, d = (np.asarray(a) for a in dkp.prior_weights(jnp.asarray(m["pw_x_losses"], DTYPES[prec])))
    tol = 5e-7 if prec == "f32" else 1e-15  # ours f32 6.0e-8 (p), 2.4e-7 (w); f64 1.1e-16
    np.testing.assert_allclose(p, m[f"pw_prob_{prec}"], rtol=0, atol=tol)
    np.testing.assert_allclose(w, m[f"pw_weights_{prec}"], rtol=0, atol=tol)
    np.testing.assert_allclose(d, m[f"pw_denominator_{prec}"], rtol=1e-6 if prec == "f32" else 1e-15)
    assert np.all(w[2] == w[2][0]) and w[2][0] == pytest.approx(6.9077554, rel=1e-7)


# ----------------------------------------------------------------------------------------- invariants

def _same(x, y):
    return all(np.array_equal(p, q) for p, q in zip(jax.tree.leaves(x), jax.tree.leaves(y)))


def test_sampled_prior_seeds_and_unit_sum_kernels():
    """With the random-kernel sampler: the solver state (its warm-up runs in `state_from`, from the state's
    key) and a prior step reproduce from the same key and differ between keys; kernels are non-negative
    with unit sum. (A stand-in DIP: init_state's DIP part is tested in tests/test_dipfkp.py.)"""
    prior = dkp.dkp_prior(2)
    config = dipfkp.DIPFKPConfig(sf=2)
    kvars = jax.jit(prior.init)(jax.random.key(0))
    fresh = lambda seed: dipfkp.state_from({"w": jnp.zeros(1)}, jnp.zeros((1, 34, 34, 3)), kvars, prior,  # noqa: E731
                                           config, key=jax.random.key(seed))
    a, b, other = fresh(5), fresh(5), fresh(6)
    assert _same(a["kvars"], b["kvars"]) and not _same(a["kvars"], other["kvars"])
    assert int(a["k_opt"].count) == 200
    sr = jax.random.uniform(jax.random.key(1), (1, 34, 34, 3))
    lr = jax.random.uniform(jax.random.key(2), (1, 17, 17, 3))
    step = jax.jit(prior.prior_step)
    k1 = step(a["kvars"], a["k_opt"], sr, lr, jnp.int32(6), jax.random.key(3))[0]
    k2 = step(b["kvars"], b["k_opt"], sr, lr, jnp.int32(6), jax.random.key(3))[0]
    k3 = step(a["kvars"], a["k_opt"], sr, lr, jnp.int32(6), jax.random.key(4))[0]
    assert _same(k1, k2) and not _same(k1, k3)
    for kv in (a["kvars"], k1):
        kernel = np.asarray(prior.kernel(kv))
        assert kernel.shape == (11, 11) and np.all(kernel >= 0)
        assert float(kernel.sum()) == pytest.approx(1.0, abs=1e-6)


def test_motion_prior_warmup():
    """The linear-motion variant: its warm-up fits G_k towards motion kernels (their mean is far from the
    initial, nearly uniform kernel); the kernel stays a unit-sum, non-negative (k, k) array."""
    prior = dkp.dkp_prior(2, kernel_type="motion")
    v = jax.jit(prior.init)(jax.random.key(0))
    warmed, opt = prior.warmup(v, prior.optimizer.init(v), jax.random.key(1))
    kernel, before = np.asarray(prior.kernel(warmed)), np.asarray(prior.kernel(v))
    assert int(opt.count) == 200 and np.all(kernel >= 0) and float(kernel.sum()) == pytest.approx(1.0, abs=1e-6)
    motion = np.mean([np.asarray(dkp.kernels_lib.linear_motion_kernel(2, a)) for a in np.arange(0, 360, 15)], 0)
    assert np.abs(kernel - motion).sum() < np.abs(before - motion).sum()
    with pytest.raises(ValueError, match="kernel type"):
        dkp.dkp_prior(2, kernel_type="spline")


def test_langevin_option():
    """langevin=True adds sqrt(2 lr T) N(0, 1) to G_k's parameters after every update, from the given key;
    off by default (the released behaviour)."""
    lr, temperature = 1e-4, 1e-4
    prior = dkp.dkp_prior(2, langevin=True, lr=lr, temperature=temperature)
    plain = dkp.dkp_prior(2)
    v = jax.jit(prior.init)(jax.random.key(0))
    zero = jax.tree.map(jnp.zeros_like, v)  # a zero gradient: Adam moves nothing, only the noise remains

    def update(p, key):
        return jax.jit(lambda v, key: kernel_priors.optimizer_update(p.optimizer, zero, p.optimizer.init(v), v, key))(
            v, key)

    new, _ = update(prior, jax.random.key(1))
    again, _ = update(prior, jax.random.key(1))
    moved = np.concatenate([np.ravel(a - b) for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(v))])
    assert np.array_equal(np.ravel(jax.tree.leaves(new)[0]), np.ravel(jax.tree.leaves(again)[0]))
    assert np.std(moved[moved != 0]) == pytest.approx(np.sqrt(2 * lr * temperature), rel=0.01)
    assert np.array_equal(new["code"], v["code"]) and np.sum(moved != 0) > 322_000  # the weights only
    # (of 322,121: a draw far below the weight's float32 ulp leaves it unchanged)
    quiet, _ = update(plain, jax.random.key(1))
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(quiet), jax.tree.leaves(v)))
