"""KULNet speed: inference seconds for one LR image, and seconds per training step, on this machine.

    python -m benchmarks.kulnet_speed                                   # x4, LR 128x128; train batch 2 of 96x96
    python -m benchmarks.kulnet_speed --lr-size 128 --train-batch 16 --train-patch 192   # the original's batch
    python -m benchmarks.kulnet_speed --official DIR                   # + the original's inference, same run

Params are a fresh draw (`kulnet_train.init_params`: speed does not depend on the values). Inference is
`kulnet.forward` (the latent sampled from a key, as at test time), the first call (compilation) timed
apart, then the median of --repeats calls. Training is `kulnet_train.make_train_step` (degradation drawn
inside the jitted step), the same way. The table is appended to --out with the CPU named.

--official DIR (a checkout of github.com/Fangzhenxuan/UncertaintySR, run from outside, none of its files
edited or copied) times the original's inference in a child process before ours, in the same run:
`codes/models/modules/BlindNet_arch.py`'s `BlindNet(scale)` seeded with `torch.manual_seed(0)`, `eval()`,
`forward(lr, None)` under `torch.no_grad()`, the first call apart and the median of the next --repeats, on
all the CPUs (`torch.set_num_threads(os.cpu_count())`). The one change it needs on a CPU is made from
outside: `torch.Tensor.cuda` is the identity (golden_kulnet README 1, M3: the model calls `.cuda()` on
tensors it creates). With --official-train its training step is timed too, in a second child (after the
inference one, before ours): `BlindNet(scale).train()`, Adam(2e-4, betas (0.9, 0.999)) and the loss of
`B_Model.optimize_parameters` (golden_kulnet README 6.2: L1 SR + 1e4 L1 kernel / positions + 0.001 KL), on a
random batch of --train-batch HR patches of --train-patch, their LR and unit-sum 21 x 21 kernels, in float32
(its `torch.cuda.amp` switches itself off without CUDA), the first step apart and the median of the next
--repeats. Our step also synthesises its LR batch inside (the original's degradation took 0.34 s of 269 s,
README 11).

    python -m benchmarks.kulnet_speed --official DIR --official-train --train-batch 16 --train-patch 192 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

from benchmarks.children import run_marked

MARK = "@@kulnet_speed@@ "


def child_official(root: Path, sf: int, lr_size: int, repeats: int) -> dict:
    """The original's x``sf`` inference on a random ``lr_size``^2 LR (see the module docstring)."""
    torch, BlindNet = _import_official(root)
    torch.manual_seed(0)
    net = BlindNet(scale=sf).eval()
    lr = torch.rand(1, 3, lr_size, lr_size)
    times = []
    with torch.no_grad():
        for _ in range(repeats + 1):
            start = time.perf_counter()
            out = net(lr, None)[0]
            times.append(time.perf_counter() - start)
    assert tuple(out.shape) == (1, 3, sf * lr_size, sf * lr_size), tuple(out.shape)
    return {"first": times[0], "median": statistics.median(times[1:]), "torch": torch.__version__,
            "threads": torch.get_num_threads()}


def _import_official(root: Path):
    import torch

    torch.set_num_threads(os.cpu_count())
    torch.Tensor.cuda = lambda self, *a, **kw: self  # M3: its .cuda() calls on new tensors
    sys.path.insert(0, str(root / "codes"))
    from models.modules.BlindNet_arch import BlindNet  # DIR/codes/models/modules/BlindNet_arch.py

    return torch, BlindNet


def child_official_train(root: Path, sf: int, batch: int, patch: int, repeats: int) -> dict:
    """The original's training step (forward, the loss of golden_kulnet README 6.2, backward, Adam) on a
    random batch (see the module docstring)."""
    torch, BlindNet = _import_official(root)
    torch.manual_seed(0)
    net = BlindNet(scale=sf).train()
    opt = torch.optim.Adam(net.parameters(), lr=2e-4, betas=(0.9, 0.999))
    hr = torch.rand(batch, 3, patch, patch)
    lr = torch.rand(batch, 3, patch // sf, patch // sf)
    k = torch.rand(batch, 21, 21)
    k = k / k.sum(dim=(1, 2), keepdim=True)
    l1 = torch.nn.L1Loss()

    def step():
        opt.zero_grad()
        sr, k_ex, mean, log_var = net(lr, k)
        l_pix = l1(sr, hr)
        l_ker = l1(k_ex * 10000, k.unsqueeze(1).expand(-1, k_ex.size(1), -1, -1) * 10000) / k_ex.size(1)
        l_kl = 0.001 * torch.mean(-0.5 * (torch.ones_like(mean) + 2 * log_var - mean * mean - torch.exp(2 * log_var)))
        loss = l_pix + l_ker + l_kl
        loss.backward()
        opt.step()
        return float(loss)

    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - start)
    if not math.isfinite(loss):
        raise RuntimeError(f"the original's training loss is {loss}")
    return {"first": times[0], "median": statistics.median(times[1:]), "torch": torch.__version__,
            "threads": torch.get_num_threads()}


