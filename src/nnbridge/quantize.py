"""INT8 quantization of exported ONNX models with onnxruntime, calibrated on real patches."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from .errors import NNBridgeError
from .models import sha256_file

FORMATS = ("QDQ", "QOperator")
CALIBRATION_METHODS = ("MinMax", "Entropy", "Percentile")


class PatchReader:
    """``onnxruntime.quantization.CalibrationDataReader`` over an array of patches (batch 1)."""

    def __init__(self, input_name: str, patches: np.ndarray) -> None:
        self.input_name = input_name
        self.patches = patches.astype(np.float32)
        self.index = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.index >= len(self.patches):
            return None
        item = {self.input_name: self.patches[self.index : self.index + 1]}
        self.index += 1
        return item

    def rewind(self) -> None:
        self.index = 0


def op_histogram(path: Path) -> dict[str, int]:
    """Operator counts of an ONNX graph."""
    model = onnx.load(str(path), load_external_data=False)
    return dict(sorted(Counter(node.op_type for node in model.graph.node).items()))


def quantize_static_int8(
    src: Path,
    dst: Path,
    calibration: np.ndarray,
    *,
    quant_format: str = "QDQ",
    per_channel: bool = True,
    calibrate_method: str = "MinMax",
    symmetric_activations: bool = False,
    nodes_to_exclude: list[str] | None = None,
) -> dict[str, Any]:
    """Static INT8 quantization of ``src`` into ``dst``; returns what was done."""
    from onnxruntime.quantization import (  # noqa: PLC0415
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    if quant_format not in FORMATS:
        raise NNBridgeError(f"quantize format {quant_format!r} unknown; use one of {FORMATS}")
    if calibrate_method not in CALIBRATION_METHODS:
        raise NNBridgeError(f"calibrate_method {calibrate_method!r} unknown; use one of {CALIBRATION_METHODS}")
    if len(calibration) == 0:
        raise NNBridgeError("no calibration patches; raise quantize n_calibration_patches")
    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    input_name = onnx.load(str(src), load_external_data=False).graph.input[0].name
    started = time.perf_counter()
    quantize_static(
        str(src),
        str(dst),
        PatchReader(input_name, calibration),
        quant_format=getattr(QuantFormat, quant_format),
        per_channel=per_channel,
        activation_type=QuantType.QInt8 if symmetric_activations else QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=getattr(CalibrationMethod, calibrate_method),
        nodes_to_exclude=list(nodes_to_exclude or []),
        extra_options={"ActivationSymmetric": symmetric_activations},
    )
    # quantize_static drops model metadata: carry the provenance over
    original = onnx.load(str(src), load_external_data=False)
    quantized = onnx.load(str(dst))
    quantized.metadata_props.extend(original.metadata_props)
    onnx.save(quantized, str(dst))
    return {
        "method": "static",
        "format": quant_format,
        "per_channel": per_channel,
        "calibrate_method": calibrate_method,
        "symmetric_activations": symmetric_activations,
        "nodes_to_exclude": list(nodes_to_exclude or []),
        "n_calibration_patches": int(len(calibration)),
        "seconds": round(time.perf_counter() - started, 3),
        "ops": op_histogram(dst),
        "path": str(dst),
        "sha256": sha256_file(dst),
        "size_bytes": dst.stat().st_size,
    }


def quantize_variant(src: Path, dst: Path, calibration: np.ndarray, settings: dict[str, Any]) -> dict[str, Any]:
    """Quantize ``src`` as one configured variant (the config's ``quantize.<name>`` entry)."""
    method = settings.get("method", "static")
    if method != "static":
        raise NNBridgeError(f"quantize method {method!r} is not supported yet; use 'static'")
    return quantize_static_int8(
        src,
        dst,
        calibration,
        quant_format=settings.get("format", "QDQ"),
        per_channel=settings.get("per_channel", True),
        calibrate_method=settings.get("calibrate_method", "MinMax"),
        symmetric_activations=settings.get("symmetric_activations", False),
        nodes_to_exclude=settings.get("nodes_to_exclude") or [],
    )
