"""What a .pt2 package's CPU code needs (worker.cpuisa): read from /proc/cpuinfo's text, recorded per
--cpu-arch, and checked against the loading CPU. The package-level tests are in tests/process/test_pt2.py."""

from __future__ import annotations

import platform

import pytest

from worker import cpuisa
from worker.cpuisa import LEVELS, CpuArchError, build_options, host_features, requirement, unmet

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
flags\t\t: fpu vme sse sse2 ht syscall pni ssse3 fma cx16 sse4_1 sse4_2 movbe popcnt xsave avx f16c lahf_lm abm bmi1\
 avx2 bmi2
bugs\t\t: spectre_v1

processor\t: 1
flags\t\t: fpu vme sse sse2 ht syscall pni ssse3 fma cx16 sse4_1 sse4_2 movbe popcnt xsave avx f16c lahf_lm abm bmi1\
 avx2 bmi2
"""
X86 = platform.machine() in ("x86_64", "AMD64")


def test_the_instruction_set_features_are_read_from_cpuinfo_and_nothing_else():
    features = host_features(CPUINFO)
    assert features is not None and {"avx2", "fma", "pni", "abm"} <= features
    assert not {"fpu", "ht", "syscall", "sse2", "avx512f"} & features  # baseline or not ISA: never required
    assert host_features("processor\t: 0\nFeatures\t: fp asimd\n") is None  # no x86 flags line: not checked


def test_a_cpu_with_the_recorded_features_runs_the_package_and_one_without_is_told_what_it_lacks():
    avx2_box = host_features(CPUINFO)
    native_on_avx512 = {"machine": platform.machine(), "arch": "native", "features": ["avx2", "avx512bw", "avx512f"]}
    assert unmet(native_on_avx512, avx2_box) == (
        "compiled for the build machine's instruction set (-march=native), which needs avx512bw, avx512f: "
        "this CPU lacks them"
    )
    v3 = requirement("x86-64-v3") | {"machine": platform.machine()}
    assert v3["features"] == sorted(LEVELS["x86-64-v3"][0]) and unmet(v3, avx2_box) == ""
    v4 = requirement("x86-64-v4") | {"machine": platform.machine()}
    assert unmet(v4, avx2_box).startswith("compiled for x86-64-v4, which needs avx512bw, avx512cd")


def test_another_machine_kind_is_refused_and_an_old_package_or_an_unreadable_cpu_is_not_checked():
    other = "aarch64" if X86 else "x86_64"
    told = unmet({"machine": other, "features": []}, frozenset())
    assert told == f"compiled for {other} CPUs, this one is {platform.machine()}"
    assert unmet(None) == "" and unmet({}) == ""  # a package from before the record: loaded as before
    needs = {"machine": platform.machine(), "features": ["avx512f"]}
    assert "needs avx512f" in unmet(needs, frozenset()) and unmet(needs, frozenset({"avx512f"})) == ""


def test_a_level_sets_inductors_march_and_vector_width_and_native_sets_nothing(tmp_path, monkeypatch):
    assert build_options("native") == {}
    with pytest.raises(CpuArchError, match=r"unknown --cpu-arch 'x86-64-v9'"):
        build_options("x86-64-v9")
    if not X86:
        with pytest.raises(CpuArchError, match="is an x86-64 level"):
            build_options("x86-64-v3")
        return
    fake = tmp_path / "cpuinfo"
    fake.write_text(CPUINFO)
    monkeypatch.setattr(cpuisa, "CPUINFO", fake)  # an AVX2 machine
    assert build_options("x86-64-v3") == {"cpp.march": "x86-64-v3", "cpp.simdlen": 256}
    assert build_options("x86-64-v2") == {"cpp.march": "x86-64-v2", "cpp.simdlen": 0}
    with pytest.raises(CpuArchError, match=r"cannot run x86-64-v4 code \(lacks avx512bw, .*\), so it cannot check it"):
        build_options("x86-64-v4")
    assert requirement("native")["features"] == sorted(host_features(CPUINFO) or ())


def test_a_levels_package_also_needs_what_inductors_chosen_vector_isa_adds():
    vnni = "-mavx512f -mavx512dq -mavx512vl -mavx512bw -mfma -mavx512vnni -mavx512vl"  # VecAVX512VNNI's flags
    needs = requirement("x86-64-v4", vnni)["features"]
    assert "avx512_vnni" in needs and set(LEVELS["x86-64-v4"][0]) <= set(needs)
    skylake = frozenset(LEVELS["x86-64-v4"][0])  # AVX-512 without VNNI: it would die of SIGILL in those kernels
    assert "needs avx512_vnni" in unmet(requirement("x86-64-v4", vnni) | {"machine": platform.machine()}, skylake)
    amx = "-mavx512f -mavx512dq -mavx512vl -mavx512bw -mfma -mamx-tile -mamx-bf16 -mamx-int8 -mavx512bf16"
    assert {"amx_tile", "amx_bf16", "amx_int8", "avx512_bf16"} <= set(requirement("x86-64-v4", amx)["features"])
