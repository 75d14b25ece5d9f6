"""What this process runs on, and the one process-wide setting that makes XLA:CPU fast here.

- `cpu_flags()` / `has_avx512()` / `cpu_name()`: the CPU's instruction sets and model, read at run time
  (``/proc/cpuinfo`` on Linux), for benchmark tables and tolerance reports (which name the CPU kind) and for
  any choice that must depend on the ISA (none does now: `fkp_jax.dip.conv_algorithm` measured the same
  choice best on AVX2 and AVX-512).
- `configure()`: called once by every entry point (``experiments.*``, ``benchmarks.*``, the tests).
  On Linux with glibc it tells malloc to keep large blocks in its heap instead of returning them to the
  kernel (``mallopt``: no ``mmap`` for allocations, no trimming). XLA:CPU allocates each executable's
  temporaries afresh per call; glibc serves blocks over 32 MB with a new ``mmap``, so every iteration
  page-faults its whole working set again. Measured on 2 AMD EPYC (Zen 3, AVX2) cores under KVM: one
  DIP-FKP iteration at 96x96 0.44 -> 0.32 s, a 96x96x144 -> 128 3x3 convolution 119 -> 37 ms
  (``docs/benchmarks.md``). The cost: the process keeps its peak heap until it exits (peak RSS is
  unchanged). Library users who drive the solver themselves call it too; it is never done on import.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform
from pathlib import Path

_M_TRIM_THRESHOLD = -1  # glibc malloc.h
_M_MMAP_MAX = -4


def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of this machine (empty where they cannot be read)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def has_avx512() -> bool:
    """True on an x86 CPU with AVX-512 Foundation (``avx512f``)."""
    return "avx512f" in cpu_flags()


def cpu_model() -> str:
    """The CPU model name ("model name" in /proc/cpuinfo), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_name() -> str:
    """The CPU model name, its ISA kind and the visible core count, for benchmark tables."""
    import os

    isa = "AVX-512" if has_avx512() else ("AVX2, no AVX-512" if "avx2" in cpu_flags() else "no AVX2")
    return f"{cpu_model()} ({isa}), {os.cpu_count()} cores visible"


def configure() -> bool:
    """Keep freed large blocks in malloc's heap (glibc only); returns whether it was applied. Idempotent."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(_M_MMAP_MAX, 0) == 1
        ok &= libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1  # an int: the largest value mallopt takes
    except (OSError, AttributeError):
        return False
    return bool(ok)
