"""fkp_jax.convert: official FKP_x*.pt -> FlowPrior (key/shape checks) and the command line."""

import jax
import numpy as np
import pytest

from fkp_jax.convert import ConvertError, fkp_variables_from_state_dict, main, prior_from_torch
from fkp_jax.flow import load_prior
from fkp_jax.torch_state import load_state_dict


@pytest.mark.parametrize("sf", (2, 3, 4))
def test_official_weights_convert(sf, ref):
    p = prior_from_torch(ref / "weights" / f"FKP_x{sf}.pt")
    sd = load_state_dict(ref / "weights" / f"FKP_x{sf}.pt")["model_state"]
    assert p.config.sf == sf and p.config.D == sd["base_dist_mean"].shape[0]
    assert p.config.normalization == float(sd["normalization"][0])
    np.testing.assert_array_equal(p.params["net4"]["t_net"]["2"]["kernel"], sd["net.4.t_net.2.weight"].T)
    np.testing.assert_array_equal(p.batch_stats["net9"]["running_var"], sd["net.9.running_var"])
    n_stored = sum(a.size for a in sd.values())
    n_ours = sum(a.size for t in (p.params, p.batch_stats) for a in jax.tree.leaves(t))
    masks = 5 * p.config.D
    assert n_stored == n_ours + masks + 3 + 2 * p.config.D  # + masks, scalar buffers, base dist (spec 4.8)


def test_bad_state_dicts(ref):
    sd = dict(load_state_dict(ref / "weights" / "FKP_x2.pt")["model_state"])
    with pytest.raises(ConvertError, match="not an FKP state dict"):
        fkp_variables_from_state_dict({"a": np.zeros(1)})
    bad = dict(sd)
    del bad["net.3.beta"]
    with pytest.raises(ConvertError, match="missing"):
        fkp_variables_from_state_dict(bad)
    bad = dict(sd, **{"net.0.s_net.2.weight": np.zeros((15, 14), np.float32)})
    with pytest.raises(ConvertError, match="shape"):
        fkp_variables_from_state_dict(bad)
    bad = dict(sd, **{"net.2.mask": sd["net.0.mask"]})
    with pytest.raises(ConvertError, match="mask"):
        fkp_variables_from_state_dict(bad)
    bad = dict(sd, kernel_size=np.array([13.0], np.float32))
    with pytest.raises(ConvertError, match="kernel_size 13"):
        fkp_variables_from_state_dict(bad)


def test_cli_roundtrip_x4(ref, golden, tmp_path, capsys):
    dest = tmp_path / "fkp_x4"
    assert main([str(ref / "weights" / "FKP_x4.pt"), str(dest)]) == 0
    g = golden("fkp_flow_x4")
    prior = load_prior(dest)
    assert prior.config.sf == 4
    # float32 (eager, unlike test_flow's jitted call): orig f32 vs f64 3.5e-8, ours 5.4e-8 -> 2e-7 (was 1e-7)
    np.testing.assert_allclose(prior.kernel(np.asarray(g["z"], np.float32)), g["inv_kernel_f32"][:, 0], rtol=0,
                               atol=2e-7)


def _cli_error(capsys, argv, match):
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err
    assert match in err


def test_cli_errors(ref, tmp_path, capsys):
    dest = tmp_path / "out"
    _cli_error(capsys, [tmp_path / "missing.pt", dest], "no such checkpoint file")
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    _cli_error(capsys, [text, dest], "not a")
    _cli_error(capsys, [ref / "golden" / "kernelgan_d_state.pt", dest], "not a state dict of a known model")
    dest.mkdir()
    _cli_error(capsys, [ref / "weights" / "FKP_x2.pt", dest], "already exists")
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())


# ----------------------------------------------------------------------------- USRNet-tiny (fkp_jax.usrnet)

def test_cli_usrnet_roundtrip(ref, tmp_path, capsys):
    from fkp_jax import checkpoint, usrnet

    src = ref / "weights" / "usrnet_tiny.pth"
    dest = tmp_path / "usrnet"
    assert main([str(src), str(dest)]) == 0  # recognised by its keys
    assert "USRNet-tiny" in capsys.readouterr().out
    _, meta = checkpoint.restore(dest)
    assert meta["model"] == "usrnet_tiny" and meta["n_iter"] == 6 and meta["nc"] == [16, 32, 64, 64]
    restored, direct = usrnet.load_usrnet(dest), usrnet.load_usrnet(src)
    assert jax.tree.structure(restored) == jax.tree.structure(direct)
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(direct)):
        assert a.dtype == np.float32
        np.testing.assert_array_equal(a, b)
    sd = load_state_dict(src)
    for key, a in usrnet.named_parameters(restored):
        np.testing.assert_array_equal(a, sd[key])


def test_cli_usrnet_errors(ref, tmp_path, capsys):
    dest = tmp_path / "out"
    usrnet_pth, fkp_pt = ref / "weights" / "usrnet_tiny.pth", ref / "weights" / "FKP_x2.pt"
    _cli_error(capsys, [fkp_pt, dest, "--model", "usrnet"], "not a USRNet state dict")
    _cli_error(capsys, [usrnet_pth, dest, "--model", "fkp"], "not an FKP state dict")
    _cli_error(capsys, [tmp_path / "missing.pth", dest, "--model", "usrnet"], "no such checkpoint file")
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    _cli_error(capsys, [text, dest, "--model", "usrnet"], "not a")
    assert not dest.exists()
    dest.write_text("keep me\n")  # an existing destination (even a file) is never overwritten
    _cli_error(capsys, [usrnet_pth, dest], "already exists")
    assert dest.read_text() == "keep me\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "out"]


def test_cli_module_usrnet_error(ref, tmp_path):
    """`python -m fkp_jax.convert` as a process: the error raised inside fkp_jax.usrnet is still one line, exit 2."""
    import subprocess
    import sys

    dest = tmp_path / "out"
    run = subprocess.run([sys.executable, "-m", "fkp_jax.convert", str(ref / "weights" / "FKP_x2.pt"), str(dest),
                          "--model", "usrnet"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
    assert run.stderr.count("\n") == 1 and "not a USRNet state dict" in run.stderr
    assert not dest.exists()
