"""The CPU instruction sets an AOTInductor package needs, recorded when it is built and checked when it loads.

Inductor compiles a package's C++ (its CPU kernels, and the host code of a CUDA package) with ``-march=native``
and the widest vector ISA of the build machine: a package built on an AVX-512 machine holds AVX-512
instructions, and a worker on a CPU without them dies with SIGILL (an illegal instruction) at its first
forward pass. So the export records what the package may use, and the loader refuses, with one line, a package
that needs what the loading CPU lacks. ``--cpu-arch x86-64-v3`` (or v2, v4) builds a package for an x86-64
micro-architecture level instead of the build machine: it runs on every CPU of that level (the psABI levels:
v3 is AVX2, FMA, BMI; v4 adds AVX-512 F/BW/CD/DQ/VL).

Feature names are the Linux kernel's (``/proc/cpuinfo`` ``flags``), so a record and a check compare like with
like. A machine whose features cannot be read (not Linux) is not checked; its packages record none.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

CPUINFO = Path("/proc/cpuinfo")

# the x86 instruction-set extensions a compiler may emit under -march=native (kernel flag names; pni is SSE3,
# abm is LZCNT); what -march=native enables beyond these (cache hints, tuning) runs anywhere
# fmt: off
X86_ISA = frozenset({
    "pni", "ssse3", "sse4_1", "sse4_2", "sse4a", "popcnt", "cx16", "lahf_lm", "movbe", "xsave", "xsaveopt", "avx",
    "avx2", "fma", "fma4", "xop", "tbm", "f16c", "bmi1", "bmi2", "abm", "adx", "aes", "pclmulqdq", "sha_ni",
    "rdrand", "rdseed", "gfni", "vaes", "vpclmulqdq", "avx_vnni", "avx_vnni_int8", "avx_ifma", "avx512f",
    "avx512dq", "avx512cd", "avx512bw", "avx512vl", "avx512ifma", "avx512vbmi", "avx512_vbmi2", "avx512_bitalg",
    "avx512_vpopcntdq", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8",
    "clflushopt", "clwb", "movdiri", "movdir64b", "serialize",
})
# fmt: on
_V2 = frozenset(["cx16", "lahf_lm", "popcnt", "pni", "sse4_1", "sse4_2", "ssse3"])
_V3 = _V2 | frozenset(["avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"])
_V4 = _V3 | frozenset(["avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"])
# --cpu-arch: the features each level guarantees, and the vector width Inductor's kernels use there (bits;
# 0: no vector kernels, as Inductor has none narrower than AVX2)
LEVELS: dict[str, tuple[frozenset[str], int]] = {
    "x86-64-v2": (_V2, 0),
    "x86-64-v3": (_V3, 256),
    "x86-64-v4": (_V4, 512),
}
ARCHES = ("native", *LEVELS)


class CpuArchError(ValueError):
    """A package's CPU requirements that this machine does not meet, or a level it cannot build for."""


def host_features(cpuinfo: str | None = None) -> frozenset[str] | None:
    """This CPU's instruction-set features (of ``X86_ISA``), from ``/proc/cpuinfo`` (or the text given);
    None where they cannot be read (not Linux, not x86)."""
    if cpuinfo is None:
        try:
            cpuinfo = CPUINFO.read_text()
        except OSError:
            return None
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "flags":
            return frozenset(value.split()) & X86_ISA
    return None


def build_options(arch: str) -> dict[str, Any]:
    """Inductor's config for a package built for ``arch`` (``native``: none, the build machine's defaults)."""
    if arch == "native":
        return {}
    if arch not in LEVELS:
        raise CpuArchError(f"unknown --cpu-arch {arch!r}: one of {', '.join(ARCHES)}")
    if platform.machine() not in ("x86_64", "AMD64"):
        raise CpuArchError(f"--cpu-arch {arch} is an x86-64 level; this machine is {platform.machine()}")
    missing = sorted(LEVELS[arch][0] - (host_features() or frozenset()))
    if missing:  # the export runs the package to check it: it would die here of an illegal instruction
        raise CpuArchError(f"this CPU cannot run {arch} code (lacks {', '.join(missing)}), so it cannot check it")
    return {"cpp.march": arch, "cpp.simdlen": LEVELS[arch][1]}


# gcc's -m options Inductor's vector ISAs add (``VecISA.build_arch_flags``), as kernel feature names
_GCC_FLAGS = {
    "avx2": "avx2", "fma": "fma", "f16c": "f16c", "avx512f": "avx512f", "avx512dq": "avx512dq",
    "avx512vl": "avx512vl", "avx512bw": "avx512bw", "avx512vnni": "avx512_vnni", "avx512bf16": "avx512_bf16",
    "avx512fp16": "avx512_fp16", "amx-tile": "amx_tile", "amx-bf16": "amx_bf16", "amx-int8": "amx_int8",
    "amx-fp16": "amx_fp16", "avxvnni": "avx_vnni",
}  # fmt: skip


def flag_features(flags: str) -> set[str]:
    """The CPU features gcc options (``-mavx512f -mavx512vnni ...``) make the code use."""
    names = (flag.removeprefix("-m") for flag in flags.split() if flag.startswith("-m"))
    return {_GCC_FLAGS.get(name, name.replace("-", "_")) for name in names}


def requirement(arch: str, vector_flags: str = "") -> dict[str, Any]:
    """What a package built here for ``arch`` needs of the CPU that loads it (``package.json``'s ``cpu``): a
    level's features, and those of the vector ISA Inductor picked for it (``vector_flags``: for x86-64-v4 on a
    machine with VNNI or AMX, its 512-bit kernels use those too); the build machine's, natively."""
    if arch in LEVELS:
        features: Iterable[str] = LEVELS[arch][0] | flag_features(vector_flags)
    else:
        features = host_features() or ()
    return {"machine": platform.machine(), "arch": arch, "features": sorted(features)}


def unmet(required: Mapping[str, Any] | None, features: frozenset[str] | None = None) -> str:
    """Why this CPU cannot run a package that needs ``required``; '' when it can, or when it cannot be told
    (a package from before the record, or features that cannot be read here)."""
    if not required:
        return ""
    here = platform.machine()
    if required.get("machine") and required["machine"] != here:
        return f"compiled for {required['machine']} CPUs, this one is {here}"
    features = host_features() if features is None else features
    if features is None:
        return ""
    missing = sorted(set(required.get("features") or ()) - features)
    if not missing:
        return ""
    arch = required.get("arch", "native")
    built = "the build machine's instruction set (-march=native)" if arch == "native" else arch
    return f"compiled for {built}, which needs {', '.join(missing)}: this CPU lacks them"
