"""Diff-DKP (DKP_SPEC 8) blind SR from the command line: the DKP kernel prior inside a classifier-guided
DDNM-style sampler on OpenAI's ImageNet 256x256 ADM (`fkp_jax.diffdkp`).

    python -m experiments.diffdkp --sf 4 --adm 256x256_diffusion.pt --classifier 256x256_classifier.pt \\
        --dataset DIR
    python -m experiments.diffdkp --sf 4 --adm ADM_DIR --classifier CLF_DIR --input photo.png --real
    python -m experiments.diffdkp --sf 4 --tiny --dataset DIR        # test mode: tiny untrained networks

Checkpoints: the guided-diffusion release (``256x256_diffusion.pt``, ``256x256_classifier.pt``), read directly
(lazily) or converted once with ``python -m fkp_jax.convert``. A GPU method: one real-size ADM forward is
~56 s on 2 CPU cores and a run makes 100 of them (plus classifier gradients) per 256 x 256 window.

Per image: y = bicubic up-sampling of the LR image to sf x its size (the sampler's observation), then
`fkp_jax.diffdkp.run` (one warm-up step of G_k, 100 respaced steps on every 256 x 256 window, stride 128).
The ADM and its classifier work on windows of the classifier's size (256; 64 with ``--tiny``), so the target
sf x LR must be at least that large on both sides (the original refuses smaller targets too). The kernel is
19 x 19 at every scale, as G_k produces it (convolution kernel with the centre of mass at (19 - sf)/2, the
family of the data sets' ground-truth kernels, which are zero-padded to 19 x 19 for the kernel PSNR).
``--released-quirks`` selects the released code's behaviour (`fkp_jax.diffdkp` docstring: no in-loop kernel
gradients, a warm-up towards the GROUND-TRUTH kernel, hence it needs one, value ranges, ...); ``--quirks 1,4``
keeps only the listed ones (``--quirks none``: none, the default), to measure each fix alone. Restart i uses
``fold_in(key(--seed), i)``. Outputs and metrics.json schema as `experiments.dipfkp` (`fkp_jax.cli`).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

DEFAULT_DATASET = Path(__file__).resolve().parent / "data" / "default"
TINY_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "golden_diffdkp"
TINY_FILES = ("tiny_adm_state.pt", "tiny_classifier_state.pt")
SCALES = (4, 2, 3)
KERNEL_SIZE = 19
STEPS = 100  # DiffDKPConfig().respacing
TINY_STEPS, TINY_KERNEL_START = 10, 8  # --tiny: a short chain that still makes kernel steps (t < 8)

NO_CHECKPOINTS = ("Diff-DKP needs the OpenAI guided-diffusion ImageNet checkpoints: --adm 256x256_diffusion.pt "
                  "--classifier 256x256_classifier.pt (from the guided-diffusion release, "
                  "github.com/openai/guided-diffusion; pass the .pt files directly or convert them once with "
                  "`python -m fkp_jax.convert FILE DIR`), or --tiny for the test mode")


def steps(args) -> int:
    """Sampler steps: the original's 100 respaced steps; --tiny 10 (TINY_STEPS)."""
    return TINY_STEPS if args.tiny else STEPS


def window_size(args) -> int:
    return 64 if args.tiny else 256


def check_lr(name: str, lr, args) -> None:
    h, w = lr.shape[0] * args.sf, lr.shape[1] * args.sf
    win = window_size(args)
    if min(h, w) < win:
        raise ValueError(f"{name}: image too small for Diff-DKP: LR {lr.shape[0]}x{lr.shape[1]} gives a {h}x{w} "
                         f"target at x{args.sf}; its networks work on {win}x{win} windows: needs LR sides >= "
                         f"{-(-win // args.sf)}")


def add_arguments(p):
    p.add_argument("--adm", help="ADM UNet: 256x256_diffusion.pt (guided-diffusion release) or its "
                                            "conversion (python -m fkp_jax.convert)")
    p.add_argument("--classifier", help="noisy-image classifier: 256x256_classifier.pt or its conversion")
    p.add_argument("--released-quirks", action="store_true",
                   help="the released code's behaviour (frozen kernel after a warm-up towards the GROUND-TRUTH "
                        "kernel, [0, 1] / magnitude value ranges, ...; needs ground-truth kernels)")
    p.add_argument("--quirks", type=parse_quirks, metavar="LIST",
                   help="keep only these of the released quirks (comma-separated numbers 1-5 of fkp_jax/diffdkp.py's "
                        "docstring, or 'none'; instead of --released-quirks' all five; 2 needs ground-truth kernels)")
    p.add_argument("--half", action="store_true",
                   help="run the ADM torso in bfloat16 (accelerators; GroupNorm, softmax, embeddings and the output "
                        "stay float32; speed: docs/benchmarks.md; accuracy: tests/test_adm.py, about 4e-2 relative on the output)")
    p.add_argument("--tiny", action="store_true",
                   help="test mode: the tiny golden networks of ../shared/reference/golden_diffdkp (untrained, 64 px "
                        "windows, 10 sampler steps) run the whole pipeline; results are meaningless")


def parse_quirks(text: str) -> tuple[int, ...]:
    """'1,4' -> (1, 4); 'none' -> ()."""
    import argparse

    if text.strip().lower() == "none":
        return ()
    try:
        quirks = tuple(sorted({int(q) for q in text.split(",")}))
    except ValueError:
        quirks = ()
    if not quirks or not set(quirks) <= set(range(1, 6)):
        raise argparse.ArgumentTypeError(f"{text!r}: comma-separated quirk numbers 1-5, or 'none'")
    return quirks


