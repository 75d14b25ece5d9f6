"""KernelGAN-FKP (and the original KernelGAN) blind kernel estimation from the command line (FKP_SPEC 7).

    python -m experiments.kernelganfkp --sf 2                          # the bundled default image
    python -m experiments.kernelganfkp --sf 4 --dataset DIR --SR usrnet_tiny.pth
    python -m experiments.kernelganfkp --sf 2 --kernel-prior linear    # the original KernelGAN (spec 7.6)
    python -m experiments.kernelganfkp --sf 4 --dataset DIR --kernel gt --SR usrnet_tiny.pth   # oracle kernel

A data set is in the original layout: DIR/KernelGANFKP_lr_x{s}/*.png (required), DIR/HR/*.png and
DIR/KernelGANFKP_gt_k_x{s}/*.mat (optional). x2 and x4 only: an x2 kernel is always estimated (on the x4 LR
image for x4) and turned into the x4 kernel analytically (spec 2.4, 7.1). Synthetic inputs lose 10 pixels
at every border before the crops are drawn, as the original (not with --real). The method has no image
model: the SR image comes from USRNet-tiny with --SR (official usrnet_tiny.pth or its conversion), else
from a closed-form FFT solver that needs no weights (`fkp_jax.usrnet.closed_form_sr`; metrics.json names
which). Outputs and metrics.json schema as `experiments.dipfkp` (the plumbing is `fkp_jax.cli`).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

DEFAULT_DATASET = Path(__file__).resolve().parent / "data" / "kernelgan_one"  # one image: the default run's time
# is 1000 iterations per image (data/kernelgan_one/README.md); data/kernelgan has the comparison's two images


def check_lr(name: str, lr, args) -> None:
    """One-line error for an LR image too small for the crops (the original fails there, spec 7.5)."""
    from fkp_jax import kernelgan, kernelgan_linear

    config = kernelgan_linear.LinearKernelGANConfig() if args.kernel_prior == "linear" else kernelgan.KernelGANConfig()
    shave = 0 if args.real else kernelgan.SHAVE
    need = kernelgan.min_image_size(config.g_size, config.d_size, shave)
    if min(lr.shape[:2]) < need:
        why = "" if args.real else (f" ({shave}-pixel border shave of synthetic inputs included; "
                                    f"{need - 2 * shave} with --real)")
        raise ValueError(f"{name}: image too small for KernelGAN's {config.g_size}x{config.g_size} crops: "
                         f"LR {lr.shape[0]}x{lr.shape[1]}; needs LR sides >= {need}{why}")


def default_iters(args) -> int:
    """The originals': KernelGAN-FKP 1000 at x2 and 4000 at x4; KernelGAN 3000 (spec 7.1, 7.6)."""
    if args.kernel_prior == "linear":
        return 3000
    return 1000 if args.sf == 2 else 4000


def kernel_size(sf: int) -> int:
    return 11 if sf == 2 else 21


def solver_parts(args):
    """(config, init(key) -> state, step(seeds) -> jitted (state, sampler) -> (state, outputs), estimate(outputs,
    state) -> kernel at the run's scale (per seed, or with a leading seed axis: vmapped), the FKP prior or None)
    for --kernel-prior."""
    import jax

    from fkp_jax import flow, kernelgan, kernelgan_linear

    if args.kernel_prior == "linear":  # (--weights with it: refused by fkp_jax.cli)
        config = kernelgan_linear.LinearKernelGANConfig()
        init = lambda key: kernelgan_linear.init_state(key, config)  # noqa: E731
        step = lambda seeds: kernelgan_linear.make_step(config, seeds)  # noqa: E731 (seeds: lax.map / vmap)
        estimate = lambda out, state: kernelgan_linear.final_kernel(state, args.sf)  # noqa: E731 (last G kernel)
        return config, init, step, estimate, None
    prior = flow.load_prior(args.weights or 2)
    if prior.config.sf != 2 or prior.config.k != 11:
        raise ValueError(f"--weights {args.weights}: KernelGAN-FKP needs an x2 FKP prior (11 x 11 kernels), "
                         f"got x{prior.config.sf}")
    config = kernelgan.KernelGANConfig(sf=args.sf, iters=args.iters)
    init = lambda key: kernelgan.init_state(key, prior, config)  # noqa: E731
    step = lambda seeds: kernelgan.make_step(prior, config, seeds)  # noqa: E731

    def estimate(out, state):
        final = lambda k: kernelgan.final_kernel(k, args.sf)  # noqa: E731
        return jax.vmap(final)(out["kernel"]) if out["kernel"].ndim == 3 else final(out["kernel"])

    return config, init, step, estimate, prior


