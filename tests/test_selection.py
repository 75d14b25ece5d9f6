"""fkp_jax.selection: the rules that keep one seed per image without ground truth."""

import numpy as np
import pytest

from fkp_jax import selection


def test_rules_pick_as_documented():
    rng = np.random.default_rng(0)
    centre = rng.random((11, 11))
    # final kernels: seeds 0, 1, 3 near each other, seed 2 far off -> the medoid is one of the close ones
    kernels = np.stack([centre + 0.01 * rng.standard_normal((11, 11)) for _ in range(4)])
    kernels[2] += 1.0
    assert selection.choose("consensus", [0.3, 0.2, 0.1, 0.4], kernels, np.array([]), np.zeros((0, 4, 11, 11)))[0] != 2
    assert selection.choose("best-fit", [0.3, 0.2, 0.1, 0.4], kernels, np.array([]), np.zeros((0, 4, 11, 11))) == (2, None)
    assert selection.choose("least-fit", [0.3, 0.2, 0.1, 0.4], kernels, np.array([]), np.zeros((0, 4, 11, 11))) == (3, None)
    # recorded kernels: the seeds agree most at the second record (iteration 20)
    spread = np.array([1.0, 0.01, 0.5])[:, None, None, None]
    records = centre + spread * rng.standard_normal((3, 4, 11, 11))
    seed, t = selection.choose("early-consensus", [None] * 4, kernels, np.array([10, 20, 30]), records)
    assert t == 20 and seed == selection.medoid(records[1])
    assert selection.choose("early-consensus", [None], kernels[:1], np.array([10]), records[:1, :1]) == (0, None)
    for rule in ("best-fit", "least-fit"):
        with pytest.raises(ValueError, match="LR reconstruction error"):
            selection.choose(rule, [0.1, None], kernels[:2], np.array([]), np.zeros((0, 2, 11, 11)))
    with pytest.raises(ValueError, match="unknown selection rule"):
        selection.choose("vote", [0.1], kernels[:1], np.array([]), np.zeros((0, 1, 11, 11)))
