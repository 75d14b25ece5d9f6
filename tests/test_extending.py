"""docs/extending.md: its example kernel prior runs as written, through the unchanged solver."""

import re
from pathlib import Path

import numpy as np

DOC = Path(__file__).resolve().parents[1] / "docs" / "extending.md"


def test_extending_example_runs_and_learns(capsys):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert len(blocks) == 1
    ns: dict = {}
    exec(compile(blocks[0], str(DOC), "exec"), ns)
    assert "kernel PSNR" in capsys.readouterr().out
    k = np.asarray(ns["out"]["kernel"])
    assert k.shape == (11, 11) and k.min() >= 0 and abs(k.sum() - 1) < 1e-5
    metrics, prior, gt = ns["metrics"], ns["prior"], ns["gt"]
    start = float(metrics.kernel_psnr(gt, prior.kernel(prior.init(None))))
    assert int(ns["state"]["t"]) == 81
    assert float(metrics.kernel_psnr(gt, k)) > start + 1.0  # the plug-in's kernel moved towards the truth
