"""DIP-DKP blind super-resolution from the command line (DKP_SPEC 6): the dynamic kernel prior on the DIP solver.

    python -m experiments.dipdkp --sf 2                          # bundled Gaussian-blur images
    python -m experiments.dipdkp --sf 2 --kernel-type motion     # bundled motion-blur images, linear-motion prior
    python -m experiments.dipdkp --sf 4 --dataset DIR --seeds 3 --SR usrnet_tiny.pth
    python -m experiments.dipdkp --sf 2 --langevin               # the paper's Langevin update (noise injected)
    python -m experiments.dipdkp --sf 2 --kernel-prior fkp       # DIP-FKP on the same data, for comparison

DIP-FKP's command with DKP's prior as the default (`fkp_jax.dkp`): the same options, outputs and
`metrics.json` (`fkp_jax.cli`); data sets in the original layout DIR/DIPDKP_lr_x{s}/ (DIR/DIPFKP_lr_x{s}/ is
read too: the two originals make identical Gaussian data). ``--kernel-type`` picks the random kernels of the
prior (Gaussian with DKP's wider variances, or linear motion) and the bundled default set
(experiments/data/default or experiments/data/motion). The released code's schedule is kept for both types.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from experiments import dipfkp

MOTION_DATASET = Path(__file__).resolve().parent / "data" / "motion"


def default_dataset(args) -> Path:
    return MOTION_DATASET if args.kernel_type == "motion" else dipfkp.DEFAULT_DATASET


def add_arguments(p):
    dipfkp.add_arguments(p, start=False)
    p.add_argument("--kernel-type", choices=("gaussian", "motion"), default="gaussian",
                   help="DKP's random prior kernels: gaussian (default) or linear motion; also picks the "
                        "bundled default images")
    p.add_argument("--langevin", action="store_true",
                   help="the paper's Langevin update of the kernel network (noise injected after every "
                        "update); default: the released code's noiseless update")


def prior(args):
    """DKP's prior from the options (None for the other priors: `dipfkp.build` makes them by name)."""
    if args.kernel_prior == "dkp":
        from fkp_jax import dkp

        return dkp.dkp_prior(args.sf, kernel_type=args.kernel_type, langevin=args.langevin)
    if args.langevin:
        raise ValueError("--langevin applies to the dkp kernel prior only")
    return None


def build(args):
    return dipfkp.build(args, prior(args))


def study(args, seed_mode=None):
    return dipfkp.study(args, seed_mode, prior(args))


def method():
    from fkp_jax import kernel_priors

    priors = ("dkp",) + tuple(p for p in kernel_priors.PRIORS if p != "dkp")
    return dataclasses.replace(
        dipfkp.method(), name="dipdkp", title="DIP-DKP", model="DIPDKP", priors=priors,
        default_dataset=default_dataset, build=build, add_arguments=add_arguments, study=study,
        other_models=("DIPFKP",),
        recorded_options=("kernel_type", "langevin"),
        prior_help="dkp (DIP-DKP, default), fkp (DIP-FKP), mlp (Double-DIP) or softmax (DIPSoftmax)")


def main(argv=None) -> int:
    from fkp_jax import cli

    return cli.main(method(), argv)


if __name__ == "__main__":
    sys.exit(main())
