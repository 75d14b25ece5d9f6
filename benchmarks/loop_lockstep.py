"""Our DIP-FKP step against the official one, in float64, re-synchronised at several points of a whole run.

    python -m benchmarks.loop_lockstep --official DIR --image benchmarks/data/devset/DIPFKP_lr_x2/badge.png \
        --sync 0 100 300 600 900 --window 20 --out results/lockstep_badge

Issue 7's component-by-component comparison. The two loops are chaotic (float32 agrees at iteration 1
only), so they are compared as MAPS: one official run in float64 (its `DIPFKP` from `DIPFKP/model/model.py`,
built as `benchmarks.official_dipfkp_runs` builds it, then converted to double before its `train()`
runs unmodified) saves its whole state (DIP parameters, both Adam states, the latent) after iteration T for
every T of --sync, and records every iteration's loss, kernel and latent (and the DIP output inside the
windows). From each saved state our `fkp_jax.dipfkp.step` runs --window iterations in float64
(`jax_enable_x64`, the converted official prior cast to float64) and the two are compared iteration by
iteration. From T = 0 ours also runs the whole --iters, to show how far the float64 loops stay together.
If the maps are the same, the windows agree to ~1e-12 before float64 chaos grows; a systematic
difference shows at the first iteration of a window.

Writes OUT/official.npz (the official run), OUT/lockstep.json (per window: max |kernel difference|,
relative loss difference, max |latent difference| and max |DIP output difference| per iteration) and,
from T = 0, OUT/ours_from0.npz. CI does not run this.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def official_child(official: Path, lr_path: Path, weights: Path, sf: int, seed: int, iters: int, sync: list[int],
                   window: int, out: Path) -> None:
    """One official float64 run; the state after every iteration in ``sync`` (0: the initial state)."""
    from benchmarks.official_dipfkp_runs import build_official

    rec: dict[str, list] = {"kernel": [], "latent": [], "loss": []}
    saved: dict[str, np.ndarray] = {}
    sr_windows: dict[int, np.ndarray] = {}
    with __import__("tempfile").TemporaryDirectory() as tmp:
        official_model, m, torch = build_official(official, lr_path, weights, sf, seed, iters, "released", tmp,
                                                  int(os.environ.get("OMP_NUM_THREADS", "1")))
        # float64 everywhere; parameters keep their identity, so the optimisers still hold them
        m.net_dip.double()
        m.net_kp.double()
        m.kernel_code.data = m.kernel_code.data.double()
        m.input_dip = m.input_dip.double()
        m.lr = m.lr.double()
        names = [n for n, _ in m.net_dip.named_parameters()]

        def snapshot(t: int) -> None:
            for n, p in m.net_dip.named_parameters():
                saved[f"T{t}/dip/{n}"] = p.detach().numpy().copy()
                st = m.optimizer_dip.state.get(p, {})
                if st:
                    saved[f"T{t}/mu/{n}"] = st["exp_avg"].numpy().copy()
                    saved[f"T{t}/nu/{n}"] = st["exp_avg_sq"].numpy().copy()
                    saved[f"T{t}/dip_count"] = np.array(int(st["step"]))
            saved[f"T{t}/latent"] = m.kernel_code.detach().reshape(-1).numpy().copy()
            st = m.optimizer_kp.opt.state.get(m.kernel_code, {})
            saved[f"T{t}/k_count"] = np.array(int(st["step"]) if st else 0)
            if st:
                saved[f"T{t}/k_mu"] = st["exp_avg"].reshape(-1).numpy().copy()
                saved[f"T{t}/k_nu"] = st["exp_avg_sq"].reshape(-1).numpy().copy()

        def loop(iterable, *a, **kw):
            for i in iterable:  # i = iteration - 1: iterations 1..i are done
                if i in sync:
                    snapshot(i)
                yield i

        official_model.tqdm = type(sys)("tqdm_stub")
        official_model.tqdm.tqdm = loop
        post = m.net_kp.post_process

        def recording_post_process(x):
            k = post(x)
            rec["kernel"].append(k.detach().squeeze().numpy().copy())
            rec["latent"].append(m.kernel_code.detach().reshape(-1).numpy().copy())
            return k

        m.net_kp.post_process = recording_post_process
        forward = m.net_dip.forward

        def recording_forward(x):
            y = forward(x)
            t = len(rec["kernel"]) + 1  # this iteration (the kernel comes after the DIP output)
            if any(s < t <= s + window for s in sync):
                sr_windows[t] = y.detach()[0].permute(1, 2, 0).numpy().copy()
            return y

        m.net_dip.forward = recording_forward
        def recording_loss(fn, to_loss):
            def wrapped(a, b):
                v = fn(a, b)
                rec["loss"].append(to_loss(float(v)))  # the loop uses 1 - SSIM, or the MSE
                return v
            return wrapped

        m.ssimloss = recording_loss(m.ssimloss, lambda v: 1.0 - v)
        m.mse = recording_loss(m.mse, lambda v: v)
        m.train()
    np.savez(out, names=np.array(names), z_x=m.input_dip[0].permute(1, 2, 0).numpy(),
             lr=m.lr[0].permute(1, 2, 0).numpy(), kernels=np.stack(rec["kernel"]), latents=np.stack(rec["latent"]),
             loss=np.array(rec["loss"]), sr_t=np.array(sorted(sr_windows)),
             sr=np.stack([sr_windows[t] for t in sorted(sr_windows)]), sync=np.array(sync), **saved)


def our_state(off, t: int, prior, config):
    """Our float64 solver state after the official iteration t (saved by the official child)."""
    import jax.numpy as jnp
    import optax

    from fkp_jax import dip, dipfkp

    names = list(off["names"])
    tree = lambda kind: dip.params_from_torch({n: off[f"T{t}/{kind}/{n}"] for n in names}, jnp.float64)  # noqa: E731
    state = dipfkp.state_from(tree("dip"), jnp.asarray(off["z_x"][None]), jnp.asarray(off[f"T{t}/latent"]), prior,
                              config)
    if f"T{t}/dip_count" in off:
        adam = optax.ScaleByAdamState(count=jnp.asarray(int(off[f"T{t}/dip_count"]), jnp.int32), mu=tree("mu"),
                                      nu=tree("nu"))
        state["dip_opt"] = (adam, state["dip_opt"][1])
    if int(off[f"T{t}/k_count"]):
        adam = optax.ScaleByAdamState(count=jnp.asarray(int(off[f"T{t}/k_count"]), jnp.int32),
                                      mu=jnp.asarray(off[f"T{t}/k_mu"]), nu=jnp.asarray(off[f"T{t}/k_nu"]))
        state["k_opt"] = (adam, state["k_opt"][1])
    state["t"] = jnp.asarray(t + 1, jnp.int32)
    return state


def ours(off, weights: Path, sf: int, iters: int, window: int, out: Path) -> dict:
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    from fkp_jax import dipfkp, kernel_priors, metrics
    from fkp_jax.convert import prior_from_torch
    from fkp_jax.flow import FlowPrior

    flow = prior_from_torch(weights)
    flow = FlowPrior.from_variables(jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), flow.variables), flow.config)
    prior = kernel_priors.fkp_prior(flow)
    config = dipfkp.DIPFKPConfig(sf=sf, iters=iters)
    step = jax.jit(lambda s, lr: dipfkp.step(s, lr, prior, config))
    lr = jnp.asarray(off["lr"][None])
    sr_index = {int(t): i for i, t in enumerate(off["sr_t"])}
    report = {}
    for t0 in [int(s) for s in off["sync"]]:
        state = our_state(off, t0, prior, config)
        rows = []
        n = iters - t0 if t0 == 0 else min(window, iters - t0)
        kernels, losses = [], []
        for i in range(n):
            t = t0 + i + 1
            state, o = step(state, lr)
            k, loss = np.asarray(o["kernel"]), float(o["loss"])
            kernels.append(k)
            losses.append(loss)
            if i < window:
                row = {"t": t, "kernel": float(np.abs(k - off["kernels"][t - 1]).max()),
                       "loss_rel": abs(loss / off["loss"][t - 1] - 1),
                       "latent": float(np.abs(np.asarray(state["kvars"]) - off["latents"][t]).max())
                       if t < iters else None}
                if t in sr_index:
                    row["sr"] = float(np.abs(np.asarray(o["sr"][0]) - off["sr"][sr_index[t]]).max())
                rows.append(row)
        report[t0] = rows
        print(f"from T={t0}: " + ", ".join(f"t={r['t']} k {r['kernel']:.1e} loss {r['loss_rel']:.1e}"
                                            for r in rows[:: max(1, len(rows) // 5)]), flush=True)
        if t0 == 0:
            np.savez(out / "ours_from0.npz", kernels=np.stack(kernels), loss=np.array(losses))
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--official", type=Path, required=True)
    p.add_argument("--image", type=Path, required=True, help="LR image (PNG)")
    p.add_argument("--weights", type=Path, default=REPO.parent / "shared" / "reference" / "weights" / "FKP_x2.pt")
    p.add_argument("--sf", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--iters", type=int, default=1000)
    p.add_argument("--sync", type=int, nargs="+", default=[0, 100, 300, 600, 900])
    p.add_argument("--window", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    off_path = args.out / "official.npz"
    if args.child:
        official_child(args.official.resolve(), args.image.resolve(), args.weights.resolve(), args.sf, args.seed,
                       args.iters, sorted(args.sync), args.window, off_path)
        return 0
    if not off_path.exists():
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
        res = subprocess.run([sys.executable, "-m", "benchmarks.loop_lockstep", *(argv or sys.argv[1:]), "--child"],
                             cwd=REPO, env=env)
        if res.returncode:
            return res.returncode
    off = dict(np.load(off_path))
    report = ours(off, args.weights, args.sf, args.iters, args.window, args.out)
    (args.out / "lockstep.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
