"""The released DIP-FKP's fixed start rebuilt from PyTorch's seeded CPU streams (`fkp_jax.torch_rng`), against
the original's own draws in golden/ (dipfkp_init_x2.pt: DIP weights after torch.manual_seed(1) and the DIP
input; dipfkp_trace_x2.npz: that input and the seed-5 latent), and `--start original` on the command line."""

import jax
import numpy as np
import pytest

from fkp_jax import dip, dipfkp, kernel_priors, torch_rng
from fkp_jax.convert import _model_state, prior_from_torch


@pytest.fixture(scope="module")
def trace(golden):
    return golden("dipfkp_trace_x2")


def test_original_start_is_the_originals(ref, trace):
    """Every one of the 142 DIP parameters and the DIP input bit for bit; the latent to 1 ulp (torch's AVX2
    build takes log / sin / cos from SLEEF, NumPy from its own float32 routines: 1.2e-7 measured)."""
    z_x, state_dict, latent = torch_rng.original_start((48, 48), 2)
    golden = _model_state(ref / "golden" / "dipfkp_init_x2.pt")
    names = [n for n, _ in dip.TORCH_LAYOUT]
    assert sorted(state_dict) == sorted(names)
    for n in names:
        np.testing.assert_array_equal(state_dict[n], np.asarray(golden[n]), err_msg=n)
    np.testing.assert_array_equal(z_x, trace["dip_input_noise"].transpose(0, 2, 3, 1))
    np.testing.assert_allclose(latent, trace["latent_init"].reshape(-1), rtol=0, atol=5e-7)


def test_construction_order_matters(ref):
    """Drawn in named_parameters() order instead of the order skip() builds the convs, the weights differ."""
    gen = torch_rng.Generator(1)
    gen.uniform(3 * 48 * 48)
    golden = _model_state(ref / "golden" / "dipfkp_init_x2.pt")
    layout = [(n[: -len(".weight")], np.asarray(golden[n]).shape) for n, p in dip.TORCH_LAYOUT if p[-1] == "kernel"]
    assert [n for n, _ in layout] != [n for n, _ in dip.torch_construction_order()]
    drawn = {n: torch_rng.conv_init(gen, *shape)[0] for n, shape in layout}
    assert not all(np.array_equal(drawn[n], np.asarray(golden[n + ".weight"])) for n, _ in layout)


def test_streams_are_deterministic_and_distributed():
    """uniform_ stays in its bounds and a seed reproduces; normal_ of 121 values (16 does not divide it, so the
    last 16 are redrawn) has mean ~0 and std ~1."""
    a, b = torch_rng.Generator(7).uniform(1000, -0.3, 0.2), torch_rng.Generator(7).uniform(1000, -0.3, 0.2)
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.float32 and a.min() >= -0.3 and a.max() < 0.2
    z = np.concatenate([torch_rng.Generator(s).normal(121) for s in range(40)])
    assert abs(z.mean()) < 0.05 and abs(z.std() - 1) < 0.05
    with pytest.raises(ValueError):
        torch_rng.Generator(0).normal(8)


def test_original_state_is_the_golden_start(ref, trace):
    """dipfkp.original_state for the trace case's 24x24 LR = the state the golden trace starts from."""
    prior = kernel_priors.fkp_prior(prior_from_torch(ref / "weights" / "FKP_x2.pt"))
    config = dipfkp.DIPFKPConfig(sf=2, iters=150)
    state = dipfkp.original_state(prior, (24, 24), config)
    golden = dip.params_from_torch(_model_state(ref / "golden" / "dipfkp_init_x2.pt"))
    jax.tree.map(np.testing.assert_array_equal, state["dip"], golden)
    np.testing.assert_allclose(np.asarray(state["kvars"]), trace["latent_init"].reshape(-1), rtol=0, atol=5e-7)
    with pytest.raises(ValueError, match="FKP prior only"):
        dipfkp.original_state(kernel_priors.softmax_prior(2), (24, 24), config)


def test_cli_start_original_needs_one_seed(tmp_path, capsys):
    from experiments import dipdkp, dipfkp as cmd

    out = tmp_path / "out"
    assert cmd.main(["--sf", "2", "--start", "original", "--seeds", "2", "--iters", "2", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--seeds 1" in err[0] and not out.exists()
    with pytest.raises(SystemExit):  # DIP-DKP has no such start
        dipdkp.main(["--sf", "2", "--start", "original", "--out", str(out)])
