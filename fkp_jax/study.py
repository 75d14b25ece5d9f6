"""Studies: every (method, scale, image, seed) of a grid as one command, sharded, resumable, reported.

    python -m experiments.study --method dipfkp --sf 2 --seeds 5               # the bundled images
    python -m experiments.study --method dipfkp dipfkp:mlp kernelganfkp --sf 2 4 --dataset DIR

The grid: runs (`Run`: a method, its kernel prior and a scale, with the method's own parsed options, as
its command line would have them) x the images of the data set (`cli.find_jobs`) x seeds; restart i uses
``fold_in(key(seed), i)``, as the method commands. The seeds of one image are one batch (`Batch`); when
they run as one vmapped computation (several devices, ``--seed-mode vmap``, accelerators) and the method
takes one LR image per row (`cli.Method.batches_images`: the DIP methods), consecutive images of one LR size
join the batch, up to ``--max-batch`` (image, seed) rows. One vmapped init makes the rows' states with a
leading axis, which `Placement` shards over every visible device (a one-axis `Mesh` "seeds" and
``NamedSharding(P("seeds"))``; the batch is padded to a multiple of the device count with extra seeds whose
results are dropped). The method's jitted vmapped step then runs SPMD on the sharded state. On one device
the method's own fastest driver runs instead (on CPU a loop over the seeds, `dipfkp.default_seed_mode`),
one image at a time. A method plugs in through `cli.Method.study`, the solver protocol
`cli.StudySolver` (init / advance / kernels / loss / srs); this module knows no method by name: ``--method
NAME`` loads ``experiments.NAME`` (or the module NAME) and calls its ``method()``. Options the study does not
know go to every method's own parser (``--kernel-type motion`` for dipdkp); those a method records
(`cli.Method.recorded_options`) belong to its run's configuration.

Nothing is lost. Each finished (run, image, seed) is written the moment its batch ends, under a temporary
name then renamed: ``runs/<run>/<image>/seed<i>.npz`` (final kernel, the kernels and losses recorded every
``--record-every`` iterations, the final LR reconstruction error, metrics and configuration as JSON),
written after its ``seed<i>_sr.png``. A restarted study skips every result on disk and recomputes only the
missing seeds. Every ``--checkpoint-every`` iterations the solver state of a batch (and what it recorded
so far) is saved with orbax (`fkp_jax.checkpoint`, atomic) to ``checkpoints/<run>/<batch>/``; a restart
continues from it with the state's own key stream, to the same numbers as an uninterrupted run (bitwise on
the same machine and driver); it is removed when the batch's results are written. ``study.json`` holds
the configuration of every run made in the folder; a study whose run has a different one (iterations,
seed, weights, data set, record interval, ...) is refused with a one-line error; new runs and more seeds
may be added to a folder. One study at a time per folder (a lock file; a killed study releases it).

The report, rewritten at the end of every study from the files on disk: ``results.md`` (the papers' table
form: a row per method, a column group per scale, then per run a row per image, mean ± std over seeds),
``results.csv`` (one row per run, image and seed) and ``plots/<run>/``: ``<image>_kernel_psnr.png``
(kernel PSNR against iteration, one curve per seed, from the recorded kernels), ``<image>_kernels.png``
(every seed's estimate beside the ground truth; `report.kernel_picture`, OpenCV) and ``spread.png``
(per image every seed's kernel PSNR and PSNR-Y with mean ± std). Curves and spreads are drawn with
Matplotlib on its Agg canvas (headless; `report.curves_png`): axes, legends and ticks come for free, which
OpenCV drawing would have to rebuild.

Several hosts: start one process per host with ``--distributed`` (``jax.distributed.initialize()``, which
reads SLURM / Open MPI / cloud TPU settings or JAX_COORDINATOR_ADDRESS etc.); the mesh spans every
process's devices, process 0 writes the files, and checkpoints are off (orbax's multi-host saving is not
wired here).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import importlib
import importlib.util
import io as _stdio
import json
import shlex
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from fkp_jax import cli

CONFIG_FILE = "study.json"
RESULT_METRICS = ("kernel_psnr", "psnr_y", "ssim_y", "psnr_y_usrnet", "ssim_y_usrnet")
CSV_COLUMNS = ("run", "method", "kernel_prior", "sf", "image", "seed") + RESULT_METRICS + (
    "lr_error", "final_loss", "seconds")
SELECTION_COLUMNS = ("run", "image", "rule", "seed", "iteration", "kernel_psnr", "psnr_y")


class StudyError(ValueError):
    """Bad input or a folder that cannot take this study: reported as one line, exit status 2."""


# ----------------------------------------------------------------------------- the grid


def load_method(name: str) -> cli.Method:
    """The `cli.Method` of ``experiments.NAME`` (else of the module NAME): its ``method()``."""
    if not name or not all(part.isidentifier() for part in name.split(".")):
        raise StudyError(f"unknown method {name!r}")
    for module in (f"experiments.{name}", name):
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if found:
            make = getattr(importlib.import_module(module), "method", None)
            if callable(make):
                return make()
    raise StudyError(f"unknown method {name!r}: no module experiments.{name} (or {name}) with a method()")


@dataclasses.dataclass(frozen=True)
class Run:
    """One (method, kernel prior, scale) of a study, with the method's options as its own command parses them."""

    method: cli.Method
    prior: str
    sf: int
    args: argparse.Namespace
    record_every: int

    @property
    def key(self) -> str:
        """Folder name: ``dipfkp_x2``, ``dipfkp-mlp_x2`` (a prior other than the method's default)."""
        prior = "" if self.prior == self.method.priors[0] else f"-{self.prior}"
        return f"{self.method.name}{prior}_x{self.sf}"

    @property
    def title(self) -> str:
        return self.method.title_for(self.prior)

    @property
    def config(self) -> dict:
        """Everything its results depend on (JSON types): a folder never mixes two of these for one run."""
        a = self.args
        return {"method": self.method.name, "kernel_prior": self.prior, "sf": self.sf, "iters": a.iters,
                "seed": a.seed, "weights": None if a.weights is None else str(a.weights),
                "dataset": str(Path(a.dataset or cli.default_dataset(self.method, a)).resolve()),
                "real": bool(a.real), "record_every": self.record_every,
                "usrnet": None if a.sr_weights is None else str(Path(a.sr_weights).resolve()),
                **{name: getattr(a, name) for name in self.method.recorded_options}}