def build(args):
    """One solver for every image: the jitted step is built once (crops are drawn inside it)."""
    import jax
    import numpy as np

    from fkp_jax import cli, kernelgan

    config, init, make_step, estimate, _ = solver_parts(args)
    step = make_step(False)

    def solve(job, lr, gt, progress):
        sampler = kernelgan.make_sampler(kernelgan.prepare_image(lr, args.real), config.g_size, config.d_size)
        # restarts one after another through the single-seed jitted step (the CPU choice, as DIP-FKP)
        states = [init(jax.random.fold_in(jax.random.key(args.seed), i)) for i in range(args.seeds)]
        outs = [None] * args.seeds
        start = time.perf_counter()
        for t in range(1, args.iters + 1):
            for i, state in enumerate(states):
                states[i], outs[i] = step(state, sampler)
            if t % 10 == 0 or t == args.iters:
                kernels = np.stack([np.asarray(estimate(o, st)) for o, st in zip(outs, states)])
                progress(t, float(np.mean([o["loss_g"] for o in outs])), kernels)
            else:
                progress(t, None, None)
        jax.block_until_ready(outs)
        seconds = time.perf_counter() - start
        kernels = np.stack([np.asarray(estimate(o, st), np.float32) for o, st in zip(outs, states)])
        return cli.Estimate(kernels, None, seconds)

    return solve


def study(args, seed_mode=None):
    """The solver protocol for `fkp_jax.study` (`cli.StudySolver`): `kernelgan.make_runner` (seeds one after
    another through the single-seed jitted step, the CPU default, or vmapped); the linear KernelGAN steps its
    seed axis inside one jitted call (``lax.map`` for "loop", its own CPU default, or vmap)."""
    import jax.numpy as jnp

    from fkp_jax import cli, kernelgan, kernelgan_linear

    config, init, _, estimate, prior = solver_parts(args)
    mode = seed_mode or kernelgan.default_seed_mode()
    if prior is None:
        batched = kernelgan_linear.make_step(config, True, seed_mode="map" if mode == "loop" else "vmap")

        def run(state, sampler, n):
            for _ in range(n):
                state, out = batched(state, sampler)
            return state, out
    else:
        runner = kernelgan.make_runner(prior, config, seeds=True, seed_mode=mode)
        run = lambda state, sampler, n: runner(state, sampler, n)[:2]  # noqa: E731

    def prepare(job, lr):
        sampler = kernelgan.make_sampler(kernelgan.prepare_image(lr, args.real), config.g_size, config.d_size)
        return cli.StudySolver(init=init, advance=lambda state, n: run(state, sampler, n),
                               kernels=lambda state, out: estimate(out, state), loss=lambda out: jnp.asarray(out["loss_g"]),
                               traceable_init=False)  # (the discriminator's init draws through NumPy)

    return prepare


def method():
    from fkp_jax import cli

    return cli.Method(
        name="kernelganfkp", title="KernelGAN-FKP", model="KernelGANFKP", scales=(2, 4), priors=("fkp", "linear"),
        default_dataset=DEFAULT_DATASET, default_iters=default_iters,
        kernel_size=kernel_size, check_lr=check_lr, build=build, has_image_output=False, study=study,
        other_models=("DIPFKP",), prior_titles=(("linear", "KernelGAN"),),
        prior_help="fkp (KernelGAN-FKP: the FKP flow latent) or linear (the original KernelGAN: a deep linear "
                   "generator with its regularisers, spec 7.6)")


def main(argv=None) -> int:
    from fkp_jax import cli

    return cli.main(method(), argv)


if __name__ == "__main__":
    sys.exit(main())
