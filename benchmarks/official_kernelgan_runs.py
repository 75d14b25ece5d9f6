"""Restarts of the OFFICIAL KernelGAN-FKP (or KernelGAN) on a data set, seeds varied from outside.

    python -m benchmarks.official_kernelgan_runs --official DIR --dataset experiments/data/kernelgan --sf 2 \
        --seeds 3 --out results/official_kgfkp_x2
    python -m benchmarks.official_kernelgan_runs --official DIR --model KernelGAN --seeds 3 --out results/official_kg_x2

The official side of issue 8's KernelGAN-FKP results (docs/results.md): is a kernel PSNR of ours what the
released code gets on the same images? DIR is a checkout of https://github.com/JingyunLiang/FKP, run from
outside as `benchmarks.vs_official` does (nothing copied, no file edited; `.cuda()` is the identity). Per
(image, seed) one fresh process runs `KernelGANFKP/main.py`'s `train_FKP` loop: `Config_FKP` defaults
(with the checkout's `data/pretrained_models/FKP_x2.pt`, `--X4` for --sf 4), `KernelGAN_FKP`,
`DataGenerator_FKP` on DATASET/KernelGANFKP_lr_x{sf}/<image>.png (ground truth from KernelGANFKP_gt_k_x{sf}),
a DataLoader of batch 64 with shuffling (num_workers 0 instead of 16: the crop indices are drawn once in the
main process, so the batches are the same), 1000 (x2) or 4000 (x4) iterations, `gan.finish()`.

The released start does not depend on any seed: `Generator_KP.__init__` calls `torch.manual_seed(1)` and
`np.random.seed(1)` before drawing the latent, and the D weights, the crop indices and the shuffle order
come after it. --starts varied (the default) makes restart s a different start from outside: the latent is
redrawn from the flow's base distribution after `torch.manual_seed(2000 + s)`, the D's weights re-initialised
with the original `weights_init_D_KP` after `torch.manual_seed(3000 + s)`, the crop indices drawn after
`np.random.seed(4000 + s)` and the shuffle after `torch.manual_seed(5000 + s)`. --starts released runs the
code as it is, once per image.

--model KernelGAN runs the original KernelGAN of the same checkout as its `train` does (`Config` defaults:
3000 iterations; `DataGenerator`, `Learner`, `gan.finish()` with its kernel post-processing); its only
randomness is the program start's `np.random.seed` / `torch.manual_seed`, which restart s sets to s (0 is the
released run). Only its final kernel is kept (record_* empty).

Writes OUT/<image>/seed<s>.npz: record_t (1..iters), record_kernels (iters, 11, 11: the kernel of each
iteration's last G forward, `gan.curr_k`), record_kernel_psnr (the official `calculate_psnr(gt, k,
is_kernel=True)`, as `fkp_jax.metrics.kernel_psnr`), kernel (`gan.finish()`: at x4 the analytic x4 kernel),
kernel_psnr, gt_kernel, s_per_iter; and OUT/summary.json. Existing npz files are kept (resumable). CI does
not run this.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.official_dipfkp_runs import MARK, all_exist, run_restarts

REPO = Path(__file__).resolve().parents[1]


def child(official: Path, lr_path: Path, gt_path: Path, weights: Path, sf: int, seed: int, threads: int,
          starts: str, out: Path, iters: int | None = None, model: str = "KernelGANFKP") -> None:
    import json
    import tempfile

    import scipy.io as sio
    import torch

    from benchmarks.vs_official import redirect_cuda_to_cpu

    torch.set_num_threads(threads)
    sys.path[:0] = [str(official / "KernelGANFKP"), str(official)]  # as KernelGANFKP/main.py sees them
    redirect_cuda_to_cpu(torch)
    from util import calculate_psnr

    np.random.seed(0 if model == "KernelGANFKP" else seed)  # as KernelGANFKP/main.py's program start
    torch.manual_seed(0 if model == "KernelGANFKP" else seed)
    gt = sio.loadmat(gt_path)["Kernel"]
    kernels, stamps = [], []
    with tempfile.TemporaryDirectory() as tmp:
        if model == "KernelGAN":
            kernel, stamps = _kernelgan(lr_path, sf, tmp, iters)
        else:
            kernel = _kernelgan_fkp(lr_path, weights, sf, seed, starts, tmp, iters, kernels, stamps)
    psnr = [calculate_psnr(gt, k, is_kernel=True) for k in kernels] if sf == 2 else []
    final = calculate_psnr(gt, kernel, is_kernel=True)
    per_iter = float(np.median(np.diff(stamps)))
    tmp_out = out.with_name(out.name + ".partial.npz")
    np.savez(tmp_out, record_t=np.arange(1, len(kernels) + 1), record_kernels=np.asarray(kernels),
             record_kernel_psnr=np.array(psnr), kernel=kernel, kernel_psnr=final, gt_kernel=gt,
             s_per_iter=per_iter, torch=torch.__version__)
    os.replace(tmp_out, out)
    print(MARK + json.dumps({"kernel_psnr": final, "s_per_iter": per_iter}), flush=True)


def _parse(config, lr_path: Path, tmp: str, sf: int, extra=()):
    """``config.parse`` of the arguments main.py's `create_params` passes (the ground truth read from the
    KernelGANFKP_gt_k_x* folder beside the LR, as there), without its GPU selection."""
    config.set_gpu_device = lambda: None
    return config.parse(["--input_image_path", str(lr_path), "--output_dir_path", tmp, *extra]
                        + (["--X4"] if sf == 4 else []))


def _kernelgan(lr_path: Path, sf: int, tmp: str, iters: int | None):
    """KernelGANFKP/main.py's `train` (the original KernelGAN) -> (final kernel, time stamps)."""
    from config.configs import Config
    from dataloader.dataloader import DataGenerator
    from model.learner import Learner
    from model.model import KernelGAN

    conf = _parse(Config(), lr_path, tmp, sf)  # G_structure and the ground truth as main.py gets them
    conf.max_iters = iters or conf.max_iters
    gan, learner = KernelGAN(conf), Learner()
    data = DataGenerator(conf, gan)
    stamps = [time.perf_counter()]
    for iteration in range(conf.max_iters):
        g_in, d_in = data.__getitem__(iteration)
        gan.train(g_in, d_in, iteration)
        learner.update(iteration, gan)
        stamps.append(time.perf_counter())
    return np.asarray(gan.finish(), np.float64), stamps


