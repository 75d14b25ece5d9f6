"""The command-line plumbing every method shares (ARCHITECTURE "Methods share one shape").

A method entry point (``experiments/dipfkp.py``, ``experiments/kernelganfkp.py``) is a `Method`: its
name, scales, kernel priors, default data and a ``build(args)`` that returns a solver
``solve(job, lr, gt, progress) -> Estimate``. Everything else is here, written once: the common
options, finding the images (the original data-set layout, ``--input``, ``--real``), one-line errors
for bad input, refusing to overwrite inputs, the progress bar, the oracle ``--kernel gt`` mode, the
non-blind step (``--SR`` USRNet, or a weightless closed-form solver for methods without an image
output), and writing ``<name>_sr.png``, ``_sr_usrnet.png``, ``_kernel.{npy,mat,png}``,
``_kernels_seeds.npy``, ``results.md`` and ``metrics.json``. Every file is written under a temporary
name and renamed; ``metrics.json`` is written last, so an interrupted run never looks complete.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
import warnings
from pathlib import Path
from typing import Callable

import numpy as np

OUTPUT_SUFFIXES = ("_sr.png", "_sr_usrnet.png", "_kernel.npy", "_kernel.mat", "_kernel.png", "_kernels_seeds.npy")
REAL_NOISE = 10.0 / 255.0  # USRNet noise level for real images (FKP_SPEC 7.5)


@dataclasses.dataclass(frozen=True)
class Job:
    """One image to solve: its LR file and the optional HR image and ground-truth kernel (.mat)."""

    name: str
    lr: Path
    hr: Path | None
    gt_kernel: Path | None


@dataclasses.dataclass(frozen=True)
class Estimate:
    """What a method hands back for one image: per seed, the kernel at the run's scale (N, k, k),
    correlation convention) and, for methods with an image model, the SR image (N, H, W, 3) in [0, 1]."""

    kernels: np.ndarray
    srs: np.ndarray | None
    seconds: float


Progress = Callable[[int, float | None, np.ndarray | None], None]  # (iteration, loss, kernels (N, k, k))
Solver = Callable[[Job, np.ndarray, np.ndarray | None, Progress], Estimate]


@dataclasses.dataclass(frozen=True)
class StudySolver:
    """A method's solver for one image as the study runner (`fkp_jax.study`) drives it: the solver protocol.

    States are pytrees; ``init`` makes one restart, every other function sees a leading seed axis (N).
    - init(key) -> one restart's state; the runner vmaps it over the seeds' keys (and shards the result).
    - advance(state, n) -> (state, outputs): n more iterations of every seed, with the method's own driver
      (the state passed in may be donated); outputs are those of the last iteration.
    - kernels(state, outputs) -> (N, k, k): the current estimates at the run's scale (correlation convention).
    - loss(outputs) -> (N,): the training loss of the last iteration.
    - srs(outputs) -> (N, H, W, 3) SR images in [0, 1]; None for a method without an image model.
    - traceable_init: False for an init that cannot be traced (NumPy inside): it then runs seed by seed.
    """

    init: Callable[[object], object]
    advance: Callable[[object, int], tuple[object, dict]]
    kernels: Callable[[object, dict], object]
    loss: Callable[[dict], object]
    srs: Callable[[dict], object] | None = None
    traceable_init: bool = True


# (options, seed_mode) -> prepare(job, lr) -> StudySolver. seed_mode None: the method's fastest driver on this
# backend (e.g. a loop over seeds on CPU); "vmap": one batched computation over the seed axis (the study asks
# for it when it shards the seeds over several devices); "loop": the seeds one after another. lr is one LR
# image (H, W, 3), or, for a method with ``Method.batches_images``, one per batch row (N, H, W, 3) (the study
# then batches the seeds of several images of one size; ``job`` is the first of them).
StudyFactory = Callable[[argparse.Namespace, str | None], Callable[[Job, np.ndarray], StudySolver]]


@dataclasses.dataclass(frozen=True)
class Method:
    """A blind SR method as the command line sees it."""

    name: str  # module name, e.g. "dipfkp"
    title: str  # e.g. "DIP-FKP"
    model: str  # data-set folder prefix, e.g. "DIPFKP" (DIR/DIPFKP_lr_x2)
    scales: tuple[int, ...]
    priors: tuple[str, ...]  # --kernel-prior choices; the first is the default
    default_dataset: Path | Callable[[argparse.Namespace], Path]  # or parsed options -> folder
    default_iters: Callable[[argparse.Namespace], int]  # parsed options -> iterations (the original's)
    kernel_size: Callable[[int], int]  # sf -> size of the kernel the method returns
    check_lr: Callable[[str, np.ndarray, argparse.Namespace], None]  # (name, LR, options): ValueError if unusable
    build: Callable[[argparse.Namespace], Solver]
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None
    has_image_output: bool = True  # the method itself produces an SR image (DIP); else only a kernel
    image_model: str = "DIP"  # what makes its SR image (metrics.json config "sr")
    weights_help: str = ""  # --weights help where it is not the FKP prior's (the method's own weights, or none)
    own_weights: bool = False  # --weights loads the method's own network (KULNet), whatever the kernel prior
    iters_help: str = ""  # --iters help where the method fixes its iterations (default: the generic one)
    prior_help: str = ""
    other_models: tuple[str, ...] = ()  # folder prefixes also read when DIR has none of `model`
    study: StudyFactory | None = None  # the solver protocol for `python -m experiments.study` (optional)
    recorded_options: tuple[str, ...] = ()  # method options (argparse dests) written to metrics.json's config
    batches_images: bool = False  # its study solver takes one LR image per batch row (images of one size batched)
    pad_gt_kernel: bool = False  # smaller ground-truth kernels are zero-padded to kernel_size (read_gt_kernel)
    prior_titles: tuple[tuple[str, str], ...] = ()  # (prior, title) where a prior makes another named method
    gt_kernel_option: Callable[[argparse.Namespace], str | None] | None = None  # the option (if any) that needs
    # every image's ground-truth kernel besides --kernel gt, e.g. Diff-DKP's --released-quirks

    def title_for(self, prior: str) -> str:
        named = dict(self.prior_titles)
        if prior in named:
            return named[prior]
        return self.title if prior == self.priors[0] else f"{self.title} ({prior} kernel prior)"


def default_dataset(method: Method, args: argparse.Namespace) -> Path:
    """The bundled data set used when neither --dataset nor --input is given."""
    d = method.default_dataset
    return d(args) if callable(d) else d


def parse_args(method: Method, argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=f"python -m experiments.{method.name}", description=f"{method.title} blind SR.")
    p.add_argument("--sf", type=int, default=method.scales[0],
                   help=f"scale factor: {', '.join(map(str, method.scales))} (default {method.scales[0]})")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--dataset", type=Path, help="data set folder in the original layout (default: bundled images)")
    src.add_argument("--input", type=Path, help="a single LR image")
    p.add_argument("--real", action="store_true", help="no ground truth: skip HR and kernel metrics")
    p.add_argument("--iters", type=int, default=None,
                   help=method.iters_help or "iterations per image (default: the original's)")
    p.add_argument("--seeds", type=int, default=1,
                   help="independent restarts (the papers report means of 5); mean and std per image")
    p.add_argument("--seed", type=int, default=0, help="base random seed (restart i uses fold_in(seed, i))")
    p.add_argument("--kernel-prior", default=method.priors[0], choices=method.priors, help=method.prior_help)
    p.add_argument("--weights", help=method.weights_help or "FKP prior: an orbax checkpoint folder (ours, or converted"
                                                            " official weights) or the official FKP_x*.pt; default: "
                                                            "our shipped weights")
    p.add_argument("--kernel", choices=("estimate", "gt"), default="estimate",
                   help="gt: oracle mode, skip estimation and use the ground-truth kernel (checks the "
                        "non-blind step alone)")
    p.add_argument("--SR", dest="sr_weights", type=Path,
                   help="USRNet-tiny weights (official usrnet_tiny.pth or its conversion): run non-blind SR "
                        "with the estimated kernel")
    p.add_argument("--out", type=Path, help=f"output folder (default results/{method.name}_x{{sf}}/)")
    if method.add_arguments is not None:
        method.add_arguments(p)
    args = p.parse_args(argv)
    if args.iters is None:
        args.iters = method.default_iters(args) if args.sf in method.scales else 1
    return args


def uses_weights(method: Method, prior: str) -> bool:
    """Whether --weights reaches a run: the method's own network takes them (`Method.own_weights`), or they are
    the FKP prior's checkpoint, which only --kernel-prior fkp loads."""
    return method.own_weights or prior == "fkp"


