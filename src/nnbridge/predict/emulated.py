"""A bundle's ``nnbridge verify`` on an emulated CPU: the deployment CPU's INT8 kernels, checked
where the bundle is built.

An INT8 file's label maps depend on the CPU that runs it (x86 CPUs without VNNI saturate the
u8×s8 sums VNNI ones do not; OpenVINO's kernels halve weights there), and ``nnbridge verify``
re-checks each variant on the machine it runs on. QEMU's user mode (``qemu-x86_64 -cpu
<model>``) runs this interpreter and the real ONNX Runtime and OpenVINO wheels, whose kernels take
their code path from the emulated CPUID, so the check of an older deployment CPU (``Haswell``:
AVX2, no AVX-512, no VNNI) runs on the build machine, before shipping: the pipeline's
``verify_emulated`` stage, one job per bundle and listed CPU model (config ``verify.emulated_cpus``).
Emulation is slow (tens of times), but the self-check set is small: about a minute for the demo's
bundle on 2 threads (AMD EPYC Zen 4 host, 2026-12-04).

Runs with the thread count the bundle was gated with: OpenVINO's fp32 kernels sum in another
order with another count (the demo on emulated Haswell, AMD EPYC Zen 4 host: one self-check case
moved by 0.003 at 1 thread).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ..core.emulation import QEMU, qemu_cpu_models, qemu_here, qemu_version, run_emulated
from ..core.errors import NNBridgeError
from .verify import failed_checks

# runs nnbridge's CLI in the emulated interpreter (the package has no __main__)
CLI = "import sys\nfrom nnbridge.cli import main\nsys.exit(main(sys.argv[1:]))\n"


def verify_emulated(bundle: str | Path, cpu_model: str, *, threads: int, timeout: float = 3600) -> dict[str, Any]:
    """``nnbridge verify`` of ``bundle`` on QEMU's ``cpu_model`` with ``threads`` threads, not cached
    anywhere (the bundle stays as the pipeline wrote it): ``{cpu_model, emulator, cpu (the
    emulated kind, as nnbridge read it from CPUID), records (per stage: verify's record), passed,
    failed (one line each), seconds}``; ``{cpu_model, skipped}`` where QEMU cannot run here (not an
    x86 machine, QEMU not installed). A CPU model QEMU does not know is refused in one line."""
    base: dict[str, Any] = {"cpu_model": cpu_model, "threads": int(threads), "bundle": str(bundle)}
    qemu, why = qemu_here()
    if qemu is None:
        return {**base, "skipped": why}
    models = qemu_cpu_models(qemu)
    if models and cpu_model not in models:
        examples = ", ".join(m for m in ("Haswell", "Broadwell", "Skylake-Client", "Cascadelake-Server") if m in models)
        raise NNBridgeError(f"verify.emulated_cpus: {cpu_model!r} is not a CPU model of {QEMU} (e.g. {examples}; "
                            f"`{QEMU} -cpu help` lists them)")
    version = qemu_version(qemu)
    started = time.perf_counter()
    proc = run_emulated(qemu, cpu_model, CLI, ["verify", "-m", str(bundle), "--threads", str(int(threads)), "--json",
                                                "--no-cache"], timeout)
    seconds = round(time.perf_counter() - started, 1)
    try:
        data = json.loads(proc.stdout)
    except json.JSONDecodeError:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise NNBridgeError(f"nnbridge verify on emulated {cpu_model} failed (exit {proc.returncode}): {tail}") from None
    records = {None: data} if "format" in data else dict(data)  # a cascade: one record per stage
    failed = [f"{f'{stage} stage: ' if stage else ''}{name} on {backend} fold {fold}: {'; '.join(failures)}"
              for stage, record in records.items() for name, backend, fold, failures in failed_checks(record)]
    return {**base, "emulator": version, "cpu": next(iter(records.values())).get("cpu"),
            "records": {stage or "": record for stage, record in records.items()},
            "passed": not failed, "failed": failed, "seconds": seconds}