def _kernelgan_fkp(lr_path: Path, weights: Path, sf: int, seed: int, starts: str, tmp: str,
                   iters: int | None, kernels: list, stamps: list):
    """KernelGANFKP/main.py's `train_FKP`, each iteration's kernel appended to ``kernels`` -> final kernel."""
    import torch
    from config.configs_FKP import Config_FKP
    from dataloader.dataloader_FKP import DataGenerator_FKP
    from model.model_FKP import KernelGAN_FKP
    from model.networks import weights_init_D_KP

    conf = _parse(Config_FKP(), lr_path, tmp, sf, ["--path_KP", str(weights)])
    gan = KernelGAN_FKP(conf)
    if starts == "varied":
        torch.manual_seed(2000 + seed)
        gan.G.kernel_code.data = gan.G.kp.base_dist.sample((1, 1)).to(gan.G.kernel_code)
        torch.manual_seed(3000 + seed)
        gan.D.apply(weights_init_D_KP)
        np.random.seed(4000 + seed)
    data = DataGenerator_FKP(conf, gan)
    if starts == "varied":
        torch.manual_seed(5000 + seed)
    loader = torch.utils.data.DataLoader(data, batch_size=64, shuffle=True, num_workers=0)
    total = iters or (4000 if conf.X4 else 1000)  # main.py's train_FKP
    stamps.append(time.perf_counter())
    for i, (g_in, d_in) in enumerate(loader):
        if i >= total:
            break
        gan.train(g_in, d_in, i + 1)
        kernels.append(gan.curr_k.detach().squeeze().double().numpy().copy())
        stamps.append(time.perf_counter())
    return np.asarray(gan.finish(), np.float64)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--official", type=Path, required=True, help="checkout of the official FKP repository")
    p.add_argument("--dataset", type=Path, default=REPO / "experiments" / "data" / "kernelgan")
    p.add_argument("--sf", type=int, default=2, choices=(2, 4))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--iters", type=int, help="iterations (default: the original's 1000 at x2, 4000 at x4)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--images", nargs="*", help="only these image stems")
    p.add_argument("--starts", choices=("released", "varied"), default="varied",
                   help="released: the official code as it is (one run per image); varied: restart s draws "
                        "the latent, the D weights, the crops and the batch order from s")
    p.add_argument("--model", choices=("KernelGANFKP", "KernelGAN"), default="KernelGANFKP",
                   help="KernelGANFKP (default) or the original KernelGAN")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--child", nargs=2, metavar=("IMAGE", "SEED"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    weights = args.official / "data" / "pretrained_models" / "FKP_x2.pt"  # KernelGAN-FKP uses the x2 prior
    lr_dir = args.dataset / f"KernelGANFKP_lr_x{args.sf}"
    gt_dir = args.dataset / f"KernelGANFKP_gt_k_x{args.sf}"
    if not all_exist(args.official / "KernelGANFKP" / "model" / "model_FKP.py", weights, lr_dir, gt_dir):
        return 2
    if args.child:
        name, seed = args.child[0], int(args.child[1])
        child(args.official.resolve(), lr_dir / f"{name}.png", gt_dir / f"{name}.mat", weights.resolve(),
              args.sf, seed, args.threads, args.starts, args.out / name / f"seed{seed}.npz", args.iters, args.model)
        return 0
    names = sorted(q.stem for q in lr_dir.glob("*.png") if not args.images or q.stem in args.images)
    released = args.starts == "released" and args.model == "KernelGANFKP"
    seeds = range(args.first_seed, args.first_seed + (1 if released else args.seeds))
    cmd = ["--official", str(args.official), "--dataset", str(args.dataset), "--sf", str(args.sf),
           "--threads", str(args.threads), "--starts", args.starts, "--model", args.model, "--out", str(args.out)]
    cmd += ["--iters", str(args.iters)] if args.iters else []
    return run_restarts("benchmarks.official_kernelgan_runs", cmd, names, seeds, args.out, args.threads)


if __name__ == "__main__":
    sys.exit(main())