def find_jobs(method: Method, args) -> list[Job]:
    """The images to process, with their optional HR and ground-truth kernel."""
    from fkp_jax import io

    if args.input is not None:
        if not args.input.is_file():
            raise FileNotFoundError(f"no such input image: {args.input}")
        return [Job(args.input.stem, args.input, None, None)]
    root = default_dataset(method, args) if args.dataset is None else args.dataset
    if not root.is_dir():
        raise FileNotFoundError(f"no such data set folder: {root}")
    layouts = [io.dataset_layout(root, args.sf, m) for m in (method.model, *method.other_models)]
    layout = next((lay for lay in layouts if lay.lr.is_dir()), None)
    if layout is None:
        raise FileNotFoundError(f"{root} has no {' or '.join(lay.lr.name + '/' for lay in layouts)} folder of "
                                f"LR images for x{args.sf}")
    jobs = []
    for lr in io.list_images(layout.lr):
        hr = next((p for p in sorted(layout.hr.glob(lr.stem + ".*")) if p.suffix.lower() in io.IMAGE_EXTENSIONS),
                  None) if layout.hr.is_dir() else None
        gt = layout.gt_kernel / (lr.stem + ".mat")
        jobs.append(Job(lr.stem, lr, None if args.real else hr, gt if gt.is_file() and not args.real else None))
    return jobs


