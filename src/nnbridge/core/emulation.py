"""Running this interpreter on a CPU emulated by QEMU's user mode (``qemu-x86_64 -cpu <model>``):
the real ONNX Runtime, OpenVINO and NumPy wheels take their code paths from the emulated CPUID.

Here: finding QEMU, running code under it, and reading the CPU identity nnbridge sees there
(:func:`emulated_identity`: the workflow decides the quantize defaults for the deployment CPUs
of ``verify.emulated_cpus`` when it is parsed). The bundle's check on an emulated CPU is
:mod:`nnbridge.predict.emulated`. Kept apart from it so that parsing the workflow does not load
the predictor (SciPy and the bundle code: ~0.4 s of every parse, twice per job on Slurm).
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
from typing import Any

from .cpu import NO_BF16_ENV, NO_VNNI_ENV

X86 = ("x86_64", "amd64")
QEMU = "qemu-x86_64"
INSTALL = "Debian/Ubuntu: apt-get install qemu-user"


def qemu_cpu_models(qemu: str) -> list[str]:
    """The CPU models ``qemu -cpu help`` lists (``Haswell``, ``Skylake-Client-v2``, ...)."""
    proc = subprocess.run([qemu, "-cpu", "help"], capture_output=True, text=True, timeout=60)
    return [m.group(1) for m in re.finditer(r"^\s*x86\s+(\S+)", proc.stdout, re.M)]


# prints the identity nnbridge reads in the emulated interpreter (from CPUID: the emulated CPU's)
IDENTITY = "import json\nfrom nnbridge.core.cpu import cpu_identity\nprint(json.dumps(cpu_identity()))\n"


def qemu_here() -> tuple[str | None, str | None]:
    """(QEMU's path, None), or (None, why it cannot emulate an x86 CPU here)."""
    if platform.machine().lower() not in X86:
        return None, f"emulating an x86 CPU needs an x86 machine (this one: {platform.machine()})"
    qemu = shutil.which(QEMU)
    return (qemu, None) if qemu else (None, f"{QEMU} is not installed ({INSTALL}; make test installs it as root)")


def run_emulated(qemu: str, cpu_model: str, code: str, args: list[str], timeout: float) -> subprocess.CompletedProcess:
    """This interpreter running ``code`` on QEMU's ``cpu_model``. The emulated CPU decides: the
    switches that make nnbridge treat this CPU as a lesser one are not passed on."""
    env = {k: v for k, v in os.environ.items() if k not in (NO_VNNI_ENV, NO_BF16_ENV)}
    return subprocess.run([qemu, "-cpu", cpu_model, sys.executable, "-c", code, *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def emulated_identity(cpu_model: str, timeout: float = 300) -> dict[str, Any] | None:
    """:func:`nnbridge.core.cpu.cpu_identity` as read on QEMU's ``cpu_model`` (about a second:
    an interpreter and NumPy under emulation), or None where QEMU cannot run here or does not know
    the model (the verify_emulated job then says why)."""
    qemu, _ = qemu_here()
    if qemu is None:
        return None
    proc = run_emulated(qemu, cpu_model, IDENTITY, [], timeout)
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else None
    except (IndexError, json.JSONDecodeError):
        return None
