"""Orbax save/restore of a parameter pytree plus JSON-able metadata (e.g. a config dict).

Layout of a checkpoint directory: orbax composite with items ``variables`` (the pytree, nested
dicts of arrays) and ``meta`` (JSON). Saving is atomic: orbax writes into a hidden temporary
sibling directory which is renamed into place only after orbax has finished, so a killed save
never leaves a directory under the final name. Restore needs no target structure (CPU, NumPy).
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp


SAVE_CONCURRENT_GB = 1  # GB in flight while saving (see _checkpointer)


def _checkpointer() -> ocp.Checkpointer:
    """Composite checkpointer whose pytree item writes at most SAVE_CONCURRENT_GB at a time, uncompressed:
    float weights barely compress. With orbax's defaults (compression, no limit) saving peaked at 6.19 GB for a 2.2 GB tree of random float32 (the size of the ADM UNet), with these at 4.29 GB and
    faster (46 s against 63 s; peak RSS from ``resource.getrusage``, 2 AVX2 cores)."""
    return ocp.Checkpointer(ocp.CompositeCheckpointHandler(
        variables=ocp.PyTreeCheckpointHandler(save_concurrent_gb=SAVE_CONCURRENT_GB, use_compression=False),
        meta=ocp.JsonCheckpointHandler()))


def save(path, params, config_dict: dict, overwrite: bool = False) -> Path:
    """Write ``params`` (pytree of arrays) and ``config_dict`` (JSON-able) to directory ``path``."""
    path = Path(path).absolute()
    if path.exists() and not overwrite:
        raise FileExistsError(f"checkpoint destination already exists: {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    tmp = path.with_name(f".{path.name}.tmp-{tag}")
    host = jax.tree.map(lambda a: np.asarray(jax.device_get(a)), params)
    try:
        _checkpointer().save(tmp, args=ocp.args.Composite(
            variables=ocp.args.PyTreeSave(host), meta=ocp.args.JsonSave(dict(config_dict))))
        if path.exists():
            old = path.with_name(f".{path.name}.old-{tag}")
            os.rename(path, old)
            os.rename(tmp, path)
            shutil.rmtree(old)
        else:
            os.rename(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


ENTRIES = frozenset({"variables", "meta", "_CHECKPOINT_METADATA", "commit_success.txt"})  # what save writes


def is_checkpoint(path) -> bool:
    """Whether ``path`` is a directory written by :func:`save` (its ``variables`` and ``meta`` items)."""
    path = Path(path)
    return (path / "variables").is_dir() and (path / "meta").is_dir()


def restore(path) -> tuple[dict, dict]:
    """Read a directory written by :func:`save` -> (params as NumPy arrays, config_dict)."""
    path = Path(path).absolute()
    if not (path / "variables").is_dir() or not (path / "meta").is_dir():
        raise FileNotFoundError(f"not a fkp_jax checkpoint directory: {path}")
    out = _checkpointer().restore(path, args=ocp.args.Composite(
        variables=ocp.args.PyTreeRestore(), meta=ocp.args.JsonRestore()))
    return out["variables"], dict(out["meta"])
