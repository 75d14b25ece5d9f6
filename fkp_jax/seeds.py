"""Restarts ("seeds") as the leading axis of a solver state, and the host loop that drives a jitted step.

Every solver keeps its restarts as a leading axis of one state pytree, so that N restarts can run as one
vmapped computation (accelerators) or one after another through the single-seed step (XLA:CPU, where
that is faster: `fkp_jax.dipfkp.default_seed_mode`). `drive` is that loop, written once for every method.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import jax
import jax.numpy as jnp

State = Any


def stack_states(states: list[State]) -> State:
    """Stack restarts along a new leading seed axis."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *states)


def unstack(state: State, n: int) -> list[State]:
    """The inverse of `stack_states`."""
    return [jax.tree.map(lambda x: x[i], state) for i in range(n)]


def drive(step_of: Callable[[int], Callable], state: State, arg, iters: int, looped: bool, chunk: int = 1,
          per_seed_arg: bool = False, callback: Callable[[int, dict], None] | None = None):
    """Run ``iters`` iterations; returns (state, outputs of the last dispatch, seconds).

    ``step_of(n)`` is the jitted ``(state, arg) -> (state, outputs)`` that advances n iterations (n = chunk,
    or what is left). With ``looped`` the state has a leading seed axis that is taken apart and advanced
    seed by seed (``arg[i]`` for seed i when ``per_seed_arg``, else ``arg`` for all) and stacked again;
    otherwise it goes through whole (a single seed, or a vmapped step). ``callback(t, outputs)`` runs after
    every dispatch with the number t of its last iteration (outputs with the seed axis when looped)."""
    states = unstack(state, jax.tree.leaves(state)[0].shape[0]) if looped else [state]
    start = time.perf_counter()
    outs, done = [None] * len(states), 0
    while done < iters:
        n = min(chunk, iters - done)
        for i, s in enumerate(states):
            states[i], outs[i] = step_of(n)(s, arg[i] if per_seed_arg else arg)
        done += n
        if callback is not None:
            callback(done, stack_states(outs) if looped else outs[0])
    jax.block_until_ready(outs)
    seconds = time.perf_counter() - start
    if looped:
        return stack_states(states), stack_states(outs), seconds
    return states[0], outs[0], seconds
