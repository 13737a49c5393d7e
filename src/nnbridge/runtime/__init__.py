"""The runtimes an artifact runs on — ONNX Runtime, OpenVINO, TorchScript — behind one factory.

Imports neither torch nor openvino until a runner needs them: ``nnbridge predict`` stays
torch-free, and a benchmark child process carries only its own runtime.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .ort import onnx_session, ort_runner
from .ov import compiled_precision, openvino_model
from .torchrun import torchscript_runner

ONNX_BACKENDS = ("onnxruntime", "openvino")
RUNNER_BACKENDS = (*ONNX_BACKENDS, "torchscript")


def make_runner(spec: dict[str, Any], threads: int = 0) -> Callable[[np.ndarray], np.ndarray]:
    """A batch → logits callable for ``spec`` (``backend``: ``onnxruntime``, ``openvino`` or
    ``torchscript``; ``path``; ONNX Runtime ``settings``; OpenVINO ``precision``, default the
    file's own). An OpenVINO runner's ``precision`` attribute says what it computes in."""
    backend, path = spec["backend"], Path(spec["path"])
    if backend == "onnxruntime":
        settings = spec.get("settings")
        return ort_runner(onnx_session(path, threads, settings=settings), settings)
    if backend == "openvino":
        compiled = openvino_model(path, threads, precision=spec.get("precision"),
                                  fallback=bool(spec.get("fallback", False)))
        request = compiled.create_infer_request()

        def run(batch: np.ndarray) -> np.ndarray:
            return np.array(request.infer({0: batch})[0])

        run.precision = compiled_precision(compiled)  # type: ignore[attr-defined]
        return run
    if backend == "torchscript":
        return torchscript_runner(path, threads)
    raise ValueError(f"unknown backend {backend!r}; use one of {RUNNER_BACKENDS}")


def run_patches(run: Callable[[np.ndarray], np.ndarray], patches: np.ndarray) -> np.ndarray:
    """Logits of each patch, batch 1 at a time (as deployed)."""
    outs = [run(patches[i : i + 1].astype(np.float32)) for i in range(len(patches))]
    return np.concatenate(outs).astype(np.float32)


def run_variant(kind: str, path: Path, patches: np.ndarray, threads: int = 0,
                backend: str = "onnxruntime") -> np.ndarray:
    """Logits of an artifact (``kind``: ``onnx`` on ``backend``, or ``torchscript``) per patch."""
    if kind == "onnx":
        if backend not in ONNX_BACKENDS:
            raise ValueError(f"unknown ONNX backend {backend!r}; use one of {ONNX_BACKENDS}")
        return run_patches(make_runner({"backend": backend, "path": path}, threads), patches)
    if kind == "torchscript":
        return run_patches(make_runner({"backend": "torchscript", "path": path}), patches)
    raise ValueError(f"unknown artifact kind {kind!r}")
