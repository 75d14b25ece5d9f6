"""benchmarks.prior_score: the score's numbers from per-seed study rows, and its prior specifications."""

from types import SimpleNamespace

import numpy as np
import pytest

from benchmarks.prior_score import DATA, DEVSETS, dataset_for, parse_prior, summarise, table


def test_summarise_mean_worst_and_per_image_worst():
    rows = [{"image": i, "kernel_psnr": str(v), "psnr_y": str(y)}
            for i, v, y in [("a", 40.0, 27.0), ("a", 46.0, 28.0), ("b", 50.0, 26.0), ("b", 44.0, 25.0)]]
    s = summarise(rows)
    assert (s["images"], s["seeds"]) == (2, 2)
    assert s["mean"] == pytest.approx(45.0) and s["worst"] == 40.0
    assert s["mean_worst"] == pytest.approx((40.0 + 44.0) / 2) and s["psnr_y"] == pytest.approx(26.5)
    line = table([("ours", 2, s)])[-1]
    assert line.startswith("| ours | x2 | 2 x 2 | 45.00 ± ") and "| 40.00 | 42.00 | 26.50 |" in line


def test_prior_specifications():
    assert parse_prior("ours") == ("ours", None)
    assert parse_prior("official=results/fkp_x{sf}") == ("official", "results/fkp_x{sf}")
    for bad in ("official", "=path", "a b=path"):
        with pytest.raises(ValueError):
            parse_prior(bad)


def dipfkp_ready(root, sf):
    """Asserts every LR image of ``root`` passes DIP-FKP's size check at ``sf`` and has its ground-truth kernel;
    returns the LR paths (four)."""
    from experiments.dipfkp import check_lr
    from fkp_jax import io

    lrs = sorted((root / f"DIPFKP_lr_x{sf}").glob("*.png"))
    assert len(lrs) == 4
    for path in lrs:
        check_lr(path.name, io.read_image(path), SimpleNamespace(sf=sf))
        assert (root / f"DIPFKP_gt_k_x{sf}" / (path.stem + ".mat")).is_file()
    return lrs


@pytest.mark.parametrize("sf", [2, 3, 4])
def test_default_dataset_fits_dipfkp_at_every_scale(sf):
    """The default development set of each scale has LR images DIP-FKP accepts (x4: devset_x4) and a
    ground-truth kernel per image."""
    from experiments.dipfkp import check_lr
    from fkp_jax import io

    lrs = dipfkp_ready(dataset_for(sf, None), sf)
    with pytest.raises(ValueError, match="too small"):  # why x4 has its own set
        check_lr("x", io.read_image(DEVSETS[2] / "DIPFKP_lr_x4" / lrs[0].name), SimpleNamespace(sf=4))


def test_oracle_fit_recovers_a_kernel_of_the_prior(tmp_path):
    """--oracle-image: with the HR image known and an LR made with a kernel the prior generates, the latent
    fit gets far closer to that kernel than the random starts are."""
    import jax
    import jax.numpy as jnp

    from benchmarks.prior_score import oracle_rows
    from fkp_jax import flow, io
    from fkp_jax.degrade import degrade
    from fkp_jax.kernel_priors import project_to_sphere

    prior = flow.load_prior(2)
    hr = io.read_image(DEVSETS[2] / "HR" / "cat.png")[:32, :32]
    gt = prior.kernel(project_to_sphere(jax.random.normal(jax.random.key(7), (121,)), 10.0))
    lr = np.asarray(degrade(jnp.asarray(hr), gt, 2))
    data = tmp_path / "data"
    io.write_image(data / "HR" / "cat.png", hr)
    io.write_image(data / "DIPFKP_lr_x2" / "cat.png", lr)
    io.write_kernel_mat(data / "DIPFKP_gt_k_x2" / "cat.mat", np.asarray(gt))
    rows = oracle_rows(prior, data, 2, starts=3)
    assert len(rows) == 3
    fitted, start = np.mean([r["kernel_psnr"] for r in rows]), np.mean([r["start_psnr"] for r in rows])
    assert fitted > start + 10, (fitted, start)


def test_second_x4_devset_fits_dipfkp_and_is_new_data():
    """`devset2_x4` (the confirmation set) is DIP-FKP-sized at x4, has its ground-truth kernels, and shares no
    image or kernel with `devset_x4`."""
    from fkp_jax import io

    second, first = DATA / "devset2_x4", DEVSETS[4]
    firsts = [io.read_image(p) for p in sorted((first / "HR").glob("*.png"))]
    first_ks = [io.read_kernel_mat(p) for p in sorted((first / "DIPFKP_gt_k_x4").glob("*.mat"))]
    for path in dipfkp_ready(second, 4):
        hr = io.read_image(second / "HR" / path.name)
        assert hr.shape[:2] == (96, 96) and all(np.abs(hr - f).max() > 0.1 for f in firsts)
        k = io.read_kernel_mat(second / "DIPFKP_gt_k_x4" / (path.stem + ".mat"))
        assert k.sum() == pytest.approx(1.0, abs=1e-5) and all(np.abs(k - f).max() > 1e-4 for f in first_ks)