def check_outputs(jobs: list[Job], out_dir: Path) -> None:
    """Refuse an output folder that would overwrite any input (one-line ValueError)."""
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


def check_gt_kernels(method: Method, jobs: list[Job], args) -> None:
    """One-line ValueError unless every image has a readable ground-truth kernel when the run needs them
    (--kernel gt, or `Method.gt_kernel_option`); checked before any output is made."""
    option = "--kernel gt" if args.kernel == "gt" else (method.gt_kernel_option and method.gt_kernel_option(args))
    if not option:
        return
    if args.real:
        raise ValueError(f"{option} needs ground-truth kernels; it cannot be combined with --real")
    if args.input is not None:
        raise ValueError(f"{option} needs ground-truth kernels, which --input does not give: use --dataset DIR "
                         f"(kernels in DIR/{method.model}_gt_k_x{args.sf}/)")
    for job in jobs:
        if job.gt_kernel is None:
            folder = job.lr.parent.name.replace("_lr_", "_gt_k_")
            raise ValueError(f"{job.name}: {option} needs its ground-truth kernel, {folder}/{job.name}.mat beside "
                             f"{job.lr.parent.name}/ (missing)")
        read_gt_kernel(job, None)


def read_lr(method: Method, job: Job, args, notes: bool = True) -> np.ndarray:
    """The LR image (HWC RGB float32), converted with a note if needed (notes=False: silently, for a check
    ahead of the run); one-line errors if unusable."""
    from fkp_jax import io

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lr = io.read_image(job.lr)
    for note in caught if notes else ():
        print(f"note: {note.message}", file=sys.stderr)
    io.check_finite(lr, job.name)
    if args.kernel != "gt":  # the oracle mode runs only the non-blind step
        method.check_lr(job.name, lr, args)
    return lr


