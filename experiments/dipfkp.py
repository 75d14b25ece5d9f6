"""DIP-FKP blind super-resolution from the command line (FKP_SPEC 6).

    python -m experiments.dipfkp --sf 2                       # the bundled default images
    python -m experiments.dipfkp --sf 4 --dataset ../shared/reference/data/Test
    python -m experiments.dipfkp --sf 2 --input my_lr.png --real
    python -m experiments.dipfkp --sf 2 --seeds 5 --kernel-prior mlp --iters 1000
    python -m experiments.dipfkp --sf 4 --dataset DIR --SR usrnet_tiny.pth    # + USRNet on the kernel

A data set is in the original layout: DIR/DIPFKP_lr_x{s}/*.png (required), DIR/HR/*.png and
DIR/DIPFKP_gt_k_x{s}/*.mat (optional; they enable image and kernel metrics); a folder with only DIPDKP_* or
KernelGANFKP_* sub-folders is read through those (so the methods compare on one set). Per image the output
folder gets <name>_sr.png (the DIP output), <name>_kernel.npy, <name>_kernel.mat (variable Kernel),
<name>_kernel.png (estimate beside the ground truth) — from the first seed — plus
<name>_kernels_seeds.npy when --seeds > 1 and <name>_sr_usrnet.png with --SR; at the end metrics.json
and results.md. The plumbing (options, outputs, errors) is `fkp_jax.cli`, shared with every method.
"""

from __future__ import annotations

import sys
from pathlib import Path

DEFAULT_DATASET = Path(__file__).resolve().parent / "data" / "default"


def min_hr_side(levels: int = 5) -> int:
    """Smallest HR side the 5-level generator handles: the deepest non-local block max-pools 2 x 2,
    so the side after ``levels`` stride-2 convolutions (ceil halving) must be at least 2."""
    n = 1
    while True:
        m = n
        for _ in range(levels):
            m = -(-m // 2)
        if m >= 2:
            return n
        n += 1


def check_lr(name: str, lr, args) -> None:
    """One-line error for an LR image smaller than the generator's minimum HR side at x``sf`` or the kernel."""
    from fkp_jax import kernels

    h, w = lr.shape[:2]
    need = max(-(-min_hr_side() // args.sf), kernels.kernel_size(args.sf))
    if min(h, w) < need:
        raise ValueError(f"{name}: image too small: LR {h}x{w}; the DIP solver at x{args.sf} needs LR sides "
                         f">= {need} (HR >= {min_hr_side()} for its 5-level generator, and the kernel)")


def add_arguments(p, start: bool = True):
    if start:
        p.add_argument("--start", choices=("random", "original"), default="random",
                       help="random (default): restart i draws the DIP input, DIP weights and FKP latent from its "
                            "key; original: the released code's fixed start (the same for every run on an "
                            "image of this size; FKP prior, --seeds 1), which scores lower (docs/results.md)")
    p.add_argument("--chunk", type=int, default=None,
                   help="iterations per dispatch: 1 = Python loop over the jitted step (CPU default), "
                        ">1 = lax.scan chunks (accelerator default 50)")
    p.add_argument("--seed-mode", choices=("loop", "vmap"), default=None,
                   help="restarts stepped one after another (CPU default, faster there) or as one vmapped "
                        "computation (accelerator default)")


def build(args, prior=None):
    """The DIP solver for every image of this run (one compilation per image size); ``prior`` (a
    `kernel_priors.KernelPrior`) defaults to ``--kernel-prior`` by name."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from fkp_jax import cli, dipfkp, kernel_priors

    prior = kernel_priors.make_prior(args.kernel_prior, args.sf, args.weights) if prior is None else prior
    config = dipfkp.DIPFKPConfig(sf=args.sf, iters=args.iters)
    runner = dipfkp.make_runner(prior, config, seeds=True, chunk=args.chunk, seed_mode=args.seed_mode)

    original = getattr(args, "start", "random") == "original"
    if original and (prior.name != "fkp" or args.seeds != 1):
        raise ValueError("--start original is the released DIP-FKP's one fixed start: it needs --kernel-prior fkp "
                         "and --seeds 1 (every seed would start, and end, the same)")

    def solve(job, lr, gt, progress):
        if original:
            state = dipfkp.stack_states([dipfkp.original_state(prior, lr.shape[:2], config)])
        else:
            keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(args.seed), i))(jnp.arange(args.seeds))
            state = jax.vmap(lambda key: dipfkp.init_state(key, prior, lr.shape[:2], config))(keys)
        want_kernels = gt is not None

        def callback(t, out):
            if t % 10 == 0 or t == args.iters:
                progress(t, float(jnp.mean(out["loss"])), np.asarray(out["kernel"]) if want_kernels else None)
            else:
                progress(t, None, None)

        _, out, seconds = runner(state, jnp.asarray(lr[None]), args.iters, callback=callback)
        return cli.Estimate(np.asarray(out["kernel"], np.float32), np.asarray(out["sr"])[:, 0], seconds)

    return solve


def study(args, seed_mode=None, prior=None):
    """The solver protocol for `fkp_jax.study` (`cli.StudySolver`): the runner is built once, then bound
    to each image. ``seed_mode`` None: ``--seed-mode`` or the backend's default (`dipfkp.default_seed_mode`);
    ``prior`` as in `build`."""
    import jax.numpy as jnp

    from fkp_jax import cli, dipfkp, kernel_priors

    if getattr(args, "start", "random") != "random":
        raise ValueError("--start original gives every restart the same start: studies use random starts")
    prior = kernel_priors.make_prior(args.kernel_prior, args.sf, args.weights) if prior is None else prior
    config = dipfkp.DIPFKPConfig(sf=args.sf, iters=args.iters)
    runner = dipfkp.make_runner(prior, config, seeds=True, chunk=args.chunk, seed_mode=seed_mode or args.seed_mode)

    def prepare(job, lr):  # lr (H, W, 3), or (N, H, W, 3): one per seed (Method.batches_images)
        lr_batch = jnp.asarray(lr[..., None, :, :, :])
        return cli.StudySolver(
            init=lambda key: dipfkp.init_state(key, prior, lr.shape[-3:-1], config),
            advance=lambda state, n: runner(state, lr_batch, n)[:2],
            kernels=lambda state, out: out["kernel"], loss=lambda out: out["loss"],
            srs=lambda out: out["sr"][:, 0])

    return prepare


def method():
    from fkp_jax import cli, kernel_priors, kernels

    return cli.Method(
        name="dipfkp", title="DIP-FKP", model="DIPFKP", scales=(2, 3, 4), priors=kernel_priors.PRIORS,
        default_dataset=DEFAULT_DATASET, default_iters=lambda args: 1000, kernel_size=kernels.kernel_size,
        check_lr=check_lr, build=build, add_arguments=add_arguments, study=study, batches_images=True,
        other_models=("DIPDKP", "KernelGANFKP"),
        prior_help="fkp (DIP-FKP), mlp (Double-DIP) or softmax (DIPSoftmax)", recorded_options=("start",))


def main(argv=None) -> int:
    from fkp_jax import cli

    return cli.main(method(), argv)


if __name__ == "__main__":
    sys.exit(main())
