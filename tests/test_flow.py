"""FKP flow (fkp_jax.flow): parity with the golden fkp_flow_x{2,3,4}.npz and the spec 11 table, invariants.

Every float32 quantity of one scale comes from ONE jitted call (the prior is a pytree argument),
so each scale compiles once; the float64 checks (x2 only) compile once more under jax.enable_x64.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fkp_jax.convert import prior_from_torch
from fkp_jax.flow import FlowConfig, FlowPrior, init_params, load_prior

SCALES = (2, 3, 4)


@jax.jit
def _outputs(p, z, x_fwd, kernels_fwd, x_train, key):
    x, inv_logdet = p.inverse(z)
    u, fwd_logdet, stats = p.forward(x_fwd)
    train_u, _, train_stats = p.forward(x_train, train=True)
    samples = p.sample(key, 8)
    return {"inv_x": x, "inv_logdet": inv_logdet, "inv_kernel": p.kernel(z), "inv_logp": p.log_prob_x(x),
            "roundtrip": p.forward(x)[0], "roundtrip_logdet": p.forward(x)[1],
            "fwd_u": u, "fwd_logdet": fwd_logdet, "fwd_stats": stats, "fwd_logp": p.log_prob_x(x_fwd),
            "pre": p.preprocess(kernels_fwd), "kernel_logp": p.log_prob(kernels_fwd),
            "train_u": train_u, "train_logp": p.log_prob_x(x_train, train=True), "train_stats": train_stats,
            "samples": samples, "samples_logp": p.log_prob(samples)}


def _train_nll(params, prior, x):
    return -jnp.mean(FlowPrior(params, prior.batch_stats, prior.config).log_prob_x(x, train=True))


@jax.jit
def _outputs64(p, x_train, z):
    u, _, stats = p.forward(x_train, train=True)
    return {"train_u": u, "train_stats": stats, "nll": _train_nll(p.params, p, x_train),
            "grads": jax.grad(_train_nll)(p.params, p, x_train), "roundtrip": p.forward(p.inverse(z)[0])[0]}


@pytest.fixture(scope="module")
def official(ref):
    cache = {}

    def get(sf):
        if sf not in cache:
            cache[sf] = prior_from_torch(ref / "weights" / f"FKP_x{sf}.pt")
        return cache[sf]

    return get


@pytest.fixture(scope="module")
def outputs(official, golden):
    cache = {}

    def get(sf):
        if sf not in cache:
            g = golden(f"fkp_flow_x{sf}")
            cache[sf] = _outputs(official(sf), jnp.asarray(g["z"], jnp.float32), jnp.asarray(g["fwd_x_pre_f32"]),
                                 jnp.asarray(g["fwd_kernels"], jnp.float32), jnp.asarray(g["train_x_pre_f32"]),
                                 jax.random.key(3))
        return cache[sf]

    return get


@pytest.mark.parametrize("sf", SCALES)
def test_inverse_matches_golden(sf, outputs, golden):
    g, o = golden(f"fkp_flow_x{sf}"), outputs(sf)
    # Float32 tolerances (docs/tolerances.md): max(2x ours on every CPU configuration, the original's own
    # f32 vs f64 spread), rounded up to 1-2-5. Comments: "orig" = that spread, "ours" = worst measured.
    # orig 2.7e-6, ours 3.8e-6 -> 1e-5
    np.testing.assert_allclose(o["inv_x"], g["inv_x_f32"], rtol=0, atol=1e-5)
    # orig 1.25e-4, ours 9.2e-5 -> 2e-4
    np.testing.assert_allclose(o["inv_logdet"], g["inv_logdet_f32"], rtol=0, atol=2e-4)
    # orig 3.5e-8, ours 4.8e-8 -> 1e-7
    np.testing.assert_allclose(o["inv_kernel"], g["inv_kernel_f32"][:, 0], rtol=0, atol=1e-7)
    # orig 8.1e-6 rel, ours 2.3e-5 rel -> 5e-5 (kept 1e-4: within 10x)
    np.testing.assert_allclose(o["inv_logp"], g["inv_logp_of_x_f32"], rtol=1e-4)


@pytest.mark.parametrize("sf", SCALES)
def test_forward_matches_golden(sf, official, outputs, golden):
    g, o = golden(f"fkp_flow_x{sf}"), outputs(sf)
    # relative to max |u|: orig 4.1e-6, ours 8.7e-6 -> 2e-5 (was 1e-5)
    np.testing.assert_allclose(o["fwd_u"], g["fwd_u_f32"], rtol=0, atol=2e-5 * np.abs(g["fwd_u_f32"]).max())
    # orig 3.1e-6 rel, ours 3.2e-6 rel -> 1e-5
    np.testing.assert_allclose(o["fwd_logdet"], g["fwd_logdet_f32"], rtol=1e-5)
    jax.tree.map(np.testing.assert_array_equal, o["fwd_stats"], official(sf).batch_stats)  # eval: unchanged
    # orig 1.9e-6 rel, ours 3.3e-6 rel -> 1e-5 (both log p checks)
    np.testing.assert_allclose(o["fwd_logp"], g["fwd_logp_f32"], rtol=1e-5)
    # float32 pre-processing vs the original's float64 one (values to 13.8): ours 2.1e-6 -> 5e-6 (kept 1e-5)
    np.testing.assert_allclose(o["pre"], g["fwd_x_pre_f64"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(o["kernel_logp"], g["fwd_logp_f32"], rtol=1e-5)


@pytest.mark.parametrize("sf", SCALES)
def test_train_mode_matches_golden(sf, outputs, golden):
    g, o = golden(f"fkp_flow_x{sf}"), outputs(sf)
    # float32 is ill-conditioned here (pixels exactly 0 give tiny batch variances; the original's own
    # float32 differs from its float64 by up to 4.6e-3 in the NLL, golden README 3): loose float32
    # bounds here, tight float64 ones in test_float64_train_mode_and_gradients.
    # orig 2.9e-3, ours 2.1e-3 -> 5e-3
    np.testing.assert_allclose(o["train_u"], g["train_u_f32"], rtol=0, atol=5e-3)
    # orig 5.8e-4 rel, ours 1.9e-4 rel -> 1e-3
    np.testing.assert_allclose(o["train_logp"], g["train_logp_f32"], rtol=1e-3)
    # orig 4.6e-3, ours 3.0e-3 (AVX-512, previous session: 3.0e-3) -> 1e-2
    np.testing.assert_allclose(-o["train_logp"].mean(), g["train_nll_f32"], rtol=0, atol=1e-2)
    for i in (1, 3, 5, 7, 9):
        for n in ("mean", "var"):  # orig 1.2e-4 (rel. to max(1, |x|)), ours 1.3e-4 abs = 0.11 of the bound: kept
            np.testing.assert_allclose(o["train_stats"][f"net{i}"][f"running_{n}"],
                                       g[f"train_bn{i}_running_{n}_after_f32"], rtol=1e-3, atol=1e-3)


def test_float64_train_mode_and_gradients(official, golden):
    """x2 in float64: train-mode u / NLL / running stats and the 22 golden gradients to ~1e-9."""
    g, p = golden("fkp_flow_x2"), official(2)
    with jax.enable_x64(True):
        c = lambda t: jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), t)  # noqa: E731
        p64 = FlowPrior(c(p.params), c(p.batch_stats), p.config)
        o = _outputs64(p64, jnp.asarray(g["train_x_pre_f32"], jnp.float64), jnp.asarray(g["z"]))
    np.testing.assert_allclose(o["train_u"], g["train_u_f64"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(o["nll"], g["train_nll_f64"], rtol=1e-12)
    for i in (1, 3, 5, 7, 9):
        for n in ("mean", "var"):
            np.testing.assert_allclose(o["train_stats"][f"net{i}"][f"running_{n}"],
                                       g[f"train_bn{i}_running_{n}_after_f64"], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(o["roundtrip"], g["z"], rtol=0, atol=1e-10)
    for name in [k for k in g if k.startswith("train_grad_f64_")]:
        parts = name.removeprefix("train_grad_f64_").split(".")
        if len(parts) == 3:  # net.i.{log_gamma,beta}
            ours = o["grads"][f"net{parts[1]}"][parts[2]]
        else:  # net.0.{s,t}_net.{0,2,4}.{weight,bias}
            leaf = o["grads"]["net0"][parts[2]][parts[3]]
            ours = leaf["kernel"].T if parts[4] == "weight" else leaf["bias"]
        np.testing.assert_allclose(ours, g[name], rtol=0, atol=1e-9 * max(1, np.abs(g[name]).max()))
    assert len([k for k in g if k.startswith("train_grad_f64_")]) == 22


# spec 11: sin_sphere latent -> (sum, max, argmax, k[0,0], k[c,c], log|det dx->u|, log p(x))
SPEC11 = {2: (0.992354, 0.046952, (4, 5), 5.494866e-04, 0.046378, 281.2221, 120.0306),
          3: (1.014880, 0.039995, (6, 6), 6.166697e-04, 0.035333, 329.9091, 25.1479),
          4: (0.983684, 0.023485, (7, 8), 2.507326e-04, 0.017255, 585.6603, 91.9235)}


@pytest.mark.parametrize("sf", SCALES)
def test_spec11_inverse_vectors(sf, outputs, golden):
    k = min(4 * sf + 3, 21)
    c = k // 2
    z = np.sin(np.arange(1, k * k + 1))
    np.testing.assert_allclose(golden(f"fkp_flow_x{sf}")["z"][0], z / np.linalg.norm(z) * (k - 1), atol=1e-12)
    o = outputs(sf)  # row 0 of the golden latents is this sin_sphere vector
    kern = np.asarray(o["inv_kernel"][0])
    ksum, kmax, arg, k00, kcc, ld, logp = SPEC11[sf]
    # spec values printed to 6-7 digits; ours 9.0e-6 rel -> 2e-5
    np.testing.assert_allclose([kern.sum(), kern.max(), kern[0, 0], kern[c, c]], [ksum, kmax, k00, kcc], rtol=2e-5)
    assert np.unravel_index(kern.argmax(), kern.shape) == arg
    # printed to 4 decimals; orig f32 vs f64 log-det 1.25e-4, ours 1.9e-4 -> 5e-4 (kept 2e-3: within 10x)
    np.testing.assert_allclose(-o["inv_logdet"][0], ld, rtol=0, atol=2e-3)
    np.testing.assert_allclose(o["inv_logp"][0], logp, rtol=0, atol=2e-3)


@pytest.mark.parametrize("sf", SCALES)
def test_roundtrip_and_samples(sf, outputs, golden):
    g, o = golden(f"fkp_flow_x{sf}"), outputs(sf)
    # float32 forward(inverse(z)): the original's own float32 error 4.0e-5 to 7.6e-5, ours 6.6e-5 -> 2e-4
    np.testing.assert_allclose(o["roundtrip"], g["z"], rtol=0, atol=2e-4)
    np.testing.assert_allclose(o["roundtrip_logdet"], -o["inv_logdet"], rtol=1e-5)
    assert o["samples"].shape == (8, min(4 * sf + 3, 21), min(4 * sf + 3, 21))
    assert np.all(np.isfinite(o["samples_logp"]))


def test_sample_reproducible_eager_equals_jit(official, outputs):
    p = official(2)
    a = p.sample(jax.random.key(3), 8)  # eager, same key as the jitted call in _outputs
    np.testing.assert_allclose(a, outputs(2)["samples"], rtol=0, atol=1e-7)
    np.testing.assert_array_equal(a, p.sample(jax.random.key(3), 8))
    assert not np.allclose(a, p.sample(jax.random.key(4), 8))


@pytest.mark.parametrize("sf", SCALES)
def test_init_params(sf):
    cfg = FlowConfig(sf=sf)
    v = jax.jit(init_params, static_argnums=1)(jax.random.key(0), cfg)
    H, D = cfg.hidden, cfg.D
    assert (cfg.k, D, H) == {2: (11, 121, 15), 3: (15, 225, 20), 4: (19, 361, 25)}[sf]
    assert sum(a.size for a in jax.tree.leaves(v["params"])) == {2: 41270, 3: 98900, 4: 194470}[sf]  # spec 4.8
    for j in range(0, 10, 2):
        blk = v["params"][f"net{j}"]
        for a, b in zip(jax.tree.leaves(blk["s_net"]), jax.tree.leaves(blk["t_net"])):
            np.testing.assert_array_equal(a, b)  # spec 4.7 quirk: the t-net starts as a copy of the s-net
        w = blk["s_net"]["0"]["kernel"]
        assert w.shape == (D, H) and np.abs(w).max() <= 1 / np.sqrt(D)
    p = v["params"]
    assert not np.array_equal(p["net0"]["s_net"]["0"]["kernel"], p["net2"]["s_net"]["0"]["kernel"])
    np.testing.assert_array_equal(v["batch_stats"]["net1"]["running_var"], np.ones(D))
    np.testing.assert_array_equal(p["net9"]["log_gamma"], np.zeros(D))
    assert cfg.normalization == float(np.float32({2: 0.2335, 3: 0.31311, 4: 0.16908}[sf]))


def test_load_prior_errors(tmp_path, monkeypatch):
    from fkp_jax import checkpoint

    with pytest.raises(ValueError, match="unsupported scale"):
        load_prior(5)
    with pytest.raises(FileNotFoundError, match="no FKP checkpoint"):
        load_prior(tmp_path / "nope")
    checkpoint.save(tmp_path / "other", {"w": np.zeros(3, np.float32)}, {"model": "usrnet_tiny"})
    with pytest.raises(ValueError, match="model 'usrnet_tiny', not an FKP prior"):
        load_prior(tmp_path / "other")
    monkeypatch.setenv("FKP_JAX_WEIGHTS", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        load_prior(2)
    with pytest.raises(ValueError, match="unsupported scale"):
        FlowConfig(sf=8)
