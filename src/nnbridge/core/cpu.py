"""What kind of CPU this is: its model and the instruction-set features the runtimes' kernels
depend on (the report, the peaks and the CPU-aware defaults all read it from here)."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any


# CPU features that change which kernels the runtimes pick (and so the peak)
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16",
             "amx_int8", "amx_fp16")


def cpu_identity() -> dict[str, Any]:
    """What makes two machines' peaks comparable: the CPU model, the instruction-set features the
    runtimes' kernels depend on (:data:`ISA_FLAGS`), and the CPUs this process may use; plus the
    host name (identical nodes of a cluster share a peak, so it is not compared)."""
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():  # the first CPU's lines
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    model = info.get("model name") or platform.processor() or platform.machine()
    flags = set(info.get("flags", "").split())
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": model, "isa": [f for f in ISA_FLAGS if f in flags], "cpus": cpus, "host": platform.node()}


def same_cpu(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    """Whether two :func:`cpu_identity` records describe the same kind of machine (host aside)."""
    keys = ("cpu", "isa", "cpus")
    return bool(a and b) and all(a.get(k) == b.get(k) for k in keys)
