"""What machine this process runs on, as benchmarks and run records name it.

Training this project's tiny models is chaotic: another CPU's float kernels (AVX2 against
AVX-512, bf16 where native) redraw every run's seed noise, so a figure or a result names the CPU
it came from. ``cpu_flags`` is also what the fast paths choose by (bf16 only where native).
"""
from __future__ import annotations

# the flags that pick kernels here (oneDNN/MKL float32 and bf16 paths), in reports
KERNEL_FLAGS = {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_vnni", "avx_vnni", "f16c", "fma"}
CPUINFO = "/proc/cpuinfo"


def _first(cpuinfo: str, key: str) -> str | None:
    """The value of the first ``key`` line of ``cpuinfo`` (None where there is none or no file)."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_flags(cpuinfo: str = CPUINFO) -> set[str]:
    """The CPU's feature flags (``/proc/cpuinfo``); empty where that cannot be read."""
    return set((_first(cpuinfo, "flags") or "").split())


def cpu_description(cpuinfo: str = CPUINFO) -> str:
    """The CPU model and the flags that decide the fast path, e.g. ``AMD EPYC [avx2 avx512f fma]``."""
    model = _first(cpuinfo, "model name")
    return f"{model or 'unknown CPU'} [{' '.join(sorted(cpu_flags(cpuinfo) & KERNEL_FLAGS))}]"
