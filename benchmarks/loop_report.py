"""Kernel-PSNR curves and final values per image: issue 7's loop comparison, and any method's runs (--curves).

    python -m benchmarks.loop_report --official-released results/official_released_x2 \
        --official-varied results/official_devset_x2 --starts results/starts_devset_x2 \
        --ours results/study_devset_x2_offprior --ours-shipped results/study_devset_x2 \
        --plot docs/img/devset_loop_curves.png

    python -m benchmarks.loop_report --curves "official KernelGAN-FKP=results/official_kgfkp" \
        "ours=results/cmp_kg/x2_kgfkp@kernelganfkp_x2" --plot docs/img/kgfkp_official_vs_ours.png

Inputs: `benchmarks.official_dipfkp_runs` (--starts released / varied), `benchmarks.dipfkp_starts` and
`experiments.study` folders (runs/dipfkp_x2/<image>/seed<i>.npz). --curves takes any method's runs as
``LABEL=DIR`` (an official-runs folder, e.g. `benchmarks.official_kernelgan_runs`) or ``LABEL=DIR@RUN`` (run RUN
of a study folder); folders under one label are pooled. Prints a markdown table of final kernel PSNR per
image (mean ± std over runs, n) and, with --plot, the mean kernel-PSNR curves per image (the four issue-7
rows, and every --curves row).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def _official(folder: Path) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    out: dict = {}
    for f in sorted(folder.glob("*/seed*.npz")):
        d = np.load(f)
        t = d["record_t"]
        keep = (t % 10 == 0) | (t == t[-1])  # every 10th, as studies record, and the last
        out.setdefault(f.parent.name, []).append((t[keep], d["record_kernel_psnr"][keep]))
    return out


def _starts(folder: Path, variant: str) -> dict:
    out: dict = {}
    for f in sorted(folder.glob(f"*/{variant}_*.npz")):
        d = np.load(f)
        out.setdefault(f.parent.name, []).append((d["record_t"], d["record_kernel_psnr"]))
    return out


def _study(folder: Path, run: str = "dipfkp_x2", out: dict | None = None) -> dict:
    out = {} if out is None else out
    for f in sorted(folder.glob(f"runs/{run}/*/seed*.npz")):
        d = np.load(f)
        out.setdefault(f.parent.name, []).append((d["record_t"], d["record_kernel_psnr"]))
    return out


def _curves(specs: list[str]) -> list[tuple[str, dict]]:
    """``LABEL=DIR`` (official runs) / ``LABEL=DIR@RUN`` (a study's run) -> rows, one per label, pooled."""
    rows: dict[str, dict] = {}
    for spec in specs:
        label, _, where = spec.partition("=")
        folder, _, run = where.partition("@")
        runs = rows.setdefault(label, {})
        if run:
            _study(Path(folder), run, runs)
        else:
            for im, curves in _official(Path(folder)).items():
                runs.setdefault(im, []).extend(curves)
    return list(rows.items())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--official-released", type=Path)
    p.add_argument("--official-varied", type=Path)
    p.add_argument("--starts", type=Path)
    p.add_argument("--ours", type=Path, help="study folder, official prior, random starts")
    p.add_argument("--ours-shipped", type=Path, help="study folder, our shipped prior, random starts")
    p.add_argument("--curves", nargs="+", default=[], metavar="LABEL=DIR[@RUN]",
                   help="any method's runs: an official-runs folder, or run RUN of a study folder")
    p.add_argument("--plot", type=Path)
    args = p.parse_args(argv)
    rows = []
    if args.official_released:
        rows.append(("official code, released start", _official(args.official_released)))
    if args.starts:
        rows.append(("ours, the official start (+ rounding-level nudges)", _starts(args.starts, "official")))
    if args.official_varied:
        rows.append(("official code, random starts", _official(args.official_varied)))
    if args.ours:
        rows.append(("ours, random starts", _study(args.ours)))
    if args.starts:
        rows.append(("ours, official DIP start + random latent", _starts(args.starts, "official-dip")))
        rows.append(("ours, random DIP start + official latent", _starts(args.starts, "official-latent")))
    if args.ours_shipped:
        rows.append(("ours, random starts, our shipped prior", _study(args.ours_shipped)))
    plotted = rows[:4] + _curves(args.curves)
    rows += plotted[len(rows[:4]):]
    images = sorted({im for _, runs in rows for im in runs})
    print("| run (x2, FKP prior converted from FKP_x2.pt unless said) | " + " | ".join(images) + " | mean |")
    print("| --- |" + " ---: |" * (len(images) + 1))
    for label, runs in rows:
        cells, means = [], []
        for im in images:
            finals = [c[-1] for _, c in runs.get(im, [])]
            if finals:
                means.append(np.mean(finals))
                cells.append(f"{np.mean(finals):.2f} ± {np.std(finals):.2f} ({len(finals)})" if len(finals) > 1
                             else f"{finals[0]:.2f} (1)")
            else:
                cells.append("")
        mean = f"{np.mean(means):.2f}" if len(means) == len(images) else ""
        print(f"| {label} | " + " | ".join(cells) + f" | {mean} |")
    if args.plot:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(4 * len(images), 3.4))
        FigureCanvasAgg(fig)
        for i, im in enumerate(images):
            ax = fig.add_subplot(1, len(images), i + 1)
            for j, (label, runs) in enumerate(plotted):
                curves = runs.get(im, [])
                if curves:
                    n = min(len(c) for _, c in curves)
                    ax.plot(curves[0][0][:n], np.mean([c[:n] for _, c in curves], axis=0), label=label,
                            color=f"C{j}")
            ax.set_title(im)
            ax.set_xlabel("iteration")
            ax.set_ylabel("kernel PSNR (dB), mean over runs")
            ax.grid(alpha=0.3)
        fig.axes[0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=80)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
