"""KULNet speed: inference seconds for one LR image, and seconds per training step, on this machine.

    python -m benchmarks.kulnet_speed                                   # x4, LR 128x128; train batch 2 of 96x96
    python -m benchmarks.kulnet_speed --lr-size 128 --train-batch 16 --train-patch 192   # the original's batch

Params are a fresh draw (`kulnet_train.init_params`: speed does not depend on the values). Inference is
`kulnet.forward` (the latent sampled from a key, as at test time), the first call (compilation) timed
apart, then the median of --repeats calls. Training is `kulnet_train.make_train_step` (degradation drawn
inside the jitted step), the same way. The table is appended to --out with the CPU named. The original's
PyTorch figures (golden_kulnet README 11: 39.8 s for a 128x128 LR, 268.8 s per step at batch 16 of 192x192,
2 cores under load) were measured by the reference's makers, not in this run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path


def timed(fn, repeats: int) -> tuple[float, float]:
    """(first call seconds, median of the next ``repeats`` calls)."""
    import jax

    start = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return first, statistics.median(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sf", type=int, default=4)
    p.add_argument("--lr-size", type=int, default=128)
    p.add_argument("--train-batch", type=int, default=2)
    p.add_argument("--train-patch", type=int, default=96, help="HR patch side of the training batch")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"))
    args = p.parse_args(argv)

    from fkp_jax import runtime

    runtime.configure()
    import jax

    from benchmarks.dipfkp_speed import append_table, machine
    from fkp_jax import kulnet, kulnet_train

    params = kulnet_train.init_params(jax.random.key(0))
    lr = jax.random.uniform(jax.random.key(1), (1, args.lr_size, args.lr_size, 3))
    inf_first, inf = timed(lambda: kulnet.forward(params, lr, args.sf, key=jax.random.key(2)).sr, args.repeats)
    print(f"inference LR {args.lr_size}^2 x{args.sf}: {inf:.2f} s (first call {inf_first:.1f} s)", flush=True)

    cfg = kulnet_train.TrainConfig(sf=args.sf, batch_size=args.train_batch, patch=args.train_patch)
    step = kulnet_train.make_train_step(cfg)
    hr = jax.random.uniform(jax.random.key(3), (args.train_batch, args.train_patch, args.train_patch, 3))
    box = {"state": kulnet_train.init_state(params, cfg), "t": 0}

    def one():
        box["state"], metrics = step(box["state"], hr, jax.random.fold_in(jax.random.key(4), box["t"]))
        box["t"] += 1
        return metrics["loss"] if "loss" in metrics else metrics

    tr_first, tr = timed(one, args.repeats)
    print(f"training step batch {args.train_batch} of {args.train_patch}^2: {tr:.2f} s (first call {tr_first:.1f} s)")
    lines = [f"### KULNet speed, x{args.sf}, {machine()}, jax {jax.__version__}", "",
             f"Command: `python -m benchmarks.kulnet_speed {' '.join(sys.argv[1:] if argv is None else argv)}`", "",
             "| what | seconds (median of {}) | first call (compilation included) |".format(args.repeats),
             "| --- | ---: | ---: |",
             f"| inference, LR {args.lr_size}x{args.lr_size} -> SR x{args.sf} | {inf:.2f} | {inf_first:.1f} |",
             f"| training step, batch {args.train_batch} of {args.train_patch}x{args.train_patch} HR | {tr:.2f} | "
             f"{tr_first:.1f} |"]
    print(append_table(args.out, lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
