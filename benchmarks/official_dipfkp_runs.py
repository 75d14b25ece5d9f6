"""Restarts of the OFFICIAL DIP-FKP on a data set, seeds varied from outside, every iteration's kernel kept.

    python -m benchmarks.official_dipfkp_runs --official DIR --sf 2 --seeds 5 --out results/official_devset_x2
    python -m benchmarks.official_dipfkp_runs --official DIR --sf 2 --starts released --out results/official_released_x2

The official side of issue 7's loop comparison (docs/results.md, "DIP-FKP: our loop against the official
loop"). DIR is a checkout of https://github.com/JingyunLiang/FKP, run from outside as
`benchmarks.vs_official` does (nothing copied, no file edited; `.cuda()` is the identity, checkpoints load
on the CPU). Per (image, seed) one fresh process builds `DIPFKP/model/model.py`'s `DIPFKP` as
`DIPFKP/main.py` does for its first image (`np.random.seed(s)`, `torch.manual_seed(s)`, the LR read with the
original `read_image` / `im2tensor01`, the checkout's own `Config` defaults: 1000 iterations, dip_lr 5e-3,
kp_lr 0.5) with --weights (default the checkout's FKP_x{sf}.pt). Its `train()` runs unmodified; the
model's `net_kp.post_process` (called once per iteration on the kernel the loop uses) is wrapped to keep a
copy of every kernel and of the latent it came from.

The released code's start does not depend on any seed: `util.fill_noise` calls `torch.manual_seed(1)`
before drawing the DIP input, and the DIP weights are drawn right after it, so every run on an LR of one
size starts from the same DIP input and weights; the constructor then reseeds with 5 to draw the latent
(spec 6.2, 6.4). --starts released runs that once per image (what its seeds would give: identical runs;
only the thread count changes the rounding). --starts varied (the default) makes restart s a different
start, from outside: `util.fill_noise` is replaced by the same fill after `torch.manual_seed(1000 + s)`
(so the DIP weights drawn after it change too) and the latent is redrawn from the flow's base distribution
after `torch.manual_seed(2000 + s)`; the loop itself is untouched.

Writes OUT/<image>/seed<s>.npz: record_t (1..iters), record_kernels (iters, k, k), record_latents
(iters, k*k), record_kernel_psnr (the official `calculate_psnr(gt, k, is_kernel=True)`, which equals
`fkp_jax.metrics.kernel_psnr`), kernel (the last), sr (the last DIP output, HWC in [0, 1]), gt_kernel,
s_per_iter; and OUT/summary.json. Existing npz files are kept (resumable). CI does not run this.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MARK = "OFFICIAL_RUN "


def build_official(official: Path, lr_path: Path, weights: Path, sf: int, seed: int, iters: int, starts: str,
                   out_dir: str, threads: int = 1, gt_path: Path | None = None):
    """(the official model module, its DIPFKP for lr_path, torch) built as main.py builds it (module docstring)."""
    import scipy.io as sio
    import torch

    from benchmarks.vs_official import redirect_cuda_to_cpu

    torch.set_num_threads(threads)
    sys.path[:0] = [str(official / "DIPFKP"), str(official)]
    redirect_cuda_to_cpu(torch)
    from config.configs import Config
    import model.model as official_model
    import util
    from util import im2tensor01, read_image

    if starts == "varied":
        def fill_noise(x, noise_type):  # util.fill_noise with the restart's seed instead of its fixed 1
            torch.manual_seed(1000 + seed)
            x.uniform_() if noise_type == "u" else x.normal_()

        util.fill_noise = fill_noise
    np.random.seed(seed)  # as DIPFKP/main.py's program start, with the restart's seed
    torch.manual_seed(seed)
    conf = Config().parser.parse_args([])  # the defaults, without parse()'s torch.cuda.set_device
    conf.sf, conf.model, conf.max_iters, conf.verbose = sf, "DIPFKP", iters, False
    conf.path_KP = str(weights)
    conf.input_image_path = str(lr_path)
    conf.img_name = lr_path.stem
    conf.real = gt_path is None
    conf.kernel_gt = np.ones([min(4 * sf + 3, 21)] * 2) if gt_path is None else sio.loadmat(gt_path)["Kernel"]
    conf.output_dir_path = out_dir
    lr = im2tensor01(read_image(str(lr_path))).unsqueeze(0)
    m = official_model.DIPFKP(conf, lr, device=torch.device("cpu"))
    if starts == "varied":  # the latent from the restart's seed instead of the fixed 5
        torch.manual_seed(2000 + seed)
        m.kernel_code.data = m.net_kp.base_dist.sample((1, 1)).to(m.kernel_code)
    return official_model, m, torch


def child(official: Path, lr_path: Path, gt_path: Path, weights: Path, sf: int, seed: int, iters: int,
          threads: int, starts: str, out: Path) -> None:
    from benchmarks.vs_official import record_loop_steps

    with __import__("tempfile").TemporaryDirectory() as tmp:
        official_model, m, torch = build_official(official, lr_path, weights, sf, seed, iters, starts, tmp, threads,
                                                  gt_path)
        stamps = record_loop_steps(official_model)
        kernels, latents = [], []
        post = m.net_kp.post_process

        def recording_post_process(x):
            k = post(x)
            kernels.append(k.detach().squeeze().double().numpy().copy())
            latents.append(m.kernel_code.detach().reshape(-1).double().numpy().copy())
            return k

        m.net_kp.post_process = recording_post_process
        kernel, sr = m.train()
    if len(kernels) != iters:
        raise RuntimeError(f"expected {iters} kernels, recorded {len(kernels)}")
    gt = np.asarray(m.conf.kernel_gt, np.float64)
    psnr = [20 * np.log10(1.0 / np.sqrt(np.mean((gt - k) ** 2))) for k in kernels]
    per_iter = np.diff(stamps)
    tmp_out = out.with_name(out.name + ".partial.npz")
    np.savez(tmp_out, record_t=np.arange(1, iters + 1), record_kernels=np.stack(kernels),
             record_latents=np.stack(latents), record_kernel_psnr=np.array(psnr), kernel=kernels[-1],
             sr=sr.detach()[0].permute(1, 2, 0).double().numpy(), gt_kernel=gt,
             s_per_iter=float(np.median(per_iter)), torch=torch.__version__)
    os.replace(tmp_out, out)
    print(MARK + json.dumps({"kernel_psnr": psnr[-1], "s_per_iter": float(np.median(per_iter))}), flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--official", type=Path, required=True, help="checkout of the official FKP repository")
    p.add_argument("--dataset", type=Path, default=REPO / "benchmarks" / "data" / "devset")
    p.add_argument("--sf", type=int, default=2, choices=(2, 3, 4))
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--iters", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--weights", type=Path, help="FKP .pt (default: DIR/data/pretrained_models/FKP_x{sf}.pt)")
    p.add_argument("--images", nargs="*", help="only these image stems")
    p.add_argument("--starts", choices=("released", "varied"), default="varied",
                   help="released: the official code as it is, whose start does not depend on any seed (one run "
                        "per image); varied: restart s draws the DIP input, the DIP weights and the latent from s")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--child", nargs=2, metavar=("IMAGE", "SEED"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    weights = args.weights or args.official / "data" / "pretrained_models" / f"FKP_x{args.sf}.pt"
    lr_dir = args.dataset / f"DIPFKP_lr_x{args.sf}"
    gt_dir = args.dataset / f"DIPFKP_gt_k_x{args.sf}"
    if not all_exist(args.official / "DIPFKP" / "model" / "model.py", weights, lr_dir, gt_dir):
        return 2
    if args.child:
        name, seed = args.child[0], int(args.child[1])
        child(args.official.resolve(), lr_dir / f"{name}.png", gt_dir / f"{name}.mat", weights.resolve(),
              args.sf, seed, args.iters, args.threads, args.starts, args.out / name / f"seed{seed}.npz")
        return 0
    names = sorted(q.stem for q in lr_dir.glob("*.png") if not args.images or q.stem in args.images)
    seeds = range(args.first_seed, args.first_seed + (1 if args.starts == "released" else args.seeds))
    cmd = ["--official", str(args.official), "--dataset", str(args.dataset), "--sf", str(args.sf), "--iters",
           str(args.iters), "--threads", str(args.threads), "--weights", str(weights), "--out", str(args.out),
           "--starts", args.starts]
    return run_restarts("benchmarks.official_dipfkp_runs", cmd, names, seeds, args.out, args.threads)


def all_exist(*paths: Path) -> bool:
    """True when every path exists; else a one-line error naming the first missing one (stderr)."""
    for path in paths:
        if not path.exists():
            print(f"error: {path} not found", file=sys.stderr)
            return False
    return True


def run_restarts(module: str, cmd: list[str], names: list[str], seeds, out: Path, threads: int) -> int:
    """Run ``python -m module *cmd --child IMAGE SEED`` for every image and seed whose OUT/<image>/seed<s>.npz
    is missing, one fresh process each, then print and write OUT/summary.json (kernel PSNR of the last
    iteration, at iteration 100 and the best; ``kernel_psnr`` where the npz has it, e.g. an x4 kernel)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    summary = {}
    for name in names:
        (out / name).mkdir(parents=True, exist_ok=True)
        for seed in seeds:
            target = out / name / f"seed{seed}.npz"
            if not target.exists():
                t0 = time.time()
                res = subprocess.run([sys.executable, "-m", module, *cmd, "--child", name, str(seed)], cwd=REPO,
                                     env=env, capture_output=True, text=True)
                if res.returncode != 0:
                    print(f"error: official run {name} seed {seed} failed:\n{res.stderr[-2000:]}", file=sys.stderr)
                    return 1
                print(f"{name} seed {seed}: {time.time() - t0:.0f} s", flush=True)
            d = np.load(target)
            rec = d["record_kernel_psnr"]
            row = {"final": float(d["kernel_psnr"]) if "kernel_psnr" in d else float(rec[-1]),
                   "s_per_iter": float(d["s_per_iter"])}
            if len(rec):
                row.update(at100=float(rec[min(99, len(rec) - 1)]), max=float(rec.max()))
            summary.setdefault(name, {})[seed] = row
            print(f"{name} seed {seed}: kernel PSNR final {row['final']:.2f} dB"
                  + (f", at 100 {row['at100']:.2f}, max {row['max']:.2f}" if len(rec) else ""), flush=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
