"""Shared test fixtures: where the reference material lives (``../shared/reference`` beside the repo)."""

from pathlib import Path

import numpy as np
import pytest

REF = Path(__file__).resolve().parents[1].parent / "shared" / "reference"
GOLDEN = REF / "golden"


@pytest.fixture(scope="session")
def ref() -> Path:
    if not REF.is_dir():
        pytest.skip(f"reference material not found at {REF}")
    return REF


@pytest.fixture(scope="session")
def golden(ref):
    """golden('kernels') -> the loaded npz of ../shared/reference/golden/kernels.npz."""
    cache = {}

    def load(name: str):
        if name not in cache:
            cache[name] = dict(np.load(GOLDEN / f"{name}.npz", allow_pickle=False))
        return cache[name]

    return load
