"""The seed axis and the host loop every solver's runner uses (`fkp_jax.seeds`)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fkp_jax import seeds


def _state(i):
    return {"t": jnp.asarray(1, jnp.int32), "x": jnp.full((2, 3), float(i)), "nested": {"k": jnp.arange(4.0) * i}}


def test_stack_and_unstack_are_inverse():
    states = [_state(i) for i in range(3)]
    stacked = seeds.stack_states(states)
    assert stacked["x"].shape == (3, 2, 3) and stacked["t"].shape == (3,)
    for a, b in zip(seeds.unstack(stacked, 3), states):
        jax.tree.map(np.testing.assert_array_equal, a, b)


def _step_of(calls):
    """n iterations of x <- x * 2 + arg, t <- t + n, as a jitted function per n (calls records each n)."""

    def step_of(n):
        calls.append(n)

        @jax.jit
        def step(state, arg):
            x = state["x"]
            for _ in range(n):
                x = x * 2 + arg
            return {**state, "t": state["t"] + n, "x": x}, {"mean": jnp.mean(x), "t": state["t"] + n - 1}

        return step

    return step_of


@pytest.mark.parametrize("chunk", [1, 3])
def test_looped_seeds_equal_the_whole_state_and_chunks_add_up(chunk):
    """Seed by seed (looped) gives what one vmapped call gives; chunks of 3 over 7 iterations dispatch
    3 + 3 + 1 with a callback after each, numbered by its last iteration."""
    state = seeds.stack_states([{"t": jnp.asarray(1), "x": jnp.full((2,), float(i))} for i in range(2)])
    seen, calls = [], []
    looped, out, seconds = seeds.drive(_step_of(calls), state, 1.0, 7, looped=True, chunk=chunk,
                                       callback=lambda t, o: seen.append((t, o["t"].shape)))
    vstep_of = lambda n: jax.vmap(_step_of([])(n), in_axes=(0, None))  # noqa: E731
    whole, out_whole, _ = seeds.drive(vstep_of, state, 1.0, 7, looped=False, chunk=chunk)
    jax.tree.map(np.testing.assert_array_equal, looped, whole)
    np.testing.assert_array_equal(looped["x"][1], (1.0 + 1) * 2.0 ** 7 - 1)  # x <- 2x + 1, seven times
    np.testing.assert_array_equal(looped["t"], [8, 8])
    np.testing.assert_array_equal(out["mean"], out_whole["mean"])
    assert [t for t, _ in seen] == (list(range(1, 8)) if chunk == 1 else [3, 6, 7])
    assert all(shape == (2,) for _, shape in seen)  # looped outputs carry the seed axis
    assert seconds >= 0


def test_per_seed_arguments():
    state = seeds.stack_states([{"t": jnp.asarray(1), "x": jnp.zeros(2)} for _ in range(2)])
    out_state, _, _ = seeds.drive(_step_of([]), state, jnp.asarray([1.0, -1.0]), 2, looped=True, per_seed_arg=True)
    np.testing.assert_array_equal(out_state["x"][:, 0], [3.0, -3.0])  # 0 -> a -> 3a
