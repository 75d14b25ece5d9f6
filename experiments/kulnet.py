"""KULNet (ECCV 2022) blind SR from the command line: one forward pass of the supervised network per image.

    python -m experiments.kulnet --sf 4 --weights DIR                 # the bundled default images
    python -m experiments.kulnet --sf 4 --weights latest_G.pth --dataset DIR --seeds 5
    python -m experiments.kulnet --sf 2 --weights DIR --input photo.png --real

KULNet needs trained weights (KULNET_SPEC 1; golden_kulnet README 10): the official ``latest_G.pth`` of the
scale (x2 / x3 / x4 share one layout; read directly, or converted once with ``python -m fkp_jax.convert
latest_G.pth DIR``), or weights trained with ``experiments.train_kulnet``. The network estimates one 21 x 21
kernel (correlation convention, centre at (10, 10)) and reconstructs the SR image in 4 unfolded stages
(`fkp_jax.kulnet.forward`). Its latent is sampled at test time, as in the original: restart i draws the
latent noise from ``fold_in(key(--seed), i)``, so ``--seeds`` gives that many samples. Ground-truth kernels
of our data sets (11 x 11 at x2, 15 at x3, 19 at x4) are zero-padded to 21 x 21 for the kernel PSNR (same
kernel, same centre). With ``--real`` the LR image gets the original real-image loader's border first
(``kulnet.pad_real_lr``: REAL_CROP = 3 / 6 / 11 LR pixels at x4 / x3 / x2) and the SR output loses it again
(``kulnet.crop_real_sr``), as the original's test_real.py does. Metrics as the original's test protocol (golden_kulnet README 8): PSNR-Y / SSIM-Y on
unrounded BT.601 Y with ``sf`` border pixels shaved, kernel PSNR over the 21 x 21 entries. Outputs and
metrics.json schema as `experiments.dipfkp` (the plumbing is `fkp_jax.cli`).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

DEFAULT_DATASET = Path(__file__).resolve().parent / "data" / "default"
MIN_LR = 8  # smaller LR sides leave the SR image smaller than its reflect padding to a multiple of 16

NO_WEIGHTS = ("KULNet needs trained weights: --weights PATH, the official latest_G.pth of this scale (listed in the "
              "KULNet repository; read directly or converted with `python -m fkp_jax.convert latest_G.pth DIR`) "
              "or weights you trained with `python -m experiments.train_kulnet`")


def check_lr(name: str, lr, args) -> None:
    if min(lr.shape[:2]) < MIN_LR:
        raise ValueError(f"{name}: image too small for KULNet: LR {lr.shape[0]}x{lr.shape[1]}; needs LR sides >= {MIN_LR}")


def load(args):
    """The network's params from --weights (one-line errors for none, a missing or a wrong file)."""
    from fkp_jax import kulnet

    if args.weights is None:
        raise ValueError(NO_WEIGHTS)
    if args.iters != 1:
        raise ValueError("KULNet is one forward pass per image: --iters does not apply (leave it out)")
    return kulnet.load_kulnet(args.weights)


def build(args):
    """A solver for every image: the jitted forward (per LR shape), one latent sample per seed."""
    import jax
    import numpy as np

    from fkp_jax import cli, kulnet

    params = load(args)

    def solve(job, lr, gt, progress):
        start = time.perf_counter()
        keys = [jax.random.fold_in(jax.random.key(args.seed), i) for i in range(args.seeds)]
        net_in = kulnet.pad_real_lr(lr, args.sf) if args.real else lr  # the real-image loader's border
        outs = [kulnet.forward(params, net_in[None], args.sf, key=key) for key in keys]
        kernels = np.stack([np.asarray(o.kernel[0], np.float32) for o in outs])
        srs = np.stack([np.clip(np.asarray(o.sr[0], np.float32), 0.0, 1.0) for o in outs])
        if args.real:
            srs = kulnet.crop_real_sr(srs, args.sf)
        progress(1, None, kernels)
        return cli.Estimate(kernels, srs, time.perf_counter() - start)

    return solve


def method():
    from fkp_jax import cli, kulnet

    return cli.Method(
        name="kulnet", title="KULNet", model="KULNet", scales=kulnet.SCALES, priors=("kulnet",),
        default_dataset=DEFAULT_DATASET, default_iters=lambda args: 1, kernel_size=lambda sf: kulnet.KERNEL_SIZE,
        check_lr=check_lr, build=build, other_models=("DIPFKP", "DIPDKP", "KernelGANFKP"), pad_gt_kernel=True,
        image_model="KULNet", prior_help="KULNet's own kernel branch (the only choice)",
        weights_help="KULNet weights: the official latest_G.pth of the scale or its conversion (orbax folder)",
        own_weights=True,
        iters_help="not used by KULNet: one forward pass per image")


def main(argv=None) -> int:
    from fkp_jax import cli

    return cli.main(method(), argv)


if __name__ == "__main__":
    sys.exit(main())
