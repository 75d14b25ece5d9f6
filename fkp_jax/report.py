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

    def cell(values, fmt):
        ms = mean_std(values)
        if ms is None:
            return "-"
        return f"{ms[0]:{fmt}} ± {ms[1]:{fmt}}" if len(values) > 1 else f"{ms[0]:{fmt}}"

    usrnet = any(r.get("psnr_y_usrnet") for r in images.values())
    extra_head = " PSNR-Y USRNet (dB) | SSIM-Y USRNet |" if usrnet else ""
    lines = [f"# {title}", "", f"Command: `{command}`", "",
             "| image | seeds | kernel PSNR (dB) | PSNR-Y (dB) | SSIM-Y |" + extra_head + " seconds / seed |",
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
    lines += ["", "Values are mean ± std over seeds (restarts); the mean row averages the per-image means.",
              "PSNR/SSIM on Y (MATLAB BT.601), border of s pixels shaved; kernel PSNR with peak 1 (FKP_SPEC 9).", ""]
    return "\n".join(lines)
