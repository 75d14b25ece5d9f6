"""Studies at scale: every (method, scale, image, seed) of a grid as one command (`fkp_jax.study`).

    python -m experiments.study --method dipfkp --sf 2 --seeds 5               # the bundled images
    python -m experiments.study --method dipfkp dipfkp:mlp --sf 2 3 4 --dataset DIR --out results/set14
    python -m experiments.study --method kernelganfkp --sf 2 4 --dataset DIR --SR usrnet_tiny.pth

Seeds of an image run as one batch sharded over every visible device; each finished (method, scale, image,
seed) is written at once, so a killed study started again with the same command skips what is done and
continues unfinished batches from their last orbax checkpoint (--checkpoint-every). Output: results.md,
results.csv, plots/ (see fkp_jax.study for the folder layout and README "Studies" for clusters).
"""

from __future__ import annotations

import sys


def main(argv=None) -> int:
    from fkp_jax import study

    return study.main(argv)


if __name__ == "__main__":
    sys.exit(main())
