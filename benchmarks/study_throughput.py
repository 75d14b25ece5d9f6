"""Study throughput: image-iterations per second for 1, 5 and 20 seeds, batched (vmap) against sequential (loop).

    python -m benchmarks.study_throughput                                   # DIP-FKP x2, 96x96 HR, CPU
    python -m benchmarks.study_throughput --size 256 --seeds 1 5 20 --modes loop vmap --iters 20
    python -m benchmarks.study_throughput --method kernelganfkp --size 384   # any method with the study protocol
    python -m benchmarks.study_throughput --devices 4                        # seeds sharded over 4 devices

What a study runs per image (`fkp_jax.study`): the method's solver protocol (`cli.StudySolver`), its
states made by `study.Placement` (one device, or the seed axis sharded over --devices) and advanced by the
method's own driver in the given seed mode: "loop" = the seeds one after another through the single-seed
jitted step (the CPU default), "vmap" = one batched computation (the accelerator default; always with
several devices). One image-iteration = one iteration of one seed. Each case runs in its own process; the
first advance (compilation) is timed apart, then --iters iterations. The table is appended to --out with
the machine and device named.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def measure(method_name: str, prior: str | None, sf: int, size: int, seeds: int, mode: str, iters: int,
            devices: int | None) -> dict:
    """In a fresh process: the time of one advance of `iters` iterations of `seeds` seeds after a warm-up."""
    from fkp_jax import runtime

    runtime.configure()
    import jax
    import numpy as np

    from fkp_jax import cli, study

    method = study.load_method(method_name)
    argv = ["--sf", str(sf), "--seeds", str(seeds), "--iters", str(iters + 1)]
    args = cli.parse_args(method, argv + ([] if prior is None else ["--kernel-prior", prior]))
    placement = study.Placement(jax.devices()[:devices], mode)
    solver = method.study(args, placement.seed_mode)(
        cli.Job("bench", Path("bench.png"), None, None),
        np.asarray(jax.random.uniform(jax.random.key(1), (size // sf, size // sf, 3))))
    state = placement.init(solver, study.seed_keys(0, list(range(placement.padded(seeds)))))
    jax.block_until_ready(state)
    start = time.perf_counter()
    state, out = solver.advance(state, 1)  # compilation
    jax.block_until_ready(out)
    first = time.perf_counter() - start
    start = time.perf_counter()
    state, out = solver.advance(state, iters)
    jax.block_until_ready((state, out))
    seconds = time.perf_counter() - start
    dev = placement.devices[0]
    return {"method": method.title_for(args.kernel_prior), "sf": sf, "size": size, "seeds": seeds,
            "mode": "vmap, sharded" if placement.sharded else mode, "devices": len(placement.devices),
            "iters": iters, "seconds": seconds, "first_call_s": first, "image_its_per_s": seeds * iters / seconds,
            "device": f"{dev.platform}: {getattr(dev, 'device_kind', '')}", "jax": jax.__version__}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--method", default="dipfkp", help="a method with the study protocol (default dipfkp)")
    p.add_argument("--kernel-prior", default=None, help="(default: the method's)")
    p.add_argument("--sf", type=int, default=2)
    p.add_argument("--size", type=int, default=96, help="HR side (the LR image is size / sf square; default 96)")
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 5, 20])
    p.add_argument("--modes", nargs="+", choices=("loop", "vmap"), default=["loop", "vmap"])
    p.add_argument("--iters", type=int, default=10, help="timed iterations per case (after one warm-up)")
    p.add_argument("--devices", type=int, default=1, help="devices to shard the seeds over (default 1)")
    p.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"))
    p.add_argument("--label", default="", help="free text for the table heading")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        seeds, mode = args.child.split(",")
        print(json.dumps(measure(args.method, args.kernel_prior, args.sf, args.size, int(seeds), mode, args.iters,
                                 args.devices)))
        return 0
    rows = []
    modes = ["vmap"] if args.devices > 1 else args.modes
    for seeds in args.seeds:
        for mode in modes:
            cmd = [sys.executable, "-m", "benchmarks.study_throughput", "--child", f"{seeds},{mode}",
                   "--method", args.method, "--sf", str(args.sf), "--size", str(args.size), "--iters", str(args.iters),
                   "--devices", str(args.devices)] + ([] if args.kernel_prior is None else
                                                      ["--kernel-prior", args.kernel_prior])
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                print(f"case seeds={seeds} {mode} failed:\n{res.stderr[-2000:]}", file=sys.stderr)
                continue
            row = json.loads(res.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"seeds={seeds} {row['mode']}: {row['image_its_per_s']:.2f} image-iterations/s "
                  f"({row['seconds'] / args.iters:.3f} s per iteration of all seeds; first call "
                  f"{row['first_call_s']:.1f} s)", flush=True)
    if not rows:
        return 1
    from benchmarks.dipfkp_speed import append_table, machine

    r0 = rows[0]
    lines = [f"### Study throughput, {r0['method']} x{r0['sf']}, {r0['size']}x{r0['size']} HR, {r0['device']} x "
             f"{r0['devices']} ({machine()}), jax {r0['jax']} {args.label}".rstrip(), "",
             f"Command: `python -m benchmarks.study_throughput {' '.join(argv if argv is not None else sys.argv[1:])}`",
             "", "| seeds | seed mode | image-iterations / s | s / iteration (all seeds) | first call (s) |",
             "| ---: | --- | ---: | ---: | ---: |"]
    lines += [f"| {r['seeds']} | {r['mode']} | {r['image_its_per_s']:.2f} | {r['seconds'] / r['iters']:.3f} | "
              f"{r['first_call_s']:.1f} |" for r in rows]
    print(append_table(args.out, lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
