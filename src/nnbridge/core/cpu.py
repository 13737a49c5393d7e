"""What kind of CPU this is: its model and the instruction-set features the runtimes' kernels
depend on (the report, the peaks, the gates and the CPU-aware quantization defaults all read it
from here).

``NNBRIDGE_NO_VNNI=1`` makes this CPU report no INT8 dot-product features (VNNI, AMX-INT8), so
the paths taken on CPUs without them (7-bit weights for ONNX Runtime INT8, a new CPU kind for
``nnbridge verify``) run on any machine; every consumer sees the same override because they all
ask :func:`cpu_identity`. It changes what nnbridge decides, not which kernels the runtimes pick.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from pathlib import Path
from typing import Any


# CPU features that change which kernels the runtimes pick (and so the peak)
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16",
             "amx_int8", "amx_fp16")


# INT8 dot products without intermediate saturation: u8×s8 products summed straight into int32
# (VNNI's vpdpbusd, AMX's tdpbusd). Without them x86 kernels sum pairs of u8×s8 products in
# saturating int16 (vpmaddubsw), which clips when both operands are large.
INT8_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


NO_VNNI_ENV = "NNBRIDGE_NO_VNNI"  # set to 1: treat this CPU as one without INT8 dot products
NO_BF16_ENV = "NNBRIDGE_NO_BF16"  # set to 1: treat this CPU as one without native bf16 (OpenVINO)


# /proc/cpuinfo flag -> the name NumPy's own CPUID probe gives it: where this process's CPUID
# lacks a flag the kernel lists (an emulator such as ``qemu-x86_64 -cpu Haswell``, a hypervisor
# masking features), the runtimes' kernels go by CPUID, so nnbridge does too
CPUID_NAMES = {"avx2": "AVX2", "avx512f": "AVX512F", "avx512_vnni": "AVX512VNNI", "avx512_bf16": "AVX512BF16",
               "avx512_fp16": "AVX512FP16"}


def _cpuid_features() -> dict[str, bool] | None:
    """The CPU features NumPy's runtime dispatch found by CPUID in this process, or None."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__  # noqa: PLC0415 - NumPy >= 2
    except ImportError:
        try:
            from numpy.core._multiarray_umath import __cpu_features__  # noqa: PLC0415 - NumPy 1.x
        except ImportError:
            return None
    return dict(__cpu_features__)


def _masked(flags: set[str]) -> set[str]:
    """The :data:`ISA_FLAGS` in ``flags`` (from /proc/cpuinfo) this process's CPUID does not
    have: those NumPy's probe finds missing; once any is, also those NumPy does not probe (AVX-VNNI,
    AMX: unconfirmed where CPUID evidently differs) and, without AVX-512, every AVX-512 flag."""
    seen = _cpuid_features()
    if not seen:
        return set()
    masked = {f for f, name in CPUID_NAMES.items() if f in flags and name in seen and not seen[name]}
    if masked:
        masked |= {f for f in flags & set(ISA_FLAGS) if f not in CPUID_NAMES}
    if "avx512f" in masked:
        masked |= {f for f in flags & set(ISA_FLAGS) if f.startswith("avx512")}
    return masked


def _forced_off(env: str) -> bool:
    return os.environ.get(env, "") not in ("", "0")


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity: a Slurm job's ``-c``, ``taskset``, a
    container's cpuset), not the machine's count: threads beyond it only take turns."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def cpu_identity() -> dict[str, Any]:
    """What makes two machines' peaks comparable: the CPU model, the instruction-set features the
    runtimes' kernels depend on (:data:`ISA_FLAGS`), and the CPUs this process may use; plus the
    host name (identical nodes of a cluster share a peak, so it is not compared). With
    ``NNBRIDGE_NO_VNNI=1`` the INT8 dot-product features are left out and ``forced`` says so; the
    features /proc/cpuinfo lists but this process's CPUID lacks (under an emulator) are left out
    and ``masked`` names them, so that a gate or ``nnbridge verify`` run there is not taken for
    one of the host's kind."""
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():  # the first CPU's lines
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    model = info.get("model name") or platform.processor() or platform.machine()
    flags = set(info.get("flags", "").split())
    masked = _masked(flags)
    flags -= masked
    forced = []
    if _forced_off(NO_VNNI_ENV):
        flags -= set(INT8_DOT_FLAGS)
        forced.append(f"{NO_VNNI_ENV}={os.environ[NO_VNNI_ENV]}")
    cpus = usable_cpus()
    identity: dict[str, Any] = {"cpu": model, "isa": [f for f in ISA_FLAGS if f in flags], "cpus": cpus,
                                "arch": platform.machine(), "host": platform.node()}
    if forced:
        identity["forced"] = forced
    if masked:
        identity["masked"] = sorted(masked)
    return identity


def cpu_kind(identity: dict[str, Any] | None = None) -> dict[str, Any]:
    """The CPU kind a measurement holds for: :func:`cpu_identity` without the host."""
    identity = identity if identity is not None else cpu_identity()
    return {k: v for k, v in identity.items() if k != "host"}


def same_cpu(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    """Whether two :func:`cpu_identity` records describe the same kind of machine (host aside)."""
    keys = ("cpu", "isa", "cpus")
    return bool(a and b) and all(a.get(k) == b.get(k) for k in keys)


def cpu_kind_key(kind: dict[str, Any]) -> str:
    """A short name of a CPU kind for file names (model, features and CPUs hashed)."""
    text = json.dumps({k: kind.get(k) for k in ("cpu", "isa", "cpus")}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def describe_cpu(kind: dict[str, Any] | None) -> str:
    """One line naming a CPU kind: model, CPUs and features (and any forced override)."""
    if not kind:
        return "an unrecorded CPU"
    isa = ", ".join(kind.get("isa") or []) or "no AVX2"
    forced = f"; {', '.join(kind['forced'])}" if kind.get("forced") else ""
    masked = f"; without {', '.join(kind['masked'])} by CPUID (emulated?)" if kind.get("masked") else ""
    return f"{kind.get('cpu')} ({kind.get('cpus')} CPUs; {isa}{forced}{masked})"


def least_capable(host: dict[str, Any], targets: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``host``'s identity with only the features every one of ``targets`` (name → identity, e.g.
    emulated deployment CPUs) also has: what defaults decided for all of them go by; ``host_isa``
    keeps the host's own, ``targets`` names the targets that took features away."""
    isa = [f for f in host.get("isa") or [] if all(f in (t.get("isa") or []) for t in targets.values())]
    narrowed = [name for name, t in targets.items() if set(host.get("isa") or []) - set(t.get("isa") or [])]
    return {**host, "isa": isa, "host_isa": list(host.get("isa") or []), **({"targets": narrowed} if narrowed else {})}


def int8_dot(identity: dict[str, Any] | None = None) -> list[str]:
    """The INT8 dot-product features (:data:`INT8_DOT_FLAGS`) of a CPU (this one by default)."""
    identity = identity if identity is not None else cpu_identity()
    return [f for f in INT8_DOT_FLAGS if f in (identity.get("isa") or [])]
