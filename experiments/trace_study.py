"""Restarts of the golden trace cases, compared statistically with the original's runs.

    python -m experiments.trace_study --seeds 10 --iters 150 [--out docs/trace_study.md]              # DIP-FKP
    python -m experiments.trace_study --prior dkp --seeds 8 --iters 500 --out docs/trace_study_dkp.md  # DIP-DKP

Both originals are chaotic in float32 (a port agrees with them at the first DIP step only), so a port is
compared by distribution: restart 0 starts from the original's saved initial state, the other restarts
differ from it the way runs of the original differ from one another.

DIP-FKP (``--prior fkp``, the default): the case of ../shared/reference/golden/dipfkp_trace_x2.npz (golden
README section 9): a 48x48 HR crop of the bundled example, x2, GT kernel (3.2, 1.1, 0.6), official FKP_x2
weights, 150 iterations. Its two stored runs (2 and 1 threads) end at 43.79 and 49.55 dB kernel PSNR.
Restarts 1.. draw DIP weights and DIP input noise from jax.random keys and keep the original's initial
latent (which every original x2 run uses). Reported per restart: final kernel PSNR, the iteration of the
SSIM->MSE switch and of the first latent change.

DIP-DKP (``--prior dkp``): the case of ../shared/reference/golden_dkp/dipdkp_trace_x2.npz (golden_dkp README
section 4): the same crop and kernel, G_k warm-up (200 random kernels) + 100 outer iterations = 500 DIP
steps. Every restart starts from the original's saved initial state (DIP parameters, DIP input, G_k and
its code). Restart 0 replays the original's recorded random kernels (``rk_kernels_f32``: exactly the
warm-up + 100 prior steps); restarts 1.. draw their own (`dkp.sampler_source`, ``fold_in`` of
``jax.random.key(seed)``). The DIP initial state is kept because the original fixes it (torch seed at
program start): two runs of the original on this image start from these very weights, and what can differ
between them is the random-kernel stream (NumPy's global generator, whose position depends on everything
drawn before) and float rounding. Reported per restart: kernel PSNR after the warm-up, at c = 13, 405,
460 (the original's minimum, last SSIM step, maximum) and at the end, the minimum and maximum, PSNR-Y /
SSIM-Y of the final DIP output; and a plot of kernel PSNR against the DIP step. ``--dkp-kernels replay``
is a control: every restart replays the original's kernels and restarts 1.. differ only by a DIP input
perturbed at float32 rounding level (the loop's chaos alone). ``--save`` keeps the per-step arrays (.npz),
``--load`` re-renders the table and plot from them.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

REF = Path(__file__).resolve().parents[1].parent / "shared" / "reference"
PRIORS = ("fkp", "dkp")
DEFAULTS = {"fkp": {"seeds": 10, "iters": 150}, "dkp": {"seeds": 8, "iters": 500}}
DKP_MARKS = (13, 405, 460)  # the original's minimum, last 1 - SSIM step and maximum of kernel PSNR
DKP_CURVE = (1, 13, 50, 100, 200, 300, 405, 406, 460, 500)  # steps of the curve table


def trace_restarts(n_seeds: int = 10, iters: int = 150, ref: Path = REF, prior=None) -> dict:
    """Run the trace case from n_seeds restarts; returns per-restart arrays and the original's numbers.
    ``prior``: the FKP x2 prior of the official weights, if already built (its step compilation is then shared)."""
    import jax
    import jax.numpy as jnp

    from fkp_jax import dipfkp, kernel_priors, metrics
    from fkp_jax.convert import dip_params_from_torch, prior_from_torch
    
    trace = np.load(ref / "golden" / "dipfkp_trace_x2.npz")
    if prior is None:
        prior = kernel_priors.fkp_prior(prior_from_torch(ref / "weights" / "FKP_x2.pt"))
    config = dipfkp.DIPFKPConfig(sf=2, iters=iters)
    lr = jnp.asarray(trace["lr_input"].transpose(0, 2, 3, 1))
    latent = jnp.asarray(trace["latent_init"].reshape(-1))
    states = [dipfkp.state_from(dip_params_from_torch(ref / "golden" / "dipfkp_init_x2.pt"),
                                jnp.asarray(trace["dip_input_noise"].transpose(0, 2, 3, 1)), latent, prior, config)]
    for seed in range(1, n_seeds):
        fresh = dipfkp.init_state(jax.random.key(seed), prior, (24, 24), config)
        states.append(dipfkp.state_from(fresh["dip"], fresh["z_x"], latent, prior, config))
    state = dipfkp.stack_states(states)
    kpsnr = np.zeros((iters, n_seeds))
    kernels = np.zeros((iters, n_seeds) + tuple(trace["gt_kernel"].shape), np.float32)

    def record(t, out):
        kernels[t - 1] = np.asarray(out["kernel"])
        kpsnr[t - 1] = [metrics.kernel_psnr(trace["gt_kernel"], k) for k in kernels[t - 1]]

    dipfkp.make_runner(prior, config, seeds=True)(state, lr, iters, callback=record)
    # the kernel of iteration t comes from the latent it uses; after the projection of iteration 1, the
    # first iteration whose kernel moves by more than re-projection rounding (1e-6) sees the first update
    moved = np.abs(np.diff(kernels[1:], axis=0)).max(axis=(2, 3)) > 1e-6  # row j: iteration j + 3 vs j + 2
    first_change = np.where(moved.any(axis=0), moved.argmax(axis=0) + 3, -1)
    return {"final_kernel_psnr": kpsnr[-1], "kernel_psnr": kpsnr, "first_latent_change": first_change,
            "original_final_kernel_psnr": [float(trace["final_kernel_psnr"]),
                                           float(trace["alt_1thread_kernel_psnr"][-1])],
            "original_kernel_psnr": np.stack([trace["kernel_psnr"], trace["alt_1thread_kernel_psnr"]], axis=1)}


def markdown(res: dict, iters: int) -> str:
    f = res["final_kernel_psnr"]
    lines = [f"## DIP-FKP trace case, {len(f)} restarts x {iters} iterations (x2, official FKP_x2 weights)", "",
             "| restart | final kernel PSNR (dB) | first latent change (iteration) |", "| ---: | ---: | ---: |"]
    lines += [f"| {i} | {v:.2f} | {c} |" for i, (v, c) in enumerate(zip(f, res["first_latent_change"]))]
    o = res["original_final_kernel_psnr"]
    lines += ["", f"Ours: mean {f.mean():.2f} dB, std {f.std():.2f}, median {np.median(f):.2f}, "
              f"range {f.min():.2f}-{f.max():.2f}. The original (PyTorch, CPU): {o[0]:.2f} dB (2 threads), "
              f"{o[1]:.2f} dB (1 thread).", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------- DIP-DKP

def dkp_golden_start(ref: Path = REF):
    """The original DIP-DKP trace case (golden_dkp README 4.1, 4.3): (trace arrays, DIP parameters, DIP input
    z_x (1, 48, 48, 3), G_k variables with the original's code, LR target (1, 24, 24, 3)), float32, NHWC."""
    import jax.numpy as jnp

    from fkp_jax import dkp
    from fkp_jax.convert import dip_params_from_torch
    from fkp_jax.torch_state import load_state_dict

    gd = ref / "golden_dkp"
    trace = dict(np.load(gd / "dipdkp_trace_x2.npz", allow_pickle=False))
    nhwc = lambda a: jnp.asarray(a.transpose(0, 2, 3, 1))  # noqa: E731
    gk = dkp.gk_params_from_torch(load_state_dict(gd / "gk_init_x2.pt"), trace["kernel_code"])
    return trace, dip_params_from_torch(gd / "dipdkp_init_x2.pt"), nhwc(trace["dip_input_noise"]), gk, \
        nhwc(trace["lr_input"])


def dkp_trace_restarts(n_seeds: int = 8, iters: int = 500, ref: Path = REF, kernels: str = "own") -> dict:
    """The DIP-DKP trace case from n_seeds restarts (module docstring); kernel PSNR and data loss of every
    DIP step, and the original's numbers. Restart 0 replays the recorded kernels, so iters <= 500.

    kernels = "own" (the study): restarts 1.. draw their own random kernels. kernels = "replay" (a control):
    every restart replays the original's kernels, and restarts 1.. start from a DIP input perturbed at
    float32 rounding level (z_x (1 + 1e-7 N(0, 1)), N from ``jax.random.key(restart)``), i.e. runs that differ
    only by the loop's chaos, as runs of the original with its fixed program-start seeds do.
    """
    import jax

    from fkp_jax import dipfkp, dkp, metrics
    from fkp_jax.cli import to_u8

    start = time.perf_counter()
    trace, params, z_x, gk, lr = dkp_golden_start(ref)
    recorded = trace["rk_kernels_f32"]
    replayable = (len(recorded) - dkp.WARMUP_STEPS) // dkp.N_SAMPLES * dkp.INNER_STEPS  # 500
    if not 1 <= iters <= replayable:
        raise ValueError(f"restart 0 replays the original's {len(recorded)} recorded kernels, which cover "
                         f"{replayable} DIP steps; iters = {iters}")
    config = dipfkp.DIPFKPConfig(sf=2, iters=iters)
    replay = dkp.dkp_prior(2, source=dkp.replay_source(recorded))
    seeds = list(range(1, n_seeds))
    if kernels == "own":
        groups = [(replay, [0], [dipfkp.state_from(params, z_x, gk, replay, config)])]
        if seeds:
            sampled = dkp.dkp_prior(2)
            groups.append((sampled, seeds, [dipfkp.state_from(params, z_x, gk, sampled, config,
                                                              key=jax.random.key(s)) for s in seeds]))
    elif kernels == "replay":
        jitter = lambda s: z_x * (1 + 1e-7 * jax.random.normal(jax.random.key(s), z_x.shape))  # noqa: E731
        groups = [(replay, [0] + seeds, [dipfkp.state_from(params, z_x if s == 0 else jitter(s), gk, replay, config)
                                         for s in [0] + seeds])]
    else:
        raise ValueError(f"kernels must be 'own' or 'replay', not {kernels!r}")
    gt = trace["gt_kernel"]
    k = gt.shape[0]
    used = np.zeros((iters, n_seeds, k, k), np.float32)  # the kernel DIP step c uses (row c - 1)
    loss_x = np.zeros((iters, n_seeds), np.float32)  # its data term, 1 - SSIM or MSE
    warm = np.zeros((n_seeds, k, k), np.float32)  # G_k(z) after the warm-up
    srs = np.zeros((n_seeds,) + z_x.shape[1:], np.float32)  # the DIP output of the last step's forward
    seconds, steady = 0.0, []  # steady: seconds per restart and step after the first (compiling) step
    for prior, cols, states in groups:
        warm[cols] = [np.asarray(prior.kernel(s["kvars"])) for s in states]
        clock = {}

        def record(t, out, cols=cols, clock=clock):
            used[t - 1, cols] = np.asarray(out["kernel"])
            loss_x[t - 1, cols] = np.asarray(out["loss_data"])
            clock[t] = time.perf_counter()

        # the solver donates the state it is given: stack_states makes the fresh arrays it may consume
        _, out, sec = dipfkp.make_runner(prior, config, seeds=True)(dipfkp.stack_states(states), lr, iters,
                                                                     callback=record)
        srs[cols] = np.asarray(out["sr"])[:, 0]
        seconds += sec
        if iters > 1:
            steady.append((clock[iters] - clock[1]) / ((iters - 1) * len(cols)))
    kpsnr = np.array([[metrics.kernel_psnr(gt, kk) for kk in row] for row in used])
    srs_u8 = to_u8(srs)
    hr = trace["hr_crop_u8"]
    return {
        "kernel_psnr": kpsnr, "loss_x": loss_x, "final_kernel": used[-1],
        "warmup_kernel_psnr": np.array([metrics.kernel_psnr(gt, kk) for kk in warm]),
        "psnr_y": np.array([metrics.psnr_y(hr, s, 2) for s in srs_u8]),
        "ssim_y": np.array([metrics.ssim_y(hr, s, 2) for s in srs_u8]),
        "seconds_run": seconds, "seconds_total": time.perf_counter() - start,
        "seconds_per_step": float(np.mean(steady)) if steady else float("nan"), "kernels": kernels,
        "original": {"kernel_psnr": trace["inner_kernel_psnr"], "loss_x": trace["inner_loss_x"],
                     "warmup_kernel_psnr": metrics.kernel_psnr(gt, trace["warm_kernel_after"][-1]),
                     "psnr_y": float(trace["final_eval_psnr_y"]), "ssim_y": float(trace["final_eval_ssim_y"])},
    }


def dkp_columns(curve: np.ndarray, warm, psnr_y, ssim_y) -> dict[str, np.ndarray]:
    """Per-run summary of kernel PSNR curves (steps x runs): the table's columns (NaN where a step was not run)."""
    curve = np.asarray(curve, np.float64).reshape(len(curve), -1)
    at = lambda c: curve[c - 1] if c <= len(curve) else np.full(curve.shape[1], np.nan)  # noqa: E731
    cols = {"after warm-up": np.ravel(warm)}
    cols.update({f"c = {c}": at(c) for c in DKP_MARKS})
    cols[f"final (c = {len(curve)})"] = curve[-1]
    cols["min"], cols["argmin"] = curve.min(axis=0), curve.argmin(axis=0) + 1.0
    cols["max"], cols["argmax"] = curve.max(axis=0), curve.argmax(axis=0) + 1.0
    cols["PSNR-Y"], cols["SSIM-Y"] = np.ravel(psnr_y), np.ravel(ssim_y)
    return cols


def dkp_markdown(res: dict, iters: int, plot: str | None = None) -> str:
    """The DIP-DKP restarts as Markdown: a per-restart table next to the original's run, and the curves."""
    kp = res["kernel_psnr"]
    n = kp.shape[1]
    o = res["original"]
    ours = dkp_columns(kp, res["warmup_kernel_psnr"], res["psnr_y"], res["ssim_y"])
    orig = dkp_columns(o["kernel_psnr"][:iters], o["warmup_kernel_psnr"], o["psnr_y"], o["ssim_y"])
    names = [c for c in ours if not c.startswith("arg")]
    fmt = lambda name, v: "-" if not np.isfinite(v) else (f"{v:.4f}" if name == "SSIM-Y" else f"{v:.2f}")  # noqa: E731

    def cells(cols, i):
        out = []
        for name in names:
            v = fmt(name, cols[name][i])
            if name in ("min", "max"):
                v += f" ({int(cols['arg' + name][i])})"
            out.append(v)
        return " | ".join(out)

    head = " | ".join(f"{c} (at c)" if c in ("min", "max") else c for c in names)
    replayed = res.get("kernels", "own") == "replay"
    others = "" if n == 1 else ("restart 1" if n == 2 else f"restarts 1-{n - 1}") + (
        ": the same, with the DIP input perturbed at float32 rounding level (z_x (1 + 1e-7 N(0, 1)), "
        "`jax.random.key(restart)`), i.e. differing by the loop's chaos only. " if replayed else
        ": the same initial state, our own random kernels (`jax.random.key(restart)`). ")
    lines = [f"## DIP-DKP trace case, {n} restarts x {iters} DIP steps (x2, G_k warm-up + "
             f"{-(-iters // 5)} outer iterations)", "",
             "Restart 0: the original's initial state (DIP, DIP input, G_k) and its recorded random kernels; "
             f"{others}"
             "Kernel PSNR (dB) of the kernel that DIP step c uses (c = the original's counter); PSNR-Y / SSIM-Y "
             "of the final DIP output (uint8, Y, shave 2).", "",
             f"| restart | kernels | {head} |", "| ---: | --- |" + " ---: |" * len(names)]
    for i in range(n):
        kind = "replayed" if i == 0 else ("replayed, z_x perturbed" if replayed else "own")
        lines.append(f"| {i} | {kind} | {cells(ours, i)} |")
    ms = " | ".join(f"{fmt(c, np.mean(ours[c]))} ± {fmt(c, np.std(ours[c]))}" for c in names)
    lines.append(f"| **mean ± std** | | {ms} |")
    lines.append(f"| **original** (PyTorch, CPU, 1 thread) | recorded | {cells(orig, 0)} |")
    final = f"final (c = {iters})"
    f, of = ours[final], orig[final][0]
    lines += ["", f"Final kernel PSNR: ours {np.mean(f):.2f} ± {np.std(f):.2f} dB (median {np.median(f):.2f}, "
              f"range {f.min():.2f}-{f.max():.2f}); the original's {of:.2f} dB is "
              f"{(of - np.mean(f)) / max(np.std(f), 1e-12):+.1f} std from our mean, "
              f"{int(np.sum(f < of))} of {n} restarts end below it.", ""]
    # the curve: kernel PSNR and the data term at selected steps
    steps = [c for c in DKP_CURVE if c <= iters]
    lx = res["loss_x"]
    rng = lambda a, fm: f"{np.median(a):{fm}} [{a.min():{fm}}, {a.max():{fm}}]"  # noqa: E731
    lines += ["| c | kernel PSNR original | ours median [min, max] | restart 0 | loss_x original | "
              "ours median [min, max] |", "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    for c in steps:
        w = loss_window(c, iters)
        lines.append(f"| {c} | {o['kernel_psnr'][c - 1]:.2f} | {rng(kp[c - 1], '.2f')} | {kp[c - 1, 0]:.2f} | "
                     f"{np.median(o['loss_x'][w]):.3g} | {rng(np.median(lx[w], axis=0), '.3g')} |")
    lines += ["", "loss_x: the DIP data term, 1 - SSIM for c <= 405 and the MSE after, as the median over the steps "
              "c - 4 .. c + 5 of the same loss (it jumps from step to step by up to a factor 3).", "",
              f"Time: {res['seconds_total']:.0f} s in all, {res['seconds_run']:.0f} s in the solver loops "
              f"(compilation included), {res['seconds_per_step']:.3f} s per restart and DIP step after the "
              "first (compiling) step.", ""]
    if plot:
        lines += [f"![kernel PSNR against DIP step]({plot})", ""]
    return "\n".join(lines)


def loss_window(c: int, iters: int, until: int = 405) -> slice:
    """Rows of steps c - 4 .. c + 5 within 1 .. iters and within c's loss phase (c <= until or c > until)."""
    lo, hi = (1, until) if c <= until else (until + 1, iters)
    return slice(max(c - 4, lo) - 1, min(c + 5, hi, iters))


def dkp_plot_png(res: dict, iters: int) -> bytes:
    """PNG: kernel PSNR against DIP step for every restart and the original (step 0 = after the warm-up)."""
    import io as _io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 4.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    steps = np.arange(iters + 1)
    kp, o = res["kernel_psnr"], res["original"]
    curve = lambda warm, values: np.concatenate([[warm], values])  # noqa: E731
    for i in range(kp.shape[1] - 1, -1, -1):
        others = "replayed kernels, z_x perturbed" if res.get("kernels", "own") == "replay" else "own kernels"
        style = dict(color="tab:blue", lw=1.2, label="ours, restart 0 (replayed kernels)") if i == 0 else \
            dict(color="tab:orange", lw=0.7, alpha=0.6, label=f"ours, restarts 1.. ({others})" if i == 1 else None)
        ax.plot(steps, curve(res["warmup_kernel_psnr"][i], kp[:, i]), **style)
    ax.plot(steps, curve(o["warmup_kernel_psnr"], o["kernel_psnr"][:iters]), color="black", lw=1.4,
            label="original (PyTorch)")
    if iters > 405:
        ax.axvline(405.5, color="gray", ls="--", lw=0.8)
        ax.text(410, 0.5, "1 - SSIM → MSE", color="gray", fontsize=8, transform=ax.get_xaxis_transform())
    ax.set_xlabel("DIP step c (0: after the G_k warm-up)")
    ax.set_ylabel("kernel PSNR (dB)")
    ax.set_title("DIP-DKP trace case (x2, 48x48): kernel PSNR per step", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    buf = _io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def save_npz(path: Path, res: dict) -> None:
    """The arrays of `dkp_trace_restarts` as one .npz (the original's under ``original_``), to re-render later."""
    from fkp_jax import io

    flat = {k: np.asarray(v) for k, v in res.items() if k != "original"}
    flat.update({f"original_{k}": np.asarray(v) for k, v in res["original"].items()})
    with io.atomic_write(path) as f:
        np.savez_compressed(f, **flat)


def load_npz(path: Path) -> dict:
    """The inverse of `save_npz`."""
    with np.load(path, allow_pickle=False) as z:
        flat = {k: z[k] for k in z.files}
    unbox = lambda v: v.item() if v.ndim == 0 else v  # noqa: E731
    res = {k: unbox(v) for k, v in flat.items() if not k.startswith("original_")}
    res["original"] = {k[len("original_"):]: unbox(v) for k, v in flat.items() if k.startswith("original_")}
    return res


def main(argv=None) -> int:
    from fkp_jax import runtime

    runtime.configure()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--prior", choices=PRIORS, default="fkp", help="which trace case: DIP-FKP (default) or DIP-DKP")
    p.add_argument("--seeds", type=int, help="restarts (default: 10 for fkp, 8 for dkp)")
    p.add_argument("--iters", type=int, help="iterations / DIP steps (default: 150 for fkp, 500 for dkp)")
    p.add_argument("--out", type=Path, help="also write the table to this Markdown file")
    p.add_argument("--plot", type=Path, help="dkp: write the kernel PSNR curves to this PNG (default: "
                   "img/<out name>.png beside --out)")
    p.add_argument("--dkp-kernels", choices=("own", "replay"), default="own",
                   help="dkp: restarts 1.. draw their own random kernels (default), or replay the original's with "
                        "a DIP input perturbed at float32 rounding level (a control: chaos only)")
    p.add_argument("--save", type=Path, help="dkp: also write the per-step arrays to this .npz")
    p.add_argument("--load", type=Path, help="dkp: re-render the table and plot from a --save file instead of "
                   "running")
    args = p.parse_args(argv)
    seeds = DEFAULTS[args.prior]["seeds"] if args.seeds is None else args.seeds
    iters = DEFAULTS[args.prior]["iters"] if args.iters is None else args.iters
    if seeds < 1 or iters < (3 if args.prior == "fkp" else 1):
        print(f"error: --seeds must be positive and --iters at least {3 if args.prior == 'fkp' else 1}"
              f"{' (the first latent change is found from iteration 3 on)' if args.prior == 'fkp' else ''}",
              file=sys.stderr)
        return 2
    folder = REF / ("golden" if args.prior == "fkp" else "golden_dkp")
    if not folder.is_dir():
        print(f"error: reference material not found at {folder}", file=sys.stderr)
        return 2
    from fkp_jax import io

    if args.prior == "fkp":
        res = trace_restarts(seeds, iters)
        text = markdown(res, iters)
    else:
        if args.load is not None:
            res = load_npz(args.load)
            iters = res["kernel_psnr"].shape[0]
        else:
            try:
                res = dkp_trace_restarts(seeds, iters, kernels=args.dkp_kernels)
            except ValueError as e:
                print(f"error: {e}", file=sys.stderr)
                return 2
            if args.save is not None:
                save_npz(args.save, res)
        plot = args.plot
        if plot is None and args.out is not None:
            plot = args.out.parent / "img" / f"{args.out.stem}.png"
        link = None
        if plot is not None:
            plot.parent.mkdir(parents=True, exist_ok=True)
            with io.atomic_write(plot) as f:
                f.write(dkp_plot_png(res, iters))
            link = os.path.relpath(plot, args.out.parent) if args.out is not None else str(plot)
        text = dkp_markdown(res, iters, link)
    print(text)
    if args.out is not None:
        io.write_text(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
