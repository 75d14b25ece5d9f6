"""fkp_jax.checkpoint: round trip, atomic replacement, errors."""

import numpy as np
import pytest

from fkp_jax import checkpoint


def _tree():
    return {"params": {"net0": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3)},
                       "net1": {"beta": np.ones(3, np.float32)}},
            "batch_stats": {"net1": {"running_var": np.full(3, 2.0, np.float32)}}}


def test_roundtrip(tmp_path):
    meta = {"model": "x", "flow_config": {"sf": 2, "alpha": 1e-6}, "history": [1.5, 2.5]}
    checkpoint.save(tmp_path / "ck", _tree(), meta)
    params, got_meta = checkpoint.restore(tmp_path / "ck")
    assert got_meta == meta
    np.testing.assert_array_equal(params["params"]["net0"]["kernel"], _tree()["params"]["net0"]["kernel"])
    assert params["params"]["net0"]["kernel"].dtype == np.float32
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # no temporary siblings left


def test_overwrite_and_exists(tmp_path):
    path = tmp_path / "ck"
    checkpoint.save(path, _tree(), {"v": 1})
    with pytest.raises(FileExistsError):
        checkpoint.save(path, _tree(), {"v": 2})
    tree = _tree()
    tree["params"]["net1"]["beta"] = np.zeros(3, np.float32)
    checkpoint.save(path, tree, {"v": 2}, overwrite=True)
    params, meta = checkpoint.restore(path)
    assert meta == {"v": 2}
    np.testing.assert_array_equal(params["params"]["net1"]["beta"], np.zeros(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_restore_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        checkpoint.restore(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not a fkp_jax checkpoint"):
        checkpoint.restore(tmp_path / "empty")
