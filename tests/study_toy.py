"""A toy method for the study runner's tests: the solver protocol (`cli.StudySolver`) on a model that compiles
in a second, so kill-and-resume, device counts and reports can be checked in subprocesses quickly.

The kernel is a softmax over k^2 logits fitted by noisy gradient descent so that the nearest-neighbour
upsampled LR image, degraded by it, matches the LR image; the noise of iteration t comes from
``fold_in(state key, t)``, so a resumed run must continue the state's key stream to give the same numbers.
Plugged in as ``--method study_toy`` (the study imports the module ``study_toy`` from the tests folder).
"""

from __future__ import annotations

from pathlib import Path


def study(args, seed_mode=None):
    import jax
    import jax.numpy as jnp

    from fkp_jax import cli, kernels
    from fkp_jax.degrade import degrade

    k = kernels.kernel_size(args.sf)

    def init(key):
        k_logits, k_run = jax.random.split(key)
        return {"t": jnp.asarray(1, jnp.int32), "logits": 0.1 * jax.random.normal(k_logits, (k * k,)), "key": k_run}

    def prepare(job, lr):  # lr (h, w, 3), or (N, h, w, 3): one per seed row (batches_images)
        per_row = lr.ndim == 4

        def loss_fn(logits, lr_b):
            sr = jnp.repeat(jnp.repeat(lr_b, args.sf, 0), args.sf, 1)
            kernel = jax.nn.softmax(logits).reshape(k, k)
            return jnp.mean((degrade(sr, kernel, args.sf) - lr_b) ** 2), (kernel, sr)

        def step(state, lr_b):
            (loss, (kernel, sr)), g = jax.value_and_grad(loss_fn, has_aux=True)(state["logits"], lr_b)
            noise = jax.random.normal(jax.random.fold_in(state["key"], state["t"]), g.shape)
            logits = state["logits"] - 50.0 * g - 0.01 * noise
            return {**state, "t": state["t"] + 1, "logits": logits}, {"loss": loss, "kernel": kernel, "sr": sr}

        lr_all = jnp.asarray(lr)
        one = jax.jit(step)
        batched = jax.jit(jax.vmap(step, in_axes=(0, 0 if per_row else None)))

        def advance(state, n):
            if seed_mode == "vmap":
                for _ in range(n):
                    state, out = batched(state, lr_all)
                return state, out
            states = [jax.tree.map(lambda x: x[i], state) for i in range(state["t"].shape[0])]
            outs = [None] * len(states)
            for _ in range(n):
                for i, s in enumerate(states):
                    states[i], outs[i] = one(s, lr_all[i] if per_row else lr_all)
            stack = lambda trees: jax.tree.map(lambda *xs: jnp.stack(xs), *trees)  # noqa: E731
            return stack(states), stack(outs)

        return cli.StudySolver(init=init, advance=advance, kernels=lambda state, out: out["kernel"],
                               loss=lambda out: out["loss"], srs=lambda out: jnp.clip(out["sr"], 0, 1))

    return prepare


def method():
    from fkp_jax import cli, kernels

    return cli.Method(
        name="study_toy", title="Toy", model="DIPFKP", scales=(2, 3), priors=("softmax",),
        default_dataset=Path(__file__).resolve().parent / "no_default", default_iters=lambda args: 7,
        kernel_size=kernels.kernel_size, check_lr=lambda name, lr, args: None,
        build=lambda args: None, study=study, batches_images=True)