def method_args(method: cli.Method, argv: list[str]) -> argparse.Namespace:
    """The method's options as its own command parses them; its parser's complaint as a one-line error."""
    err = _stdio.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return cli.parse_args(method, argv)
    except SystemExit:
        why = (err.getvalue().strip().splitlines() or ["bad options"])[-1].split("error: ", 1)[-1]
        raise StudyError(f"{method.name}: {why}") from None


def make_runs(opts: argparse.Namespace) -> list[Run]:
    """Every (method[:prior], scale) of the command, each with its method's parsed options; one-line errors."""
    runs = {}
    for spec in dict.fromkeys(opts.method):
        name, _, prior = spec.partition(":")
        method = load_method(name)
        if method.study is None:
            raise StudyError(f"method {name} does not support studies (its cli.Method has no study solver)")
        prior = prior or method.priors[0]
        if prior not in method.priors:
            raise StudyError(f"unknown kernel prior {prior!r} for {name}: choose one of {', '.join(method.priors)}")
        for sf in dict.fromkeys(opts.sf):
            if sf not in method.scales:
                raise StudyError(f"unsupported scale factor --sf {sf} for {name}: {method.title} supports "
                                 f"{', '.join(map(str, method.scales))}")
            argv = ["--sf", str(sf), "--kernel-prior", prior, "--seeds", str(opts.seeds), "--seed", str(opts.seed)]
            argv += [] if opts.iters is None else ["--iters", str(opts.iters)]
            argv += [] if opts.dataset is None else ["--dataset", str(opts.dataset)]
            argv += ["--real"] if opts.real else []
            if opts.weights is not None and cli.uses_weights(method, prior):  # FKP weights: only where loaded
                argv += ["--weights", str(opts.weights)]
            argv += [] if opts.sr_weights is None else ["--SR", str(opts.sr_weights)]
            run = Run(method, prior, sf, method_args(method, argv + opts.method_options), opts.record_every)
            runs.setdefault(run.key, run)
    return list(runs.values())


# ----------------------------------------------------------------------------- devices


class Placement:
    """Where the seed axis of a batch lives: one device (the method's own driver), or sharded over a
    one-axis mesh of several (one vmapped computation, SPMD over the devices)."""

    def __init__(self, devices, seed_mode: str | None = None):
        import jax
        from jax.sharding import Mesh, NamedSharding, PartitionSpec

        self.devices = list(devices)
        self.sharded = len(self.devices) > 1
        if self.sharded and seed_mode == "loop":
            raise StudyError("--seed-mode loop steps the seeds one after another on one device; it cannot shard "
                             f"them over {len(self.devices)} devices (use --devices 1, or vmap)")
        self.seed_mode = "vmap" if self.sharded else seed_mode
        self.sharding = (NamedSharding(Mesh(np.array(self.devices), ("seeds",)), PartitionSpec("seeds"))
                         if self.sharded else jax.sharding.SingleDeviceSharding(self.devices[0]))

    def padded(self, n: int) -> int:
        """The batch size for n seeds: a multiple of the device count."""
        d = len(self.devices)
        return -(-n // d) * d

    def init(self, solver: cli.StudySolver, keys):
        """States of every seed (a leading axis), made on the devices by one vmapped, jitted init (or, for an init
        that cannot be traced, seed by seed, then stacked and placed)."""
        import jax
        import jax.numpy as jnp

        if solver.traceable_init:  # (raw key data from the host: the same on every process of a cluster)
            make = lambda data: jax.vmap(solver.init)(jax.random.wrap_key_data(data))  # noqa: E731
            return jax.jit(make, out_shardings=self.sharding)(np.asarray(jax.random.key_data(keys)))
        state = jax.tree.map(lambda *xs: jnp.stack(xs), *[solver.init(k) for k in keys])
        if not self.sharded:
            return state
        return jax.tree.map(lambda x: jax.random.wrap_key_data(self.put(self.host(jax.random.key_data(x))))
                            if _is_key(x) else self.put(self.host(x)), state)

    def put(self, a: np.ndarray):
        """A host array with a leading seed axis, placed as the batch is."""
        import jax

        a = np.asarray(a)
        return jax.make_array_from_callback(a.shape, self.sharding, lambda index: a[index])

    @staticmethod
    def host(x) -> np.ndarray:
        """A (possibly multi-host) array as a NumPy array on this host."""
        import jax

        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            from jax.experimental import multihost_utils

            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)


