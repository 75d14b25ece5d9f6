"""`python -m experiments.study` (fkp_jax.study): device-count independence, kill-and-resume, checkpoint-resume
equality, configuration refusal, bad input, report files.

The runner's machinery is method-agnostic, so most tests drive it with a toy method (tests/study_toy.py,
plugged in by module name) that compiles in a second; the checkpoint round trip runs the real DIP solver
(mlp kernel prior, whose kernel moves from iteration 1) with its optax states, flax parameters and keys.
Subprocesses share one persistent XLA compilation cache.
"""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from experiments.prepare_dataset import prepare_dataset
from fkp_jax import study

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Three 48x48 HR images (LR 24x24 at x2) with GT kernels made by our data preparation."""
    root = tmp_path_factory.mktemp("set")
    (root / "HR").mkdir()
    rng = np.random.default_rng(0)
    for name in ("a", "b", "c"):
        img = cv2.GaussianBlur(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8), (5, 5), 1.0)
        cv2.imwrite(str(root / "HR" / f"{name}.png"), img)
    prepare_dataset(root, 2, seed=0, progress=False)
    return root


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Environment of the study subprocesses: the toy method importable, one compilation cache, 1 device."""
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(ROOT)] + ([e["PYTHONPATH"]] if e.get("PYTHONPATH") else []))
    e["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path_factory.mktemp("xla_cache"))
    e["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    e.pop("XLA_FLAGS", None)
    return e


def toy_argv(dataset, out):
    return ["--method", "study_toy", "--dataset", str(dataset), "--seeds", "3", "--iters", "200",
            "--record-every", "20", "--checkpoint-every", "50", "--out", str(out),
            "--select", "best-fit", "consensus", "early-consensus"]


def spawn(argv, env, **kw):
    return subprocess.Popen([sys.executable, "-m", "experiments.study", *argv], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def run_ok(argv, env, **kw):
    p = spawn(argv, env, **kw)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-3000:]
    return out, err


def read_csv(path, drop=("seconds",)):
    with open(path, newline="") as f:
        return [{k: v for k, v in row.items() if k not in drop} for row in csv.DictReader(f)]


def table(path):
    """results.md without the timing column (the only thing two runs of a study may differ in)."""
    lines = []
    for line in Path(path).read_text().splitlines():
        if line.startswith("| ") and "seconds" not in line and line.count("|") >= 7:
            line = "|".join(line.split("|")[:-2])  # drop the seconds column
        lines.append(line)
    return [ln for ln in lines if not ln.startswith("Command:")]


@pytest.fixture(scope="module")
def reference(dataset, tmp_path_factory, env):
    """The uninterrupted toy study on one device (in this process)."""
    sys.path.insert(0, str(TESTS))
    out = tmp_path_factory.mktemp("reference")
    assert study.main(toy_argv(dataset, out)) == 0
    return out


def test_report_files(reference):
    rows = read_csv(reference / "results.csv")
    assert [(r["image"], r["seed"]) for r in rows] == [(i, str(s)) for i in "abc" for s in range(3)]
    assert all(np.isfinite(float(r["kernel_psnr"])) and float(r["lr_error"]) > 0 for r in rows)
    md = (reference / "results.md").read_text()
    assert "| Toy | " in md and "| a | 3 | " in md and "| **mean** |" in md
    for name in ("spread.png", "a_kernel_psnr.png", "a_kernels.png"):
        img = cv2.imread(str(reference / "plots" / "study_toy_x2" / name))
        assert img is not None and min(img.shape[:2]) > 100, name
    with np.load(reference / "runs" / "study_toy_x2" / "a" / "seed0.npz") as r:
        meta = json.loads(str(r["meta"]))
        assert list(r["record_t"]) == list(range(20, 201, 20)) and r["record_kernels"].shape == (10, 11, 11)
        assert meta["kernel_psnr"] == pytest.approx(r["record_kernel_psnr"][-1])
    assert json.loads((reference / "study.json").read_text())["runs"]["study_toy_x2"]["iters"] == 200
    # --select: one kept seed per image and rule, from what a run without ground truth has
    picks = read_csv(reference / "selection.csv")
    assert {(r["image"], r["rule"]) for r in picks} == {
        (i, rule) for i in "abc" for rule in ("mean", "oracle", "best-fit", "consensus", "early-consensus")}
    for image in "abc":
        seeds = [r for r in rows if r["image"] == image]
        best_fit = next(r for r in picks if r["image"] == image and r["rule"] == "best-fit")
        assert int(best_fit["seed"]) == int(np.argmin([float(r["lr_error"]) for r in seeds]))
        assert float(best_fit["kernel_psnr"]) == pytest.approx(float(seeds[int(best_fit["seed"])]["kernel_psnr"]))
    assert "### Selection without ground truth: Toy x2" in md
    assert not list(reference.rglob(".*.tmp")) and not list((reference / "checkpoints").rglob("*/*"))


def test_same_results_on_four_devices(dataset, reference, tmp_path, env):
    """4 host devices: the three equal-size images are one batch (3 x 3 seeds, padded to 12 rows), sharded over
    them; the same kernel PSNR per (image, seed) as the one-device loop over the seeds of one image at a time."""
    out = tmp_path / "four"
    _, err = run_ok(toy_argv(dataset, out), {**env, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
    assert "4 device(s)" in err and "sharded" in err and "a+2 [3 images, 9 rows]" in err
    ours, theirs = read_csv(out / "results.csv"), read_csv(reference / "results.csv")
    assert [(r["image"], r["seed"]) for r in ours] == [(r["image"], r["seed"]) for r in theirs]
    np.testing.assert_allclose([float(r["kernel_psnr"]) for r in ours], [float(r["kernel_psnr"]) for r in theirs],
                               rtol=0, atol=1e-3)
    with np.load(out / "runs" / "study_toy_x2" / "b" / "seed2.npz") as r:
        assert json.loads(str(r["meta"]))["devices"] == 4


def test_images_of_one_size_batched_up_to_max_batch(dataset, reference, tmp_path, capsys):
    """One device, --seed-mode vmap --max-batch 6: images a and b share a batch (6 rows), c runs alone; every
    (image, seed) result is the one of the per-image loop."""
    out = tmp_path / "vmap"
    assert study.main(toy_argv(dataset, out) + ["--seed-mode", "vmap", "--max-batch", "6"]) == 0
    err = capsys.readouterr().err
    assert "a+1 [2 images, 6 rows]" in err and "c [3 seeds]" in err
    ours, theirs = read_csv(out / "results.csv"), read_csv(reference / "results.csv")
    assert [(r["image"], r["seed"]) for r in ours] == [(r["image"], r["seed"]) for r in theirs]
    np.testing.assert_allclose([float(r["kernel_psnr"]) for r in ours], [float(r["kernel_psnr"]) for r in theirs],
                               rtol=0, atol=1e-3)
    assert not (out / "checkpoints" / "study_toy_x2").exists()


def test_sigkill_and_resume(dataset, reference, tmp_path, env):
    """A study killed with SIGKILL mid-way, started again with the same command, skips the finished results
    (never rewrites them), continues the rest and ends with the table of an uninterrupted run."""
    out = tmp_path / "killed"
    argv = toy_argv(dataset, out)
    first = out / "runs" / "study_toy_x2" / "a"
    p = spawn(argv, env)
    deadline = time.monotonic() + 120
    while not all((first / f"seed{s}.npz").is_file() for s in range(3)):
        assert p.poll() is None, p.communicate()[1][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.communicate()
    assert p.returncode == -signal.SIGKILL
    done = {f: (f.stat().st_ino, f.stat().st_mtime_ns) for f in (out / "runs").rglob("seed*.npz")}
    assert len(done) < 9, "the study ended before it was killed"
    assert not (out / "results.md").exists()

    _, err = run_ok(argv, env)
    assert "skip: study_toy_x2 a" in err
    for f, stamp in done.items():
        assert (f.stat().st_ino, f.stat().st_mtime_ns) == stamp, f"{f} was written again"
    assert read_csv(out / "results.csv") == read_csv(reference / "results.csv")
    assert table(out / "results.md") == table(reference / "results.md")


def with_option(argv, name, value):
    argv = list(argv)
    if name in argv:
        argv[argv.index(name) + 1] = value
    else:
        argv += [name, value]
    return argv


def test_refuses_other_configuration(dataset, reference, capsys):
    """A folder holding results of another configuration is refused before anything runs."""
    for name, value, needle in (("--iters", "8", "iters 200"), ("--record-every", "3", "record_every 20"),
                                ("--seed", "1", "seed 0")):
        assert study.main(with_option(toy_argv(dataset, reference), name, value)) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("error:") and needle in err, err


def test_bad_input_one_line_errors(dataset, tmp_path, capsys, monkeypatch):
    sys.path.insert(0, str(TESTS))
    (tmp_path / "noproto.py").write_text(
        "import dataclasses, study_toy\n"
        "def method():\n    return dataclasses.replace(study_toy.method(), name='noproto', study=None)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    out = ["--out", str(tmp_path / "o"), "--iters", "1"]
    cases = [(["--method", "nosuch"], "unknown method 'nosuch'"),
             (["--method", "noproto", "--dataset", str(dataset)], "does not support studies"),
             (["--method", "study_toy", "--sf", "4", "--dataset", str(dataset)], "--sf 4"),
             (["--method", "study_toy:fkp", "--dataset", str(dataset)], "unknown kernel prior"),
             (["--method", "study_toy", "--dataset", str(tmp_path / "nowhere")], "nowhere"),
             (["--method", "study_toy", "--sf", "3", "--dataset", str(dataset)], "DIPFKP_lr_x3"),
             (["--method", "study_toy", "--dataset", str(dataset), "--seeds", "0"], "--seeds"),
             (["--method", "study_toy", "--dataset", str(dataset), "--bogus", "1"],  # other options go to the method
              "study_toy: unrecognized arguments: --bogus 1")]
    for argv, needle in cases:
        assert study.main(argv + out) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("error:") and needle in err, (argv, err)
    # outputs never overwrite inputs
    assert study.main(["--method", "study_toy", "--dataset", str(dataset), "--out", str(dataset / "DIPFKP_lr_x2")]) == 2
    assert "input folder" in capsys.readouterr().err


def test_checkpoint_resume_dip_equals_uninterrupted(dataset, tmp_path, capsys, monkeypatch):
    """DIP (mlp kernel prior): a run stopped right after its orbax checkpoint at iteration 3 and started again
    continues from it (same key stream) to the same numbers, bitwise, as an uninterrupted run."""
    one = tmp_path / "one"
    for sub in ("HR", "DIPFKP_lr_x2", "DIPFKP_gt_k_x2"):
        (one / sub).mkdir(parents=True)
        src = next((dataset / sub).glob("a.*"))
        (one / sub / src.name).write_bytes(src.read_bytes())

    def argv(out):
        return ["--method", "dipfkp:mlp", "--dataset", str(one), "--seeds", "2", "--iters", "5", "--record-every", "2",
                "--checkpoint-every", "3", "--out", str(out)]

    assert study.main(argv(tmp_path / "whole")) == 0

    class Stop(BaseException):
        pass

    save = study.Store.save_checkpoint

    def save_then_die(self, *a, **kw):
        save(self, *a, **kw)
        raise Stop

    monkeypatch.setattr(study.Store, "save_checkpoint", save_then_die)
    with pytest.raises(Stop):
        study.main(argv(tmp_path / "cut"))
    monkeypatch.undo()
    assert (tmp_path / "cut" / "checkpoints" / "dipfkp-mlp_x2" / "a").is_dir()
    assert not list((tmp_path / "cut" / "runs").rglob("*.npz"))
    capsys.readouterr()
    assert study.main(argv(tmp_path / "cut")) == 0
    assert "resumed from the checkpoint at iteration 3" in capsys.readouterr().err
    for s in range(2):
        with np.load(tmp_path / "whole" / "runs" / "dipfkp-mlp_x2" / "a" / f"seed{s}.npz") as w, \
                np.load(tmp_path / "cut" / "runs" / "dipfkp-mlp_x2" / "a" / f"seed{s}.npz") as c:
            for key in ("kernel", "record_t", "record_kernels", "record_loss", "record_kernel_psnr"):
                np.testing.assert_array_equal(c[key], w[key], err_msg=key)
            mw, mc = json.loads(str(w["meta"])), json.loads(str(c["meta"]))
            for key in ("kernel_psnr", "psnr_y", "ssim_y", "lr_error", "final_loss"):
                assert mc[key] == mw[key], key
    assert not list((tmp_path / "cut" / "checkpoints").rglob("*/*"))


def test_dip_images_batched_one_lr_per_row(dataset):
    """The DIP study solver (`cli.Method.batches_images`) with one LR image per row: each row sees its own image.
    Rows (a, seed 0), (b, seed 0) and the swapped batch (b, seed 0), (a, seed 0) run the same compiled program;
    each (image, seed) gives the same iteration-1 loss and iteration-2 kernel in either position, and the two
    images give different ones. (That the vmapped step equals the single-seed one is tests/test_dipfkp.py's.)"""
    import jax

    from experiments import dipfkp as dipfkp_cmd
    from fkp_jax import cli, io

    method = dipfkp_cmd.method()
    args = cli.parse_args(method, ["--sf", "2", "--kernel-prior", "mlp", "--iters", "2"])
    lrs = np.stack([io.read_image(next((dataset / "DIPFKP_lr_x2").glob(f"{n}.*"))) for n in "ab"])
    keys = study.seed_keys(0, [0, 0])
    job = cli.Job("a", Path("a.png"), None, None)
    prepare = method.study(args, "vmap")
    results = []
    for order in ([0, 1], [1, 0]):
        solver = prepare(job, lrs[order])
        state, first = solver.advance(jax.vmap(solver.init)(keys), 1)
        state, second = solver.advance(state, 1)
        results.append((np.asarray(solver.loss(first)), np.asarray(solver.kernels(state, second))))
    (loss_ab, k_ab), (loss_ba, k_ba) = results
    np.testing.assert_allclose(loss_ba[::-1], loss_ab, rtol=1e-6)
    np.testing.assert_allclose(k_ba[::-1], k_ab, rtol=0, atol=1e-8)
    assert abs(loss_ab[0] - loss_ab[1]) > 1e-4  # same seed, so the rows differ only by their image
    assert not np.allclose(k_ab[0], k_ab[1], rtol=0, atol=1e-6)


def test_weights_reach_only_the_runs_that_load_them(dataset):
    """--weights is the FKP prior's checkpoint: a study passes it to fkp runs (and to methods with networks of
    their own), not to priors that load none, which would refuse it (fkp_jax.cli.uses_weights)."""
    opts = study.parse_args(["--method", "dipfkp", "dipdkp", "dipfkp:mlp", "--sf", "2", "--dataset", str(dataset),
                             "--weights", "2"])
    weights = {(run.method.name, run.prior): run.args.weights for run in study.make_runs(opts)}
    assert weights == {("dipfkp", "fkp"): "2", ("dipdkp", "dkp"): None, ("dipfkp", "mlp"): None}
