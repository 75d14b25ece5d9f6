"""One answer per image without ground truth: rules that pick, from the restarts (seeds) of an image, the kernel a
user would keep (issue 10 part 4). Every rule sees only what a run without ground truth has, as the study
stores it per seed: the final LR reconstruction error, the final kernel and the kernels recorded every few
iterations.

- ``best-fit``: the seed whose SR image, degraded by its kernel, is closest to the LR image (lowest final
  LR reconstruction error).
- ``least-fit``: the opposite, the seed with the highest final LR reconstruction error. DIP fits the LR image
  ever better as it runs, and on the dev set (DIP-FKP x2, 5 seeds, docs/results.md) the seeds that fitted it
  best had the worse kernels (correlation of LR error with kernel PSNR +0.19 to +0.71 per image): the
  restart that over-fits least. Found on that data, so it is measured there and checked on other runs, not
  a default.
- ``consensus``: the medoid of the final kernels (the seed whose kernel has the least summed squared distance
  to the other seeds').
- ``early-consensus``: keeps an early kernel. DIP-FKP's kernel PSNR peaks early (near iteration 100 on held-out
  images) and decays as the loop over-fits; the restarts, which start from different kernels, agree most
  while they share what the data determine. So: the recorded iteration at which the seeds' kernels are
  closest to each other (least mean pairwise squared distance), and the medoid kernel there.
"""

from __future__ import annotations

import numpy as np

RULES = ("best-fit", "least-fit", "consensus", "early-consensus")


def _pairwise(kernels: np.ndarray) -> np.ndarray:
    """(N, N) summed squared differences between (N, k, k) kernels."""
    flat = np.asarray(kernels, np.float64).reshape(len(kernels), -1)
    return ((flat[:, None, :] - flat[None, :, :]) ** 2).sum(-1)


def medoid(kernels: np.ndarray) -> int:
    """Index of the kernel with the least summed squared distance to the others (the lowest index on ties)."""
    return int(np.argmin(_pairwise(kernels).sum(1)))


def choose(rule: str, lr_errors, kernels: np.ndarray, record_t: np.ndarray, record_kernels: np.ndarray
           ) -> tuple[int, int | None]:
    """(seed index, recorded iteration or None for the final kernel) that ``rule`` keeps; inputs per seed:
    lr_errors (N,), kernels (N, k, k), record_t (R,), record_kernels (R, N, k, k)."""
    if rule in ("best-fit", "least-fit"):
        if any(e is None for e in lr_errors):
            raise ValueError(f"{rule} needs the LR reconstruction error of every seed")
        errors = np.asarray(lr_errors, np.float64)
        return int(np.argmin(errors) if rule == "best-fit" else np.argmax(errors)), None
    if rule == "consensus":
        return medoid(kernels), None
    if rule == "early-consensus":
        n = record_kernels.shape[1]
        if n < 2 or len(record_t) == 0:  # nothing to agree on: the final kernel
            return 0, None
        spread = [_pairwise(ks).sum() / max(n * (n - 1), 1) for ks in record_kernels]
        r = int(np.argmin(spread))
        return medoid(record_kernels[r]), int(record_t[r])
    raise ValueError(f"unknown selection rule {rule!r}; choose from {', '.join(RULES)}")
