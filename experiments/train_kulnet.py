"""Train KULNet (spec 3-4) on a folder of HR images, with online degradation inside the jitted step.

    python -m experiments.train_kulnet --sf 4 --hr-dir DIR [--val-dir DIR] --out DIR --steps N
        [--batch 16] [--patch 48*sf] [--checkpoint-every 5000] [--val-every 1000] [--seed 0] [--init PTH_OR_DIR]

Each step: B random HR patches (NumPy / OpenCV, random crop, h-flip / v-flip / transpose each p = 0.5, drawn from
a NumPy generator seeded by (seed, step), loaded by a prefetch thread), then inside one jitted step
(``fkp_jax.kulnet_train``): the original's random anisotropic kernel, blur, ::s subsampling, noise, 8-bit
quantisation, the latent noise, losses (L1 pixel + L1 kernel + KL), PyTorch-style Adam with the MultiStep LR
(x0.5 at 120k / 240k / 360k / 480k). Step t uses the key fold_in(base key, t), so a run resumed from a checkpoint
draws exactly what an uninterrupted run draws and ends with bitwise the same parameters.

Outputs under --out: ``checkpoint/`` (orbax, atomic: params, optimiser state, step, base key, config; written every
--checkpoint-every steps and at the end; a run on the same --out resumes from it), ``kulnet/`` (the final params,
readable by ``fkp_jax.kulnet.load_kulnet``) and ``train_log.csv`` (step, losses, lr, validation PSNR_Y, seconds).
Validation (--val-dir): each image mod-cropped to the scale, degraded with the train.yml validation kernel
(sig1 3.5, sig2 1.5, theta 0.5233) and noise 10/255 (fixed keys), mean PSNR_Y with an s-pixel border shave.
Bad input (missing folder, no images, patch larger than an image, unsupported --sf, ...) -> one line, exit 2;
a non-finite loss stops the run with exit 1 (the last checkpoint is kept). ``--devices N``: data parallel over N
visible devices (batch axis sharded, params replicated; ``fkp_jax.kulnet_train.data_parallel``).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import queue
import sys
import threading
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from fkp_jax import checkpoint, kulnet
from fkp_jax import kulnet_train as kt
from fkp_jax.io import DataError, list_images, read_image_u8, write_csv

CKPT = "checkpoint"
FINAL = "kulnet"
VAL_KEY = 1000  # validation noise / latent keys derive from this fixed seed


# ----------------------------------------------------------------------------- data (NumPy, outside the jit)

def image_size(path: Path) -> tuple[int, int]:
    """(H, W) from the file header (PIL) where possible, else by decoding."""
    try:
        from PIL import Image

        with Image.open(path) as im:
            w, h = im.size
            return h, w
    except Exception:  # noqa: BLE001 - any reader failure: fall back to OpenCV (which raises a clean error)
        return read_image_u8(path).shape[:2]


class PatchSampler:
    """Random HR patches: step t's batch depends only on (seed, t). Images decoded on demand (uint8 cache up to
    ``cache_mb``)."""

    def __init__(self, paths: list[Path], patch: int, batch: int, seed: int, cache_mb: float = 2048):
        self.paths, self.patch, self.batch, self.seed = paths, patch, batch, seed
        self.cache: dict[int, np.ndarray] = {}
        self.cache_bytes, self.cache_limit = 0, cache_mb * 2 ** 20
        self.lock = threading.Lock()

    def image(self, i: int) -> np.ndarray:
        with self.lock:
            img = self.cache.get(i)
        if img is None:
            img = read_image_u8(self.paths[i])
            with self.lock:
                if self.cache_bytes + img.nbytes <= self.cache_limit:
                    self.cache[i] = img
                    self.cache_bytes += img.nbytes
        return img

    def batch_for(self, step: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, step])
        p = self.patch
        out = np.empty((self.batch, p, p, 3), np.float32)
        for b, i in enumerate(rng.integers(len(self.paths), size=self.batch)):
            img = self.image(int(i))
            top = rng.integers(img.shape[0] - p + 1)
            left = rng.integers(img.shape[1] - p + 1)
            x = img[top:top + p, left:left + p]
            hflip, vflip, rot = rng.random(3) < 0.5
            if hflip:
                x = x[:, ::-1]
            if vflip:
                x = x[::-1]
            if rot:
                x = x.transpose(1, 0, 2)
            out[b] = x / np.float32(255)
        return out


def prefetch(fn, steps, depth: int = 2):
    """Yield fn(t) for t in ``steps``, computed ``depth`` ahead by a daemon thread (exceptions re-raised here)."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def work():
        try:
            for t in steps:
                if stop.is_set():
                    return
                q.put((t, fn(t), None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            q.put((None, None, exc))

    threading.Thread(target=work, daemon=True).start()
    try:
        for _ in steps:
            t, item, exc = q.get()
            if exc is not None:
                raise exc
            yield t, item
    finally:
        stop.set()


# ----------------------------------------------------------------------------- validation

def load_validation(folder, sf: int) -> list[np.ndarray]:
    """uint8 RGB images mod-cropped to sf (and checked to be large enough for the network)."""
    imgs = []
    for p in list_images(folder):
        img = read_image_u8(p)
        img = img[: img.shape[0] - img.shape[0] % sf, : img.shape[1] - img.shape[1] % sf]
        check_size(img.shape[0], img.shape[1], sf, f"validation image {p}")
        imgs.append(img)
    return imgs


def validate(params, imgs: list[np.ndarray], sf: int) -> float:
    """Mean PSNR_Y (s-pixel shave) of KULNet on the train.yml validation degradation (fixed keys)."""
    from fkp_jax.metrics import psnr_y

    vals = []
    for i, img in enumerate(imgs):
        k_deg, k_eps = jax.random.split(jax.random.fold_in(jax.random.key(VAL_KEY), i))
        hr = jnp.asarray(img[None], jnp.float32) / 255
        lr, _ = _val_degrade(hr, sf, k_deg)
        sr = kulnet.forward(params, lr, sf, key=k_eps).sr[0]
        sr_u8 = np.asarray(jnp.round(jnp.clip(sr, 0, 1) * 255)).astype(np.uint8)
        vals.append(psnr_y(img, sr_u8, sf))
    return float(np.mean(vals))


_val_degrade = jax.jit(kt.degrade_fixed, static_argnums=1)


# ----------------------------------------------------------------------------- checkpoints

def save_checkpoint(out: Path, state: kt.TrainState, base_key, cfg: kt.TrainConfig) -> Path:
    opt_leaves = jax.tree.leaves(state.opt_state)
    tree = {"params": state.params, "opt_state": {f"{i:04d}": a for i, a in enumerate(opt_leaves)},
            "step": np.asarray(state.step, np.int64), "base_key": np.asarray(jax.random.key_data(base_key))}
    meta = {"model": "kulnet_train", "step": int(state.step), "train_config": config_dict(cfg),
            "jax_version": jax.__version__}
    return checkpoint.save(out / CKPT, tree, meta, overwrite=True)


def restore_checkpoint(path: Path, cfg: kt.TrainConfig, template: kt.TrainState):
    """(state, base key) from ``path``; ValueError if it was written for another configuration."""
    tree, meta = checkpoint.restore(path)
    if meta.get("model") != "kulnet_train":
        raise ValueError(f"{path}: not a KULNet training checkpoint")
    saved = meta.get("train_config", {})
    for name in ("sf", "batch_size", "patch", "seed"):
        if saved.get(name) != config_dict(cfg)[name]:
            raise ValueError(f"{path}: checkpoint was written with {name}={saved.get(name)}, this run has "
                             f"{config_dict(cfg)[name]} (use another --out)")
    params = jax.tree.map(lambda t, a: jnp.asarray(a, t.dtype), template.params, tree["params"])
    leaves, treedef = jax.tree.flatten(template.opt_state)
    saved_leaves = [tree["opt_state"][f"{i:04d}"] for i in range(len(leaves))]
    opt_state = jax.tree.unflatten(treedef, [jnp.asarray(a, t.dtype) for t, a in zip(leaves, saved_leaves)])
    state = kt.TrainState(params, opt_state, jnp.asarray(int(tree["step"]), jnp.int32))
    base_key = jax.random.wrap_key_data(jnp.asarray(tree["base_key"], jnp.uint32))
    return state, base_key


def config_dict(cfg: kt.TrainConfig) -> dict:
    d = dataclasses.asdict(cfg)
    d["lr_milestones"] = list(cfg.lr_milestones)
    d["patch"] = cfg.patch_size
    return d


# ----------------------------------------------------------------------------- the run

def check_size(h: int, w: int, sf: int, what: str) -> None:
    """The network's constraints on an HR size: a multiple of sf; the DLSM's reflect padding to a multiple of 16
    must be smaller than the size (as PyTorch's ReflectionPad2d requires)."""
    for n in (h, w):
        if n % sf or n < 2 * sf or -n % kulnet.PAD_MULTIPLE >= n:
            raise ValueError(f"{what}: size {h}x{w} unusable at x{sf} (need multiples of {sf}, at least "
                             f"{2 * sf}, and 16 - n % 16 < n)")


def train(cfg: kt.TrainConfig, hr_dir, out: Path, steps: int, checkpoint_every: int, val_dir=None,
          val_every: int = 1000, init=None, progress: bool = True, cache_mb: float = 2048,
          devices: int | None = None) -> dict:
    from tqdm import tqdm

    if cfg.sf not in kulnet.SCALES:
        raise ValueError(f"unsupported scale factor {cfg.sf}; KULNet exists for {kulnet.SCALES}")
    p = cfg.patch_size
    check_size(p, p, cfg.sf, f"--patch {p}")
    paths = list_images(hr_dir)
    small = [(q, hw) for q in paths if min(hw := image_size(q)) < p]
    if small:
        raise DataError(f"{small[0][0]}: image {small[0][1][0]}x{small[0][1][1]} is smaller than --patch {p} "
                        f"({len(small)} of {len(paths)} images too small)")
    val_imgs = load_validation(val_dir, cfg.sf) if val_dir is not None else None
    n_dev = devices or jax.device_count()
    if n_dev > jax.device_count() or cfg.batch_size % n_dev:
        raise ValueError(f"--batch {cfg.batch_size} cannot be split over {n_dev} of {jax.device_count()} devices")

    out.mkdir(parents=True, exist_ok=True)
    key_init, base_key = jax.random.split(jax.random.key(cfg.seed))
    params = kulnet.load_kulnet(init) if init is not None else kt.init_params(key_init, cfg)
    state = kt.init_state(params, cfg)
    resumed = (out / CKPT).is_dir()
    if resumed:
        state, base_key = restore_checkpoint(out / CKPT, cfg, state)
    start = int(state.step)
    rows = []
    if resumed and (out / "train_log.csv").is_file():
        rows = [r for r in csv.DictReader(open(out / "train_log.csv")) if int(r["step"]) <= start]
    schedule = kt.make_schedule(cfg)
    train_step = kt.make_train_step(cfg, n_dev)
    if n_dev > 1:
        state = jax.device_put(state, kt.data_parallel(n_dev)[1])  # replicated
    sampler = PatchSampler(paths, p, cfg.batch_size, cfg.seed, cache_mb)
    t0, metrics = time.time(), None
    bar = tqdm(total=steps, initial=min(start, steps), desc=f"KULNet x{cfg.sf}", disable=not progress,
               dynamic_ncols=True)
    if resumed:
        bar.write(f"resuming from step {start} ({out / CKPT})")
    for t, hr in prefetch(sampler.batch_for, range(start, steps)):
        _, hr = kt.place(None, hr, n_dev)  # split along the batch axis over the devices
        state, m = train_step(state, hr, kt.step_key(base_key, t))
        metrics = {k: float(v) for k, v in m.items()}
        if not np.isfinite(metrics["loss"]):
            raise FloatingPointError(f"step {t + 1}: loss is {metrics['loss']}")
        bar.update(1)
        bar.set_postfix(loss=f"{metrics['loss']:.4f}", pix=f"{metrics['l_pix']:.4f}",
                        ker=f"{metrics['l_ker']:.2e}", kl=f"{metrics['l_kl']:.1e}")
        done = t + 1
        val = validate(state.params, val_imgs, cfg.sf) if val_imgs and (done % val_every == 0 or done == steps) \
            else None
        if val is not None:
            bar.write(f"step {done}: validation PSNR_Y {val:.2f} dB")
        rows.append({"step": done, **{k: metrics[k] for k in ("loss", "l_pix", "l_ker", "l_kl")},
                     "lr": float(schedule(t)), "val_psnr_y": "" if val is None else val,
                     "wall_s": round(time.time() - t0, 2)})
        if done % checkpoint_every == 0 or done == steps:
            save_checkpoint(out, state, base_key, cfg)
            write_csv(out / "train_log.csv", rows)
    bar.close()
    kulnet.save_kulnet(state.params, out / FINAL, overwrite=True)
    return {"start": start, "steps": int(state.step), "wall_s": round(time.time() - t0, 1), "last": metrics,
            "state": state}


def main(argv=None) -> int:
    from fkp_jax import runtime

    runtime.configure()
    p = argparse.ArgumentParser(prog="python -m experiments.train_kulnet", description=__doc__.split("\n")[0])
    p.add_argument("--sf", type=int, required=True, help="scale factor 2, 3 or 4")
    p.add_argument("--hr-dir", type=Path, required=True, help="folder of HR training images")
    p.add_argument("--val-dir", type=Path, default=None, help="folder of held-out HR images (validation PSNR)")
    p.add_argument("--out", type=Path, required=True, help="output folder (resumes from its checkpoint)")
    p.add_argument("--steps", type=int, required=True, help="total steps (the original: 480000)")
    p.add_argument("--batch", type=int, default=kt.TrainConfig.batch_size)
    p.add_argument("--patch", type=int, default=None, help="HR patch side (default 48 * sf)")
    p.add_argument("--checkpoint-every", type=int, default=5000)
    p.add_argument("--val-every", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init", default=None, help="start from these params (latest_G.pth or a kulnet folder)")
    p.add_argument("--cache-mb", type=float, default=2048, help="memory for decoded training images")
    p.add_argument("--devices", type=int, default=None,
                   help="data parallel over this many visible devices (default all; the batch must split evenly)")
    p.add_argument("--half", action="store_true",
                   help="mixed precision: convolutions in bfloat16, parameters and optimiser in float32 (for GPUs; "
                        "slower on CPUs)")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    try:
        if a.sf not in kulnet.SCALES:
            raise ValueError(f"unsupported scale factor {a.sf}; KULNet exists for {kulnet.SCALES}")
        for name in ("steps", "batch", "patch", "checkpoint_every", "val_every", "devices"):
            if getattr(a, name) is not None and getattr(a, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be positive")
        for name in ("hr_dir", "val_dir"):
            d = getattr(a, name)
            if d is not None and not d.is_dir():
                raise ValueError(f"--{name.replace('_', '-')} {d}: no such folder")
        cfg = kt.TrainConfig(sf=a.sf, batch_size=a.batch, patch=a.patch, seed=a.seed,
                             compute_dtype="bfloat16" if a.half else None)
        res = train(cfg, a.hr_dir, a.out, a.steps, a.checkpoint_every, a.val_dir, a.val_every, a.init,
                    progress=not a.no_progress, cache_mb=a.cache_mb, devices=a.devices)
    except (ValueError, OSError) as exc:
        print(f"error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
        return 2
    except FloatingPointError as exc:  # diverged: not an input error
        print(f"error: {exc}", file=sys.stderr)
        return 1
    last = res["last"]
    msg = f"loss {last['loss']:.4f}" if last else "nothing to do"
    print(f"done: steps {res['start']} -> {res['steps']} in {res['wall_s']:.0f} s, {msg} -> {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