def read_gt_kernel(job: Job, k: int | None, pad: bool = False) -> np.ndarray | None:
    """The ground-truth kernel; with k given it must be k x k (None: any size, for --kernel gt). pad=True (a
    method whose kernels are larger than the data's, `Method.pad_gt_kernel`): a smaller kernel is zero-padded
    by the same amount on every side to k x k, which keeps its centre and its sum."""
    from fkp_jax import io

    if job.gt_kernel is None:
        return None
    gt = io.read_kernel_mat(job.gt_kernel)
    if pad and k is not None and gt.shape[0] == gt.shape[1] and gt.shape[0] < k and (k - gt.shape[0]) % 2 == 0:
        gt = np.pad(gt, (k - gt.shape[0]) // 2)
    if k is not None and gt.shape != (k, k):
        raise ValueError(f"{job.gt_kernel}: ground-truth kernel is {gt.shape[0]}x{gt.shape[1]}, expected {k}x{k}")
    return gt


def image_metrics(job: Job, srs_u8: np.ndarray, sf: int) -> dict[str, list[float]] | None:
    """PSNR-Y / SSIM-Y of each SR image against the HR image (None without a usable HR image)."""
    from fkp_jax import io, metrics

    if job.hr is None:
        return None
    hr = io.read_image_u8(job.hr)
    hr = hr[: hr.shape[0] - hr.shape[0] % sf, : hr.shape[1] - hr.shape[1] % sf]
    if hr.shape != srs_u8.shape[1:]:
        print(f"note: {job.hr}: HR {hr.shape[0]}x{hr.shape[1]} does not match SR {srs_u8.shape[1]}x"
              f"{srs_u8.shape[2]}; image metrics skipped", file=sys.stderr)
        return None
    return {"psnr_y": [metrics.psnr_y(hr, s, sf) for s in srs_u8],
            "ssim_y": [metrics.ssim_y(hr, s, sf) for s in srs_u8]}


def to_u8(srs) -> np.ndarray:
    return np.clip(np.round(np.asarray(srs, np.float64) * 255.0), 0, 255).astype(np.uint8)


def make_nonblind(args) -> tuple[Callable[[np.ndarray, np.ndarray], np.ndarray] | None, str | None]:
    """The non-blind SR step for estimated kernels: USRNet with ``--SR``, else None; and its name."""
    if args.sr_weights is None:
        return None, None
    import jax.numpy as jnp

    from fkp_jax import usrnet

    params = usrnet.load_usrnet(args.sr_weights)
    sigma = REAL_NOISE if args.real else 0.0

    def run(lr, kernel):
        return np.asarray(usrnet.super_resolve(params, jnp.asarray(lr), jnp.asarray(kernel, jnp.float32),
                                               args.sf, sigma))

    return run, f"USRNet-tiny ({args.sr_weights})"


def closed_form(args) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """The weightless non-blind solver used when a method has no image output and no ``--SR``."""
    import jax.numpy as jnp

    from fkp_jax import usrnet

    return lambda lr, kernel: np.asarray(usrnet.closed_form_sr(jnp.asarray(lr), jnp.asarray(kernel, jnp.float32),
                                                               args.sf))


def sr_outputs(method: Method, job: Job, args, lr: np.ndarray, kernels: np.ndarray, srs, nonblind
               ) -> tuple[dict[str, list[float]], np.ndarray | None, np.ndarray | None]:
    """The SR images of every seed and their metrics: the method's own ``srs`` (N, H, W, 3) in [0, 1] (for a
    method without an image model and no ``--SR``: the closed-form solver's on each kernel) and USRNet's with
    ``--SR``. Returns (metric lists, SR uint8 or None, USRNet SR uint8 or None)."""
    result = {}
    srs = None if srs is None else to_u8(srs)
    nonblind_fn, _ = nonblind
    if srs is None and nonblind_fn is None and not method.has_image_output:
        fallback = closed_form(args)
        srs = to_u8([fallback(lr, kk) for kk in kernels])
    if srs is not None:
        result.update(image_metrics(job, srs, args.sf) or {})
    srs_usr = None
    if nonblind_fn is not None:
        srs_usr = to_u8([nonblind_fn(lr, kk) for kk in kernels])
        m = image_metrics(job, srs_usr, args.sf)
        if m is not None:
            result["psnr_y_usrnet"], result["ssim_y_usrnet"] = m["psnr_y"], m["ssim_y"]
    return result, srs, srs_usr


def run_job(method: Method, job: Job, args, solve: Solver | None, nonblind, out_dir: Path) -> dict:
    """Solve one image for all seeds; write its outputs; return its metrics lists."""
    from tqdm import tqdm

    from fkp_jax import io, metrics, report

    k = method.kernel_size(args.sf)
    lr = read_lr(method, job, args)
    gt = read_gt_kernel(job, None if solve is None else k, method.pad_gt_kernel)
    if solve is None:  # --kernel gt (`check_gt_kernels` made sure of gt)
        est = Estimate(np.repeat(gt[None].astype(np.float32), args.seeds, 0), None, 0.0)
    else:
        bar = tqdm(total=args.iters, desc=f"{job.name} x{args.sf}", unit="it", leave=True, dynamic_ncols=True)

        def progress(t, loss, kernels):
            bar.update(t - bar.n)
            if t % 10 == 0 or t == args.iters:
                post = {} if loss is None else {"loss": f"{loss:.5f}"}
                if gt is not None and kernels is not None:
                    post["kPSNR"] = f"{np.mean([metrics.kernel_psnr(gt, kk) for kk in kernels]):.2f}"
                bar.set_postfix(post)

        est = solve(job, lr, gt, progress)
        bar.close()
    kernels = np.asarray(est.kernels, np.float32)
    result = {"seeds": list(range(args.seeds)), "seconds": [est.seconds / args.seeds] * args.seeds}
    if gt is not None and solve is not None:  # (the oracle's kernel is the ground truth itself)
        result["kernel_psnr"] = [metrics.kernel_psnr(gt, kk) for kk in kernels]

    image_results, srs, srs_usr = sr_outputs(method, job, args, lr, kernels, est.srs, nonblind)
    result.update(image_results)
    if srs is not None:
        io.write_image_u8(out_dir / f"{job.name}_sr.png", srs[0])
    if srs_usr is not None:
        io.write_image_u8(out_dir / f"{job.name}_sr_usrnet.png", srs_usr[0])

    io.write_npy(out_dir / f"{job.name}_kernel.npy", kernels[0])
    io.write_kernel_mat(out_dir / f"{job.name}_kernel.mat", kernels[0])
    if args.seeds > 1:
        io.write_npy(out_dir / f"{job.name}_kernels_seeds.npy", kernels)
    pics, labels = [kernels[0]], ["estimate"]
    if "kernel_psnr" in result:
        pics, labels = [kernels[0], gt], [f"estimate {result['kernel_psnr'][0]:.2f} dB", "ground truth"]
    elif solve is None:
        labels = ["ground truth (--kernel gt)"]
    io.write_image_u8(out_dir / f"{job.name}_kernel.png", report.kernel_picture(pics, labels))
    return result


def main(method: Method, argv=None) -> int:
    """Parse, check, solve every image, write the outputs; 0 on success, 2 with a one-line error."""
    args = parse_args(method, argv)
    try:
        if args.sf not in method.scales:
            raise ValueError(f"unsupported scale factor --sf {args.sf}: {method.title} supports "
                             f"{', '.join(map(str, method.scales))}")
        if args.iters < 1 or args.seeds < 1:
            raise ValueError("--iters and --seeds must be positive")
        if args.sr_weights is not None and not args.sr_weights.exists():
            raise FileNotFoundError(f"no such USRNet weights file: {args.sr_weights}")
        if args.weights is not None and not uses_weights(method, args.kernel_prior):
            raise ValueError(f"--weights: {method.weights_help}" if method.weights_help else
                             f"--weights is an FKP prior checkpoint; --kernel-prior {args.kernel_prior} loads none")
        jobs = find_jobs(method, args)
        out_dir = Path(f"results/{method.name}_x{args.sf}") if args.out is None else args.out
        check_outputs(jobs, out_dir)
        for job in jobs:  # every image checked before any output is made
            read_lr(method, job, args, notes=False)
        check_gt_kernels(method, jobs, args)

        from fkp_jax import io, report, runtime

        runtime.configure()
        nonblind = make_nonblind(args)
        solve = None if args.kernel == "gt" else method.build(args)
        out_dir.mkdir(parents=True, exist_ok=True)
        # metrics.json marks a complete run: drop an earlier run's before this one starts
        (out_dir / "metrics.json").unlink(missing_ok=True)
        images = {job.name: run_job(method, job, args, solve, nonblind, out_dir) for job in jobs}
        mean = report.summarise(images)
        command = f"python -m experiments.{method.name} " + shlex.join(sys.argv[1:] if argv is None else argv)
        sr = (method.image_model if method.has_image_output else
              "USRNet-tiny" if nonblind[0] is not None else "closed-form FFT (no weights)")
        record = {"config": {"method": method.name, "sf": args.sf, "iters": args.iters, "seeds": args.seeds,
                             "seed": args.seed, "kernel_prior": args.kernel_prior, "kernel": args.kernel,
                             "weights": args.weights or (f"ours x{args.sf}" if args.kernel_prior == "fkp" else None),
                             "sr": sr, "usrnet": None if args.sr_weights is None else str(args.sr_weights),
                             "dataset": str(args.input or args.dataset or default_dataset(method, args)),
                             **{name: getattr(args, name) for name in method.recorded_options}},
                  "images": images, "mean": mean}
        title = f"{method.title_for(args.kernel_prior)} x{args.sf}, " + (
            "ground-truth kernel (oracle)" if args.kernel == "gt" else f"{args.iters} iterations")
        text = report.results_markdown(images, mean, title, command)
        io.write_text(out_dir / "results.md", text)
        io.write_json(out_dir / "metrics.json", record)  # last: its presence marks a complete run
    except (ValueError, FileNotFoundError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(text)
    print(f"outputs in {out_dir}/")
    return 0
