"""fkp_jax.runtime: CPU detection and the allocator setting."""

import platform
from pathlib import Path

import pytest

from fkp_jax import runtime


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="needs /proc/cpuinfo")
def test_cpu_flags_read_from_proc_cpuinfo():
    text = Path("/proc/cpuinfo").read_text()
    flags = runtime.cpu_flags()
    assert flags, "no flags parsed"
    assert runtime.has_avx512() == (" avx512f" in text)
    if platform.machine() == "x86_64":
        assert "sse2" in flags
        isa = "AVX-512" if runtime.has_avx512() else "AVX2"
        assert isa in runtime.cpu_name()


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="needs /proc/cpuinfo")
def test_cpu_model_names_family_and_model():
    """Benchmark tables name the CPU generation: the model name, then family and model of the first CPU."""
    first = Path("/proc/cpuinfo").read_text().split("\n\n")[0]
    fields = dict((k.strip(), v.strip()) for k, _, v in (ln.partition(":") for ln in first.splitlines()))
    name = runtime.cpu_model()
    if fields.get("model name"):
        assert name.startswith(fields["model name"])
        if fields.get("cpu family") and fields.get("model"):
            assert name.endswith(f"(family {fields['cpu family']} model {fields['model']})")


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_configure_applies_and_is_idempotent():
    assert runtime.configure() is True
    assert runtime.configure() is True


def test_configure_makes_cpu_dispatch_synchronous():
    """XLA:CPU computations run on the calling thread (their temporaries then stay in the main malloc heap)."""
    import jax

    runtime.configure()
    assert jax.config.values["jax_cpu_enable_async_dispatch"] is False
