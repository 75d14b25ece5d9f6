"""Speed of one DIP-FKP network iteration: value_and_grad(mean(G(z))) + Adam update, jitted.

    python benchmarks/dip_net_speed.py                       # 96x96, 256x256, 480x320 (H x W), 1 seed
    python benchmarks/dip_net_speed.py --sizes 96x96 --seeds 5   # 5 seeds: vmap vs loop vs lax.map
    python benchmarks/dip_net_speed.py --xla-flags="--xla_cpu_use_xnnpack=false"
    python benchmarks/dip_net_speed.py --convs 96:144:128,48:128:128 --algorithms rows winograd winograd4
    python benchmarks/dip_net_speed.py --sizes 96x96 --stride1 rows     # the whole net with one stride-1 algorithm

--convs times one reflection-padded 3x3 stride-1 convolution, forward + both gradients (``jax.vjp``,
jitted), per algorithm of ``fkp_jax.dip.conv3x3``, at SIZE:C_IN:C_OUT (square maps): the algorithms
alternate within each of --rounds rounds (other jobs on the machine then slow them alike); median wall and
process-CPU milliseconds per call are printed.

Prints seconds per iteration (median and min of --reps timed calls after a warm-up), XLA's FLOP
count of the compiled step and the achieved GFLOP/s next to the measured float32 matmul peak.
XLA flags are taken from --xla-flags (appended to $XLA_FLAGS before JAX starts); nothing else is
configured globally.

Measured (2 AMD EPYC cores, shared with other jobs; min s/it; PyTorch CPU: 0.16 / 1.56 / -):
  size      first port   lax conv*   now (im2col > 128^2)   GFLOP/it
  96x96     0.20         0.118       0.111                  17.3
  256x256   3.0          1.33        1.10                   123
  480x320   -            3.42        2.47                   289
  (* = this file's net with XLA convolutions everywhere.)
5 seeds at 96x96: Python loop of 5 jitted calls 0.56 s, jax.vmap 1.42 s, lax.map 13.9 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="96x96,256x256,480x320", help="comma list of HxW")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--seeds", type=int, default=1, help=">1: compare vmap / Python loop / lax.map")
    ap.add_argument("--xla-flags", default="", help="extra XLA_FLAGS")
    ap.add_argument("--no-peak", action="store_true", help="skip the matmul peak measurement")
    ap.add_argument("--convs", default="", help="per-conv mode: comma list of SIZE:C_IN:C_OUT")
    ap.add_argument("--algorithms", nargs="+", default=["rows", "winograd", "winograd4"])
    ap.add_argument("--rounds", type=int, default=9, help="per-conv mode: alternating rounds")
    ap.add_argument("--stride1", default="auto", help="whole-net mode: force this algorithm for the stride-1 "
                    "convs with at least 12^2 outputs (auto = fkp_jax.dip.conv_algorithm's choice)")
    return ap.parse_args()


def conv_speed(args):
    """Per-conv mode (--convs): fwd + bwd of one 3x3 stride-1 conv per algorithm, alternating rounds."""
    import jax

    from fkp_jax import dip

    print(f"{'SIZE:C_IN:C_OUT':>16} " + " ".join(f"{a + ' ms (cpu)':>22}" for a in args.algorithms))
    for case in args.convs.split(","):
        s, c, d = (int(v) for v in case.split(":"))
        k = jax.random.split(jax.random.key(0), 3)
        x = jax.random.normal(k[0], (1, s, s, c))
        w = jax.random.normal(k[1], (3, 3, c, d)) / (9 * c) ** 0.5
        ct = jax.random.normal(k[2], (1, s, s, d))
        fns = {}
        for alg in args.algorithms:
            def f(x, w, ct, alg=alg):
                y, vjp = jax.vjp(lambda x, w: dip.conv3x3(x, w, 0.0, 1, alg), x, w)
                return y, vjp(ct)
            fns[alg] = jax.jit(f)
            jax.block_until_ready(fns[alg](x, w, ct))
        reps = max(1, int(3e6 / (s * s * c)))
        wall = {a: [] for a in fns}
        cpu = {a: [] for a in fns}
        for _ in range(args.rounds):
            for alg, f in fns.items():
                t, tc = time.perf_counter(), time.process_time()
                for _ in range(reps):
                    jax.block_until_ready(f(x, w, ct))
                wall[alg].append((time.perf_counter() - t) / reps)
                cpu[alg].append((time.process_time() - tc) / reps)
        cells = [f"{1e3 * statistics.median(wall[a]):9.2f} ({1e3 * statistics.median(cpu[a]):8.2f})" for a in fns]
        print(f"{case:>16} " + " ".join(f"{c_:>22}" for c_ in cells), flush=True)


def timeit(fn, reps):
    fn()  # warm-up (compile)
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts), min(ts)


def main():
    args = parse_args()
    if args.xla_flags:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + args.xla_flags).strip()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from fkp_jax import runtime

    runtime.configure()
    import jax
    import jax.numpy as jnp
    import optax

    from fkp_jax import dip

    if args.stride1 != "auto":
        choose = dip.conv_algorithm
        dip.conv_algorithm = lambda n, stride: args.stride1 if stride == 1 and n >= 144 else choose(n, stride)
    opt = optax.adam(5e-3)

    def step(params, state, z):
        loss, grads = jax.value_and_grad(lambda p: jnp.mean(dip.apply(p, z)))(params)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    print(f"jax {jax.__version__}, devices {jax.devices()}, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    if args.convs:
        return conv_speed(args)
    peak = None
    if not args.no_peak:
        a = jnp.ones((2048, 2048), jnp.float32)
        mm = jax.jit(lambda a: a @ a)
        _, t = timeit(lambda: mm(a).block_until_ready(), 5)
        peak = 2 * 2048 ** 3 / t / 1e9
        print(f"float32 matmul peak (2048^3): {peak:.0f} GFLOP/s")

    print(f"{'size HxW':>10} {'seeds':>5} {'mode':>6} {'median s/it':>12} {'min s/it':>9} {'GFLOP/it':>9} {'GFLOP/s':>8}")
    for size in args.sizes.split(","):
        h, w = (int(v) for v in size.split("x"))
        key = jax.random.key(0)
        params = dip.init(key, (1, h, w, 3))
        z = 0.1 * jax.random.uniform(jax.random.key(1), (1, h, w, 3))
        state = opt.init(params)
        if args.seeds == 1:
            modes = {"single": (jax.jit(step), (params, state, z))}
        else:
            s = args.seeds
            stack = lambda t: jax.tree.map(lambda a: jnp.stack([a] * s), t)
            P, S, Z = stack(params), stack(state), stack(z)
            one = jax.jit(step)
            modes = {
                "vmap": (jax.jit(jax.vmap(step)), (P, S, Z)),
                "loop": (lambda P, S, Z: [one(params, state, z) for _ in range(s)], (P, S, Z)),
                "map": (jax.jit(lambda P, S, Z: jax.lax.map(lambda a: step(*a), (P, S, Z))), (P, S, Z)),
            }
        for mode, (fn, fargs) in modes.items():
            med, mn = timeit(lambda: jax.block_until_ready(fn(*fargs)), args.reps)
            flops = None
            if mode in ("single", "vmap", "map"):
                cost = fn.lower(*fargs).compile().cost_analysis()
                cost = cost[0] if isinstance(cost, list) else cost
                flops = cost.get("flops")
            gfl = f"{flops / 1e9:9.2f}" if flops else f"{'-':>9}"
            rate = f"{flops / 1e9 / mn:8.0f}" if flops else f"{'-':>8}"
            print(f"{size:>10} {args.seeds:>5} {mode:>6} {med:12.3f} {mn:9.3f} {gfl} {rate}", flush=True)


if __name__ == "__main__":
    main()
