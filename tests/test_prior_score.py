"""benchmarks.prior_score: the score's numbers from per-seed study rows, and its prior specifications."""

import pytest

from benchmarks.prior_score import parse_prior, summarise, table


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
