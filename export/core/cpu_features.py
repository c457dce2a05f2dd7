"""The CPU's vector and matrix ISA extensions: what a CPU runtime can use natively.

On Linux the ``flags`` line of ``/proc/cpuinfo`` says everything (x86: ``avx512_bf16``,
``amx_bf16``...). Elsewhere little can be known from the standard library: every feature is then
``None`` (unknown), not ``False``, and :func:`native_bf16` answers ``None`` so a caller can ask the
runtime itself. Stdlib only, so it is safe to call from anywhere (reports, runners, tests).

The one-word :func:`summary` labels benchmark figures: a CPU's numbers mean little without it
(the same FP32 ResNet-50 is several times faster on AMX than on AVX2 in BF16/INT8).
"""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping

CPUINFO = "/proc/cpuinfo"
#: Set to an ISA class (:data:`ISA_CLASSES`) to make :func:`isa_class` answer it instead of the
#: probe: how tests (and a user checking an artifact's re-check) play another CPU.
ISA_CLASS_ENV = "RESNET_DEPLOY_ISA_CLASS"
#: The classes of CPU whose integer (u8 x s8) and BF16 kernels differ, best first: AMX tiles;
#: AVX-512 with BF16 (and VNNI); AVX-512 VNNI; VNNI on 256-bit registers; AVX-512 without VNNI;
#: AVX2 (u8 x s8 through vpmaddubsw, whose 16-bit sums saturate); anything else.
ISA_CLASSES = ("amx", "avx512-bf16", "avx512-vnni", "avx-vnni", "avx512", "avx2", "neon",
               "other", "unknown")

#: our name -> the /proc/cpuinfo flag that says it (Linux kernel spelling)
FEATURE_FLAGS: dict[str, str] = {
    "avx2": "avx2",
    "fma": "fma",
    "avx512f": "avx512f",
    "avx512bw": "avx512bw",
    "avx512_vnni": "avx512_vnni",
    "avx_vnni": "avx_vnni",  # VNNI on 256-bit registers (Alder Lake and later, no AVX-512)
    "avx512_bf16": "avx512_bf16",
    "avx512_fp16": "avx512_fp16",
    "amx_tile": "amx_tile",
    "amx_bf16": "amx_bf16",
    "amx_int8": "amx_int8",
    "amx_fp16": "amx_fp16",
    "neon": "asimd",  # aarch64 spelling of NEON
    "sve": "sve",
    "arm_bf16": "bf16",  # aarch64: BFDOT/BFMMLA
}


def _read_cpuinfo() -> str | None:
    try:
        with open(CPUINFO, encoding="utf-8", errors="replace") as fh:
            return fh.read()
    except OSError:
        return None


def parse_flags(cpuinfo: str) -> set[str]:
    """The flags of the first processor in ``cpuinfo`` text (``flags`` on x86, ``Features`` on
    Arm)."""
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in ("flags", "features"):
            return set(value.split())
    return set()


def cpu_features(cpuinfo: str | None = None) -> dict[str, bool | None]:
    """Each feature of :data:`FEATURE_FLAGS` -> True / False, or None where it cannot be known.

    ``cpuinfo`` is the text of /proc/cpuinfo (read from the machine when not given; tests pass
    their own).
    """
    text = _read_cpuinfo() if cpuinfo is None else cpuinfo
    flags = parse_flags(text) if text else set()
    if not flags:
        return {name: None for name in FEATURE_FLAGS}
    return {name: flag in flags for name, flag in FEATURE_FLAGS.items()}


def summary(features: Mapping[str, bool | None] | None = None) -> str:
    """One word for the best matrix/vector path: "AMX", "AVX-512+BF16", "AVX-512+VNNI",
    "AVX-512", "AVX2+VNNI", "AVX2", "NEON", "SSE" or "unknown"."""
    f = cpu_features() if features is None else features
    if all(v is None for v in f.values()):
        return "unknown"
    if f.get("amx_bf16") or f.get("amx_int8"):
        return "AMX"
    if f.get("avx512f"):
        if f.get("avx512_bf16"):
            return "AVX-512+BF16"
        if f.get("avx512_vnni"):
            return "AVX-512+VNNI"
        return "AVX-512"
    if f.get("avx2"):
        return "AVX2+VNNI" if f.get("avx_vnni") else "AVX2"
    if f.get("neon"):
        return "NEON+SVE" if f.get("sve") else "NEON"
    return "SSE" if platform.machine().lower() in ("x86_64", "amd64", "i686") else "unknown"


def isa_class(features: Mapping[str, bool | None] | None = None) -> str:
    """The class of CPU that decides which integer and BF16 kernels a runtime picks (one of
    :data:`ISA_CLASSES`): an INT8 or BF16 verdict holds for the class it was judged on.
    :data:`ISA_CLASS_ENV` overrides the probe."""
    forced = os.environ.get(ISA_CLASS_ENV)
    if forced:
        return forced
    f = cpu_features() if features is None else features
    if all(v is None for v in f.values()):
        return "unknown"
    ladder = (("amx", ("amx_int8", "amx_bf16")), ("avx512-bf16", ("avx512_bf16",)),
              ("avx512-vnni", ("avx512_vnni",)), ("avx-vnni", ("avx_vnni",)),
              ("avx512", ("avx512bw",)), ("avx2", ("avx2",)), ("neon", ("neon",)))
    return next((name for name, flags in ladder if any(f.get(k) for k in flags)), "other")


def cpu_model(cpuinfo: str | None = None) -> str:
    """The CPU's model name (``model name`` in /proc/cpuinfo), else what platform knows."""
    text = _read_cpuinfo() if cpuinfo is None else cpuinfo
    for line in (text or "").splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() == "model name":
            return value.strip()
    return platform.processor() or platform.machine() or "unknown"


def native_bf16(features: Mapping[str, bool | None] | None = None) -> bool | None:
    """True where the CPU computes BF16 in hardware (AVX512-BF16 or AMX-BF16 on x86, BF16 on Arm),
    False where it does not (a runtime would emulate it, slower than FP32), None when unknown."""
    f = cpu_features() if features is None else features
    known = [f.get(k) for k in ("avx512_bf16", "amx_bf16", "arm_bf16")]
    if all(v is None for v in known):
        return None
    return any(bool(v) for v in known)


def describe(cpuinfo: str | None = None) -> dict[str, object]:
    """JSON-ready block for reports: the features, the summary and native BF16."""
    f = cpu_features(cpuinfo)
    return {"isa": summary(f), "native_bf16": native_bf16(f),
            "features": {k: v for k, v in f.items() if v is not None} or None}
