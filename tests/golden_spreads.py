"""The original's own float32-vs-float64 spread for every quantity a float32 golden-parity test checks.

``python tests/golden_spreads.py`` prints a Markdown table (docs/tolerances.md): for each golden array
that exists as ``*_f32`` and ``*_f64`` (golden README), max |f32 - f64| and the largest relative
difference. Where the golden file holds only the float32 result (the degradation operator, the
DIP-FKP kernel-branch unit check), the float64 value is recomputed: with NumPy in float64 for the
degradation, with this port in float64 (which matches the original's float64 outputs to ~1e-12, see
the *_f64 tests) for the unit check. This is the natural scale of a float32 tolerance: a float32
port can only be expected to agree with the original's float32 run about as well as the original's
float32 run agrees with its own float64 run.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

GOLDEN = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "golden"


def load(name):
    return dict(np.load(GOLDEN / f"{name}.npz", allow_pickle=False))


def diff(a32, a64, rel_floor=0.0):
    a32, a64 = np.asarray(a32, np.float64), np.asarray(a64, np.float64)
    err = np.abs(a32 - a64)
    rel = err / np.maximum(np.abs(a64), rel_floor) if err.size else err
    return float(err.max()), float(np.nanmax(rel)), float(err.mean())


def degrade64(hr, kernel, sf):
    """The original `degradation` in float64 (wrap pad k//2, correlate, keep 0, s, 2s, ...), NCHW in and out."""
    k = kernel.shape[0]
    x = hr[0].astype(np.float64)  # (C, H, W)
    p = np.pad(x, ((0, 0), (k // 2, k // 2), (k // 2, k // 2)), mode="wrap")
    h, w = x.shape[1:]
    out = np.zeros((x.shape[0], -(-h // sf), -(-w // sf)))
    for i in range(out.shape[1]):
        for j in range(out.shape[2]):
            out[:, i, j] = np.einsum("rc,xrc->x", kernel, p[:, sf * i:sf * i + k, sf * j:sf * j + k])
    return out[None]


def rows():
    out = []

    def add(what, a32, a64, rel_floor=0.0):
        out.append((what,) + diff(a32, a64, rel_floor))

    g = load("dip_skip")
    add("dip_skip output_train_bn", g["output_train_bn_f32"], g["output_train_bn_f64"])

    t = load("dipfkp_trace_x2")
    add("trace iter1 loss", t["loss"][0], t["iter1_f64_loss"])
    add("trace iter1 kernel", t["kernels"][0], t["iter1_f64_kernel"][0, 0])
    add("trace iter1 SR", t["sr_snapshots"][0], t["iter1_f64_sr"][0])
    live = t["iter1_f64_grad_norm"] > 1e-10
    big = live & (t["iter1_f64_grad_norm"] > 1e-5)
    add("trace iter1 grad norms, 76 large", t["iter1_grad_norm"][big], t["iter1_f64_grad_norm"][big])
    add("trace iter1 grad norms, 9 small BN scales", t["iter1_grad_norm"][live & ~big],
        t["iter1_f64_grad_norm"][live & ~big])
    level4 = t["iter1_param_names"] == "1.1.7.1.1.7.1.1.8.1.1.8.1.1.1.1.weight"
    add("trace iter1 Adam update norms, live except level-4 conv", t["iter1_update_norm"][live & ~level4],
        t["iter1_f64_update_norm"][live & ~level4])
    add("trace iter1 Adam update norm, level-4 stride-2 conv", t["iter1_update_norm"][level4],
        t["iter1_f64_update_norm"][level4])

    for sf in (2, 3, 4):
        f = load(f"fkp_flow_x{sf}")
        for key in ("inv_x", "inv_logdet", "inv_kernel", "inv_logp_of_x", "fwd_u", "fwd_logdet", "fwd_logp",
                    "train_u", "train_logp", "train_nll"):
            add(f"flow x{sf} {key}", f[f"{key}_f32"], f[f"{key}_f64"])
        add(f"flow x{sf} fwd_u / max|fwd_u|", f["fwd_u_f32"] / np.abs(f["fwd_u_f64"]).max(),
            f["fwd_u_f64"] / np.abs(f["fwd_u_f64"]).max())
        for n in ("mean", "var"):
            a32 = np.concatenate([f[f"train_bn{i}_running_{n}_after_f32"] for i in (1, 3, 5, 7, 9)])
            a64 = np.concatenate([f[f"train_bn{i}_running_{n}_after_f64"] for i in (1, 3, 5, 7, 9)])
            add(f"flow x{sf} train running_{n} (rel. floor 1)", a32, a64, rel_floor=1.0)
        out.append((f"flow x{sf} roundtrip max |forward(inverse(z)) - z| of the original's f32 run",
                    float(f["inv_roundtrip_maxerr_f32"]), float("nan"), float("nan")))

    loss = load("losses")
    for key in ("train_ssim", "train_ssim_loss", "train_mse"):
        add(f"losses {key}", loss[f"{key}_f32"], loss[f"{key}_f64"])

    d = load("degrade")
    for sf in (2, 3, 4):
        add(f"degrade lr_x{sf} (f64 recomputed with NumPy)", d[f"lr_x{sf}"], degrade64(d["hr"], d[f"kernel_x{sf}"], sf))
    add("degrade example_lr_x4_float (f64 recomputed with NumPy)", d["example_lr_x4_float"], _example64(d))

    out.extend(_unit_check_rows(t))
    return out


def _example64(d):
    """The bundled x4 example LR in float64 from the same float32 HR as the original."""
    import cv2

    data = GOLDEN.parent / "data" / "Test"
    hr = cv2.imread(str(data / "HR" / "102061.png"), cv2.IMREAD_COLOR)[:, :, ::-1]
    hr = (hr.astype(np.float32) / np.float32(255))[:480, :320]
    return degrade64(hr.transpose(2, 0, 1)[None], d["example_gt_kernel_x4"], 4)


def _unit_check_rows(t):
    """DIP-FKP kernel-branch unit check (golden 9.4): the original's float32 values vs this port in float64."""
    import jax
    import jax.numpy as jnp
    import optax

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from fkp_jax import degrade as degrade_lib
    from fkp_jax import kernel_priors, metrics
    from fkp_jax.convert import prior_from_torch
    from fkp_jax.flow import FlowPrior

    with jax.enable_x64(True):
        p = prior_from_torch(GOLDEN.parent / "weights" / "FKP_x2.pt")
        c = lambda tree: jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), tree)  # noqa: E731
        prior = kernel_priors.fkp_prior(FlowPrior(c(p.params), c(p.batch_stats), p.config))
        sr = jnp.asarray(t["final_sr"].transpose(0, 2, 3, 1), jnp.float64)
        lr = jnp.asarray(t["lr_input"].transpose(0, 2, 3, 1), jnp.float64)
        z = jnp.asarray(t["unit_latent_in"], jnp.float64)

        def loss(z):
            o = degrade_lib.degrade(sr, prior.kernel(z), 2)
            return metrics.mse(o, lr), o

        (mse, o), grad = jax.value_and_grad(loss, has_aux=True)(z)
        updates, _ = prior.optimizer.update(grad, prior.optimizer.init(z), z)
        z1 = prior.project(optax.apply_updates(z, updates))
        kern = prior.kernel(z)
    rel = lambda a, b: diff(a, b)  # noqa: E731
    return [
        ("unit check kernel (f64: this port)",) + rel(t["unit_kernel"][0, 0], kern),
        ("unit check out LR (f64: this port)",) + rel(t["unit_out_lr"], np.asarray(o).transpose(0, 3, 1, 2)),
        ("unit check MSE (f64: this port)",) + rel(t["unit_mse"], mse),
        ("unit check latent grad (f64: this port)",) + rel(t["unit_latent_grad"].reshape(-1), grad),
        ("unit check latent grad / max|grad|",) + rel(t["unit_latent_grad"].reshape(-1) / np.abs(grad).max(),
                                                     np.asarray(grad) / np.abs(grad).max()),
        ("unit check latent after step (f64: this port)",) + rel(t["unit_latent_after_step"].reshape(-1), z1),
    ]


def main():
    print("| quantity | max abs f32 - f64 | max rel | mean abs |")
    print("| --- | ---: | ---: | ---: |")
    for what, mx, rel, mean in rows():
        print(f"| {what} | {mx:.3g} | {rel:.3g} | {mean:.3g} |")


if __name__ == "__main__":
    main()
