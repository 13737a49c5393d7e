"""The runtimes an artifact runs on — ONNX Runtime, OpenVINO, TorchScript — behind one factory.
An ONNX file runs on ONNX Runtime or OpenVINO, an OpenVINO IR (``.xml`` + ``.bin``) on OpenVINO
only, a TorchScript archive on TorchScript.

Imports neither torch nor openvino until a runner needs them: ``nnbridge predict`` stays
torch-free, and a benchmark child process carries only its own runtime.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..core.artifacts import KIND_RUNTIMES, artifact_kind
from ..core.errors import NNBridgeError
from .ort import onnx_session, ort_runner
from .ov import OpenVINORunner, compiled_precision
from .torchrun import torchscript_runner

ONNX_BACKENDS = ("onnxruntime", "openvino")
RUNNER_BACKENDS = (*ONNX_BACKENDS, "torchscript")


def refuse_backend(path: Path | str, backend: str) -> None:
    """One-line refusal of a runtime that cannot run this kind of artifact (an IR on ONNX Runtime);
    a file of no known kind is left to the runtime to judge."""
    try:
        kind = artifact_kind(path)
    except NNBridgeError:
        return
    if backend not in KIND_RUNTIMES[kind]:
        what = {"ir": "an OpenVINO IR", "onnx": "an ONNX file", "torchscript": "a TorchScript archive"}[kind]
        raise NNBridgeError(f"{path}: {what} runs on {' or '.join(KIND_RUNTIMES[kind])}, not {backend}; "
                            f"choose {KIND_RUNTIMES[kind][0]}")


def compiled_runner(compiled: Any) -> Callable[[np.ndarray], np.ndarray]:
    """A batch → logits callable over an OpenVINO compiled model; its ``precision`` attribute says
    what the compiled model computes in."""
    request = compiled.create_infer_request()

    def run(batch: np.ndarray) -> np.ndarray:
        return np.array(request.infer({0: batch})[0])

    run.precision = compiled_precision(compiled)  # type: ignore[attr-defined]
    return run


def make_runner(spec: dict[str, Any], threads: int = 0) -> Callable[[np.ndarray], np.ndarray]:
    """A batch → logits callable for ``spec`` (``backend``: ``onnxruntime``, ``openvino`` or
    ``torchscript``; ``path``: an ONNX file, an OpenVINO IR's ``.xml`` (OpenVINO only) or a
    TorchScript archive; ONNX Runtime ``settings``; OpenVINO ``precision``, default the file's
    own; ``shape``, the batch's shape when known, compiled at once: OpenVINO compiles a model for
    each input shape it runs, :class:`nnbridge.runtime.ov.OpenVINORunner`). An OpenVINO runner's
    ``precision`` attribute says what it computes in."""
    backend, path = spec["backend"], Path(spec["path"])
    if backend in ONNX_BACKENDS:
        refuse_backend(path, backend)
    if backend == "onnxruntime":
        settings = spec.get("settings")
        return ort_runner(onnx_session(path, threads, settings=settings), settings)
    if backend == "openvino":
        shape = spec.get("shape")
        return OpenVINORunner(path, threads, precision=spec.get("precision"), fallback=bool(spec.get("fallback", False)),
                              shape=tuple(shape) if shape is not None else None)
    if backend == "torchscript":
        return torchscript_runner(path, threads)
    raise ValueError(f"unknown backend {backend!r}; use one of {RUNNER_BACKENDS}")


def run_patches(run: Callable[[np.ndarray], np.ndarray], patches: np.ndarray) -> np.ndarray:
    """Logits of each patch, batch 1 at a time (as deployed)."""
    return run_patches_timed(run, patches)[0]


def run_patches_timed(run: Callable[[np.ndarray], np.ndarray],
                      patches: np.ndarray) -> tuple[np.ndarray, float | None]:
    """:func:`run_patches` and the median milliseconds per patch after the first (which pays the
    allocations; with one patch, its time; None with none). A rough latency that costs nothing
    where the patches run anyway (a quantization loop's checks), not a benchmark."""
    outs, times = [], []
    for i in range(len(patches)):
        started = time.perf_counter()
        outs.append(run(patches[i : i + 1].astype(np.float32)))
        times.append((time.perf_counter() - started) * 1000.0)
    latency = round(float(np.median(times[1:] or times)), 3) if times else None
    return np.concatenate(outs).astype(np.float32), latency


def run_variant(kind: str, path: Path, patches: np.ndarray, threads: int = 0,
                backend: str = "onnxruntime") -> np.ndarray:
    """Logits of an artifact per patch (``kind``: ``onnx`` on ``backend``, ``ir`` on ``backend``
    ``openvino``, or ``torchscript`` whatever ``backend`` says)."""
    return run_variant_timed(kind, path, patches, threads, backend)[0]


def run_variant_timed(kind: str, path: Path, patches: np.ndarray, threads: int = 0,
                      backend: str = "onnxruntime") -> tuple[np.ndarray, float | None]:
    """:func:`run_variant` and the median milliseconds per patch (:func:`run_patches_timed`)."""
    if kind == "torchscript":
        return run_patches_timed(make_runner({"backend": "torchscript", "path": path}), patches)
    if kind not in KIND_RUNTIMES:
        raise ValueError(f"unknown artifact kind {kind!r}; use one of {tuple(KIND_RUNTIMES)}")
    if backend not in ONNX_BACKENDS:
        raise ValueError(f"unknown backend {backend!r} for {kind}; use one of {KIND_RUNTIMES[kind]}")
    return run_patches_timed(make_runner({"backend": backend, "path": path}, threads), patches)