def seed_keys(seed: int, indices: list[int]):
    """Restart i's key: fold_in(key(seed), i), as the method commands."""
    import jax
    import jax.numpy as jnp

    return jax.vmap(lambda i: jax.random.fold_in(jax.random.key(seed), i))(jnp.asarray(indices, jnp.int32))


# ----------------------------------------------------------------------------- the result store


class Store:
    """The output folder: configuration, per-seed results, checkpoints (layout in the module docstring)."""

    def __init__(self, root: Path, writer: bool = True):
        self.root = Path(root)
        self.writer = writer  # False on processes other than 0 of a multi-host study

    def result(self, run: Run, image: str, seed: int) -> Path:
        return self.root / "runs" / run.key / image / f"seed{seed}.npz"

    def sr(self, run: Run, image: str, seed: int, suffix: str = "sr") -> Path:
        return self.root / "runs" / run.key / image / f"seed{seed}_{suffix}.png"

    def checkpoint(self, run: Run, batch: str) -> Path:
        return self.root / "checkpoints" / run.key / batch

    def done(self, run: Run, image: str, seed: int) -> bool:
        return self.result(run, image, seed).is_file()

    def check_config(self, runs: list[Run]) -> None:
        """Refuse a run whose configuration differs from the one recorded in the folder; record new runs."""
        from fkp_jax import io

        path = self.root / CONFIG_FILE
        recorded = json.loads(path.read_text())["runs"] if path.is_file() else {}
        for run in runs:
            old = recorded.get(run.key)
            if old is None:
                continue
            for field in sorted(set(old) | set(run.config)):
                if old.get(field) != run.config.get(field):
                    raise StudyError(f"{self.root} holds results of {run.key} made with {field} {old.get(field)!r}, "
                                     f"this study has {run.config.get(field)!r}; use another --out")
        if self.writer and any(run.key not in recorded for run in runs):
            recorded.update({run.key: run.config for run in runs})
            io.write_json(path, {"runs": recorded})

    def clean(self) -> None:
        """Remove what a killed study left half-written (temporary files and orbax folders)."""
        for pattern in ("runs/**/.*.tmp", "checkpoints/**/.*.tmp-*", "checkpoints/**/.*.old-*", ".*.tmp",
                        "plots/**/.*.tmp"):
            for p in self.root.glob(pattern):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)

    def write_result(self, run: Run, image: str, seed: int, meta: dict, arrays: dict) -> None:
        """One finished (run, image, seed): arrays + metadata JSON, one .npz, atomically."""
        from fkp_jax import io

        with io.atomic_write(self.result(run, image, seed)) as f:
            np.savez(f, meta=np.array(json.dumps(meta, sort_keys=True)), **arrays)

    def read_result(self, run: Run, image: str, seed: int) -> tuple[dict, dict[str, np.ndarray]]:
        path = self.result(run, image, seed)
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        meta = json.loads(str(arrays.pop("meta")))
        if meta.get("config") != run.config:
            raise StudyError(f"{path} was made with another configuration than {self.root / CONFIG_FILE} records")
        return meta, arrays

    # --- solver checkpoints (orbax): the state's leaves, flattened, typed keys as their raw data

    def save_checkpoint(self, run: Run, batch: str, state, record: dict, meta: dict) -> None:
        import jax

        from fkp_jax import checkpoint

        leaves = {f"{i:05d}": Placement.host(jax.random.key_data(x) if _is_key(x) else x)
                  for i, x in enumerate(jax.tree.leaves(state))}
        variables = {"state": leaves}
        if record["t"]:
            variables["record"] = {k: np.asarray(v) for k, v in record.items()}
        if self.writer:
            checkpoint.save(self.checkpoint(run, batch), variables, meta, overwrite=True)

    def restore_checkpoint(self, run: Run, batch: str, template, placement: Placement, meta: dict):
        """(state, record, saved meta) from the checkpoint of this batch, or None when there is none that fits
        (another configuration, other seeds or another state structure). ``template()``: the state's
        structure (`jax.eval_shape`), asked for only when there is a checkpoint."""
        import jax

        from fkp_jax import checkpoint

        path = self.checkpoint(run, batch)
        if not path.is_dir():
            return None
        try:
            variables, saved = checkpoint.restore(path)
        except Exception as exc:  # an unreadable checkpoint is only lost time
            print(f"note: {path}: unreadable checkpoint ({type(exc).__name__}); starting over", file=sys.stderr)
            return None
        if any(saved.get(k) != v for k, v in meta.items()):
            print(f"note: {path}: checkpoint of other seeds or settings; starting over", file=sys.stderr)
            return None
        shapes, treedef = jax.tree.flatten(template())
        stored = [variables["state"][k] for k in sorted(variables["state"])]
        if len(stored) != len(shapes):
            return None
        leaves = []
        for like, a in zip(shapes, stored):
            if _is_key(like):
                leaves.append(jax.random.wrap_key_data(placement.put(a)))
            else:
                leaves.append(placement.put(np.asarray(a, like.dtype)))
            if leaves[-1].shape != like.shape:
                return None
        rec = variables.get("record", {})
        record = {"t": [int(t) for t in rec.get("t", [])], "kernels": list(rec.get("kernels", [])),
                  "loss": list(rec.get("loss", []))}
        return jax.tree.unflatten(treedef, leaves), record, saved

    def drop_checkpoint(self, run: Run, batch: str | None = None) -> None:
        """Remove a batch's checkpoint (batch None: every checkpoint of the run)."""
        if self.writer:
            shutil.rmtree(self.checkpoint(run, batch) if batch else self.root / "checkpoints" / run.key,
                          ignore_errors=True)


