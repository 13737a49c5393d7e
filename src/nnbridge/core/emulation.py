"""Running this interpreter on a CPU emulated by QEMU's user mode (``qemu-x86_64 -cpu <model>``):
the real ONNX Runtime, OpenVINO and NumPy wheels take their code paths from the emulated CPUID.

Here: finding QEMU, running code under it, and reading the CPU identity nnbridge sees there
(:func:`emulated_identities`: the workflow decides the quantize defaults for the deployment CPUs
of ``verify.emulated_cpus`` when it is parsed). The bundle's check on an emulated CPU is
:mod:`nnbridge.predict.emulated`. Kept apart from it so that parsing the workflow does not load
the predictor (SciPy and the bundle code: ~0.4 s of every parse, twice per job on Slurm).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from . import cpu as cpu_module
from .cpu import NO_BF16_ENV, NO_VNNI_ENV
from .runlog import load_cache, store_cache

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


IDENTITY_CACHE_FORMAT = "nnbridge emulated CPU identities 1"


def qemu_version(qemu: str) -> str:
    """The first line of ``qemu --version`` (its CPU models' CPUID may change with it)."""
    out = subprocess.run([qemu, "--version"], capture_output=True, text=True, timeout=60).stdout
    return (out.strip().splitlines() or [QEMU])[0]


def _identity_code() -> str:
    """What an identity read under QEMU depends on besides QEMU: nnbridge's CPUID reader."""
    return hashlib.sha256(Path(cpu_module.__file__).read_bytes()).hexdigest()[:16]


def emulated_identities(cpu_models: list[str], cache: Path | None = None) -> dict[str, dict[str, Any] | None]:
    """:func:`emulated_identity` of each CPU model (None where it cannot be read), kept in
    ``cache`` (a JSON file) with the QEMU version and the CPUID reader's code it was read with.

    The workflow decides the quantize defaults for these CPUs whenever it is parsed: on the
    machine that plans the run, and again in every Slurm job, whose node may have no QEMU. A
    cached identity is used there as read on the planning machine, so a job quantizes with the
    settings the run planned (not with its node's own defaults) and no job runs QEMU; where QEMU
    is installed, an entry read with another QEMU version is read again. An entry of other
    CPUID-reader code is never used."""
    stored = load_cache(cache, IDENTITY_CACHE_FORMAT, "cpus") if cache is not None else {}
    qemu, _ = qemu_here()
    version = qemu_version(qemu) if qemu else None
    code = _identity_code()
    out: dict[str, dict[str, Any] | None] = {}
    updated = dict(stored)
    for model in cpu_models:
        entry = stored.get(model)
        if (isinstance(entry, dict) and entry.get("code") == code and isinstance(entry.get("identity"), dict)
                and (version is None or entry.get("qemu") == version)):
            out[model] = entry["identity"]
            continue
        out[model] = emulated_identity(model) if qemu else None
        if out[model] is not None:
            updated[model] = {"identity": out[model], "qemu": version, "code": code}
    if cache is not None and updated != stored:
        store_cache(cache, {"format": IDENTITY_CACHE_FORMAT, "cpus": updated})
    return out
