"""selfilter.machine: the CPU a figure or a run record names."""
from __future__ import annotations

from selfilter.grid import machine
from selfilter.machine import cpu_description, cpu_flags

CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9R14
flags\t\t: fpu sse2 avx2 fma f16c avx512f avx512_bf16 sha_ni
processor\t: 1
model name\t: AMD EPYC 9R14
flags\t\t: fpu sse2 avx2 fma f16c avx512f avx512_bf16 sha_ni
"""


def test_description_names_the_model_and_only_kernel_flags(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text(CPUINFO)
    assert cpu_flags(str(info)) == {"fpu", "sse2", "avx2", "fma", "f16c", "avx512f", "avx512_bf16", "sha_ni"}
    assert cpu_description(str(info)) == "AMD EPYC 9R14 [avx2 avx512_bf16 avx512f f16c fma]"


def test_unreadable_cpuinfo_is_said_not_guessed(tmp_path):
    assert cpu_flags(str(tmp_path / "missing")) == set()
    assert cpu_description(str(tmp_path / "missing")) == "unknown CPU []"


def test_run_records_name_the_cpu():
    assert machine()["cpu"] == cpu_description()
