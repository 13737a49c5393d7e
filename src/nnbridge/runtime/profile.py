"""Where an ONNX model's time goes: per-operator profiles from ONNX Runtime and OpenVINO.

Both runtimes time every kernel they run; this module sums those times per operator type over
a few runs of one input and returns the shares, largest first. Imports no torch.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from .ort import onnx_session
from .ov import openvino_model


def _ranked(totals: Counter[str], runs: int, top: int) -> list[dict[str, Any]]:
    whole = sum(totals.values())
    return [{"op": op, "ms_per_run": round(us / runs / 1000.0, 3),
             "share": round(us / whole, 4) if whole else 0.0}
            for op, us in totals.most_common(top)]


def onnxruntime_op_profile(path: Path, x: np.ndarray, threads: int = 0, runs: int = 3,
                           top: int = 8) -> list[dict[str, Any]]:
    """Kernel time per operator type of an ONNX Runtime CPU session (its built-in profiler)."""

    with tempfile.TemporaryDirectory(prefix="nnbridge-prof-") as tmp:
        session = onnx_session(Path(path), threads, profile_prefix=Path(tmp) / "ort")
        name = session.get_inputs()[0].name
        for _ in range(1 + runs):  # one warm-up, then the runs
            session.run(None, {name: x})
        events = json.loads(Path(session.end_profiling()).read_text())
    totals: Counter[str] = Counter()
    runs_seen = 0
    for event in events:
        if event.get("cat") == "Session" and event.get("name") == "model_run":
            runs_seen += 1
        if event.get("cat") == "Node" and str(event.get("name", "")).endswith("_kernel_time"):
            totals[event["args"]["op_name"]] += int(event["dur"])
    # the profile holds the warm-up run too: spread over every run it recorded
    return _ranked(totals, max(runs_seen, 1), top)


def openvino_op_profile(path: Path, x: np.ndarray, threads: int = 0, runs: int = 3,
                        top: int = 8, precision: str | None = None) -> list[dict[str, Any]]:
    """Execution time per layer type (and kernel, e.g. ``Convolution [brgconv_avx512_u8]``) of an
    OpenVINO CPU model compiled like :func:`nnbridge.onnxrun.openvino_model` (``precision``:
    the file's own unless given), with performance counters on."""

    request = openvino_model(Path(path), threads, perf_count=True, precision=precision,
                             shape=x.shape).create_infer_request()
    request.infer({0: x})
    totals: Counter[str] = Counter()
    for _ in range(runs):
        request.infer({0: x})
        for info in request.get_profiling_info():
            if info.status == info.Status.EXECUTED:
                totals[f"{info.node_type} [{info.exec_type}]"] += int(info.real_time.total_seconds() * 1e6)
    return _ranked(totals, runs, top)


def op_profile(backend: str, path: Path, x: np.ndarray, threads: int = 0,
               precision: str | None = None, runs: int = 3) -> list[dict[str, Any]]:
    """Per-operator profile of an ONNX file on ``backend`` (``onnxruntime`` or ``openvino``, in
    ``precision`` if given), over ``runs`` runs after one warm-up."""
    if backend == "onnxruntime":
        return onnxruntime_op_profile(path, x, threads, runs=runs)
    if backend == "openvino":
        return openvino_op_profile(path, x, threads, runs=runs, precision=precision)
    raise ValueError(f"no per-operator profile for backend {backend!r}")