def _is_key(x) -> bool:
    import jax

    return jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


@contextlib.contextmanager
def folder_lock(root: Path):
    """Hold an exclusive lock on ROOT/.lock for the study (released by the kernel if the process dies)."""
    import fcntl

    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StudyError(f"another study is running in {root}") from None
        yield


# ----------------------------------------------------------------------------- solving one image

_FACTORIES: dict[tuple, object] = {}


def solver_factory(run: Run, seed_mode: str | None):
    """``run.method.study(run.args, seed_mode)``, kept for the process: a study started again in the same
    process (a notebook, the tests) reuses the jitted solvers instead of tracing and compiling them anew."""
    key = (run.method.name, repr(sorted(vars(run.args).items())), seed_mode)
    if key not in _FACTORIES:
        _FACTORIES[key] = run.method.study(run.args, seed_mode)
    return _FACTORIES[key]



@dataclasses.dataclass(frozen=True)
class Batch:
    """What one computation solves: rows (image index, seed), the seeds of one image or of several images of one
    size (a method with ``batches_images``), padded to the device count with seeds beyond the study's."""

    jobs: tuple[cli.Job, ...]
    rows: tuple[tuple[int, int], ...]
    n_real: int

    @classmethod
    def of(cls, run: Run, todo: list[tuple[cli.Job, list[int]]], placement: Placement) -> Batch:
        rows = [(j, s) for j, (_, seeds) in enumerate(todo) for s in seeds]
        pad = placement.padded(len(rows)) - len(rows)
        rows += [(len(todo) - 1, run.args.seeds + i) for i in range(pad)]
        return cls(tuple(job for job, _ in todo), tuple(rows), len(rows) - pad)

    @property
    def name(self) -> str:
        """The first image's name (+ the number of others): the checkpoint folder and the progress label."""
        return self.jobs[0].name + (f"+{len(self.jobs) - 1}" if len(self.jobs) > 1 else "")

    @property
    def seeds(self) -> list[int]:
        return [s for _, s in self.rows]


def batches(run: Run, todo: list[tuple[cli.Job, list[int]]], shapes: dict[tuple[str, str], tuple], placement: Placement,
            max_rows: int) -> list[Batch]:
    """The batches of a run: an image's seeds together; when the seeds are one vmapped computation and the
    method batches images, consecutive images of one LR size share a batch of at most ``max_rows`` rows."""
    together = run.method.batches_images and placement.seed_mode == "vmap"
    groups: list[list[tuple[cli.Job, list[int]]]] = []
    for job, seeds in todo:
        g = groups[-1] if groups else None
        if (together and g and shapes[run.key, g[0][0].name] == shapes[run.key, job.name]
                and sum(len(x) for _, x in g) + len(seeds) <= max_rows):
            g.append((job, seeds))
        else:
            groups.append([(job, seeds)])
    return [Batch.of(run, g, placement) for g in groups]


def solve_batch(run: Run, batch: Batch, prepare, placement: Placement, store: Store, checkpoint_every: int,
                nonblind) -> None:
    """Solve the rows of one batch as one computation; write each (image, seed) result when the batch ends."""
    lrs = [cli.read_lr(run.method, job, run.args) for job in batch.jobs]
    gts = [cli.read_gt_kernel(job, run.method.kernel_size(run.sf), run.method.pad_gt_kernel) for job in batch.jobs]
    lr = lrs[0] if len(lrs) == 1 else np.stack([lrs[j] for j, _ in batch.rows])
    solver = prepare(batch.jobs[0], lr)
    state, out, record, seconds = run_batch(run, batch, solver, [gts[j] for j, _ in batch.rows], placement, store,
                                            checkpoint_every)
    if store.writer:
        n = batch.n_real
        kernels = Placement.host(solver.kernels(state, out)).astype(np.float32)[:n]
        srs = None if solver.srs is None else Placement.host(solver.srs(out))[:n]
        loss = Placement.host(solver.loss(out))[:n]
        record = {"t": np.asarray(record["t"], np.int32), "kernels": np.asarray(record["kernels"], np.float32)[:, :n],
                  "loss": np.asarray(record["loss"], np.float32)[:, :n]}
        for j, job in enumerate(batch.jobs):
            idx = [r for r, (i, _) in enumerate(batch.rows[:n]) if i == j]
            write_results(run, job, [batch.rows[r][1] for r in idx], kernels[idx],
                          None if srs is None else srs[idx], loss[idx],
                          {"t": record["t"], "kernels": record["kernels"][:, idx], "loss": record["loss"][:, idx]},
                          seconds / n, lrs[j], gts[j], nonblind, placement, store)
    store.drop_checkpoint(run, batch.name)


