"""Facts read off an artifact's graph without running it, whatever its kind: an ONNX file
(:mod:`.onnxgraph`) or an OpenVINO IR (:mod:`.irgraph`), told apart by the file's suffix
(:func:`nnbridge.core.artifacts.artifact_kind`). Imports no torch and no runtime."""

from __future__ import annotations

from pathlib import Path

from . import irgraph, onnxgraph
from .artifacts import artifact_kind
from .metadata import META_PREFIX, PRECISION_KEY


def graph_signature(path: str | Path) -> str:
    """A hash of what decides an artifact's speed, not its weights' values
    (:func:`nnbridge.core.onnxgraph.graph_signature`, :func:`nnbridge.core.irgraph.ir_signature`)."""
    if artifact_kind(path) == "ir":
        return irgraph.ir_signature(path, keep_rt=(META_PREFIX + PRECISION_KEY,))
    return onnxgraph.graph_signature(path)


def op_histogram(path: str | Path) -> dict[str, int]:
    """Operator counts of an ONNX graph or an IR's layers."""
    return irgraph.layer_types(path) if artifact_kind(path) == "ir" else onnxgraph.op_histogram(Path(path))


def is_int8(path: str | Path) -> bool:
    """Whether an ONNX file or IR holds quantized operators or weights."""
    return irgraph.holds_int8(path) if artifact_kind(path) == "ir" else onnxgraph.is_int8_model(path)
