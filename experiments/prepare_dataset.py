"""Synthesise LR images and ground-truth kernels from HR images, as the original data/prepare_dataset.py.

    python -m experiments.prepare_dataset --sf 2 --dataset DIR [--seed 0] [--noise-ker 0]
        [--model DIPFKP|DIPDKP|KernelGANFKP] [--kernel-type gaussian|motion] [--overwrite] [--no-progress]

For every image of DIR/HR (sorted by name; spec 3): modcrop to a multiple of s, draw one random kernel,
degrade with the bit-exact operator (`degrade_exact`: wrap padding, correlation, keep 0, s, 2s, ...),
floor-quantise to 8 bits, and write DIR/{model}_lr_x{s}/<name>.png and DIR/{model}_gt_k_x{s}/<name>.mat
(variable `Kernel`, float64, exactly the float32 kernel that made the LR image).

Gaussian kernels (--kernel-type gaussian, the default, the originals' data): DIPFKP, a random Gaussian
of size min(4s+3, 21) for s in {2, 3, 4}; DIPDKP, the same (DKP's data preparation is FKP's DIPFKP one;
only the folder names differ); KernelGANFKP, a random x2 Gaussian (s = 2) or its analytic x4 kernel
re-centred by kernel_shift(., 4) (s = 4, 21 x 21, not renormalised).

Motion kernels (--kernel-type motion; the DKP paper's motion test sets were never released, see
DKP_SPEC.md section 3): `fkp_jax.kernels.random_motion_kernel`, a random camera-shake trajectory
(Boracchi-Foi style random walk with inertia, path length U(0.4, 1) (k - s) px) splatted bilinearly onto
the k x k grid, unit sum, centre of mass exactly at ((k - s)/2, (k - s)/2), outer ring of pixels zero.
k = min(4s+3, 21) as for the Gaussians (KernelGANFKP x4: k = 21, centre 8.5, like its Gaussian x4
kernels). --noise-ker applies to Gaussian kernels only. The folders are the same as for Gaussian
kernels: give motion data its own DIR (with its own HR/) to keep both sets.

Randomness, a deliberate difference: the original draws kernels from NumPy's global RNG (seeded 1) in
image order; that stream is NOT reproduced. Image i (0-based, sorted order) gets its kernel from
`jax.random.fold_in(jax.random.key(seed), i)`, so a kernel depends only on (seed, i, s, model,
kernel type, noise_ker). Other differences: the LR PNG is written RGB (the original's is RGBA with alpha
255; the pixel values are identical) and image noise (--noise_im, default 0 in the original) is not
offered. Outputs are written atomically and never overwritten unless asked. Bad input: a one-line
message on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import jax
import numpy as np
from tqdm import tqdm

from fkp_jax import kernels
from fkp_jax.degrade import degrade_exact, modcrop, quantize_floor
from fkp_jax.io import DataError, dataset_layout, list_images, read_image, write_image_u8, write_kernel_mat

SCALES = {"DIPFKP": (2, 3, 4), "DIPDKP": (2, 3, 4), "KernelGANFKP": (2, 4)}
KERNEL_TYPES = ("gaussian", "motion")


@jax.jit
def _kernelgan_x4_kernel(key: jax.Array, noise: float) -> jax.Array:
    """KernelGAN-FKP x4 ground truth: kernel_shift(analytic_x4_kernel(random x2 kernel), 4) (spec 3 step 3)."""
    return kernels.kernel_shift(kernels.analytic_x4_kernel(kernels.random_gaussian_kernel(key, 2, noise)), 4)


def _draw_kernel(key: jax.Array, sf: int, model: str, noise: float, kernel_type: str = "gaussian") -> np.ndarray:
    """One random kernel of `model` at scale `sf`, float32 (spec 3 step 3; motion: see the module docstring)."""
    if kernel_type == "motion":
        size = 21 if model == "KernelGANFKP" and sf == 4 else None
        return np.asarray(kernels.random_motion_kernel(key, sf, size=size), np.float32)
    if model == "KernelGANFKP" and sf == 4:
        return np.asarray(_kernelgan_x4_kernel(key, noise), np.float32)
    return np.asarray(kernels.random_gaussian_kernel(key, sf, noise), np.float32)


def _read_hr(path: Path, sf: int) -> np.ndarray:
    """The HR image, cropped to a multiple of sf; DataError if unreadable or smaller than sf."""
    hr = modcrop(read_image(path), sf)
    if hr.size == 0:
        raise DataError(f"{path}: image smaller than the scale factor {sf}")
    return hr


def prepare_dataset(root: str | Path, sf: int, seed: int = 0, noise_ker: float = 0.0, model: str = "DIPFKP",
                    overwrite: bool = False, progress: bool = True, kernel_type: str = "gaussian") -> list[Path]:
    """Write the LR images and GT kernels of root/HR for scale `sf`; returns the LR paths written.

    Raises DataError (one-line message) for an unsupported model / scale / kernel type, kernel noise with
    motion kernels, a missing or empty HR folder, clashing image names, or existing outputs when
    `overwrite` is False, an unreadable image (all checked before writing anything).
    """
    if model not in SCALES:
        raise DataError(f"unsupported model {model!r} (choose {', '.join(SCALES)})")
    if sf not in SCALES[model]:
        raise DataError(f"unsupported scale factor {sf} for {model} (choose {', '.join(map(str, SCALES[model]))})")
    if kernel_type not in KERNEL_TYPES:
        raise DataError(f"unsupported kernel type {kernel_type!r} (choose {', '.join(KERNEL_TYPES)})")
    if not noise_ker >= 0:
        raise DataError(f"kernel noise level must be >= 0, got {noise_ker}")
    if kernel_type == "motion" and noise_ker != 0:
        raise DataError("--noise-ker applies to Gaussian kernels only (motion kernels take no noise)")
    layout = dataset_layout(root, sf, model)
    images = list_images(layout.hr)
    stems = [p.stem for p in images]
    clash = next((s for i, s in enumerate(stems) if s in stems[:i]), None)
    if clash is not None:
        raise DataError(f"{layout.hr}: two images named {clash!r} (outputs would collide)")
    targets = [(layout.lr / f"{s}.png", layout.gt_kernel / f"{s}.mat") for s in stems]
    existing = [p for pair in targets for p in pair if p.exists()]
    if existing and not overwrite:
        raise DataError(f"{len(existing)} output file(s) exist, first {existing[0]} (use --overwrite to replace)")
    for path in images:  # every image read once before anything is written: no partial data set
        _read_hr(path, sf)
    base = jax.random.key(seed)
    for index, (path, (lr_path, kernel_path)) in enumerate(
            tqdm(list(zip(images, targets)), desc=f"x{sf} {model} {kernel_type}", unit="img", disable=not progress)):
        hr = _read_hr(path, sf)
        kernel = _draw_kernel(jax.random.fold_in(base, index), sf, model, noise_ker, kernel_type)
        write_kernel_mat(kernel_path, kernel.astype(np.float64))
        write_image_u8(lr_path, quantize_floor(degrade_exact(hr, kernel, sf)))
    return [lr for lr, _ in targets]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # raise instead of printing the usage and exiting: main() reports it
        raise DataError(message)


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="prepare_dataset", description="Synthesise LR images and GT kernels (FKP spec 3).")
    parser.add_argument("--sf", type=int, required=True, help="scale factor: 2, 3, 4 (KernelGANFKP: 2, 4)")
    parser.add_argument("--dataset", type=Path, required=True, help="folder holding HR/")
    parser.add_argument("--seed", type=int, default=0, help="kernel seed (image i uses fold_in(key(seed), i))")
    parser.add_argument("--noise-ker", type=float, default=0.0, help="multiplicative kernel noise level")
    parser.add_argument("--model", default="DIPFKP",
                        help="DIPFKP, DIPDKP or KernelGANFKP (output folder names, kernels)")
    parser.add_argument("--kernel-type", default="gaussian", choices=KERNEL_TYPES,
                        help="gaussian (the originals' data, default) or motion (random camera-shake trajectories)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    with warnings.catch_warnings():
        warnings.showwarning = lambda msg, *_, **__: print(f"{parser.prog}: warning: {msg}", file=sys.stderr)
        try:
            args = parser.parse_args(argv)
            written = prepare_dataset(args.dataset, args.sf, seed=args.seed, noise_ker=args.noise_ker,
                                      model=args.model, overwrite=args.overwrite, progress=not args.no_progress,
                                      kernel_type=args.kernel_type)
        except DataError as exc:  # bad arguments or input files: one line, status 2, no traceback
            print(f"{parser.prog}: error: {exc}", file=sys.stderr)
            return 2
    layout = dataset_layout(args.dataset, args.sf, args.model)
    print(f"wrote {len(written)} LR images to {layout.lr} and {args.kernel_type} kernels to {layout.gt_kernel} "
          f"(seed {args.seed})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