def run_batch(run: Run, batch: Batch, solver: cli.StudySolver, gts: list, placement: Placement, store: Store,
              checkpoint_every: int):
    """Advance the batch from a fresh state or its checkpoint to the last iteration, recording every
    ``run.record_every`` and saving every ``checkpoint_every`` iterations -> (state, last outputs,
    record {t, kernels, loss}, seconds). ``gts``: per row the ground-truth kernel or None (the progress bar)."""
    import jax
    from tqdm import tqdm

    from fkp_jax import metrics

    iters, every, n_real = run.args.iters, run.record_every, batch.n_real
    keys = seed_keys(run.args.seed, batch.seeds)
    meta = {"config": run.config, "seeds": batch.seeds}
    if len(batch.jobs) > 1:
        meta["images"] = [batch.jobs[j].name for j, _ in batch.rows]
    template = (lambda: jax.eval_shape(jax.vmap(solver.init), keys)) if solver.traceable_init else (
        lambda: placement.init(solver, keys))
    resumed = (store.restore_checkpoint(run, batch.name, template, placement, meta)
               if checkpoint_every and store.writer else None)
    if resumed is None:
        state, record, t, seconds = placement.init(solver, keys), {"t": [], "kernels": [], "loss": []}, 0, 0.0
    else:
        state, record, saved = resumed
        t, seconds = int(saved["t"]), float(saved["seconds"])
        print(f"note: {run.key} {batch.name}: resumed from the checkpoint at iteration {t}", file=sys.stderr)

    label = f"{n_real} seeds" if len(batch.jobs) == 1 else f"{len(batch.jobs)} images, {n_real} rows"
    bar = tqdm(total=iters, initial=t, desc=f"{run.key} {batch.name} [{label}]", unit="it",
               leave=True, dynamic_ncols=True, file=sys.stderr)
    out = None
    start = time.perf_counter()
    while t < iters:
        stops = [iters, (t // every + 1) * every] + ([(t // checkpoint_every + 1) * checkpoint_every]
                                                    if checkpoint_every else [])
        n = min(stops) - t
        state, out = solver.advance(state, n)
        t += n
        bar.update(n)
        if t % every == 0 or t == iters:
            kernels, loss = Placement.host(solver.kernels(state, out)), Placement.host(solver.loss(out))
            record["t"].append(t)
            record["kernels"].append(kernels)
            record["loss"].append(loss)
            post = {"loss": f"{float(np.mean(loss[:n_real])):.5f}"}
            if all(gt is not None for gt in gts[:n_real]):
                post["kPSNR"] = f"{np.mean([metrics.kernel_psnr(g, k) for g, k in zip(gts, kernels[:n_real])]):.2f}"
            bar.set_postfix(post)
        if checkpoint_every and t % checkpoint_every == 0 and t < iters:
            store.save_checkpoint(run, batch.name, state, record, {
                **meta, "t": t, "seconds": seconds + time.perf_counter() - start})
    bar.close()
    if out is None:  # a checkpoint is never saved at the last iteration
        raise StudyError(f"{store.checkpoint(run, batch.name)}: a finished checkpoint; remove it")
    return state, out, record, seconds + time.perf_counter() - start


def write_results(run: Run, job: cli.Job, seeds: list[int], kernels: np.ndarray, srs, loss: np.ndarray, record: dict,
                  seconds: float, lr, gt, nonblind, placement: Placement, store: Store) -> None:
    """Metrics of one image's ``seeds`` from the host arrays of their rows (kernels (N, k, k), SR images or None,
    final losses, record {t, kernels (R, N, k, k), loss (R, N)}); one result file per seed (SR image first)."""
    from fkp_jax import io, metrics

    image_results, srs_u8, srs_usr = cli.sr_outputs(run.method, job, run.args, lr, kernels, srs, nonblind)
    lr_err = lr_errors(lr, kernels, srs if srs is not None else None if srs_u8 is None else srs_u8 / 255.0, run.sf)
    for j, seed in enumerate(seeds):
        result = {key: values[j] for key, values in image_results.items()}
        arrays = {"kernel": kernels[j], "record_t": record["t"], "record_kernels": record["kernels"][:, j],
                  "record_loss": record["loss"][:, j]}
        if gt is not None:
            result["kernel_psnr"] = metrics.kernel_psnr(gt, kernels[j])
            arrays["record_kernel_psnr"] = np.asarray([metrics.kernel_psnr(gt, k) for k in record["kernels"][:, j]])
            arrays["gt_kernel"] = gt.astype(np.float32)
        if srs_u8 is not None:
            io.write_image_u8(store.sr(run, job.name, seed), srs_u8[j])
        if srs_usr is not None:
            io.write_image_u8(store.sr(run, job.name, seed, "sr_usrnet"), srs_usr[j])
        store.write_result(run, job.name, seed, {
            "run": run.key, "method": run.method.name, "kernel_prior": run.prior, "sf": run.sf, "image": job.name,
            "seed": seed, "config": run.config, "final_loss": float(loss[j]),
            "lr_error": None if lr_err is None else lr_err[j], "seconds": seconds,
            "devices": len(placement.devices), "seed_mode": placement.seed_mode, **result}, arrays)

def lr_errors(lr: np.ndarray, kernels: np.ndarray, srs, sf: int) -> list[float] | None:
    """Per seed the final LR reconstruction error: MSE between the LR image and the SR image degraded by the
    estimated kernel (the quantity a seed can be judged by without ground truth)."""
    if srs is None:
        return None
    from fkp_jax.degrade import degrade

    out = []
    for sr, k in zip(srs, kernels):
        rec = np.asarray(degrade(np.asarray(sr, np.float32), np.asarray(k, np.float32), sf))
        out.append(float(np.mean((rec[: lr.shape[0], : lr.shape[1]] - lr) ** 2)))
    return out


# ----------------------------------------------------------------------------- report


def collect(plan: list[tuple[Run, list[cli.Job]]], seeds: int, store: Store):
    """Every result of the grid from disk: per run (run, {image: {metric: [per seed]}}), and the CSV rows."""
    tables, rows = [], []
    for run, jobs in plan:
        images = {}
        for job in jobs:
            r = {"seeds": [], "seconds": []}
            for seed in range(seeds):
                meta, _ = store.read_result(run, job.name, seed)
                r["seeds"].append(seed)
                r["seconds"].append(meta["seconds"])
                for key in RESULT_METRICS:
                    if meta.get(key) is not None:
                        r.setdefault(key, []).append(meta[key])
                rows.append({c: meta.get(c) for c in CSV_COLUMNS})
            images[job.name] = r
        tables.append((run, images))
    return tables, rows


def selections(tables, seeds: int, store: Store, rules: list[str]) -> list[dict]:
    """Per run, image and rule (`fkp_jax.selection`) the kept seed (and iteration), its kernel PSNR and PSNR-Y;
    with ground truth also the rows "mean" (over seeds) and "oracle" (the seed of the best kernel PSNR)."""
    from fkp_jax import metrics, selection

    rows = []
    for run, images in tables:
        for image, r in images.items():
            per_seed = [store.read_result(run, image, s) for s in range(seeds)]
            metas, arrays = [m for m, _ in per_seed], [a for _, a in per_seed]
            gt = arrays[0].get("gt_kernel")
            base = {"run": run.key, "image": image}
            if gt is not None:
                best = int(np.argmax(r["kernel_psnr"]))
                rows.append({**base, "rule": "mean", "seed": None, "iteration": None,
                             "kernel_psnr": float(np.mean(r["kernel_psnr"])),
                             "psnr_y": float(np.mean(r["psnr_y"])) if r.get("psnr_y") else None})
                rows.append({**base, "rule": "oracle", "seed": best, "iteration": None,
                             "kernel_psnr": r["kernel_psnr"][best], "psnr_y": metas[best].get("psnr_y")})
            for rule in rules:
                seed, t = selection.choose(rule, [m.get("lr_error") for m in metas], np.stack([a["kernel"] for a in arrays]),
                                           arrays[0]["record_t"], np.stack([a["record_kernels"] for a in arrays], 1))
                kernel = arrays[seed]["kernel"] if t is None else arrays[seed]["record_kernels"][
                    list(arrays[seed]["record_t"]).index(t)]
                rows.append({**base, "rule": rule, "seed": seed, "iteration": t,
                             "kernel_psnr": None if gt is None else metrics.kernel_psnr(gt, kernel),
                             "psnr_y": metas[seed].get("psnr_y") if t is None else None})
    return rows


def selection_markdown(tables, rows: list[dict]) -> list[str]:
    """Per run: a row per image, a column per rule ("kernel PSNR / PSNR-Y (seed, iteration)"), the means."""
    lines = []
    for run, images in tables:
        mine = [r for r in rows if r["run"] == run.key]
        rules = list(dict.fromkeys(r["rule"] for r in mine))
        if not rules:
            continue

        def cell(r, where=True):
            f = lambda v, fmt: "-" if v is None else f"{v:{fmt}}"  # noqa: E731
            at = [] if r["seed"] is None or not where else [f"seed {r['seed']}"] + (
                [] if r["iteration"] is None else [f"it. {r['iteration']}"])
            return f"{f(r['kernel_psnr'], '.2f')} / {f(r['psnr_y'], '.2f')}" + (f" ({', '.join(at)})" if at else "")

        lines += ["", f"### Selection without ground truth: {run.title} x{run.sf}", "",
                  "| image | " + " | ".join(rules) + " |", "| --- |" + " ---: |" * len(rules)]
        for image in images:
            by_rule = {r["rule"]: r for r in mine if r["image"] == image}
            lines.append(f"| {image} | " + " | ".join(cell(by_rule[rule]) for rule in rules) + " |")
        means = []
        for rule in rules:
            vals = [r for r in mine if r["rule"] == rule]
            k = [r["kernel_psnr"] for r in vals if r["kernel_psnr"] is not None]
            y = [r["psnr_y"] for r in vals if r["psnr_y"] is not None]
            means.append(cell({"kernel_psnr": float(np.mean(k)) if len(k) == len(vals) else None,
                               "psnr_y": float(np.mean(y)) if len(y) == len(vals) else None, "seed": None}))
        lines.append("| **mean** | " + " | ".join(means) + " |")
    if lines:
        lines += ["", "Cells: kernel PSNR / PSNR-Y (dB) of the kept kernel (seed, and iteration for a recorded one; "
                  "no PSNR-Y there: no SR image was kept for it). mean: over seeds; oracle: the seed with the best "
                  "kernel PSNR (needs the ground truth, an upper bound); the rules: `fkp_jax.selection`."]
    return lines


def markdown(tables, command: str, seeds: int, selected: list[dict] = ()) -> str:
    from fkp_jax import report

    lines = ["# Study", "", f"Command: `{command}`", "",
             f"{seeds} seeds per image. Cells: the data-set mean (mean over images of the mean over seeds) ± the std "
             "over seeds of the per-seed data-set means.", ""]
    lines += report.study_summary([(run.title, run.sf, images) for run, images in tables])
    for run, images in tables:
        lines += ["", f"## {run.title} x{run.sf} ({run.key}, {run.args.iters} iterations)", ""]
        lines += report.results_table(images, report.summarise(images))
    lines += selection_markdown(tables, list(selected))
    lines += ["", "Per image: mean ± std over seeds (restarts); the mean row averages the per-image means. "
              "PSNR/SSIM on Y (MATLAB BT.601), border of s pixels shaved; kernel PSNR with peak 1 (FKP_SPEC 9). "
              "Per seed values: results.csv; curves and kernels: plots/.", ""]
    return "\n".join(lines)


def csv_text(rows: list[dict], columns=CSV_COLUMNS) -> str:
    buf = _stdio.StringIO()
    w = csv.DictWriter(buf, columns, lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return buf.getvalue()


def write_plots(tables, seeds: int, store: Store) -> None:
    from fkp_jax import io, report

    for run, images in tables:
        folder = store.root / "plots" / run.key
        for image in images:
            per_seed = [store.read_result(run, image, s)[1] for s in range(seeds)]
            labels = [f"seed {s}" for s in range(seeds)]
            if "record_kernel_psnr" in per_seed[0]:
                png = report.curves_png(per_seed[0]["record_t"], np.stack([a["record_kernel_psnr"] for a in per_seed], 1),
                                        labels, f"{run.title} x{run.sf}: {image}", "kernel PSNR (dB)")
                with io.atomic_write(folder / f"{image}_kernel_psnr.png") as f:
                    f.write(png)
            pics = [a["kernel"] for a in per_seed]
            names = [f"seed {s}" + (f" {images[image]['kernel_psnr'][s]:.2f} dB" if "kernel_psnr" in images[image]
                                    else "") for s in range(seeds)]
            if "gt_kernel" in per_seed[0]:
                pics, names = pics + [per_seed[0]["gt_kernel"]], names + ["ground truth"]
            io.write_image_u8(folder / f"{image}_kernels.png", report.kernel_picture(pics, names))
        panels = [(label, {name: r[key] for name, r in images.items()})
                  for key, label in (("kernel_psnr", "kernel PSNR (dB)"), ("psnr_y", "PSNR-Y (dB)"))
                  if all(r.get(key) for r in images.values())]
        if panels:
            with io.atomic_write(folder / "spread.png") as f:
                f.write(report.spread_png(panels, f"{run.title} x{run.sf}: spread over {seeds} seeds"))


# ----------------------------------------------------------------------------- command line


def parse_args(argv) -> argparse.Namespace:
    from fkp_jax.selection import RULES

    p = argparse.ArgumentParser(prog="python -m experiments.study", description=__doc__.split("\n")[0],
                                epilog="Other options go to every method's own parser (e.g. --kernel-type motion "
                                       "for dipdkp, --chunk for the DIP methods); the ones a method records are part "
                                       "of the run's configuration.")
    p.add_argument("--method", nargs="+", action="extend", required=True, metavar="NAME[:PRIOR]",
                   help="methods (experiments.NAME, e.g. dipfkp, kernelganfkp), optionally with a kernel prior "
                        "(dipfkp:mlp); several allowed")
    p.add_argument("--sf", nargs="+", action="extend", type=int, metavar="S", help="scale factors (default 2)")
    p.add_argument("--dataset", type=Path, help="data set folder in the original layout (default: each method's "
                                                "bundled images)")
    p.add_argument("--real", action="store_true", help="no ground truth: skip HR and kernel metrics")
    p.add_argument("--seeds", type=int, default=5, help="restarts per image (default 5, as the papers)")
    p.add_argument("--seed", type=int, default=0, help="base random seed (restart i uses fold_in(seed, i))")
    p.add_argument("--iters", type=int, default=None, help="iterations per image (default: each method's)")
    p.add_argument("--weights", help="FKP prior checkpoint for the methods that take one (default: ours)")
    p.add_argument("--SR", dest="sr_weights", type=Path, help="USRNet-tiny weights: non-blind SR on every kernel")
    p.add_argument("--out", type=Path, default=Path("results/study"), help="output folder (default results/study)")
    p.add_argument("--record-every", type=int, default=10, help="record every seed's kernel and loss every N "
                                                               "iterations (the curves; default 10)")
    p.add_argument("--checkpoint-every", type=int, default=250,
                   help="save the solver state with orbax every N iterations (0: never; default 250)")
    p.add_argument("--seed-mode", choices=("loop", "vmap"), default=None,
                   help="on one device: the seeds one after another or as one vmapped computation (default: "
                        "the method's choice for the backend); several devices always vmap and shard")
    p.add_argument("--devices", type=int, default=None, help="use the first N visible devices (default: all)")
    p.add_argument("--max-batch", type=int, default=32,
                   help="when the seeds are one vmapped computation (several devices, --seed-mode vmap, accelerators): "
                        "images of one size share a batch of at most N (image, seed) rows (default 32; an image's "
                        "seeds always share one)")
    p.add_argument("--select", nargs="+", default=[], choices=RULES,
                   help="rules that keep one seed per image without ground truth (fkp_jax.selection); results.md "
                        "and selection.csv then compare them with the mean over seeds and the best seed")
    p.add_argument("--distributed", action="store_true",
                   help="call jax.distributed.initialize() first (one process per host of a cluster; SLURM, Open "
                        "MPI, Kubernetes and cloud TPUs are detected, else give the next three)")
    p.add_argument("--coordinator", help="with --distributed: HOST:PORT of process 0")
    p.add_argument("--num-processes", type=int, help="with --distributed: the number of processes")
    p.add_argument("--process-id", type=int, help="with --distributed: this process's number (0 writes the files)")
    args, args.method_options = p.parse_known_args(argv)
    args.sf = args.sf or [2]
    return args


def check_options(opts) -> None:
    for name in ("seeds", "record_every", "max_batch"):
        if getattr(opts, name) < 1:
            raise StudyError(f"--{name.replace('_', '-')} must be positive")
    if opts.iters is not None and opts.iters < 1:
        raise StudyError("--iters must be positive")
    if opts.checkpoint_every < 0:
        raise StudyError("--checkpoint-every must be 0 (never) or positive")
    if opts.devices is not None and opts.devices < 1:
        raise StudyError("--devices must be positive")
    if opts.sr_weights is not None and not opts.sr_weights.exists():
        raise StudyError(f"no such USRNet weights file: {opts.sr_weights}")


def check_outputs(plan, out: Path) -> None:
    """Refuse an output folder that would overwrite or hold any input."""
    jobs = [job for _, js in plan for job in js]
    cli.check_outputs(jobs, out)
    inputs = {p.resolve() for j in jobs for p in (j.lr, j.hr, j.gt_kernel) if p is not None}
    ours = [out.resolve() / name for name in ("runs", "checkpoints", "plots")]
    files = {out.resolve() / name for name in ("results.csv", "selection.csv", CONFIG_FILE, ".lock")}
    clash = [p for p in inputs if p in files or any(p.is_relative_to(d) for d in ours)]
    if clash:
        raise StudyError(f"refusing to write over an input file: {clash[0]}; choose another --out")


def main(argv=None) -> int:
    """Run the study; 0 on success, 2 with a one-line error."""
    opts = parse_args(argv)
    try:
        check_options(opts)
        import jax

        if opts.distributed:
            jax.distributed.initialize(opts.coordinator, opts.num_processes, opts.process_id)
        elif opts.coordinator or opts.num_processes is not None or opts.process_id is not None:
            raise StudyError("--coordinator, --num-processes and --process-id go with --distributed")
        runs = make_runs(opts)
        plan = [(run, cli.find_jobs(run.method, run.args)) for run in runs]
        check_outputs(plan, opts.out)
        shapes = {}
        for run, jobs in plan:  # every image checked before anything runs
            for job in jobs:
                shapes[run.key, job.name] = cli.read_lr(run.method, job, run.args).shape
                cli.read_gt_kernel(job, run.method.kernel_size(run.sf), run.method.pad_gt_kernel)

        from fkp_jax import io, runtime

        runtime.configure()
        devices = jax.devices()[: opts.devices]
        placement = Placement(devices, opts.seed_mode)
        multihost = jax.process_count() > 1
        checkpoint_every = 0 if multihost else opts.checkpoint_every
        if multihost and opts.checkpoint_every:
            print("note: several hosts: solver checkpoints are off (per-seed results are still kept)", file=sys.stderr)
        store = Store(opts.out, writer=jax.process_index() == 0)
        with folder_lock(opts.out) if store.writer else contextlib.nullcontext():
            store.check_config(runs)
            if store.writer:
                store.clean()
            print(f"study: {len(runs)} run(s), {sum(len(j) for _, j in plan)} image(s), {opts.seeds} seed(s) each, "
                  f"{len(devices)} device(s) ({devices[0].platform}), seeds "
                  f"{'sharded over the devices' if placement.sharded else placement.seed_mode or 'as the method chooses'}",
                  file=sys.stderr)
            for run, jobs in plan:
                todo = []
                for job in jobs:
                    seeds = [s for s in range(opts.seeds) if not store.done(run, job.name, s)]
                    if seeds:
                        todo.append((job, seeds))
                    else:
                        print(f"skip: {run.key} {job.name}: all {opts.seeds} seeds done", file=sys.stderr)
                if todo:
                    prepare, nonblind = solver_factory(run, placement.seed_mode), cli.make_nonblind(run.args)
                    for batch in batches(run, todo, shapes, placement, opts.max_batch):
                        solve_batch(run, batch, prepare, placement, store, checkpoint_every, nonblind)
                store.drop_checkpoint(run)  # (any left by batches of an earlier, differently grouped start)
            if not store.writer:  # (process 0 of a cluster reports)
                return 0
            tables, rows = collect(plan, opts.seeds, store)
            command = "python -m experiments.study " + shlex.join(sys.argv[1:] if argv is None else argv)
            selected = selections(tables, opts.seeds, store, opts.select) if opts.select else []
            text = markdown(tables, command, opts.seeds, selected)
            io.write_text(opts.out / "results.csv", csv_text(rows))
            if selected:
                io.write_text(opts.out / "selection.csv", csv_text(selected, SELECTION_COLUMNS))
            write_plots(tables, opts.seeds, store)
            io.write_text(opts.out / "results.md", text)
    except (ValueError, FileNotFoundError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(text)
    print(f"outputs in {opts.out}/")
    return 0
