"""Seconds per Diff-DKP sampler step and peak device memory at the real network shape (random weights).

    python -m benchmarks.diffdkp_speed                  # the real 256x256 ADM + classifier (a GPU method)
    python -m benchmarks.diffdkp_speed --tiny --steps 3 # the golden tiny shape: checks the harness on a CPU

The networks are `fkp_jax.adm`'s real configurations (the 553,838,086-parameter class-conditional ADM of
`256x256_diffusion.pt` and the 54,096,360-parameter noisy-image classifier) with random parameters drawn
from their shapes (N(0, 0.02^2); speed and memory do not depend on the values). One step = the whole jitted
`fkp_jax.diffdkp.sampler_step` (ADM forward, x0 prediction, Fourier-domain data consistency, the kernel
data and prior Adam steps on G_k, the posterior mean, the classifier forward + backward for guidance,
noise), at a respaced t below `kernel_start` (kernel steps taken), on one 256x256 window; the first call
(compilation) is timed separately, s/step is the median of --steps calls after --warmup. A full image of
256x256 HR takes 100 such steps. Cases: the float32 torso (the default; every convolution at
Precision.HIGHEST, i.e. no TF32) and the bfloat16 torso (`--half`; the classifier stays float32). Also the
ADM forward alone per precision. FLOP rates use the counts of golden_diffdkp README 9 for the real shape
(ADM forward 2.24 TFLOP, a sampler step about 2.7 TFLOP with the classifier's forward and backward): XLA's
cost analysis does not count the convolutions that the GPU backend hands to cuDNN. For --tiny it is
XLA's count. Appends a Markdown table to --out with the device named.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

from benchmarks.children import REPO, run_marked

MARK = "@@diffdkp_speed@@ "
REAL_ADM_FLOP, REAL_STEP_FLOP = 2.24e12, 2.7e12  # golden_diffdkp README 9 (DKP_SPEC 8: 1.12e12 MACs per forward)


def random_params(shapes, key, scale: float = 0.02):
    """A parameter tree of the given shapes, N(0, scale^2) (speed and memory do not depend on the values)."""
    import jax
    import jax.numpy as jnp

    leaves, tree = jax.tree.flatten(shapes)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(tree, [scale * jax.random.normal(k, s.shape, jnp.float32) for k, s in zip(keys, leaves)])


def measure(tiny: bool, half: bool, steps: int, warmup: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from fkp_jax import adm, diffdkp, kernel_priors

    a_cfg, c_cfg = (adm.TINY_ADM, adm.TINY_CLASSIFIER) if tiny else (adm.REAL_ADM, adm.REAL_CLASSIFIER)
    size = c_cfg.image_size
    config = diffdkp.DiffDKPConfig(adm_config=a_cfg, classifier_config=c_cfg, window=size, stride=size // 2,
                                   adm_dtype="bfloat16" if half else None)
    nets = {"adm": random_params(adm.init_shapes(a_cfg), jax.random.key(0)),
            "classifier": random_params(adm.init_shapes(c_cfg), jax.random.key(1))}
    n_params = {k: adm.count_params(v) for k, v in nets.items()}
    key = jax.random.key(2)
    y = jax.random.uniform(key, (1, size, size, 3))
    ks = diffdkp.init_kernel_state(kernel_priors.mlp_init(jax.random.key(3), config.kernel_size), config)
    state = diffdkp.SamplerState(jax.random.normal(jax.random.key(4), (1, size, size, 3)), ks)
    noise, k_random = diffdkp.draws(jax.random.key(5), (1, size, size, 3), config)
    t = config.kernel_start - 1

    x, tt, lab = state.x_t, jnp.full((1,), 500, jnp.int32), jnp.zeros((1,), jnp.int32)
    dtype = config.torso_dtype
    fwd = adm.unet_apply.lower(nets["adm"], x, tt, lab, config=a_cfg, dtype=dtype).compile()
    cost = fwd.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    fwd_flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
    jax.block_until_ready(fwd(nets["adm"], x, tt, lab))
    fwd_s = []
    for _ in range(max(3, steps // 2)):
        t0 = time.perf_counter()
        jax.block_until_ready(fwd(nets["adm"], x, tt, lab))
        fwd_s.append(time.perf_counter() - t0)

    times = []
    t0 = time.perf_counter()
    out = diffdkp.sampler_step(nets, state, t, y, noise[0], k_random[0], config)
    jax.block_until_ready(out)
    first = time.perf_counter() - t0
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        new, aux = diffdkp.sampler_step(nets, state, t, y, noise[i % len(noise)], k_random[i % len(noise)], config)
        jax.block_until_ready((new, aux))
        times.append(time.perf_counter() - t0)
    finite = bool(np.isfinite(np.asarray(aux["x0_hat"])).all())
    dev = jax.devices()[0]
    stats = dev.memory_stats() if hasattr(dev, "memory_stats") else None
    peak = stats.get("peak_bytes_in_use") if stats else None
    return {"tiny": tiny, "half": half, "size": size, "params": n_params, "first_call_s": first,
            "s_per_step": statistics.median(times[warmup:]), "adm_forward_s": statistics.median(fwd_s),
            "adm_forward_flops": fwd_flops, "finite": finite,
            "peak_device_mib": None if peak is None else peak / 2**20,
            "device": f"{dev.platform}: {getattr(dev, 'device_kind', '')}", "jax": jax.__version__}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(prog="python -m benchmarks.diffdkp_speed", description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="the golden tiny networks' shape (64 px) instead of the real one")
    p.add_argument("--steps", type=int, default=10, help="timed steps per case")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--precisions", nargs="+", default=["float32", "bfloat16"], choices=("float32", "bfloat16"))
    p.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md")
    p.add_argument("--no-append", action="store_true")
    p.add_argument("--child", choices=("float32", "bfloat16"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        from fkp_jax import runtime

        runtime.configure()
        print(MARK + json.dumps(measure(args.tiny, args.child == "bfloat16", args.steps, args.warmup)), flush=True)
        return 0
    rows = []
    for prec in args.precisions:  # each in a fresh process: its own peak memory
        cmd = [sys.executable, "-m", "benchmarks.diffdkp_speed", "--child", prec, "--steps", str(args.steps),
               "--warmup", str(args.warmup)] + (["--tiny"] if args.tiny else [])
        try:
            rows.append(run_marked(cmd, MARK))
        except RuntimeError as e:
            print(f"diffdkp_speed: {prec} case: {e}", file=sys.stderr)
            return 1
        print(json.dumps(rows[-1]), flush=True)
    r0 = rows[0]
    from fkp_jax.runtime import cpu_name

    where = r0["device"] if not r0["device"].startswith("cpu") else f"cpu: {cpu_name()}"
    lines = [f"### Diff-DKP sampler step, {'tiny (64 px)' if args.tiny else 'real (256x256)'} network shape, random "
             f"weights, {where}, jax {r0['jax']}, {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}", "",
             f"ADM {r0['params']['adm']:,} + classifier {r0['params']['classifier']:,} parameters. Command: "
             f"`python -m benchmarks.diffdkp_speed {' '.join(argv)}`", "",
             f"| ADM torso | s / sampler step | s / window (100 steps) | step TFLOP/s | ADM forward s | ADM forward "
             f"TFLOP/s | first call (s) | peak device (MiB) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        peak = "n/a" if r["peak_device_mib"] is None else f"{r['peak_device_mib']:.0f}"
        fwd = r["adm_forward_flops"] if args.tiny else REAL_ADM_FLOP
        step = float("nan") if args.tiny else REAL_STEP_FLOP
        lines.append(f"| {'bfloat16' if r['half'] else 'float32 (HIGHEST)'} | {r['s_per_step']:.4f} | "
                     f"{100 * r['s_per_step']:.1f} | {step / r['s_per_step'] / 1e12:.1f} | {r['adm_forward_s']:.4f} | "
                     f"{fwd / r['adm_forward_s'] / 1e12:.2f} | {r['first_call_s']:.1f} | {peak} |")
    table = "\n".join(lines) + "\n\n"
    print(table)
    if not args.no_append:
        with open(args.out, "a") as f:
            f.write(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
