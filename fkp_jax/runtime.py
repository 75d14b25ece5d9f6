"""What this process runs on, and the process-wide settings that make XLA:CPU fast here.

- `cpu_flags()` / `has_avx512()` / `cpu_name()`: the CPU's instruction sets and model, read at run time
  (``/proc/cpuinfo`` on Linux), for benchmark tables and tolerance reports (which name the CPU kind) and for
  any choice that must depend on the ISA (none does now: `fkp_jax.dip.conv_algorithm` measured the same
  choice best on AVX2 and AVX-512).
- `configure()`: called once by every entry point (``experiments.*``, ``benchmarks.*``, the tests), before
  the first JAX computation. Two settings, both about memory that XLA:CPU page-faults in again on every call:
  1. On Linux with glibc it tells malloc to keep large blocks in its heap instead of returning them to the
     kernel (``mallopt``: no ``mmap`` for allocations, no trimming). XLA:CPU allocates each executable's
     temporaries afresh per call; glibc serves blocks over 32 MB with a new ``mmap``, so every iteration
     page-faulted its whole working set again. Measured on 2 AMD EPYC (Zen 3, AVX2) cores under KVM: one
     DIP-FKP iteration at 96x96 0.44 -> 0.32 s, a 96x96x144 -> 128 3x3 convolution 119 -> 37 ms
     (``docs/benchmarks.md``). The cost: the process keeps its peak heap until it exits (peak RSS is
     unchanged).
  2. XLA:CPU runs each computation on the thread that calls it (``jax_cpu_enable_async_dispatch`` off). With
     asynchronous dispatch it ran on a PjRt worker thread, whose glibc malloc arena is made of heaps of at
     most 64 MB: a larger temporary block (294 MB for a KernelGAN-FKP iteration) is then mmap'd and
     munmap'd on every call whatever ``mallopt`` says (glibc 2.36), and the working set page-faulted again
     (2.35 million faults in 30 KernelGAN-FKP iterations; strace: one 294 MB mmap + munmap per call). On the
     calling thread the main arena's heap keeps it. Measured on 2 AMD EPYC Zen 4 cores (AVX-512), fresh
     processes alternating: DIP-FKP x2 96x96 0.111-0.128 -> 0.080-0.083 s/it, 256x256 0.84-0.87 -> 0.63 s/it,
     4 seeds stepped in turn at 96x96 0.61-0.62 -> 0.32-0.38 s/it, KernelGAN-FKP 0.64-0.82 -> 0.53-0.56 s/it
     (docs/benchmarks.md). What is lost: Python no longer runs ahead of the computation it dispatched, which
     none of our loops did (each reads its step's outputs).
  Library users who drive the solvers themselves call it too; it is never done on import.
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
    """The CPU model name ("model name" in /proc/cpuinfo) with its family and model numbers where the file
    gives them (virtual machines often show only "Intel(R) Xeon(R) Processor"; the numbers name the
    generation, e.g. family 6 model 207 = Emerald Rapids, family 25 model 17 = Zen 4), else what
    ``platform`` knows."""
    try:
        fields = {}
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
            if not line.strip():
                break  # the first processor's block is enough
        if fields.get("model name"):
            family, model = fields.get("cpu family"), fields.get("model")
            return fields["model name"] + (f" (family {family} model {model})" if family and model else "")
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_name() -> str:
    """The CPU model name, its ISA kind and the core count this process may use (its affinity: ``taskset -c 0``
    gives 1), for benchmark tables."""
    import os

    isa = "AVX-512" if has_avx512() else ("AVX2, no AVX-512" if "avx2" in cpu_flags() else "no AVX2")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpu_model()} ({isa}), {cores} core{'s' if cores != 1 else ''} visible"


def configure() -> bool:
    """Keep freed large blocks in malloc's heap (glibc only) and run XLA:CPU computations on the calling
    thread (module docstring); returns whether the malloc setting was applied. Idempotent. The dispatch
    setting only takes effect before JAX has made its CPU client (the first computation): called later, it
    leaves the client as it is."""
    _synchronous_cpu_dispatch()
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(_M_MMAP_MAX, 0) == 1
        ok &= libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1  # an int: the largest value mallopt takes
    except (OSError, AttributeError):
        return False
    return bool(ok)


def _synchronous_cpu_dispatch() -> None:
    """``jax_cpu_enable_async_dispatch`` off (point 2 of the module docstring); CPU only, accelerators are
    unaffected."""
    import jax

    jax.config.update("jax_cpu_enable_async_dispatch", False)
