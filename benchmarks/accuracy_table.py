"""Kernel-accuracy tables from finished runs: the official DIP-FKP, our studies, methods side by side.

    python -m benchmarks.accuracy_table --sf 2 --dataset benchmarks/data/devset \
        --run "official code, random starts=results/official_devset_x2" \
        --run "ours, official prior=results/study_devset_x2_offprior" \
        --run "ours, our prior=results/prior_score_x2/ours"
    python -m benchmarks.accuracy_table --sf 2 --dataset experiments/data/default \
        --run "DIP-DKP=results/cmp/x2_gaussian@dipdkp_x2" "DIP-FKP=results/cmp/x2_gaussian@dipdkp-fkp_x2"

Each ``LABEL=DIR`` is either a `benchmarks.official_dipfkp_runs` / `benchmarks.official_kernelgan_runs` folder
(``<image>/seed<s>.npz``: the final kernel PSNR is the official `calculate_psnr` of the last kernel, PSNR-Y is
computed here from the saved DIP output against ``DATASET/HR``, where there is one) or an `experiments.study`
/ `benchmarks.prior_score` folder (its ``results.csv``; its run ``dipfkp_x{sf}``, or the run named after ``@``: ``DIR@RUN``, as a study names its
runs, e.g. ``dipdkp-fkp_x2`` for ``--method dipdkp:fkp --sf 2``). Folders given under the same LABEL are
pooled into one row (a set of restarts split over cores or sessions, e.g. half the images in each folder). Every row is summarised as
`benchmarks.prior_score` scores a prior (mean ± std over all restarts, worst restart, mean of the per-image
worst, PSNR-Y of the DIP output), then
kernel PSNR per image (mean over restarts). ``--seeds N`` keeps restarts 0..N-1 only, so runs with more
restarts are compared on the same ones. Prints markdown.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

from benchmarks.prior_score import summarise, table


def official_rows(folder: Path, hr_dir: Path, sf: int) -> list[dict]:
    """Per-restart rows (image, kernel_psnr, psnr_y) of an official_dipfkp_runs or official_kernelgan_runs folder
    (the latter has no DIP output, hence no psnr_y)."""
    from fkp_jax import cli, io, metrics

    rows = []
    for f in sorted(folder.glob("*/seed*.npz")):
        d = np.load(f)
        row = {"image": f.parent.name, "seed": f.stem.removeprefix("seed"),
               "kernel_psnr": float(d["kernel_psnr"] if "kernel_psnr" in d else d["record_kernel_psnr"][-1])}
        hr_path = next(iter(sorted(hr_dir.glob(f.parent.name + ".*"))), None)
        if hr_path is not None and "sr" in d:
            row["psnr_y"] = metrics.psnr_y(io.read_image_u8(hr_path), cli.to_u8(d["sr"]), sf)  # modcrops both
        rows.append(row)
    return rows


def study_rows(folder: Path, run: str) -> list[dict]:
    with open(folder / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    picked = [r for r in rows if r["run"] == run]
    if not picked:
        raise ValueError(f"{folder}: no run {run!r} in results.csv (it has {sorted({r['run'] for r in rows})})")
    return picked


def rows_of(folder: Path, hr_dir: Path, sf: int, run: str | None = None) -> list[dict]:
    """Per-restart rows of an official-runs folder, or of one run of a study folder (default dipfkp_x{sf})."""
    if (folder / "results.csv").is_file():
        return study_rows(folder, run or f"dipfkp_x{sf}")
    if run is not None:
        raise ValueError(f"{folder}@{run}: @RUN names a run of a study folder (results.csv)")
    if any(folder.glob("*/seed*.npz")):
        return official_rows(folder, hr_dir, sf)
    raise ValueError(f"{folder}: neither a study folder (results.csv) nor official runs (<image>/seed*.npz)")


def per_image(rows: list[dict]) -> dict[str, float]:
    images = sorted({r["image"] for r in rows})
    return {i: float(np.mean([float(r["kernel_psnr"]) for r in rows if r["image"] == i])) for i in images}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.accuracy_table", description=__doc__.split("\n")[0])
    p.add_argument("--sf", type=int, required=True)
    p.add_argument("--dataset", type=Path, required=True, help="the data set the runs were made on (its HR/)")
    p.add_argument("--seeds", type=int, default=None,
                   help="only restarts 0..N-1 of every run (rows compare like with like)")
    p.add_argument("--run", nargs="+", action="extend", required=True, metavar="LABEL=DIR[@RUN]",
                   help="repeatable; each LABEL one row, folders under the same LABEL pooled; @RUN picks a run "
                        "of a study folder (default dipfkp_x{sf})")
    args = p.parse_args(argv)
    pooled: dict[str, list[dict]] = {}
    try:
        for spec in args.run:
            label, sep, path = spec.partition("=")
            if not sep or not label or not path:
                raise ValueError(f"--run {spec!r}: give LABEL=DIR or LABEL=DIR@RUN")
            path, _, run = path.partition("@")
            rows = rows_of(Path(path), args.dataset / "HR", args.sf, run or None)
            if args.seeds is not None:
                rows = [r for r in rows if int(r["seed"]) < args.seeds]
            pooled.setdefault(label, []).extend(rows)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    scores = [(label, args.sf, summarise(rows)) for label, rows in pooled.items()]
    images = [per_image(rows) for rows in pooled.values()]
    print("\n".join(table(scores)).replace("| prior |", "| run |"))
    names = sorted({i for im in images for i in im})
    print()
    print("| run | " + " | ".join(names) + " |")
    print("| --- |" + " ---: |" * len(names))
    for (label, _, _), im in zip(scores, images):
        print(f"| {label} | " + " | ".join(f"{im[n]:.2f}" if n in im else "" for n in names) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