def kept_quirks(args) -> tuple[int, ...]:
    """The quirks this run keeps: --quirks, else all five with --released-quirks, else none."""
    if args.quirks is not None:
        return args.quirks
    return (1, 2, 3, 4, 5) if args.released_quirks else ()


def checkpoint_paths(args) -> tuple[Path, Path]:
    """(ADM, classifier) paths; one-line errors for none or missing files."""
    if args.tiny:
        if args.adm is not None or args.classifier is not None:
            raise ValueError("--tiny uses the golden tiny networks: leave out --adm / --classifier")
        paths = tuple(TINY_DIR / f for f in TINY_FILES)
        if not all(p.is_file() for p in paths):
            raise FileNotFoundError(f"--tiny needs the reference folder {TINY_DIR} ({', '.join(TINY_FILES)}); "
                                    "not found")
        return paths
    if args.adm is None or args.classifier is None:
        raise ValueError(NO_CHECKPOINTS)
    for what, path in (("ADM", args.adm), ("classifier", args.classifier)):
        if not Path(path).exists():
            raise FileNotFoundError(f"no such {what} checkpoint: {path}")
    return Path(args.adm), Path(args.classifier)


def load(args):
    """(nets, DiffDKPConfig) from the options (one-line errors for bad options, missing or wrong files)."""
    if args.iters != steps(args):
        raise ValueError(f"Diff-DKP runs the {steps(args)} respaced steps of its schedule: --iters does not apply "
                         "(leave it out)")
    if args.kernel_prior != "dkp":
        raise ValueError("Diff-DKP's kernel prior is DKP's G_k")
    adm_path, clf_path = checkpoint_paths(args)

    import jax
    import jax.numpy as jnp

    from fkp_jax import adm, diffdkp

    adm_params, adm_cfg = adm.load_adm(adm_path)
    clf_params, clf_cfg = adm.load_adm(clf_path)
    if isinstance(adm_cfg, adm.ClassifierConfig):
        raise ValueError(f"{adm_path}: a classifier checkpoint, not an ADM UNet (--adm)")
    if not isinstance(clf_cfg, adm.ClassifierConfig):
        raise ValueError(f"{clf_path}: an ADM UNet checkpoint, not a classifier (--classifier)")
    if adm_cfg.image_size != clf_cfg.image_size or clf_cfg.image_size != window_size(args):
        raise ValueError(f"ADM ({adm_cfg.image_size} px) and classifier ({clf_cfg.image_size} px) must both work on "
                         f"{window_size(args)} px windows{' (--tiny)' if args.tiny else ''}")
    win = clf_cfg.image_size
    config = diffdkp.DiffDKPConfig(adm_config=adm_cfg, classifier_config=clf_cfg, sf=args.sf,
                                   kernel_size=KERNEL_SIZE, shift=KERNEL_SIZE // 2, window=win, stride=win // 2,
                                   released_quirks=args.released_quirks, quirks=kept_quirks(args),
                                   adm_dtype="bfloat16" if args.half else None)
    if args.tiny:
        config = dataclasses.replace(config, respacing=TINY_STEPS, kernel_start=TINY_KERNEL_START)
    nets = jax.tree.map(jnp.asarray, {"adm": adm_params, "classifier": clf_params})
    return nets, config


def build(args):
    """A solver for every image: ``diffdkp.run`` once per seed."""
    import jax
    import numpy as np

    from fkp_jax import cli, diffdkp

    nets, config = load(args)

    def solve(job, lr, gt, progress):  # (gt: there with quirk 2 kept, `Method.gt_kernel_option`)
        start = time.perf_counter()
        hr_size = (lr.shape[0] * args.sf, lr.shape[1] * args.sf)
        kernels, srs = [], []
        for i in range(args.seeds):
            sr, k = diffdkp.run(nets, lr[None], jax.random.fold_in(jax.random.key(args.seed), i), config,
                                hr_size=hr_size, k_gt=gt if config.keeps(2) else None)
            kernels.append(np.asarray(k, np.float32))
            srs.append(np.clip(np.asarray(sr[0], np.float32), 0.0, 1.0))
        kernels, srs = np.stack(kernels), np.stack(srs)
        progress(args.iters, None, kernels)
        return cli.Estimate(kernels, srs, time.perf_counter() - start)

    return solve


def gt_kernel_option(args) -> str | None:
    """The option that needs ground-truth kernels (quirk 2's warm-up target), if given."""
    if 2 not in kept_quirks(args):
        return None
    return "--quirks" if args.quirks is not None else "--released-quirks"


def method():
    from fkp_jax import cli

    return cli.Method(
        name="diffdkp", title="Diff-DKP", model="DIPDKP", scales=SCALES, priors=("dkp",),
        default_dataset=DEFAULT_DATASET, default_iters=steps, kernel_size=lambda sf: KERNEL_SIZE,
        check_lr=check_lr, build=build, add_arguments=add_arguments, other_models=("DIPFKP", "KernelGANFKP"),
        pad_gt_kernel=True, image_model="Diff-DKP (guided-diffusion ADM)",
        prior_help="DKP's kernel MLP G_k (the only choice)",
        weights_help="not used by Diff-DKP (use --adm / --classifier)",
        iters_help=f"not used by Diff-DKP: it runs the {STEPS} respaced steps of its schedule ({TINY_STEPS} with --tiny)",
        gt_kernel_option=gt_kernel_option,
        recorded_options=("adm", "classifier", "released_quirks", "quirks", "half", "tiny"))


def main(argv=None) -> int:
    from fkp_jax import cli

    return cli.main(method(), argv)


if __name__ == "__main__":
    sys.exit(main())
