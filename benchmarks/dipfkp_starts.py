"""Our DIP-FKP loop from the official code's fixed start and from mixtures of it with our random starts.

    python -m benchmarks.dipfkp_starts --official DIR --weights /tmp/fkp_official_x2 --out results/starts_devset_x2

Issue 7: the released official code starts every run on an LR of a given size from one fixed state (DIP
input after `torch.manual_seed(1)`, DIP weights drawn right after it, latent after seed 5; see
`benchmarks.official_dipfkp_runs`), while ours draws all three from the restart's key. This runs OUR
float32 loop (`fkp_jax.dipfkp`, the prior of --weights, e.g. the converted official FKP_x2.pt) on every
image of --dataset from
- ``official``: the official start exactly (built by the official code, read back), and --chaos more
  runs from it with the DIP input multiplied by 1 + 1e-6 N(0, 1) (how far rounding alone spreads it);
- ``official-dip``: the official DIP input and weights with --keys random latents (ours: N(0, I));
- ``official-latent``: our random DIP input and weights (--keys keys) with the official latent.
Our fully random starts are `experiments.study` with the same --weights. Each run records the kernel PSNR
every 10 iterations; OUT/<image>/<variant>_<i>.npz (resumable), OUT/summary.md. CI does not run this.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ("official", "official-dip", "official-latent")


def dump_official_start(official: Path, lr_path: Path, weights: Path, sf: int, out: Path) -> None:
    """The released official code's initial state for an LR of lr_path's size -> out (npz)."""
    from benchmarks.official_dipfkp_runs import build_official

    with __import__("tempfile").TemporaryDirectory() as tmp:
        _, m, _ = build_official(official, lr_path, weights, sf, 0, 1, "released", tmp)
        arrays = {f"dip/{n}": p.detach().numpy() for n, p in m.net_dip.named_parameters()}
        np.savez(out, z_x=m.input_dip[0].permute(1, 2, 0).numpy(), latent=m.kernel_code.detach().reshape(-1).numpy(),
                 **arrays)


def run_variants(args) -> None:
    import jax
    import jax.numpy as jnp

    from fkp_jax import dip, dipfkp, io, kernel_priors, metrics

    prior = kernel_priors.make_prior("fkp", args.sf, str(args.weights))
    config = dipfkp.DIPFKPConfig(sf=args.sf, iters=args.iters)
    step = dipfkp.make_step(prior, config)
    lr_dir = args.dataset / f"DIPFKP_lr_x{args.sf}"
    starts: dict[tuple[int, int], dict] = {}
    rows = []
    for lr_path in sorted(lr_dir.glob("*.png")):
        name = lr_path.stem
        lr = io.read_image(lr_path)
        gt = io.read_kernel_mat(args.dataset / f"DIPFKP_gt_k_x{args.sf}" / f"{name}.mat")
        size = lr.shape[:2]
        if size not in starts:
            path = args.out / f"official_start_{size[0]}x{size[1]}.npz"
            if not path.exists():
                subprocess.run([sys.executable, "-m", "benchmarks.dipfkp_starts", "--official", str(args.official),
                                "--dump", str(lr_path), str(path), "--sf", str(args.sf),
                                "--official-pt", str(args.official_pt), "--weights", str(args.weights),
                                "--out", str(args.out)],
                               cwd=REPO, check=True)
            d = np.load(path)
            names = [k[4:] for k in d.files if k.startswith("dip/")]
            starts[size] = {"dip": dip.params_from_torch({n: d[f"dip/{n}"] for n in names}),
                            "z_x": jnp.asarray(d["z_x"][None]), "latent": jnp.asarray(d["latent"])}
        off = starts[size]
        lr_j = jnp.asarray(lr[None], jnp.float32)
        runs = [("official", 0, off["dip"], off["z_x"], off["latent"])]
        for i in range(1, args.chaos + 1):
            noise = jax.random.normal(jax.random.key(100 + i), off["z_x"].shape)
            runs.append(("official", i, off["dip"], off["z_x"] * (1 + 1e-6 * noise), off["latent"]))
        for i in range(args.keys):
            key = jax.random.key(i)
            fresh = dipfkp.init_state(key, prior, size, config)
            runs.append(("official-dip", i, off["dip"], off["z_x"], prior.init(jax.random.fold_in(key, 7))))
            runs.append(("official-latent", i, fresh["dip"], fresh["z_x"], off["latent"]))
        (args.out / name).mkdir(parents=True, exist_ok=True)
        for variant, i, dip_params, z_x, latent in runs:
            target = args.out / name / f"{variant}_{i}.npz"
            if not target.exists():
                state = jax.tree.map(jnp.copy, dipfkp.state_from(dip_params, z_x, latent, prior, config))  # donated
                curve = []
                for t in range(1, args.iters + 1):
                    state, out = step(state, lr_j)
                    if t % 10 == 0:
                        curve.append(metrics.kernel_psnr(gt, np.asarray(out["kernel"])))
                with io.atomic_write(target) as f:
                    np.savez(f, record_t=np.arange(10, args.iters + 1, 10), record_kernel_psnr=np.array(curve),
                             kernel=np.asarray(out["kernel"]))
            d = np.load(target)
            rows.append({"image": name, "variant": variant, "i": i, "final": float(d["record_kernel_psnr"][-1]),
                         "at100": float(d["record_kernel_psnr"][min(9, len(d["record_t"]) - 1)])})
            print(f"{name} {variant} {i}: final {rows[-1]['final']:.2f} dB (at 100: {rows[-1]['at100']:.2f})",
                  flush=True)
    (args.out / "summary.json").write_text(json.dumps(rows, indent=1))
    lines = ["| image | " + " | ".join(VARIANTS) + " |", "| --- |" + " ---: |" * len(VARIANTS)]
    for name in sorted({r["image"] for r in rows}):
        cells = []
        for v in VARIANTS:
            vals = [r["final"] for r in rows if r["image"] == name and r["variant"] == v]
            cells.append(f"{np.mean(vals):.2f} ± {np.std(vals):.2f} (n={len(vals)})" if vals else "")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    means = [np.mean([r["final"] for r in rows if r["variant"] == v]) for v in VARIANTS]
    lines.append("| **mean** | " + " | ".join(f"{m:.2f}" for m in means) + " |")
    (args.out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--official", type=Path, required=True, help="checkout of the official FKP repository")
    p.add_argument("--official-pt", type=Path, default=REPO.parent / "shared" / "reference" / "weights" / "FKP_x2.pt",
                   help="the official .pt the official code loads (it draws its latent through it)")
    p.add_argument("--weights", type=Path, required=True, help="our prior (e.g. the converted official one)")
    p.add_argument("--dataset", type=Path, default=REPO / "benchmarks" / "data" / "devset")
    p.add_argument("--sf", type=int, default=2)
    p.add_argument("--iters", type=int, default=1000)
    p.add_argument("--chaos", type=int, default=2)
    p.add_argument("--keys", type=int, default=3)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--dump", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.dump:
        dump_official_start(args.official.resolve(), args.dump[0].resolve(), args.official_pt.resolve(), args.sf,
                            args.dump[1])
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    run_variants(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
