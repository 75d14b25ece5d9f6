"""What a run shows a person: kernel pictures, per-image result summaries and the results table."""

from __future__ import annotations

import math

import cv2
import numpy as np


def kernel_picture(kernels: list[np.ndarray], labels: list[str], cell: int = 160) -> np.ndarray:
    """Side-by-side heat maps of (k, k) kernels, each scaled to its own maximum, labelled below.

    Returns an RGB uint8 image (nearest-neighbour upscaling, so pixels stay visible).
    """
    tiles = []
    for kernel, label in zip(kernels, labels):
        k = np.asarray(kernel, np.float64)
        peak = k.max() if k.max() > 0 else 1.0
        u8 = np.clip(np.round(255 * np.clip(k, 0, None) / peak), 0, 255).astype(np.uint8)
        tile = cv2.resize(u8, (cell, cell), interpolation=cv2.INTER_NEAREST)
        tile = cv2.cvtColor(cv2.applyColorMap(tile, cv2.COLORMAP_VIRIDIS), cv2.COLOR_BGR2RGB)
        caption = np.full((24, cell, 3), 255, np.uint8)
        cv2.putText(caption, label[:22], (4, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        tiles.append(np.concatenate([tile, caption], axis=0))
        tiles.append(np.full((cell + 24, 6, 3), 255, np.uint8))
    return np.concatenate(tiles[:-1], axis=1)


def mean_std(values) -> tuple[float, float] | None:
    """Mean and (population) std of the finite values, or None when there are none."""
    v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    if not v:
        return None
    return float(np.mean(v)), float(np.std(v))


METRICS = ("kernel_psnr", "psnr_y", "ssim_y", "psnr_y_usrnet", "ssim_y_usrnet")


def summarise(images: dict[str, dict[str, list]]) -> dict[str, float | None]:
    """Data-set means: the arithmetic mean over images of each image's mean over seeds."""
    out = {}
    for key in METRICS:
        per_image = [mean_std(r.get(key, [])) for r in images.values()]
        per_image = [m[0] for m in per_image if m is not None]
        out[key] = float(np.mean(per_image)) if per_image else None
    return out


def results_markdown(images: dict[str, dict[str, list]], mean: dict, title: str, command: str) -> str:
    """A Markdown table: one row per image (mean +- std over seeds), then the data-set mean."""
    return "\n".join([f"# {title}", "", f"Command: `{command}`", ""] + results_table(images, mean) + [
        "", "Values are mean ± std over seeds (restarts); the mean row averages the per-image means.",
        "PSNR/SSIM on Y (MATLAB BT.601), border of s pixels shaved; kernel PSNR with peak 1 (FKP_SPEC 9).", ""])


def results_table(images: dict[str, dict[str, list]], mean: dict) -> list[str]:
    """The lines of the per-image Markdown table of `results_markdown`."""

    def cell(values, fmt):
        ms = mean_std(values)
        if ms is None:
            return "-"
        return f"{ms[0]:{fmt}} ± {ms[1]:{fmt}}" if len(values) > 1 else f"{ms[0]:{fmt}}"

    usrnet = any(r.get("psnr_y_usrnet") for r in images.values())
    extra_head = " PSNR-Y USRNet (dB) | SSIM-Y USRNet |" if usrnet else ""
    lines = ["| image | seeds | kernel PSNR (dB) | PSNR-Y (dB) | SSIM-Y |" + extra_head + " seconds / seed |",
             "| --- | ---: | ---: | ---: | ---: |" + (" ---: | ---: |" if usrnet else "") + " ---: |"]
    for name, r in images.items():
        extra = (f" {cell(r.get('psnr_y_usrnet', []), '.2f')} | {cell(r.get('ssim_y_usrnet', []), '.4f')} |"
                 if usrnet else "")
        lines.append(f"| {name} | {len(r['seeds'])} | {cell(r.get('kernel_psnr', []), '.2f')} | "
                     f"{cell(r.get('psnr_y', []), '.2f')} | {cell(r.get('ssim_y', []), '.4f')} |{extra} "
                     f"{cell(r.get('seconds', []), '.1f')} |")

    def fmt(v, f):
        return "-" if v is None else f"{v:{f}}"

    extra = (f" {fmt(mean.get('psnr_y_usrnet'), '.2f')} | {fmt(mean.get('ssim_y_usrnet'), '.4f')} |"
             if usrnet else "")
    lines.append(f"| **mean** | | {fmt(mean['kernel_psnr'], '.2f')} | {fmt(mean['psnr_y'], '.2f')} | "
                 f"{fmt(mean['ssim_y'], '.4f')} |{extra} |")
    return lines


# ----------------------------------------------------------------------------- studies (fkp_jax.study)

def seed_spread(images: dict[str, dict[str, list]], key: str) -> float | None:
    """Std over seeds of the per-seed data-set means of ``key`` (seed j: the mean over images of its value),
    over the seeds that every image has; None when no seed has a value for every image."""
    per_image = [r.get(key) or [] for r in images.values()]
    if not per_image or any(not v for v in per_image):
        return None
    n = min(len(v) for v in per_image)
    means = [np.mean([float(v[j]) for v in per_image]) for j in range(n)]
    means = [m for m in means if math.isfinite(m)]
    return float(np.std(means)) if means else None


def study_summary(runs: list[tuple[str, int, dict[str, dict[str, list]]]]) -> list[str]:
    """The papers' table form: one row per method (title), a column group per scale, cells the data-set mean
    (`summarise`) ± the std over seeds of the per-seed data-set means (`seed_spread`). ``runs``: (method
    title, scale, per-image results as `results_table` takes them)."""
    scales = sorted({sf for _, sf, _ in runs})
    usrnet = any(r.get("psnr_y_usrnet") for _, _, images in runs for r in images.values())
    columns = [("kernel_psnr", "kernel PSNR", ".2f"), ("psnr_y", "PSNR-Y", ".2f"), ("ssim_y", "SSIM-Y", ".4f")]
    if usrnet:
        columns += [("psnr_y_usrnet", "PSNR-Y USRNet", ".2f"), ("ssim_y_usrnet", "SSIM-Y USRNet", ".4f")]
    head = "| method |" + "".join(f" x{sf} {name} |" for sf in scales for _, name, _ in columns)
    lines = [head, "| --- |" + " ---: |" * (len(scales) * len(columns))]
    titles = list(dict.fromkeys(title for title, _, _ in runs))
    for title in titles:
        cells = []
        for sf in scales:
            images = next((im for t, s, im in runs if t == title and s == sf), None)
            for key, _, f in columns:
                mean = None if images is None else summarise(images).get(key)
                spread = None if mean is None else seed_spread(images, key)
                cells.append("-" if mean is None else f"{mean:{f}}" + ("" if spread is None else f" ± {spread:{f}}"))
        lines.append(f"| {title} |" + "".join(f" {c} |" for c in cells))
    return lines


def _figure(width: float = 6.4, height: float = 4.0):
    """A Matplotlib figure drawn by the Agg canvas (no pyplot, no display, no global backend switch)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    from io import BytesIO

    buf = BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def curves_png(t, values, labels: list[str], title: str, ylabel: str) -> bytes:
    """A PNG of one curve per column of ``values`` (R, N) against iteration ``t`` (R,)."""
    fig = _figure()
    ax = fig.add_subplot()
    values = np.asarray(values, np.float64)
    for j, label in enumerate(labels):
        ax.plot(t, values[:, j], marker="." if len(t) < 30 else None, label=label, linewidth=1.2)
    ax.set(xlabel="iteration", ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    if labels:
        ax.legend(fontsize="small", ncol=max(1, len(labels) // 6))
    return _png(fig)


def spread_png(panels: list[tuple[str, dict[str, list[float]]]], title: str) -> bytes:
    """A PNG with one panel per (y label, {image: values over seeds}): every seed a dot, the mean ± std a bar."""
    fig = _figure(max(6.4, 1.0 + 0.45 * max(len(v) for _, v in panels)), 3.2 * len(panels))
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    for ax, (ylabel, per_image) in zip(axes, panels):
        for x, (name, values) in enumerate(per_image.items()):
            v = [float(a) for a in values if a is not None and math.isfinite(float(a))]
            if not v:
                continue
            ax.scatter(np.full(len(v), x) + np.linspace(-0.12, 0.12, len(v)), v, s=14, alpha=0.7, color="C0")
            ax.errorbar([x + 0.25], [np.mean(v)], yerr=[np.std(v)], fmt="o", color="C3", capsize=3, markersize=4)
        ax.set_xticks(range(len(per_image)), list(per_image), rotation=45 if len(per_image) > 8 else 0,
                      ha="right" if len(per_image) > 8 else "center", fontsize="small")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, axis="y")
    axes[0].set_title(title)
    return _png(fig)
