"""Side by side: seconds per DIP-FKP iteration, the official PyTorch code against fkp-jax, on this CPU.

    python -m benchmarks.vs_official --official DIR                  # 96x96 and 256x256 HR, x2, 2 rounds
    python -m benchmarks.vs_official --official DIR --sizes 96 --repeats 3 --threads 2 --json /tmp/vs.json

DIR is a checkout of the official FKP repository (https://github.com/JingyunLiang/FKP), which the user
provides: nothing of it is copied into this repository and none of its files is edited; it is imported from
outside. Needs torch and what the official code imports (`pip install -e ".[torch]"`). CI does not run this
(it takes minutes and needs the official checkout); the numbers it appends to docs/benchmarks.md are the
record.

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

How the official code, written for CUDA, is redirected to the CPU without editing it: the class is built
with `device=torch.device('cpu')` (its default is 'cuda'); `torch.load` is wrapped to pass
`map_location='cpu'` (the checkpoint was saved from CUDA); `torch.Tensor.cuda` and `torch.nn.Module.cuda` are
made identities as a safety net (the DIP-FKP path of the current code does not call them; `util.py` uses
`.cuda()` only in image loaders this benchmark does not call); the official `Config().parse()` is not used
because it calls `torch.cuda.set_device` (its parser's defaults are read instead); `torch.cuda.manual_seed`
and `torch.backends.cudnn.benchmark = True`, which the constructor calls, do nothing on a CPU-only run and
are left alone. The child checks that every parameter and the latent are on the CPU. The kernel plot that
`train()` writes at the end goes to a temporary folder (with `kernel_gt` all ones, as the official
`--real` mode sets it).

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
OFFICIAL_KP = Path("data") / "pretrained_models" / "FKP_x2.pt"
SF = 2
NEEDED = ("torch", "matplotlib", "PIL", "cv2", "scipy", "tqdm")  # what the official DIPFKP code imports


# ---------------------------------------------------------------- children (each in a fresh process)

def _pin(threads: int) -> list[int] | None:
    """Pin this process to the first `threads` CPUs it may use, when that is fewer than all of them."""
    allowed = sorted(os.sched_getaffinity(0))
    if threads >= len(allowed):
        return None
    cpus = allowed[:threads]
    os.sched_setaffinity(0, cpus)
    return cpus


def child_official(root: Path, h: int, w: int, threads: int, warmup: int, iters: int) -> dict:
    pinned = _pin(threads)
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    sys.path[:0] = [str(root / "DIPFKP"), str(root)]  # as DIPFKP/main.py sees them (run from DIPFKP/)

    # CUDA -> CPU, from outside (see the module docstring).
    torch_load = torch.load

    def load_on_cpu(f, map_location=None, *a, **kw):
        return torch_load(f, "cpu", *a, **kw)

    torch.load = load_on_cpu
    torch.Tensor.cuda = lambda self, *a, **kw: self
    torch.nn.Module.cuda = lambda self, *a, **kw: self

    from config.configs import Config  # DIR/DIPFKP/config/configs.py
    import model.model as official  # DIR/DIPFKP/model/model.py

    stamps: list[float] = []

    def timed(iterable, *a, **kw):
        for x in iterable:
            stamps.append(time.perf_counter())
            yield x
        stamps.append(time.perf_counter())

    official.tqdm = types.SimpleNamespace(tqdm=timed)

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
        lr = torch.rand(1, 3, h // SF, w // SF)
        m = official.DIPFKP(conf, lr, device=torch.device("cpu"))
        tensors = [*m.net_dip.parameters(), *m.net_kp.parameters(), *m.net_kp.buffers(), m.kernel_code, m.input_dip]
        devices = sorted({t.device.type for t in tensors})
        if devices != ["cpu"]:
            raise RuntimeError(f"official model not on the CPU: {devices}")
        m.train()
    per_iter = [b - a for a, b in zip(stamps, stamps[1:])]
    if len(per_iter) != warmup + iters:
        raise RuntimeError(f"expected {warmup + iters} loop passes, recorded {len(per_iter)}")
    timed_s = per_iter[warmup:]
    return {"side": "official", "h": h, "w": w, "threads": threads, "torch_threads": torch.get_num_threads(),
            "pinned_cpus": pinned, "s_per_iter": statistics.median(timed_s), "timed_s": timed_s,
            "warmup_s": per_iter[:warmup], "timed_iterations": [warmup + 1, warmup + iters],
            "dip_lr": conf.dip_lr, "kp_lr": conf.kp_lr, "torch": torch.__version__}


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


# ---------------------------------------------------------------- parent

def cpu_info() -> tuple[str, bool]:
    from fkp_jax import runtime

    return runtime.cpu_model(), runtime.has_avx512()


def child_env(side: str, threads: int) -> dict:
    env = dict(os.environ)
    if side == "official":
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    return env


def run_child(side: str, h: int, w: int, args) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.vs_official", "--child", side, "--sizes", f"{h}x{w}",
           "--threads", str(args.threads), "--warmup", str(args.warmup), "--iters", str(args.iters)]
    if side == "official":
        cmd += ["--official", str(args.official)]
    res = subprocess.run(cmd, cwd=REPO, env=child_env(side, args.threads), capture_output=True, text=True)
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith(MARK)]
    if res.returncode != 0 or not lines:
        raise RuntimeError(f"{side} child for {h}x{w} failed (exit {res.returncode}):\n"
                           f"{res.stdout[-1500:]}{res.stderr[-3000:]}")
    return json.loads(lines[-1][len(MARK):])


def parse_size(text: str) -> tuple[int, int]:
    h, w = (int(v) for v in (text.lower().split("x") if "x" in text.lower() else (text, text)))
    if h % SF or w % SF or h < 64 or w < 64:
        raise ValueError(f"HR size {text}: needs both sides even and at least 64")
    return h, w


def fmt(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def report(rows: list[dict], args, argv: list[str]) -> str:
    name, avx512 = cpu_info()
    first = rows[0]["rounds"][0]
    n = args.threads
    xla = "XLA sizes its thread pool from the CPUs the process may use"
    pinned = first["ours"]["pinned_cpus"]
    lines = [
        f"### fkp-jax vs official PyTorch DIP-FKP, {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}",
        "",
        f"CPU: {name} ({'with' if avx512 else 'no'} AVX-512), {os.cpu_count()} cores, {n} thread{'s' * (n != 1)} on both sides "
        f"(torch.set_num_threads({n}), OMP/MKL_NUM_THREADS={n}; {xla}"
        f"{f'; both pinned to CPUs {pinned}' if pinned else ''}). "
        f"torch {first['official']['torch']}, jax {first['ours']['jax']}"
        f"{', fkp_jax.runtime.configure() called' if first['ours']['runtime_configure'] else ''}.",
        f"x2, FKP prior, 1 seed; s/it = median of iterations {args.warmup + 1}..{args.warmup + args.iters} of a "
        f"fresh process, then median (min-max) over {args.repeats} round{'s' * (args.repeats != 1)}, the two sides alternating.",
        f"Command: `python -m benchmarks.vs_official {shlex.join(argv)}`",
        "",
        "| HR size | official PyTorch s/it | fkp-jax s/it | ratio fkp-jax / official |",
        "| --- | ---: | ---: | ---: |",
    ]
    for row in rows:
        off = [r["official"]["s_per_iter"] for r in row["rounds"]]
        ours = [r["ours"]["s_per_iter"] for r in row["rounds"]]
        ratio = statistics.median(ours) / statistics.median(off)
        lines.append(f"| {row['h']}x{row['w']} | {fmt(off)} | {fmt(ours)} | {ratio:.2f} |")
    return "\n".join(lines) + "\n\n"


def fail(msg: str) -> int:
    print(f"vs_official: error: {msg}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(prog="python -m benchmarks.vs_official",
                                description=__doc__.split("\n")[0],
                                epilog="Details (what is timed, how CUDA is redirected): see the module docstring.")
    p.add_argument("--official", type=Path, help="checkout of https://github.com/JingyunLiang/FKP (required)")
    p.add_argument("--sizes", nargs="+", default=["96", "256"], help="HR sizes, N for NxN or HxW (default: 96 256)")
    p.add_argument("--repeats", type=int, default=2, help="rounds per size, each side in a fresh process (default 2)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for both sides (default: all cores)")
    p.add_argument("--iters", type=int, default=10, help="timed iterations per process (default 10)")
    p.add_argument("--warmup", type=int, default=5, help="iterations dropped first (default 5)")
    p.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md", help="Markdown file appended to")
    p.add_argument("--json", type=Path, help="also write the raw numbers here")
    p.add_argument("--child", choices=("official", "ours"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.iters < 1 or args.warmup < 0 or args.repeats < 1 or args.threads < 1:
        return fail("--iters, --repeats and --threads must be at least 1, --warmup at least 0")
    try:
        sizes = [parse_size(s) for s in args.sizes]
    except ValueError as e:
        return fail(str(e))

    if args.child:
        (h, w), = sizes
        if args.child == "official":
            res = child_official(args.official.resolve(), h, w, args.threads, args.warmup, args.iters)
        else:
            res = child_ours(h, w, args.threads, args.warmup, args.iters)
        print(MARK + json.dumps(res), flush=True)
        return 0

    if args.official is None:
        return fail("--official DIR is required (a checkout of https://github.com/JingyunLiang/FKP)")
    args.official = args.official.expanduser().resolve()
    if not args.official.is_dir():
        return fail(f"--official {args.official}: no such directory")
    if not (args.official / OFFICIAL_MODEL).is_file():
        return fail(f"--official {args.official}: not an FKP checkout (no {OFFICIAL_MODEL})")
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
            order = ("official", "ours") if r % 2 == 0 else ("ours", "official")
            try:
                got = {side: run_child(side, h, w, args) for side in order}
            except RuntimeError as e:
                print(f"vs_official: {e}", file=sys.stderr)
                return 1
            row["rounds"].append(got)
            print(f"{h}x{w} round {r + 1}/{args.repeats} ({order[0]} first): official "
                  f"{got['official']['s_per_iter']:.3f} s/it, fkp-jax {got['ours']['s_per_iter']:.3f} s/it",
                  flush=True)
        rows.append(row)

    text = report(rows, args, argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    old = args.out.read_text() if args.out.exists() else "# Benchmarks\n\n"
    if not old.endswith("\n\n"):
        old = old.rstrip("\n") + "\n\n"
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(old + text)
    os.replace(tmp, args.out)  # appended atomically
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        meta = {"cpu": cpu_info()[0], "avx512": cpu_info()[1], "cores": os.cpu_count(), "threads": args.threads,
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
