"""Side by side: seconds per DIP-FKP, DIP-DKP or KernelGAN-FKP iteration, official PyTorch code vs fkp-jax, this CPU.

    python -m benchmarks.vs_official --official DIR                  # 96x96 and 256x256 HR, x2, 2 rounds
    python -m benchmarks.vs_official --official DIR --sizes 96 --repeats 3 --threads 2 --json /tmp/vs.json
    python -m benchmarks.vs_official --official DIR --method kernelganfkp     # LR 200x200, ours with 1 and 5 seeds
    python -m benchmarks.vs_official --official-dkp DKPDIR --method dipdkp    # 96x96 and 256x256 HR, per DIP step

DIR is a checkout of the official FKP repository (https://github.com/JingyunLiang/FKP), DKPDIR one of the
official DKP repository (https://github.com/XYLGroup/DKP; --method dipdkp needs only this one), which the user
provides: nothing of them is copied into this repository and none of their files is edited; they are imported
from outside. Needs torch and what the official code imports (`pip install -e ".[torch]"`). CI does not run
this (it takes minutes and needs the official checkout); the numbers it appends to docs/benchmarks.md are the
record (--no-append: print the table only).

What one iteration is, on both sides: DIP forward + backward, FKP latent -> kernel, blur + x2 subsampling,
loss, both Adam updates and the sphere projection of the latent; x2, FKP prior, 1 seed, an LR image of
(size/2)x(size/2) drawn uniformly in [0, 1].
- official: `DIPFKP/model/model.py`'s class `DIPFKP` built with the checkout's own `Config` defaults
  (dip_lr 5e-3, kp_lr 0.5, model DIPFKP; `conf.max_iters` = warm-up + timed iterations) and the checkout's
  `data/pretrained_models/FKP_x2.pt`; its `train()` runs unmodified. The `tqdm.tqdm` that its loop iterates
  over is replaced, in that module only, by a generator that records `time.perf_counter()` at every step, so
  the interval between two records is exactly one pass of the loop body.
- fkp-jax: `fkp_jax.dipfkp.make_step` on `kernel_priors.fkp_prior(flow.load_prior(2))`, called in a Python
  loop as the CLI does on CPU, each call timed up to `jax.block_until_ready` of its outputs and new state;
  `fkp_jax.runtime.configure()` is called first when that module exists, as the CLI does (what it sets,
  e.g. its malloc tuning, applies to the fkp-jax child only; the official child runs as its main.py would).
The first --warmup iterations (5; the first fkp-jax call compiles) are dropped and the median of the next
--iters (10) is one round's figure, so the timed iterations are 6..15 on both sides (1 - SSIM loss, latent
still frozen; later iterations switch to MSE and update the latent, which changes the cost very little).
Each (size, side, round) runs in a fresh subprocess, official and fkp-jax alternating, in the order
official/ours, ours/official, ... so slow drift of the machine falls on both; the table gives the median
over rounds and the min-max.

KernelGAN-FKP (--method kernelganfkp; sizes are LR sizes, default 200): the official child builds
`KernelGANFKP/`'s `KernelGAN_FKP` and `DataGenerator_FKP` from its `Config_FKP` defaults (`--real`, no
shave) on a reproducible smooth random image and iterates a `DataLoader(batch 64, shuffle, 16 workers,
pin_memory)` exactly as its main.py, one `gan.train(g_in, d_in, i)` (3 D + 3 G steps) per batch; the
interval between two batches is one iteration, data loading included. Ours: `fkp_jax.kernelgan.make_step`
(crops drawn inside the step) in a Python loop, with 1 seed and with each --seeds count (a leading state
axis, one call advancing all seeds; the table gives the ratio per seed).

DIP-DKP (--method dipdkp; HR sizes, default 96 256; --warmup and --iters count DIP steps, default 5 and 30).
One iteration is one DIP step; DIP-DKP's other work is spread over its schedule (a DKP prior step at the
start of every outer iteration of Q = 5 DIP steps, a G_k data step at every 3rd DIP step), so each side is
timed over whole windows of 15 DIP steps (3 outer iterations = 3 prior steps + 5 data steps, a whole period
of both schedules): s/step = (time of the window) / 15, median over the windows of the timed steps (default
DIP steps 6..35, i.e. outer iterations 2..7, two windows). Excluded on both sides: the 200 G_k warm-up
steps before the loop and, with the default --warmup 5, the first outer iteration (our compilation, the
original's step-1 logging).
- official: `DIPDKP/DIPDKP/model/model.py`'s class `DIPDKP` and its unmodified `train()`, configured as
  `DIPDKP/DIPDKP/main.py` configures one image: its program-start seeds (NumPy 0, torch 0), the original
  `Config().parse` on the argument list main.py's `create_params` builds (`--model DIPDKP --input_image_path
  ../data/datasets/random/DIPDKP_lr_x2/random.png --sf 2 --real`), then the original
  `Settings.parameters_setting(conf, args, 5, 3, 5, 'DIPDKP', ...)` (Q = 5, P = 3, L = 5, as main.py
  hard-codes them); then `conf.max_iters` = (warm-up + timed steps) / 5 outer iterations, nothing else
  changed. The LR image (random uint8 of (size/2)^2, `numpy.random.default_rng(1)`) is written as PNG into a
  temporary tree laid out as main.py expects and read back with the original `read_image` / `im2tensor01`;
  the HR is all ones, as main.py sets it for `--real`. The child runs from that tree, so every file the
  original writes (its log folder, .mat / .png outputs, `Config`'s results folder, whose default is
  redirected there with `parser.set_defaults` because it points inside the checkout) lands in the
  temporary folder. The `tqdm.tqdm` its loop iterates over is replaced as for DIP-FKP; one loop pass is one
  outer iteration (the prior step, with its own DIP forward, + 5 DIP steps + their data steps).
  `model/model.py` imports `xlwt` and `torch.utils.tensorboard` at module level, used only for its logging
  (an .xls workbook saved 999 times at set-up, a TensorBoard event file; written at set-up, step 1 and every
  200th step, never inside the default timed steps): when `xlwt` / `tensorboard` are not installed, small
  do-nothing stub modules are put into `sys.modules` in the official child before the import (the result
  JSON and the table say which).
- fkp-jax: `fkp_jax.dipfkp.make_step` on `fkp_jax.dkp.dkp_prior(2)` (DIPFKPConfig(sf=2)), one call per DIP
  step in a Python loop as the CLI does on CPU (the prior step runs inside the first call of every 5, on
  that call's DIP output; the data step is part of every call, applied at every 3rd), each call timed up to
  `jax.block_until_ready`; `fkp_jax.runtime.configure()` first; the state (and G_k warm-up) made before
  the loop; the same LR image / 255.

How the official code, written for CUDA, is redirected to the CPU without editing it: the class is built
with `device=torch.device('cpu')` (its default is 'cuda'); `torch.load` is wrapped to pass
`map_location='cpu'` (the checkpoint was saved from CUDA); `torch.Tensor.cuda` and `torch.nn.Module.cuda` are
made identities as a safety net (the DIP-FKP path of the current code does not call them; `util.py` uses
`.cuda()` only in image loaders this benchmark does not call); the official `Config().parse()` is not used
because it calls `torch.cuda.set_device` (its parser's defaults are read instead); `torch.cuda.manual_seed`
and `torch.backends.cudnn.benchmark = True`, which the constructor calls, do nothing on a CPU-only run and
are left alone. The child checks that every parameter and the latent are on the CPU. The kernel plot that
`train()` writes at the end goes to a temporary folder (with `kernel_gt` all ones, as the official
`--real` mode sets it). DIP-DKP additionally sends tensors to `torch.device('cuda')` with `.to(...)` inside
its loop and calls `.cuda()` in `make_gradient_filter` / `im2tensor01`, and its `Config.parse` calls
`torch.cuda.set_device`: in its child `torch.Tensor.to` maps a CUDA device argument to the CPU,
`torch.Tensor.cuda` / `torch.nn.Module.cuda` are identities and `torch.cuda.set_device` does nothing; the
model is built with `device=torch.device('cpu')`.

Threads (--threads N, default all cores, `os.cpu_count()`): the official child calls
`torch.set_num_threads(N)` and runs with OMP_NUM_THREADS = MKL_NUM_THREADS = N; XLA:CPU sizes its thread
pool from the CPUs the process may run on, so when N is below that number both children are pinned
(`os.sched_setaffinity`) to the first N CPUs, and N threads means N cores on both sides.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MARK = "@@vs_official@@ "
OFFICIAL_MODEL = Path("DIPFKP") / "model" / "model.py"
OFFICIAL_GAN_MODEL = Path("KernelGANFKP") / "model" / "model_FKP.py"
OFFICIAL_KP = Path("data") / "pretrained_models" / "FKP_x2.pt"
OFFICIAL_DKP = Path("DIPDKP") / "DIPDKP"  # DIP-DKP's main.py folder in a checkout of XYLGroup/DKP
SF = 2
NEEDED = ("torch", "matplotlib", "PIL", "cv2", "scipy", "tqdm")  # what the official DIPFKP code imports
# (the official DIPDKP code imports these too, plus xlwt and tensorboard, stubbed when missing)
DKP_Q, DKP_P = 5, 3  # DIP steps per outer iteration, G_k data-step period (DIPDKP/main.py's hard-coded Q, P)
DKP_WINDOW = DKP_Q * DKP_P  # 15 DIP steps = 3 outer iterations: one whole period of both schedules


# ---------------------------------------------------------------- children (each in a fresh process)

def _pin(threads: int) -> list[int] | None:
    """Pin this process to the first `threads` CPUs it may use, when that is fewer than all of them."""
    allowed = sorted(os.sched_getaffinity(0))
    if threads >= len(allowed):
        return None
    cpus = allowed[:threads]
    os.sched_setaffinity(0, cpus)
    return cpus


def redirect_cuda_to_cpu(torch) -> None:
    """From outside the official code: ``torch.load`` maps CUDA checkpoints to the CPU, ``.cuda()`` of
    tensors and modules is the identity (see the module docstring)."""
    torch_load = torch.load

    def load_on_cpu(f, map_location=None, *a, **kw):
        return torch_load(f, "cpu", *a, **kw)

    torch.load = load_on_cpu
    torch.Tensor.cuda = lambda self, *a, **kw: self
    torch.nn.Module.cuda = lambda self, *a, **kw: self


def record_loop_steps(module, sync=None) -> list[float]:
    """Replace ``module.tqdm.tqdm`` (the official training loop's progress bar) by a generator that appends
    ``time.perf_counter()`` at every step and at the end: the interval between two stamps is one loop pass.
    ``sync`` (e.g. ``torch.cuda.synchronize``) is called before each stamp, so a pass includes its GPU work."""
    stamps: list[float] = []
    sync = sync or (lambda: None)

    def timed(iterable, *a, **kw):
        for x in iterable:
            sync()
            stamps.append(time.perf_counter())
            yield x
        sync()
        stamps.append(time.perf_counter())

    module.tqdm = types.SimpleNamespace(tqdm=timed)
    return stamps


def child_official(root: Path, h: int, w: int, threads: int, warmup: int, iters: int, cuda: bool = False) -> dict:
    pinned = _pin(threads)
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    sys.path[:0] = [str(root / "DIPFKP"), str(root)]  # as DIPFKP/main.py sees them (run from DIPFKP/)

    if cuda:  # as released: its own .cuda() calls and CUDA checkpoint
        if not torch.cuda.is_available():
            raise RuntimeError("--cuda: torch sees no CUDA device")
        device = torch.device("cuda")
    else:  # CUDA -> CPU, from outside (see the module docstring).
        redirect_cuda_to_cpu(torch)
        device = torch.device("cpu")

    from config.configs import Config  # DIR/DIPFKP/config/configs.py
    import model.model as official  # DIR/DIPFKP/model/model.py

    stamps = record_loop_steps(official, torch.cuda.synchronize if cuda else None)

    conf = Config().parser.parse_args([])  # the official defaults, without parse()'s torch.cuda.set_device
    k = min(SF * 4 + 3, 21)
    with tempfile.TemporaryDirectory() as tmp:
        conf.sf = SF
        conf.model = "DIPFKP"
        conf.max_iters = warmup + iters
        conf.path_KP = str(root / OFFICIAL_KP)
        conf.input_image_path = f"random LR {h // SF}x{w // SF}"
        conf.img_name = "random"
        conf.output_dir_path = tmp
        conf.verbose = False
        conf.real = True
        conf.kernel_gt = np.ones([k, k])  # as Config.parse() sets it for --real
        torch.manual_seed(1)
        lr = torch.rand(1, 3, h // SF, w // SF).to(device)
        m = official.DIPFKP(conf, lr, device=device)
        tensors = [*m.net_dip.parameters(), *m.net_kp.parameters(), *m.net_kp.buffers(), m.kernel_code, m.input_dip]
        devices = sorted({t.device.type for t in tensors})
        if devices != [device.type]:
            raise RuntimeError(f"official model not on the {device.type}: {devices}")
        m.train()
    per_iter = [b - a for a, b in zip(stamps, stamps[1:])]
    if len(per_iter) != warmup + iters:
        raise RuntimeError(f"expected {warmup + iters} loop passes, recorded {len(per_iter)}")
    timed_s = per_iter[warmup:]
    return {"side": "official", "h": h, "w": w, "threads": threads, "torch_threads": torch.get_num_threads(),
            "pinned_cpus": pinned, "s_per_iter": statistics.median(timed_s), "timed_s": timed_s,
            "warmup_s": per_iter[:warmup], "timed_iterations": [warmup + 1, warmup + iters],
            "dip_lr": conf.dip_lr, "kp_lr": conf.kp_lr, "torch": torch.__version__,
            "device": torch.cuda.get_device_name() if cuda else "cpu"}


def child_ours(h: int, w: int, threads: int, warmup: int, iters: int) -> dict:
    pinned = _pin(threads)
    configured = importlib.util.find_spec("fkp_jax.runtime") is not None
    if configured:  # set up like our CLI, before jax is imported
        from fkp_jax import runtime

        configured = hasattr(runtime, "configure")
        if configured:
            runtime.configure()
    import jax

    from fkp_jax import dipfkp, flow, kernel_priors

    prior = kernel_priors.fkp_prior(flow.load_prior(SF))
    config = dipfkp.DIPFKPConfig(sf=SF)
    lr = jax.random.uniform(jax.random.key(1), (1, h // SF, w // SF, 3))
    state = dipfkp.init_state(jax.random.key(0), prior, (h // SF, w // SF), config)
    step = dipfkp.make_step(prior, config)
    per_iter = []
    for _ in range(warmup + iters):
        t0 = time.perf_counter()
        state, out = step(state, lr)
        jax.block_until_ready((state, out))
        per_iter.append(time.perf_counter() - t0)
    timed_s = per_iter[warmup:]
    return {"side": "ours", "h": h, "w": w, "threads": threads, "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "runtime_configure": configured, "pinned_cpus": pinned, "s_per_iter": statistics.median(timed_s),
            "timed_s": timed_s, "warmup_s": per_iter[:warmup], "timed_iterations": [warmup + 1, warmup + iters],
            "jax": jax.__version__, "device": str(jax.devices()[0])}


def _smooth_random_image(h: int, w: int):
    """A reproducible natural-ish RGB test image in [0, 1]: uniform noise blurred at two scales."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(1)
    coarse = cv2.resize(rng.random((h // 8, w // 8, 3)), (w, h), interpolation=cv2.INTER_CUBIC)
    fine = cv2.GaussianBlur(rng.random((h, w, 3)), (0, 0), 1.0)
    return np.clip(0.7 * coarse + 0.3 * fine, 0, 1).astype(np.float32)


def child_official_kernelgan(root: Path, h: int, w: int, threads: int, warmup: int, iters: int) -> dict:
    """The official KernelGAN-FKP x2 loop as its main.py runs it: DataLoader(batch 64, shuffle, 16 workers,
    pin_memory) over DataGenerator_FKP, `KernelGAN_FKP.train(g_in, d_in, i)` per batch (3 D + 3 G steps)."""
    pinned = _pin(threads)
    import cv2
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    sys.path[:0] = [str(root / "KernelGANFKP"), str(root)]  # as KernelGANFKP/main.py sees them
    redirect_cuda_to_cpu(torch)

    from config.configs_FKP import Config_FKP  # DIR/KernelGANFKP/config/configs_FKP.py
    from dataloader.dataloader_FKP import DataGenerator_FKP
    from model.model_FKP import KernelGAN_FKP

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "random.png"
        cv2.imwrite(str(path), np.round(_smooth_random_image(h, w)[..., ::-1] * 255).astype(np.uint8))
        conf = Config_FKP().parser.parse_args([])  # defaults, without parse()'s torch.cuda.set_device
        conf.input_image_path, conf.img_name, conf.output_dir_path = str(path), "random", tmp
        conf.path_KP = str(root / OFFICIAL_KP)
        conf.real = True  # no ground truth, no 10-pixel shave
        conf.kernel_gt = np.ones([11, 11])
        gan = KernelGAN_FKP(conf)
        data = DataGenerator_FKP(conf, gan)
        loader = torch.utils.data.DataLoader(data, batch_size=64, shuffle=True, num_workers=16, pin_memory=True)
        devices = sorted({t.device.type for t in [*gan.G.parameters(), *gan.D.parameters()]})
        if devices != ["cpu"]:
            raise RuntimeError(f"official model not on the CPU: {devices}")
        stamps = [time.perf_counter()]
        for i, (g_in, d_in) in enumerate(loader):
            if i >= warmup + iters:
                break
            gan.train(g_in, d_in, i + 1)
            stamps.append(time.perf_counter())
    per_iter = [b - a for a, b in zip(stamps, stamps[1:])]
    timed_s = per_iter[warmup:]
    return {"side": "official", "h": h, "w": w, "threads": threads, "torch_threads": torch.get_num_threads(),
            "pinned_cpus": pinned, "s_per_iter": statistics.median(timed_s), "timed_s": timed_s,
            "warmup_s": per_iter[:warmup], "timed_iterations": [warmup + 1, warmup + iters], "torch": torch.__version__}


def child_ours_kernelgan(h: int, w: int, threads: int, warmup: int, iters: int, seeds: int = 1) -> dict:
    """Our KernelGAN-FKP x2 step (`fkp_jax.kernelgan.make_step`, crops drawn inside the step) in a Python
    loop; with seeds > 1 the state has a leading seed axis and one call advances every seed."""
    pinned = _pin(threads)
    from fkp_jax import runtime

    runtime.configure()
    import jax

    from fkp_jax import flow, kernelgan

    prior = flow.load_prior(2)
    config = kernelgan.KernelGANConfig(sf=2)
    sampler = kernelgan.make_sampler(_smooth_random_image(h, w))
    keys = jax.random.split(jax.random.key(0), seeds)
    # seed states made one by one and stacked (init_state draws through NumPy, so it cannot be vmapped)
    state = (kernelgan.stack_states([kernelgan.init_state(k, prior, config) for k in keys]) if seeds > 1
             else kernelgan.init_state(keys[0], prior, config))
    step = kernelgan.make_step(prior, config, seeds=seeds > 1)
    per_iter = []
    for _ in range(warmup + iters):
        t0 = time.perf_counter()
        state, out = step(state, sampler)
        jax.block_until_ready((state, out))
        per_iter.append(time.perf_counter() - t0)
    timed_s = per_iter[warmup:]
    return {"side": "ours", "h": h, "w": w, "threads": threads, "seeds": seeds, "pinned_cpus": pinned,
            "runtime_configure": True, "s_per_iter": statistics.median(timed_s), "timed_s": timed_s,
            "warmup_s": per_iter[:warmup], "timed_iterations": [warmup + 1, warmup + iters],
            "jax": jax.__version__, "device": str(jax.devices()[0])}


def _random_lr_u8(h: int, w: int):
    """The DIP-DKP test image: a reproducible LR image (h, w, 3) uint8, uniform over 0..255."""
    import numpy as np

    return np.random.default_rng(1).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _dkp_windows(step_s: list[float]) -> list[float]:
    """Seconds per DIP step of each whole 15-step window (3 outer iterations) of per-step times."""
    n = len(step_s) // DKP_WINDOW
    return [sum(step_s[i * DKP_WINDOW:(i + 1) * DKP_WINDOW]) / DKP_WINDOW for i in range(n)]


def _stub_logging_modules() -> list[str]:
    """xlwt and TensorBoard, which the official DIPDKP/model/model.py imports at module level for its logging
    only (an .xls workbook, a TensorBoard event file), as do-nothing stubs in sys.modules when not installed."""
    stubbed = []
    if importlib.util.find_spec("xlwt") is None:
        class Sheet:
            def write(self, *a, **kw):
                pass

        class Workbook:
            def add_sheet(self, *a, **kw):
                return Sheet()

            def save(self, *a, **kw):
                pass

        sys.modules["xlwt"] = types.SimpleNamespace(Workbook=Workbook, easyxf=lambda *a, **kw: None)
        stubbed.append("xlwt")
    if importlib.util.find_spec("tensorboard") is None:
        class SummaryWriter:
            def __init__(self, *a, **kw):
                pass

            def __getattr__(self, name):  # add_scalar, flush, close, ...
                return lambda *a, **kw: None

        sys.modules["torch.utils.tensorboard"] = types.SimpleNamespace(SummaryWriter=SummaryWriter)
        stubbed.append("torch.utils.tensorboard")
    return stubbed


def child_official_dkp(root: Path, h: int, w: int, threads: int, warmup: int, iters: int) -> dict:
    """The official DIP-DKP x2 (`DIPDKP/DIPDKP/model/model.py`'s `DIPDKP.train()`), configured as its main.py
    configures one image; `warmup` and `iters` count DIP steps (multiples of Q = 5 and of 15)."""
    pinned = _pin(threads)
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    sys.path[:0] = [str(root / OFFICIAL_DKP), str(root / "DIPDKP")]  # as DIPDKP/DIPDKP/main.py sees them

    # CUDA -> CPU, from outside (see the module docstring).
    def on_cpu(x):
        if isinstance(x, torch.device) and x.type == "cuda" or isinstance(x, str) and x.startswith("cuda"):
            return torch.device("cpu")
        return x

    tensor_to = torch.Tensor.to

    def to_cpu(self, *a, **kw):
        return tensor_to(self, *(on_cpu(x) for x in a), **{k: on_cpu(v) for k, v in kw.items()})

    torch.Tensor.to = to_cpu
    torch.Tensor.cuda = lambda self, *a, **kw: self
    torch.nn.Module.cuda = lambda self, *a, **kw: self
    torch.cuda.set_device = lambda *a, **kw: None
    stubbed = _stub_logging_modules()

    from PIL import Image

    from Settings import parameters_setting  # DIR/DIPDKP/DIPDKP/Settings.py
    from config.configs import Config  # DIR/DIPDKP/DIPDKP/config/configs.py
    import model.model as official  # DIR/DIPDKP/DIPDKP/model/model.py
    from model.util import im2tensor01, read_image

    stamps = record_loop_steps(official)

    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        # main.py runs from DIPDKP/DIPDKP/ and reads ../data/datasets/<set>/DIPDKP_lr_x2/<img>.png: a scratch
        # tree of that shape, so that its relative paths (and every file it writes) stay in tmp.
        run_dir = Path(tmp) / "DIPDKP"
        lr_dir = Path(tmp) / "data" / "datasets" / "random" / f"DIPDKP_lr_x{SF}"
        run_dir.mkdir()
        lr_dir.mkdir(parents=True)
        Image.fromarray(_random_lr_u8(h // SF, w // SF)).save(lr_dir / "random.png")
        os.chdir(run_dir)
        try:
            np.random.seed(0)  # main.py's program-start seeds
            torch.manual_seed(0)
            args = argparse.Namespace(model="DIPDKP", dataset="random", sf=str(SF), SR=False, real=True,
                                      input_dir=f"../data/datasets/random/DIPDKP_lr_x{SF}")
            params = ["--model", args.model, "--input_image_path", args.input_dir + "/random.png",
                      "--sf", args.sf, "--real"]  # main.py's create_params for this image, with --real
            cfg = Config()
            cfg.parser.set_defaults(output_dir_path=str(Path(tmp) / "config" / "results"))  # not in DIR
            conf = cfg.parse(params)
            now = str(datetime.datetime.now())[:-10].replace(":", "-")
            conf, args = parameters_setting(conf, args, DKP_Q, DKP_P, 5, "DIPDKP", "random.png", now)
            conf.max_iters = (warmup + iters) // DKP_Q  # outer iterations; nothing else changed
            lr = im2tensor01(read_image(os.path.join(args.input_dir, "random.png"))).unsqueeze(0)
            hr = torch.ones(lr.shape[0], lr.shape[1], lr.shape[2] * SF, lr.shape[3] * SF)  # main.py, --real
            m = official.DIPDKP(conf, lr, hr, device=torch.device("cpu"))
            tensors = [*m.net_dip.parameters(), *m.net_kp.parameters(), m.kernel_code, m.input_dip, m.lr,
                       m.grad_filters]
            devices = sorted({t.device.type for t in tensors})
            if devices != ["cpu"]:
                raise RuntimeError(f"official model not on the CPU: {devices}")
            t0 = time.perf_counter()
            m.train()
            total = time.perf_counter() - t0
        finally:
            os.chdir(cwd)
    outer = [b - a for a, b in zip(stamps, stamps[1:])]
    if len(outer) != conf.max_iters:
        raise RuntimeError(f"expected {conf.max_iters} outer iterations, recorded {len(outer)}")
    timed_outer = outer[warmup // DKP_Q:]
    windows = [sum(timed_outer[i:i + DKP_P]) / DKP_WINDOW for i in range(0, len(timed_outer) - DKP_P + 1, DKP_P)]
    return {"side": "official", "h": h, "w": w, "threads": threads, "torch_threads": torch.get_num_threads(),
            "pinned_cpus": pinned, "s_per_iter": statistics.median(windows), "window_s_per_step": windows,
            "timed_outer_s": timed_outer, "warmup_outer_s": outer[:warmup // DKP_Q],
            "setup_and_gk_warmup_s": stamps[0] - t0 if stamps else None, "train_s": total,
            "timed_iterations": [warmup + 1, warmup + iters], "stubbed_modules": stubbed,
            "Q_P_L": [conf.I_loop_x, conf.I_loop_k, conf.D_loop], "max_iters": conf.max_iters,
            "dip_lr": conf.dip_lr, "kp_lr": conf.DIPDKP_kp_lr, "torch": torch.__version__}


def child_ours_dkp(h: int, w: int, threads: int, warmup: int, iters: int) -> dict:
    """Our DIP-DKP x2: `fkp_jax.dipfkp.make_step` on `fkp_jax.dkp.dkp_prior(2)` in a Python loop, one call
    per DIP step (the prior step runs inside the first step of every 5, the G_k data step at every 3rd)."""
    pinned = _pin(threads)
    from fkp_jax import runtime

    runtime.configure()
    import jax
    import jax.numpy as jnp

    from fkp_jax import dipfkp, dkp

    prior = dkp.dkp_prior(SF)
    config = dipfkp.DIPFKPConfig(sf=SF)
    lr = jnp.asarray(_random_lr_u8(h // SF, w // SF) / 255.0, jnp.float32)[None]
    t0 = time.perf_counter()
    state = dipfkp.init_state(jax.random.key(0), prior, (h // SF, w // SF), config)  # runs the G_k warm-up
    jax.block_until_ready(state)
    init_s = time.perf_counter() - t0
    step = dipfkp.make_step(prior, config)
    per_step = []
    for _ in range(warmup + iters):
        t0 = time.perf_counter()
        state, out = step(state, lr)
        jax.block_until_ready((state, out))
        per_step.append(time.perf_counter() - t0)
    timed_s = per_step[warmup:]
    windows = _dkp_windows(timed_s)
    return {"side": "ours", "h": h, "w": w, "threads": threads, "pinned_cpus": pinned, "runtime_configure": True,
            "s_per_iter": statistics.median(windows), "window_s_per_step": windows, "timed_s": timed_s,
            "warmup_s": per_step[:warmup], "init_and_gk_warmup_s": init_s,
            "timed_iterations": [warmup + 1, warmup + iters], "jax": jax.__version__,
            "device": str(jax.devices()[0])}


# ---------------------------------------------------------------- parent

def cpu_info() -> tuple[str, bool]:
    from fkp_jax import runtime

    return runtime.cpu_model(), runtime.has_avx512()


def child_env(side: str, threads: int) -> dict:
    env = dict(os.environ)
    if side == "official":
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    return env


def run_child(side: str, h: int, w: int, args, seeds: int = 1) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.vs_official", "--child", side, "--sizes", f"{h}x{w}",
           "--threads", str(args.threads), "--warmup", str(args.warmup), "--iters", str(args.iters),
           "--method", args.method, "--seeds", str(seeds)] + (["--cuda"] if args.cuda else [])
    if side == "official":
        cmd += ["--official-dkp", str(args.official_dkp)] if args.method == "dipdkp" else \
            ["--official", str(args.official)]
    res = subprocess.run(cmd, cwd=REPO, env=child_env(side, args.threads), capture_output=True, text=True)
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith(MARK)]
    if res.returncode != 0 or not lines:
        raise RuntimeError(f"{side} child for {h}x{w} failed (exit {res.returncode}):\n"
                           f"{res.stdout[-1500:]}{res.stderr[-3000:]}")
    return json.loads(lines[-1][len(MARK):])


def parse_size(text: str, least: int = 64) -> tuple[int, int]:
    h, w = (int(v) for v in (text.lower().split("x") if "x" in text.lower() else (text, text)))
    if h % SF or w % SF or h < least or w < least:
        raise ValueError(f"size {text}: needs both sides even and at least {least}")
    return h, w


def fmt(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def report(rows: list[dict], args, argv: list[str]) -> str:
    name, avx512 = cpu_info()
    first = dict(rows[0]["rounds"][0])
    first["ours"] = first["ours1"]
    n = args.threads
    xla = "XLA sizes its thread pool from the CPUs the process may use"
    pinned = first["ours"]["pinned_cpus"]
    gan = args.method == "kernelganfkp"
    dkp = args.method == "dipdkp"
    what = "KernelGAN-FKP" if gan else "DIP-DKP" if dkp else "DIP-FKP"
    if dkp:
        first_step, last_step = args.warmup + 1, args.warmup + args.iters
        timing = (f"x2, DKP prior (Q = {DKP_Q} DIP steps per outer iteration, G_k data step every {DKP_P}, "
                  f"L = 5 random kernels per prior step; the original's main.py settings), 1 seed; an iteration "
                  f"is one DIP step; s/step = time of DIP steps {first_step}..{last_step} (outer iterations "
                  f"{first_step // DKP_Q + 1}..{last_step // DKP_Q}, 1-based) in whole windows of {DKP_WINDOW} steps "
                  f"(3 outer iterations: 3 prior steps, 5 data steps) / {DKP_WINDOW}, median over the "
                  f"{args.iters // DKP_WINDOW} window{'s' * (args.iters // DKP_WINDOW != 1)} of a fresh process "
                  f"(200 G_k warm-up steps and compilation excluded), then median (min-max) over {args.repeats} "
                  f"round{'s' * (args.repeats != 1)}, the two sides alternating. Official: the loop of its "
                  f"`DIPDKP.train()` timed per outer iteration (prior step with its own DIP forward + 5 DIP steps "
                  f"+ data steps); ours: `dipfkp.make_step` with `dkp.dkp_prior(2)`, one call per DIP step.")
        stubbed = first["official"].get("stubbed_modules")
        if stubbed:
            timing += (f" Not installed, replaced in the official child by do-nothing stubs: {', '.join(stubbed)} "
                       "(its .xls / TensorBoard logging: set-up and step 1 only, outside the timed steps).")
    unit = "s/step" if dkp else "s/it"
    where = (f"GPU: {first['official']['device']} on both sides (official: CUDA as released, "
             f"torch.cuda.synchronize() before each stamp; ours: {first['ours']['device']}, each step blocked on); "
             f"host CPU {name}. " if args.cuda else
             f"CPU: {name} ({'with' if avx512 else 'no'} AVX-512), {os.cpu_count()} cores, {n} thread{'s' * (n != 1)} on both sides "
             f"(torch.set_num_threads({n}), OMP/MKL_NUM_THREADS={n}; {xla}"
             f"{f'; both pinned to CPUs {pinned}' if pinned else ''}). ")
    lines = [
        f"### fkp-jax vs official PyTorch {what}, {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}",
        "",
        where +
        f"torch {first['official']['torch']}, jax {first['ours']['jax']}"
        f"{', fkp_jax.runtime.configure() called' if first['ours']['runtime_configure'] else ''}.",
        timing if dkp else
        ("x2, FKP prior, batch 64 (3 D + 3 G steps per iteration; the official DataLoader with its 16 workers "
         "included, our crops drawn inside the step)" if gan else "x2, FKP prior, 1 seed") +
        f"; s/it = median of iterations {args.warmup + 1}..{args.warmup + args.iters} of a "
        f"fresh process, then median (min-max) over {args.repeats} round{'s' * (args.repeats != 1)}, the two sides alternating.",
        f"Command: `python -m benchmarks.vs_official {shlex.join(argv)}`",
        "",
        f"| {'LR' if gan else 'HR'} size | official PyTorch {unit} | fkp-jax {unit} | ratio fkp-jax / official |"
        + "".join(f" fkp-jax {n} seeds s/it (all seeds) | ratio per seed |" for n in args.seeds if n > 1),
        "| --- | ---: | ---: | ---: |" + " ---: | ---: |" * sum(n > 1 for n in args.seeds),
    ]
    for row in rows:
        off = [r["official"]["s_per_iter"] for r in row["rounds"]]
        med = statistics.median(off)
        cells = []
        for n in args.seeds:
            ours = [r[f"ours{n}"]["s_per_iter"] for r in row["rounds"]]
            ratio = statistics.median(ours) / med / n
            cells.append(f" {fmt(ours)} | {ratio:.2f} |")
        lines.append(f"| {row['h']}x{row['w']} | {fmt(off)} |" + "".join(cells))
    return "\n".join(lines) + "\n\n"


def fail(msg: str) -> int:
    print(f"vs_official: error: {msg}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(prog="python -m benchmarks.vs_official",
                                description=__doc__.split("\n")[0],
                                epilog="Details (what is timed, how CUDA is redirected): see the module docstring.")
    p.add_argument("--official", type=Path,
                   help="checkout of https://github.com/JingyunLiang/FKP (required for dipfkp and kernelganfkp)")
    p.add_argument("--official-dkp", type=Path,
                   help="checkout of https://github.com/XYLGroup/DKP (required for dipdkp)")
    p.add_argument("--method", choices=("dipfkp", "dipdkp", "kernelganfkp"), default="dipfkp",
                   help="dipfkp (default), dipdkp or kernelganfkp")
    p.add_argument("--sizes", nargs="+", default=None,
                   help="image sizes, N for NxN or HxW: HR for dipfkp and dipdkp (default 96 256; at least 48), "
                        "LR for kernelganfkp (default 200; at least 64)")
    p.add_argument("--seeds", nargs="+", type=int, default=None,
                   help="seed counts timed on our side (kernelganfkp default: 1 5; dipfkp: 1)")
    p.add_argument("--repeats", type=int, default=2, help="rounds per size, each side in a fresh process (default 2)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for both sides (default: all cores)")
    p.add_argument("--iters", type=int, default=None,
                   help="timed iterations per process (default 10; dipdkp: DIP steps, a multiple of 15, default 30)")
    p.add_argument("--warmup", type=int, default=None,
                   help="iterations dropped first (default 5; dipdkp: DIP steps, a multiple of 5, default 5)")
    p.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md", help="Markdown file appended to")
    p.add_argument("--no-append", action="store_true", help="print the table only, do not append it to --out")
    p.add_argument("--json", type=Path, help="also write the raw numbers here")
    p.add_argument("--cuda", action="store_true",
                   help="dipfkp on a GPU: the official code on CUDA as released (no redirection), ours on JAX's "
                        "GPU backend; each official loop pass ends with torch.cuda.synchronize()")
    p.add_argument("--child", choices=("official", "ours"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.cuda and args.method != "dipfkp":
        return fail("--cuda applies to --method dipfkp only")
    gan = args.method == "kernelganfkp"
    dkp = args.method == "dipdkp"
    args.iters = (DKP_WINDOW * 2 if dkp else 10) if args.iters is None else args.iters
    args.warmup = (DKP_Q if dkp else 5) if args.warmup is None else args.warmup
    args.sizes = args.sizes or (["200"] if gan else ["96", "256"])
    args.seeds = args.seeds or ([1, 5] if gan and not args.child else [1])
    if gan and not args.child and args.seeds[0] != 1:
        args.seeds = [1] + args.seeds
    if args.iters < 1 or args.warmup < 0 or args.repeats < 1 or args.threads < 1:
        return fail("--iters, --repeats and --threads must be at least 1, --warmup at least 0")
    if dkp and args.seeds != [1]:
        return fail("--seeds applies to --method kernelganfkp only")
    if dkp and (args.iters % DKP_WINDOW or args.warmup % DKP_Q):
        return fail(f"dipdkp: --iters must be a multiple of {DKP_WINDOW} DIP steps (whole periods of the prior "
                    f"and data steps) and --warmup a multiple of {DKP_Q} (whole outer iterations)")
    try:
        sizes = [parse_size(s, 64 if gan else 48) for s in args.sizes]
    except ValueError as e:
        return fail(str(e))

    if args.child:
        (h, w), = sizes
        if args.child == "official" and dkp:
            res = child_official_dkp(args.official_dkp.resolve(), h, w, args.threads, args.warmup, args.iters)
        elif args.child == "official":
            res = child_official_kernelgan(args.official.resolve(), h, w, args.threads, args.warmup, args.iters) \
                if gan else child_official(args.official.resolve(), h, w, args.threads, args.warmup, args.iters,
                                           args.cuda)
        elif dkp:
            res = child_ours_dkp(h, w, args.threads, args.warmup, args.iters)
        elif gan:
            res = child_ours_kernelgan(h, w, args.threads, args.warmup, args.iters, args.seeds[0])
        else:
            res = child_ours(h, w, args.threads, args.warmup, args.iters)
        print(MARK + json.dumps(res), flush=True)
        return 0

    if dkp:
        if args.official_dkp is None:
            return fail("--method dipdkp: --official-dkp DIR is required "
                        "(a checkout of https://github.com/XYLGroup/DKP)")
        args.official_dkp = args.official_dkp.expanduser().resolve()
        if not args.official_dkp.is_dir():
            return fail(f"--official-dkp {args.official_dkp}: no such directory")
        for f in ("model/model.py", "Settings.py", "config/configs.py"):
            if not (args.official_dkp / OFFICIAL_DKP / f).is_file():
                return fail(f"--official-dkp {args.official_dkp}: not a DKP checkout (no {OFFICIAL_DKP / f})")
    else:
        if args.official is None:
            return fail("--official DIR is required (a checkout of https://github.com/JingyunLiang/FKP)")
        args.official = args.official.expanduser().resolve()
        if not args.official.is_dir():
            return fail(f"--official {args.official}: no such directory")
        model_file = OFFICIAL_GAN_MODEL if gan else OFFICIAL_MODEL
        if not (args.official / model_file).is_file():
            return fail(f"--official {args.official}: not an FKP checkout (no {model_file})")
        if not (args.official / OFFICIAL_KP).is_file():
            return fail(f"--official {args.official}: the pretrained prior {OFFICIAL_KP} is missing")
    missing = [m for m in NEEDED if importlib.util.find_spec(m) is None]
    if missing:
        return fail(f"{', '.join(missing)} not installed, needed to run the official code: "
                    f"pip install -e \".[torch]\"")

    rows = []
    for h, w in sizes:
        row = {"h": h, "w": w, "rounds": []}
        for r in range(args.repeats):
            sides = ["official"] + [f"ours{n}" for n in args.seeds]
            order = sides if r % 2 == 0 else sides[::-1]
            try:
                got = {side: run_child(side[:4] if side != "official" else side, h, w, args,
                                       int(side[4:] or 1) if side != "official" else 1) for side in order}
            except RuntimeError as e:
                print(f"vs_official: {e}", file=sys.stderr)
                return 1
            row["rounds"].append(got)
            unit = "s/step" if dkp else "s/it"
            print(f"{h}x{w} round {r + 1}/{args.repeats} ({order[0]} first): official "
                  f"{got['official']['s_per_iter']:.3f} {unit}, " +
                  ", ".join(f"fkp-jax {n} seed(s) {got[f'ours{n}']['s_per_iter']:.3f} {unit}" for n in args.seeds),
                  flush=True)
        rows.append(row)

    text = report(rows, args, argv)
    if not args.no_append:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        old = args.out.read_text() if args.out.exists() else "# Benchmarks\n\n"
        if not old.endswith("\n\n"):
            old = old.rstrip("\n") + "\n\n"
        tmp = args.out.with_name(args.out.name + ".tmp")
        tmp.write_text(old + text)
        os.replace(tmp, args.out)  # appended atomically
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        meta = {"method": args.method, "cpu": cpu_info()[0], "avx512": cpu_info()[1], "cores": os.cpu_count(),
                "threads": args.threads,
                "warmup": args.warmup, "iters": args.iters, "repeats": args.repeats,
                "command": f"python -m benchmarks.vs_official {shlex.join(argv)}"}
        tmpj = args.json.with_name(args.json.name + ".tmp")
        tmpj.write_text(json.dumps({"meta": meta, "sizes": rows}, indent=1))
        os.replace(tmpj, args.json)
    print()
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
