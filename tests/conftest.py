"""Shared test fixtures: where the reference material lives (``../shared/reference`` beside the repo)."""

import dis
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from fkp_jax import runtime


def _pin_xdist_worker():
    """Under pytest-xdist, each worker on a core of its own (worker i on core i mod cores), before XLA starts."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if os.environ.get("FKP_TEST_PIN") == "1" and worker.startswith("gw") and hasattr(os, "sched_setaffinity"):
        cores = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cores[int(worker[2:]) % len(cores)]})


_pin_xdist_worker()
runtime.configure()  # as every entry point does: the suite runs the same code paths at the same speed

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


@pytest.fixture(scope="module")
def gk(ref):
    """gk('forward') -> the loaded npz of ../shared/reference/golden_kulnet/forward.npz; gk.folder: that folder."""
    folder = ref / "golden_kulnet"
    if not folder.is_dir():
        pytest.skip(f"KULNet golden data not found at {folder}")
    cache = {}

    def load(name):
        if name not in cache:
            cache[name] = dict(np.load(folder / f"{name}.npz", allow_pickle=False))
        return cache[name]

    load.folder = folder
    return load


# ----------------------------------------------------------------------------- tolerance audit
# FKP_TOLERANCE_LOG=FILE records, for every np.testing.assert_allclose in the suite, how much of its
# tolerance was used: max |actual - desired| / (atol + rtol |desired|) (1.0 = at the limit), one JSON
# line per call. `python tests/tolerance_report.py FILE...` tabulates runs made on different CPUs or
# under XLA_FLAGS=--xla_cpu_max_isa=... (docs/tolerances.md). Off by default: the suite is unchanged.
# With FKP_TOLERANCE_NO_RAISE=1 as well, a violated assert_allclose is only logged (used > 1), so that one
# run measures every assertion even where an earlier one in the same test is over its tolerance.
def assertion_id(code, last_instruction: int) -> str:
    """'test_dip.py::test_parity_dip_skip_f32#2': the 2nd assert_allclose call in that function (counted in
    its bytecode up to the calling instruction). Unlike the line number it survives edits of comments and
    tolerances, so logs taken before and after such edits tabulate together."""
    n = sum(1 for ins in dis.get_instructions(code) if ins.argval == "assert_allclose" and ins.offset <= last_instruction)
    return f"{Path(code.co_filename).name}::{code.co_name}#{n}"


if os.environ.get("FKP_TOLERANCE_LOG"):
    _assert_allclose = np.testing.assert_allclose

    def _logged_assert_allclose(actual, desired, rtol=1e-7, atol=0, *args, **kwargs):
        used = max_abs = None
        try:
            a = np.asarray(actual, np.float64)
            d = np.asarray(desired, np.float64)
            with np.errstate(all="ignore"):
                if a.size and d.size:
                    err = np.abs(a - d)  # raises on shapes that do not broadcast: assert_allclose reports it
                    bound = atol + rtol * np.abs(d)
                    ratio = np.where(bound > 0, err / np.where(bound > 0, bound, 1), np.where(err > 0, np.inf, 0))
                    used, max_abs = float(np.nanmax(ratio)), float(np.nanmax(err))
        except (TypeError, ValueError):
            pass
        frame = sys._getframe(1)
        record = {"test": os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0],
                  "id": assertion_id(frame.f_code, frame.f_lasti),
                  "where": f"{Path(frame.f_code.co_filename).name}:{frame.f_lineno}",
                  "rtol": float(rtol), "atol": float(atol), "max_abs": max_abs, "used": used}
        with open(os.environ["FKP_TOLERANCE_LOG"], "a") as f:
            f.write(json.dumps(record) + "\n")
        if os.environ.get("FKP_TOLERANCE_NO_RAISE") and used is not None:
            return None  # measuring: a violated tolerance must not hide the assertions after it
        return _assert_allclose(actual, desired, rtol, atol, *args, **kwargs)

    np.testing.assert_allclose = _logged_assert_allclose


# ----------------------------------------------------------------------------- conv algorithm
# FKP_CONV_ALGORITHM=xla|im2col|rows forces how fkp_jax.dip computes its 3x3 convolutions (default: the
# per-machine choice of dip.conv_algorithm), so that the DIP tolerances can be measured for every
# algorithm on one machine (docs/tolerances.md). "rows" exists for stride 1 only: stride 2 then uses "xla".
if os.environ.get("FKP_CONV_ALGORITHM"):
    from fkp_jax import dip as _dip

    _forced = os.environ["FKP_CONV_ALGORITHM"]
    if _forced not in _dip.CONV_ALGORITHMS:
        raise ValueError(f"FKP_CONV_ALGORITHM must be one of {_dip.CONV_ALGORITHMS}, not {_forced!r}")
    _dip.conv_algorithm = lambda positions, stride: "xla" if (_forced == "rows" and stride != 1) else _forced


def pytest_collection_modifyitems(config, items):
    if os.environ.get("FKP_CONV_ALGORITHM"):  # the per-machine choice itself is replaced above
        skip = pytest.mark.skip(reason="FKP_CONV_ALGORITHM replaces dip.conv_algorithm")
        for item in items:
            if item.name == "test_conv_algorithm_choice":
                item.add_marker(skip)
