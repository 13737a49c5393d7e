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


def _forced_off(env: str) -> bool:
    return os.environ.get(env, "") not in ("", "0")


def cpu_identity() -> dict[str, Any]:
    """What makes two machines' peaks comparable: the CPU model, the instruction-set features the
    runtimes' kernels depend on (:data:`ISA_FLAGS`), and the CPUs this process may use; plus the
    host name (identical nodes of a cluster share a peak, so it is not compared). With
    ``NNBRIDGE_NO_VNNI=1`` the INT8 dot-product features are left out and ``forced`` says so."""
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():  # the first CPU's lines
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    model = info.get("model name") or platform.processor() or platform.machine()
    flags = set(info.get("flags", "").split())
    forced = []
    if _forced_off(NO_VNNI_ENV):
        flags -= set(INT8_DOT_FLAGS)
        forced.append(f"{NO_VNNI_ENV}={os.environ[NO_VNNI_ENV]}")
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    identity: dict[str, Any] = {"cpu": model, "isa": [f for f in ISA_FLAGS if f in flags], "cpus": cpus,
                                "arch": platform.machine(), "host": platform.node()}
    if forced:
        identity["forced"] = forced
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
    return f"{kind.get('cpu')} ({kind.get('cpus')} CPUs; {isa}{forced})"


def int8_dot(identity: dict[str, Any] | None = None) -> list[str]:
    """The INT8 dot-product features (:data:`INT8_DOT_FLAGS`) of a CPU (this one by default)."""
    identity = identity if identity is not None else cpu_identity()
    return [f for f in INT8_DOT_FLAGS if f in (identity.get("isa") or [])]
