"""Benchmarks that time each case in a fresh process: run one child, read the JSON line it marks."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_marked(cmd: list[str], mark: str) -> dict:
    """Run ``cmd`` in the repository root; return the JSON of its last stdout line starting with ``mark``.
    RuntimeError with the child's stderr tail if it failed or printed no such line."""
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith(mark)]
    if res.returncode != 0 or not lines:
        raise RuntimeError(f"child {' '.join(cmd[1:4])} failed (exit {res.returncode}):\n{res.stderr[-3000:]}")
    return json.loads(lines[-1][len(mark):])
