"""Static INT8 with ONNX Runtime's quantizer, calibrated on real patches of the fold's training cases."""

from __future__ import annotations

import hashlib
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

from ..core.runlog import sha256_file
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


def calibration_key(src: Path, calibration: np.ndarray, calibrate_method: str) -> str:
    """What ONNX Runtime's calibration ranges depend on: the graph, the patches, the method and
    ONNX Runtime's version (not the activations' symmetry, the weights' settings or the nodes kept
    in fp32: those are applied to the same ranges when the graph is rewritten)."""
    import onnxruntime  # noqa: PLC0415 - imported where quantization runs, as quantize_static does

    digest = hashlib.sha256()
    for part in (sha256_file(src), calibrate_method, onnxruntime.__version__, str(calibration.shape),
                 str(calibration.dtype)):
        digest.update(part.encode() + b"\0")
    digest.update(np.ascontiguousarray(calibration).tobytes())
    return digest.hexdigest()[:32]


@contextmanager
def shared_calibration(src: Path, calibration: np.ndarray, settings: dict[str, Any],
                       cache_dir: Path | None) -> Iterator[tuple[Path, dict[str, Any]]]:
    """A calibration cache file private to this job (see ``calibration_cache`` of
    :func:`quantize_static_int8`), seeded from ``cache_dir``'s ranges for the same graph, patches
    and method when an earlier job calibrated them; ranges calibrated here are published there
    afterwards (whole files only: written beside, then renamed). Yields (the private file, what
    the record says: ``reused`` and the ``key``). Without ``cache_dir`` nothing is shared.

    At a 128³ patch ONNX Runtime's calibration is most of a static quantization (16 patches
    through a graph that outputs every activation: ~3 min and ~11.5 GB on the 2-core machines):
    the fold's other static variants and a rerun after a quantization setting change skip it."""
    method = settings.get("calibrate_method", "MinMax")
    with tempfile.TemporaryDirectory(prefix="nnbridge-calib-") as tmp:
        private = Path(tmp) / "calibration.json"
        if cache_dir is None:
            yield private, {"reused": False}
            return
        key = calibration_key(Path(src), calibration, method)
        shared = Path(cache_dir) / f"{key}.json"
        reused = shared.is_file()
        if reused:
            shutil.copyfile(shared, private)
        yield private, {"reused": reused, "key": key}
        if not reused and private.is_file():
            shared.parent.mkdir(parents=True, exist_ok=True)
            partial = shared.with_name(f".{key}.{os.getpid()}.part")
            shutil.copyfile(private, partial)
            os.replace(partial, shared)
