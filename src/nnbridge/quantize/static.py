"""Static INT8 with ONNX Runtime's quantizer, calibrated on real patches of the fold's training cases."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ..core.artifacts import verify_recorded
from ..core.errors import NNBridgeError
from .common import PatchReader, _choice, _copy_metadata, _file_record, _paths


FORMATS = ("QDQ", "QOperator")


CALIBRATION_METHODS = ("MinMax", "Entropy", "Percentile")


# the static quantizer's settings at their defaults (None: not given, the CPU decides): other
# values mean nothing to NNCF
STATIC_DEFAULTS = {"format": "QDQ", "per_channel": True, "calibrate_method": "MinMax",
                   "symmetric_activations": False, "reduce_range": False}


def quantize_static_int8(
    src: Path,
    dst: Path,
    calibration: np.ndarray,
    *,
    quant_format: str = "QDQ",
    per_channel: bool = True,
    calibrate_method: str = "MinMax",
    symmetric_activations: bool = False,
    reduce_range: bool = False,
    nodes_to_exclude: list[str] | None = None,
    calibration_cache: Path | None = None,
) -> dict[str, Any]:
    """Static INT8 quantization of ``src`` into ``dst``; returns what was done.

    ``reduce_range``: 7-bit weights (for x86 CPUs without VNNI, see :mod:`.cpudefaults`).

    ``calibration_cache``: a JSON file of tensor ranges; when it exists calibration is skipped
    (the accuracy-aware loop calibrates once and only rewrites the graph afterwards).
    """
    from onnxruntime.quantization import (  # noqa: PLC0415
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    _choice("quantize format", quant_format, FORMATS)
    _choice("calibrate_method", calibrate_method, CALIBRATION_METHODS)
    src, dst = _paths(src, dst, calibration)
    input_name = onnx.load(str(src), load_external_data=False).graph.input[0].name
    started = time.perf_counter()
    quantize_static(
        str(src),
        str(dst),
        PatchReader(input_name, calibration),
        quant_format=getattr(QuantFormat, quant_format),
        per_channel=per_channel,
        reduce_range=reduce_range,
        activation_type=QuantType.QInt8 if symmetric_activations else QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=getattr(CalibrationMethod, calibrate_method),
        nodes_to_exclude=list(nodes_to_exclude or []),
        extra_options={"ActivationSymmetric": symmetric_activations},
        **({"calibration_cache_path": str(calibration_cache)} if calibration_cache else {}),
    )
    _copy_metadata(src, dst)
    return {
        "method": "static",
        "format": quant_format,
        "per_channel": per_channel,
        "calibrate_method": calibrate_method,
        "symmetric_activations": symmetric_activations,
        "reduce_range": reduce_range,
        "nodes_to_exclude": list(nodes_to_exclude or []),
        "n_calibration_patches": int(len(calibration)),
        "seconds": round(time.perf_counter() - started, 3),
        **_file_record(dst),
    }


def _quantize_static(src: Path, dst: Path, calibration: np.ndarray, settings: dict[str, Any],
                     excluded: list[str], cache: Path | None = None) -> dict[str, Any]:
    return quantize_static_int8(
        src, dst, calibration, quant_format=settings.get("format", "QDQ"),
        per_channel=settings.get("per_channel", True),
        calibrate_method=settings.get("calibrate_method", "MinMax"),
        symmetric_activations=bool(settings.get("symmetric_activations")),
        reduce_range=bool(settings.get("reduce_range")),
        nodes_to_exclude=excluded, calibration_cache=cache)


def calibrate_ranges(src: Path, calibration: np.ndarray, out: Path, *, calibrate_method: str = "MinMax",
                     src_record: Path | None = None) -> dict[str, Any]:
    """ONNX Runtime's calibration of ``src`` on ``calibration``: the activation ranges every static
    INT8 variant of it quantizes from, written to ``out`` (ONNX Runtime's calibration cache, JSON)
    whole or not at all. Returns what was done.

    The ranges do not depend on the activations' symmetry, the weights' settings or the nodes
    kept in fp32 (those are applied to the same ranges when the graph is rewritten), so one
    calibration per graph, patches and method serves every static variant and their reruns
    after a setting change. At a 128³ patch it is most of a static quantization: 16 patches
    through a graph that outputs every activation, ~2.5 min and ~11.5 GB on the 2-core machines.
    With ``src_record`` (simplify.json), ``src`` is first checked against the sha256 it states.
    """
    if src_record is not None:
        verify_recorded(src, src_record)
    _choice("calibrate_method", calibrate_method, CALIBRATION_METHODS)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="nnbridge-calib-") as tmp:
        ranges = Path(tmp) / "ranges.json"
        # ONNX Runtime writes the ranges as it quantizes; the quantized graph is not kept
        quantize_static_int8(src, Path(tmp) / "probe.onnx", calibration, calibrate_method=calibrate_method,
                             calibration_cache=ranges)
        partial = out.with_name(f".{out.name}.part")
        shutil.copyfile(ranges, partial)
        os.replace(partial, out)
    return {"calibrate_method": calibrate_method, "n_calibration_patches": int(len(calibration)),
            "patch_shape": list(calibration.shape[1:]), "source": str(src), "ranges": str(out),
            "seconds": round(time.perf_counter() - started, 3)}


@contextmanager
def calibration_file(ranges: Path | None) -> Iterator[tuple[Path, dict[str, Any]]]:
    """The calibration cache a static quantization uses: ``ranges`` (:func:`calibrate_ranges`,
    read only), else a file of this call's own that its first quantization calibrates into (the
    accuracy-aware loop's later steps reuse it). Yields (the file, what the record says)."""
    if ranges is not None:
        if not Path(ranges).is_file():
            raise NNBridgeError(f"{ranges}: no calibration ranges; rerun the calibrate stage "
                                "(snakemake --forcerun calibrate)")
        yield Path(ranges), {"ranges": str(ranges)}
        return
    with tempfile.TemporaryDirectory(prefix="nnbridge-calib-") as tmp:
        yield Path(tmp) / "calibration.json", {"ranges": None}
