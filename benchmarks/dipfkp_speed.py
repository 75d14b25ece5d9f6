"""Seconds per DIP-FKP iteration and peak memory, 1 and 5 seeds, at several HR sizes.

    python -m benchmarks.dipfkp_speed                       # CPU: 96x96, 256x256, 480x320 (official example)
    python -m benchmarks.dipfkp_speed --sizes 96 --seeds 5 --seed-modes loop vmap   # both ways to run seeds
    python -m benchmarks.dipfkp_speed --sizes 96 --seeds 1 --chunks 1 10             # Python loop vs lax.scan

Each (size, seeds) case runs in its own subprocess so that its peak resident memory (ru_maxrss) is its
own; on GPUs the device's peak bytes in use are reported too. One iteration = the whole jitted step of
`fkp_jax.dipfkp` (DIP forward + backward, FKP latent -> kernel, degradation, loss, both Adam updates,
sphere projection), x2, FKP prior, driven by `fkp_jax.dipfkp.make_runner` as the CLI drives it. The
first iteration (compilation) is timed separately; s / iteration is the mean over the next --iters.
The FLOP count comes from XLA's cost analysis of the compiled single-seed step (times the seeds). Results are
appended to the output file as a Markdown table with the machine named.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path


def measure(h: int, w: int, seeds: int, iters: int, seed_mode: str, chunk: int) -> dict:
    """Run in a fresh process: time `iters` iterations after a warm-up; return the numbers."""
    from fkp_jax import runtime

    runtime.configure()
    import jax

    from fkp_jax import dipfkp, flow, kernel_priors

    sf = 2
    prior = kernel_priors.fkp_prior(flow.load_prior(sf))
    config = dipfkp.DIPFKPConfig(sf=sf)
    lr = jax.random.uniform(jax.random.key(1), (1, h // sf, w // sf, 3))
    keys = jax.random.split(jax.random.key(0), seeds)
    state = jax.vmap(lambda k: dipfkp.init_state(k, prior, (h // sf, w // sf), config))(keys)
    one = dipfkp.init_state(keys[0], prior, (h // sf, w // sf), config)
    cost = jax.jit(lambda s, y: dipfkp.step(s, y, prior, config)).lower(one, lr).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    flops = seeds * float(cost.get("flops", float("nan"))) if cost else float("nan")
    run = dipfkp.make_runner(prior, config, seeds=True, chunk=chunk, seed_mode=seed_mode)
    state, _, first = run(state, lr, iters=chunk)  # compilation
    _, _, seconds = run(state, lr, iters=iters)
    dev = jax.devices()[0]
    stats = dev.memory_stats() if hasattr(dev, "memory_stats") else None
    peak_dev = stats.get("peak_bytes_in_use") if stats else None
    return {"h": h, "w": w, "seeds": seeds, "seed_mode": seed_mode, "chunk": chunk, "s_per_iter": seconds / iters,
            "first_call_s": first, "flops_per_iter": flops,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_device_mib": None if peak_dev is None else peak_dev / 2**20,
            "device": f"{dev.platform}: {getattr(dev, 'device_kind', '')}", "jax": jax.__version__}


def matmul_peak() -> float:
    """Measured float32 matmul throughput of this machine (GFLOP/s), 2048^3 jnp.dot."""
    import jax

    n = 2048
    a = jax.random.normal(jax.random.key(0), (n, n))
    f = jax.jit(lambda a: a @ a)
    jax.block_until_ready(f(a))
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        jax.block_until_ready(f(a))
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def machine() -> str:
    from fkp_jax.runtime import cpu_name

    return cpu_name()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", nargs="+", default=["96x96", "256x256", "480x320"], help="HR sizes HxW (or N for NxN)")
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 5])
    p.add_argument("--iters", type=int, default=10, help="timed iterations per case")
    p.add_argument("--seed-modes", nargs="+", default=None, choices=("loop", "vmap"),
                   help="how several seeds run (default: the backend's default, see fkp_jax.dipfkp)")
    p.add_argument("--chunks", nargs="+", type=int, default=None,
                   help="iterations per dispatch: 1 = Python loop over the jitted step, N > 1 = lax.scan of N "
                        "(default: the backend's default); --iters is rounded up to a multiple")
    p.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"))
    p.add_argument("--label", default="", help="free text for the table heading (e.g. what changed)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        h, w, seeds, mode, chunk = args.child.split(",")
        iters = -(-args.iters // int(chunk)) * int(chunk)
        print(json.dumps(measure(int(h), int(w), int(seeds), iters, mode, int(chunk))))
        return 0
    if args.seed_modes is None:
        from fkp_jax.dipfkp import default_seed_mode

        args.seed_modes = [default_seed_mode()]
    if args.chunks is None:
        from fkp_jax.dipfkp import default_chunk

        args.chunks = [default_chunk()]

    rows = []
    for size in args.sizes:
        h, w = (int(v) for v in (size.split("x") if "x" in size else (size, size)))
        for seeds in args.seeds:
            for mode, chunk in [(m, c) for m in (args.seed_modes if seeds > 1 else args.seed_modes[:1])
                                for c in args.chunks]:
                cmd = [sys.executable, "-m", "benchmarks.dipfkp_speed", "--child", f"{h},{w},{seeds},{mode},{chunk}",
                       "--iters", str(args.iters)]
                res = subprocess.run(cmd, capture_output=True, text=True)
                if res.returncode != 0:
                    print(f"case {h}x{w} seeds={seeds} failed:\n{res.stderr[-2000:]}", file=sys.stderr)
                    continue
                row = json.loads(res.stdout.strip().splitlines()[-1])
                rows.append(row)
                print(f"{h}x{w} seeds={seeds} ({mode}, chunk {chunk}): {row['s_per_iter']:.3f} s/iter, "
                      f"{row['flops_per_iter'] / 1e9:.1f} GFLOP, peak RSS {row['peak_rss_mib']:.0f} MiB", flush=True)
    if not rows:
        return 1
    peak = matmul_peak()
    lines = [f"### DIP-FKP iteration, {rows[0]['device']} ({machine()}), jax {rows[0]['jax']} {args.label}".rstrip(),
             "", f"Command: `python -m benchmarks.dipfkp_speed {' '.join(argv if argv is not None else sys.argv[1:])}`",
             f"Measured float32 matmul peak (2048^3 jnp.dot): {peak:.0f} GFLOP/s.", "",
             "| HR size | seeds | seed mode | chunk | s / iteration | s / iteration / seed | GFLOP / iteration | GFLOP/s "
             "| % of matmul peak | first call (s) | peak RSS (MiB) | peak device (MiB) |",
             "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        gf = r["flops_per_iter"] / 1e9
        rate = gf / r["s_per_iter"]
        dev = "-" if r["peak_device_mib"] is None else f"{r['peak_device_mib']:.0f}"
        lines.append(f"| {r['h']}x{r['w']} | {r['seeds']} | {r['seed_mode']} | {r['chunk']} | {r['s_per_iter']:.3f} | {r['s_per_iter'] / r['seeds']:.3f} "
                     f"| {gf:.1f} | {rate:.0f} | {100 * rate / peak:.0f} % | {r['first_call_s']:.1f} "
                     f"| {r['peak_rss_mib']:.0f} | {dev} |")
    print(append_table(args.out, lines))
    return 0


def append_table(out: Path, lines: list[str]) -> str:
    """Append a Markdown block (lines) to ``out`` (created with a title if missing), atomically; return it."""
    text = "\n".join(lines) + "\n\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    old = out.read_text() if out.exists() else "# Benchmarks\n\n"
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(old + text)
    os.replace(tmp, out)  # appended atomically
    return text


if __name__ == "__main__":
    sys.exit(main())