def timed(fn, repeats: int) -> tuple[float, float]:
    """(first call seconds, median of the next ``repeats`` calls)."""
    import jax

    start = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return first, statistics.median(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sf", type=int, default=4)
    p.add_argument("--lr-size", type=int, default=128)
    p.add_argument("--train-batch", type=int, default=2)
    p.add_argument("--train-patch", type=int, default=96, help="HR patch side of the training batch")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"))
    p.add_argument("--official", type=Path, help="checkout of github.com/Fangzhenxuan/UncertaintySR")
    p.add_argument("--official-train", action="store_true",
                   help="with --official: time the original's training step too (same batch and patch)")
    p.add_argument("--child", choices=("inference", "train"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child == "inference":
        print(MARK + json.dumps(child_official(args.official.resolve(), args.sf, args.lr_size, args.repeats)))
        return 0
    if args.child == "train":
        print(MARK + json.dumps(child_official_train(args.official.resolve(), args.sf, args.train_batch,
                                                     args.train_patch, args.repeats)))
        return 0
    if args.official_train and args.official is None:
        print("kulnet_speed: error: --official-train needs --official DIR", file=sys.stderr)
        return 2
    official = official_train = None
    if args.official is not None:
        if not (args.official / "codes" / "models" / "modules" / "BlindNet_arch.py").is_file():
            print(f"kulnet_speed: error: {args.official} is not a checkout of Fangzhenxuan/UncertaintySR "
                  "(no codes/models/modules/BlindNet_arch.py)", file=sys.stderr)
            return 2
        child = [sys.executable, "-m", "benchmarks.kulnet_speed", "--official", str(args.official), "--sf",
                 str(args.sf), "--lr-size", str(args.lr_size), "--train-batch", str(args.train_batch),
                 "--train-patch", str(args.train_patch), "--repeats", str(args.repeats), "--child"]
        try:
            official = run_marked(child + ["inference"], MARK)
            print(f"official inference LR {args.lr_size}^2 x{args.sf}: {official['median']:.2f} s "
                  f"(first call {official['first']:.1f} s)", flush=True)
            if args.official_train:
                official_train = run_marked(child + ["train"], MARK)
                print(f"official training step batch {args.train_batch} of {args.train_patch}^2: "
                      f"{official_train['median']:.2f} s (first call {official_train['first']:.1f} s)", flush=True)
        except RuntimeError as e:
            print(f"kulnet_speed: the official {e}", file=sys.stderr)
            return 1

    from fkp_jax import runtime

    runtime.configure()
    import jax

    from benchmarks.dipfkp_speed import append_table, machine
    from fkp_jax import kulnet, kulnet_train

    params = kulnet_train.init_params(jax.random.key(0))
    lr = jax.random.uniform(jax.random.key(1), (1, args.lr_size, args.lr_size, 3))
    inf_first, inf = timed(lambda: kulnet.forward(params, lr, args.sf, key=jax.random.key(2)).sr, args.repeats)
    print(f"inference LR {args.lr_size}^2 x{args.sf}: {inf:.2f} s (first call {inf_first:.1f} s)", flush=True)

    cfg = kulnet_train.TrainConfig(sf=args.sf, batch_size=args.train_batch, patch=args.train_patch)
    step = kulnet_train.make_train_step(cfg)
    hr = jax.random.uniform(jax.random.key(3), (args.train_batch, args.train_patch, args.train_patch, 3))
    box = {"state": kulnet_train.init_state(params, cfg), "t": 0}

    def one():
        box["state"], metrics = step(box["state"], hr, jax.random.fold_in(jax.random.key(4), box["t"]))
        box["t"] += 1
        return metrics["loss"] if "loss" in metrics else metrics

    tr_first, tr = timed(one, args.repeats)
    print(f"training step batch {args.train_batch} of {args.train_patch}^2: {tr:.2f} s (first call {tr_first:.1f} s)")
    lines = [f"### KULNet speed, x{args.sf}, {machine()}, jax {jax.__version__}", "",
             f"Command: `python -m benchmarks.kulnet_speed {' '.join(sys.argv[1:] if argv is None else argv)}`", "",
             "| what | seconds (median of {}) | first call (compilation included) |".format(args.repeats),
             "| --- | ---: | ---: |",
             f"| inference, LR {args.lr_size}x{args.lr_size} -> SR x{args.sf} | {inf:.2f} | {inf_first:.1f} |",
             *([f"| the original's inference, same run (torch {official['torch']}, {official['threads']} threads) "
                f"| {official['median']:.2f} | {official['first']:.1f} |",
                f"| ratio ours / original, inference | {inf / official['median']:.2f} | |"] if official else []),
             f"| training step, batch {args.train_batch} of {args.train_patch}x{args.train_patch} HR | {tr:.2f} | "
             f"{tr_first:.1f} |",
             *([f"| the original's training step, same run (torch {official_train['torch']}, "
                f"{official_train['threads']} threads, float32) | {official_train['median']:.2f} | "
                f"{official_train['first']:.1f} |",
                f"| ratio ours / original, training step | {tr / official_train['median']:.2f} | |"]
               if official_train else [])]
    print(append_table(args.out, lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
