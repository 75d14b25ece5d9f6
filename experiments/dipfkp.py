"""DIP-FKP blind super-resolution from the command line (FKP_SPEC 6).

    python -m experiments.dipfkp --sf 2                       # the bundled default images
    python -m experiments.dipfkp --sf 4 --dataset ../shared/reference/data/Test
    python -m experiments.dipfkp --sf 2 --input my_lr.png --real
    python -m experiments.dipfkp --sf 2 --seeds 5 --kernel-prior mlp --iters 1000

A data set is in the original layout: DIR/DIPFKP_lr_x{s}/*.png (required), DIR/HR/*.png and
DIR/DIPFKP_gt_k_x{s}/*.mat (optional; they enable image and kernel metrics). Per image the output
folder gets <name>_sr.png, <name>_kernel.npy, <name>_kernel.mat (variable Kernel), <name>_kernel.png
(estimate beside the ground truth) — from the first seed — plus <name>_kernels_seeds.npy when
--seeds > 1; at the end metrics.json and results.md. Every file is written under a temporary name
and renamed, and metrics.json is written last, so an interrupted run never looks complete.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
import warnings
from pathlib import Path

import numpy as np

DEFAULT_DATASET = Path(__file__).resolve().parent / "data" / "default"
SCALES = (2, 3, 4)
OUTPUT_SUFFIXES = ("_sr.png", "_kernel.npy", "_kernel.mat", "_kernel.png", "_kernels_seeds.npy")


@dataclasses.dataclass(frozen=True)
class Job:
    name: str
    lr: Path
    hr: Path | None
    gt_kernel: Path | None


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m experiments.dipfkp", description=__doc__.split("\n")[0])
    p.add_argument("--sf", type=int, default=2, help="scale factor: 2, 3 or 4 (default 2)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--dataset", type=Path, help="data set folder in the original layout (default: bundled images)")
    src.add_argument("--input", type=Path, help="a single LR image")
    p.add_argument("--real", action="store_true", help="no ground truth: skip HR and kernel metrics")
    p.add_argument("--iters", type=int, default=1000, help="iterations per image (default 1000, as the original)")
    p.add_argument("--seeds", type=int, default=1, help="independent restarts (the paper reports means of 5); mean and std per image")
    p.add_argument("--seed", type=int, default=0, help="base random seed (restart i uses fold_in(seed, i))")
    p.add_argument("--kernel-prior", default="fkp", choices=("fkp", "mlp", "softmax"),
                   help="fkp (DIP-FKP), mlp (Double-DIP) or softmax (DIPSoftmax)")
    p.add_argument("--weights", help="FKP prior checkpoint (orbax folder, e.g. converted official weights); "
                                     "default: our shipped weights for --sf")
    p.add_argument("--out", type=Path, help="output folder (default results/dipfkp_x{sf}/)")
    p.add_argument("--chunk", type=int, default=None,
                   help="iterations per dispatch: 1 = Python loop over the jitted step (CPU default), "
                        ">1 = lax.scan chunks (accelerator default 50)")
    p.add_argument("--seed-mode", choices=("loop", "vmap"), default=None,
                   help="restarts stepped one after another (CPU default, faster there) or as one vmapped "
                        "computation (accelerator default)")
    return p.parse_args(argv)


def find_jobs(args) -> list[Job]:
    """The images to process, with their optional HR and ground-truth kernel."""
    from fkp_jax import io

    if args.input is not None:
        if not args.input.is_file():
            raise FileNotFoundError(f"no such input image: {args.input}")
        return [Job(args.input.stem, args.input, None, None)]
    root = DEFAULT_DATASET if args.dataset is None else args.dataset
    if not root.is_dir():
        raise FileNotFoundError(f"no such data set folder: {root}")
    layout = io.dataset_layout(root, args.sf)
    lr_dir, hr_dir, k_dir = layout.lr, layout.hr, layout.gt_kernel
    if not Path(lr_dir).is_dir():
        raise FileNotFoundError(f"{root} has no {Path(lr_dir).name}/ folder of LR images for x{args.sf}")
    jobs = []
    for lr in io.list_images(lr_dir):
        hr = next((p for p in sorted(Path(hr_dir).glob(lr.stem + ".*")) if p.suffix.lower() in io.IMAGE_EXTENSIONS),
                  None) if Path(hr_dir).is_dir() else None
        gt = Path(k_dir) / (lr.stem + ".mat")
        jobs.append(Job(lr.stem, lr, None if args.real else hr, gt if gt.is_file() and not args.real else None))
    return jobs


def min_hr_side(levels: int = 5) -> int:
    """Smallest HR side the 5-level generator handles: the deepest non-local block max-pools 2 x 2,
    so the side after ``levels`` stride-2 convolutions (ceil halving) must be at least 2."""
    n = 1
    while True:
        m = n
        for _ in range(levels):
            m = -(-m // 2)
        if m >= 2:
            return n
        n += 1


def check_lr(name: str, lr: np.ndarray, sf: int, k: int):
    """One-line errors for an LR image the solver cannot use."""
    from fkp_jax import io

    io.check_finite(lr, name)
    h, w = lr.shape[:2]
    need = min_hr_side()
    if min(h, w) * sf < need:
        raise ValueError(f"{name}: image too small: LR {h}x{w} at x{sf} gives HR {h * sf}x{w * sf}; the 5-level "
                         f"generator needs HR sides >= {need} (LR >= {-(-need // sf)} at x{sf})")
    if min(h, w) < k:
        raise ValueError(f"{name}: image {h}x{w} is smaller than the {k}x{k} kernel")


def run_job(job: Job, args, prior, config, runner, out_dir: Path) -> dict:
    """Solve one image for all seeds; write its outputs; return its metrics lists."""
    import jax
    import jax.numpy as jnp
    from tqdm import tqdm

    from fkp_jax import dipfkp, io, kernels, metrics, report

    with warnings.catch_warnings(record=True) as notes:
        warnings.simplefilter("always")
        lr = io.read_image(job.lr)
    for note in notes:
        print(f"note: {note.message}", file=sys.stderr)
    k = kernels.kernel_size(args.sf)
    check_lr(job.name, lr, args.sf, k)
    gt = io.read_kernel_mat(job.gt_kernel) if job.gt_kernel is not None else None
    if gt is not None and gt.shape != (k, k):
        raise ValueError(f"{job.gt_kernel}: ground-truth kernel is {gt.shape[0]}x{gt.shape[1]}, expected {k}x{k} "
                         f"for x{args.sf}")

    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(args.seed), i))(jnp.arange(args.seeds))
    state = jax.vmap(lambda key: dipfkp.init_state(key, prior, lr.shape[:2], config))(keys)
    lr_in = jnp.asarray(lr[None])
    bar = tqdm(total=args.iters, desc=f"{job.name} x{args.sf}", unit="it", leave=True, dynamic_ncols=True)

    def progress(t, outputs):
        bar.update(t - bar.n)
        if t % 10 == 0 or t == args.iters:
            post = {"loss": f"{float(jnp.mean(outputs['loss'])):.5f}"}
            if gt is not None:
                kp = [metrics.kernel_psnr(gt, np.asarray(kk)) for kk in outputs["kernel"]]
                post["kPSNR"] = f"{np.mean(kp):.2f}"
            bar.set_postfix(post)

    _, outputs, seconds = runner(state, lr_in, args.iters, callback=progress)
    bar.close()
    est = np.asarray(outputs["kernel"], np.float32)  # (N, k, k)
    srs = np.asarray(outputs["sr"])[:, 0]  # (N, H, W, 3)
    sr_u8 = np.clip(np.round(srs * 255.0), 0, 255).astype(np.uint8)

    result = {"seeds": list(range(args.seeds)),
              "seconds": [seconds / args.seeds] * args.seeds}
    if gt is not None:
        result["kernel_psnr"] = [metrics.kernel_psnr(gt, kk) for kk in est]
    if job.hr is not None:
        hr = io.read_image_u8(job.hr)
        hr = hr[: hr.shape[0] - hr.shape[0] % args.sf, : hr.shape[1] - hr.shape[1] % args.sf]
        if hr.shape != sr_u8.shape[1:]:
            print(f"note: {job.hr}: HR {hr.shape[0]}x{hr.shape[1]} does not match SR {sr_u8.shape[1]}x"
                  f"{sr_u8.shape[2]}; image metrics skipped", file=sys.stderr)
        else:
            result["psnr_y"] = [metrics.psnr_y(hr, s, args.sf) for s in sr_u8]
            result["ssim_y"] = [metrics.ssim_y(hr, s, args.sf) for s in sr_u8]

    io.write_image_u8(out_dir / f"{job.name}_sr.png", sr_u8[0])
    io.write_npy(out_dir / f"{job.name}_kernel.npy", est[0])
    io.write_kernel_mat(out_dir / f"{job.name}_kernel.mat", est[0])
    if args.seeds > 1:
        io.write_npy(out_dir / f"{job.name}_kernels_seeds.npy", est)
    pics, labels = [est[0]], ["estimate"]
    if gt is not None:
        pics, labels = [est[0], gt], [f"estimate {result['kernel_psnr'][0]:.2f} dB", "ground truth"]
    io.write_image_u8(out_dir / f"{job.name}_kernel.png", report.kernel_picture(pics, labels))
    return result


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if args.sf not in SCALES:
            raise ValueError(f"unsupported scale factor --sf {args.sf}: DIP-FKP supports 2, 3 and 4")
        if args.iters < 1 or args.seeds < 1:
            raise ValueError("--iters and --seeds must be positive")
        jobs = find_jobs(args)
        out_dir = Path(f"results/dipfkp_x{args.sf}") if args.out is None else args.out
        inputs = {p.resolve() for j in jobs for p in (j.lr, j.hr, j.gt_kernel) if p is not None}
        if out_dir.exists() and not out_dir.is_dir():
            raise ValueError(f"--out {out_dir} exists and is not a folder")
        outputs = [out_dir / "metrics.json", out_dir / "results.md"] + [
            out_dir / f"{j.name}{suffix}" for j in jobs for suffix in OUTPUT_SUFFIXES]
        clash = [p for p in outputs if p.resolve() in inputs]
        if clash:
            raise ValueError(f"refusing to overwrite an input file: {clash[0]}; choose another --out")
        if out_dir.resolve() in {p.parent for p in inputs}:
            raise ValueError(f"refusing to write results into an input folder ({out_dir}); choose another --out")
        out_dir.mkdir(parents=True, exist_ok=True)
        # metrics.json marks a complete run: drop an earlier run's before this one starts
        (out_dir / "metrics.json").unlink(missing_ok=True)

        from fkp_jax import dipfkp, io, kernel_priors, report, runtime

        runtime.configure()

        prior = kernel_priors.make_prior(args.kernel_prior, args.sf, args.weights)
        config = dipfkp.DIPFKPConfig(sf=args.sf, iters=args.iters)
        runner = dipfkp.make_runner(prior, config, seeds=True, chunk=args.chunk, seed_mode=args.seed_mode)
        images = {}
        for job in jobs:
            images[job.name] = run_job(job, args, prior, config, runner, out_dir)
        mean = report.summarise(images)
        command = "python -m experiments.dipfkp " + shlex.join(sys.argv[1:] if argv is None else argv)
        record = {"config": {"sf": args.sf, "iters": args.iters, "seeds": args.seeds, "seed": args.seed,
                             "kernel_prior": args.kernel_prior, "weights": args.weights or f"ours x{args.sf}",
                             "dataset": str(args.input or args.dataset or DEFAULT_DATASET)},
                  "images": images, "mean": mean}
        title = f"DIP-{args.kernel_prior.upper()} x{args.sf}, {args.iters} iterations"
        io.write_text(out_dir / "results.md", report.results_markdown(images, mean, title, command))
        io.write_json(out_dir / "metrics.json", record)  # last: its presence marks a complete run
    except (ValueError, FileNotFoundError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report.results_markdown(images, mean, title, command))
    print(f"outputs in {out_dir}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
