"""Static INT8 with ONNX Runtime's quantizer, calibrated on real patches of the fold's training cases."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import onnx

from ..core.artifacts import verify_recorded
from ..core.errors import NNBridgeError
from ..runtime.ov import openvino_installed, openvino_model
from .common import PatchReader, _choice, _copy_metadata, _file_record, _paths


FORMATS = ("QDQ", "QOperator")


CALIBRATION_METHODS = ("MinMax", "Entropy", "Percentile")


# the static quantizer's settings at their defaults (None: not given, the CPU decides): other
# values mean nothing to NNCF
STATIC_DEFAULTS = {"format": "QDQ", "per_channel": True, "calibrate_method": "MinMax",
                   "symmetric_activations": False, "reduce_range": False, "weight_type": "s8"}

# the weights' integer type: s8 (ONNX Runtime's advice, and what OpenVINO runs in INT8) or u8
# with a zero point per channel (ONNX Runtime's U8U8 kernels, which sum in int32 without the int16
# saturation of its u8×s8 ones on x86 without VNNI; OpenVINO runs such convolutions in fp32 on
# dequantized weights). u8 weights need u8 (asymmetric) activations: ONNX Runtime has no s8×u8.
WEIGHT_TYPES = ("s8", "u8")


class _OpenVINOSession:
    """What ONNX Runtime's MinMax calibrator asks of its session (``get_outputs``, ``run``), served
    by OpenVINO compiled in fp32 (:func:`nnbridge.runtime.ov.openvino_model`): the calibrator's
    graph (every calibrated tensor's ReduceMin and ReduceMax made outputs) runs ~4x faster there
    at the same threads than on the session ONNX Runtime builds for it, which turns every graph
    optimization off (and takes every core). Compiled for the patches' shape when the first one
    comes (:func:`nnbridge.runtime.ov.fix_input_shape`)."""

    def __init__(self, augmented: Path, threads: int) -> None:
        self._augmented, self._threads = augmented, threads
        self._names = [o.name for o in onnx.load(str(augmented), load_external_data=False).graph.output]
        self._shape: tuple[int, ...] | None = None

    def _compile(self, shape: tuple[int, ...]) -> None:
        compiled = openvino_model(self._augmented, self._threads, precision="f32", shape=shape)
        self._request = compiled.create_infer_request()
        self._ports = [compiled.output(name) for name in self._names]
        self._shape = shape

    def get_outputs(self) -> list[Any]:
        return [SimpleNamespace(name=name) for name in self._names]

    def run(self, _names: Any, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        batch = next(iter(inputs.values()))
        if batch.shape != self._shape:
            self._compile(tuple(batch.shape))
        results = self._request.infer({0: batch})
        return [np.array(results[port]) for port in self._ports]


def calibrates_on_openvino(calibrate_method: str) -> bool:
    """Whether a calibration of ``calibrate_method`` collects its ranges on OpenVINO here
    (:func:`calibrate_on_openvino`: MinMax, with OpenVINO installed), else ONNX Runtime's own."""
    return calibrate_method == "MinMax" and openvino_installed()


def calibrate_on_openvino(src: Path, calibration: np.ndarray, cache: Path, threads: int = 0) -> None:
    """ONNX Runtime's MinMax calibration of ``src`` (the tensors its static quantizer calibrates,
    the graph its calibrator builds, its reduction of the patches' ranges), run by OpenVINO in
    fp32, written to ``cache`` as ONNX Runtime's calibration cache: what ``quantize_static``
    computes itself, within the two runtimes' fp32 rounding (at most ~0.1 % of a range at a
    real-size 128³ network, a quarter of one INT8 step). At that size a patch took 5 s on one
    thread here against 23 s on ONNX Runtime's calibration session (AMD EPYC Zen 4, 2026-12-03)."""
    from onnxruntime.quantization.calibrate import (  # noqa: PLC0415
        CalibrationMethod,
        create_calibrator,
        save_tensors_data,
    )
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry  # noqa: PLC0415

    op_types = sorted(set(QLinearOpsRegistry) | set(QDQRegistry))  # quantize_static's default
    input_name = onnx.load(str(src), load_external_data=False).graph.input[0].name
    with tempfile.TemporaryDirectory(prefix="nnbridge-calib-ov-") as tmp:
        augmented = Path(tmp) / "augmented.onnx"
        calibrator = create_calibrator(Path(src), op_types, augmented_model_path=str(augmented),
                                       calibrate_method=CalibrationMethod.MinMax)
        calibrator.infer_session = _OpenVINOSession(augmented, threads)
        calibrator.collect_data(PatchReader(input_name, calibration))
        save_tensors_data(calibrator.compute_data(), Path(cache), smooth_quant=False)


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
    weight_type: str = "s8",
    nodes_to_exclude: list[str] | None = None,
    calibration_cache: Path | None = None,
    threads: int = 0,
) -> dict[str, Any]:
    """Static INT8 quantization of ``src`` into ``dst``; returns what was done.

    ``reduce_range``: 7-bit weights (for x86 CPUs without VNNI, see :mod:`.cpudefaults`).
    ``weight_type``: ``s8`` or ``u8`` (:data:`WEIGHT_TYPES`; u8 needs asymmetric activations).

    ``calibration_cache``: a JSON file of tensor ranges; when it exists calibration is skipped
    (the accuracy-aware loop calibrates once and only rewrites the graph afterwards). Otherwise
    MinMax ranges are collected on OpenVINO when it is installed (:func:`calibrate_on_openvino`,
    on ``threads`` threads; the record's ``calibrated_on`` says where), the other methods by
    ONNX Runtime's own calibration.
    """
    _choice("quantize format", quant_format, FORMATS)
    _choice("calibrate_method", calibrate_method, CALIBRATION_METHODS)
    _choice("weight_type", weight_type, WEIGHT_TYPES)
    if weight_type == "u8" and symmetric_activations:
        raise NNBridgeError("weight_type u8 needs asymmetric (u8) activations: ONNX Runtime has no s8 activation "
                            "x u8 weight kernels; set symmetric_activations: false or weight_type: s8")
    src, dst = _paths(src, dst, calibration)
    input_name = onnx.load(str(src), load_external_data=False).graph.input[0].name
    started = time.perf_counter()
    cached = calibration_cache is not None and Path(calibration_cache).is_file()
    calibrated_on = None if cached else "onnxruntime"
    with tempfile.TemporaryDirectory(prefix="nnbridge-ranges-") as tmp:
        if not cached and calibrates_on_openvino(calibrate_method):
            calibration_cache = Path(calibration_cache) if calibration_cache else Path(tmp) / "ranges.json"
            calibrate_on_openvino(src, calibration, calibration_cache, threads)
            calibrated_on = "openvino"
        _run_quantize_static(src, dst, PatchReader(input_name, calibration), quant_format, per_channel,
                             reduce_range, symmetric_activations, calibrate_method, nodes_to_exclude,
                             calibration_cache, weight_type)
    _copy_metadata(src, dst)
    return {
        "method": "static",
        "format": quant_format,
        "per_channel": per_channel,
        "calibrate_method": calibrate_method,
        "calibrated_on": calibrated_on,
        "symmetric_activations": symmetric_activations,
        "reduce_range": reduce_range,
        "weight_type": weight_type,
        "nodes_to_exclude": list(nodes_to_exclude or []),
        "n_calibration_patches": int(len(calibration)),
        "seconds": round(time.perf_counter() - started, 3),
        **_file_record(dst),
    }


def _run_quantize_static(src: Path, dst: Path, reader: PatchReader, quant_format: str, per_channel: bool,
                         reduce_range: bool, symmetric_activations: bool, calibrate_method: str,
                         nodes_to_exclude: list[str] | None, calibration_cache: Path | None,
                         weight_type: str = "s8") -> None:
    """ONNX Runtime's ``quantize_static`` with nnbridge's settings (calibrating unless
    ``calibration_cache`` exists, into it when given)."""
    from onnxruntime.quantization import (  # noqa: PLC0415
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    quantize_static(
        str(src),
        str(dst),
        reader,
        quant_format=getattr(QuantFormat, quant_format),
        per_channel=per_channel,
        reduce_range=reduce_range,
        activation_type=QuantType.QInt8 if symmetric_activations else QuantType.QUInt8,
        weight_type=QuantType.QUInt8 if weight_type == "u8" else QuantType.QInt8,
        calibrate_method=getattr(CalibrationMethod, calibrate_method),
        nodes_to_exclude=list(nodes_to_exclude or []),
        extra_options={"ActivationSymmetric": symmetric_activations},
        **({"calibration_cache_path": str(calibration_cache)} if calibration_cache else {}),
    )


def _quantize_static(src: Path, dst: Path, calibration: np.ndarray, settings: dict[str, Any],
                     excluded: list[str], cache: Path | None = None) -> dict[str, Any]:
    return quantize_static_int8(
        src, dst, calibration, quant_format=settings.get("format", "QDQ"),
        per_channel=settings.get("per_channel", True),
        calibrate_method=settings.get("calibrate_method", "MinMax"),
        symmetric_activations=bool(settings.get("symmetric_activations")),
        reduce_range=bool(settings.get("reduce_range")), weight_type=settings.get("weight_type") or "s8",
        nodes_to_exclude=excluded, calibration_cache=cache)


def calibrate_ranges(src: Path, calibration: np.ndarray, out: Path, *, calibrate_method: str = "MinMax",
                     src_record: Path | None = None, threads: int = 0) -> dict[str, Any]:
    """ONNX Runtime's calibration of ``src`` on ``calibration``: the activation ranges every static
    INT8 variant of it quantizes from, written to ``out`` (ONNX Runtime's calibration cache, JSON)
    whole or not at all. Returns what was done.

    The ranges do not depend on the activations' symmetry, the weights' settings or the nodes
    kept in fp32 (those are applied to the same ranges when the graph is rewritten), so one
    calibration per graph, patches and method serves every static variant and their reruns
    after a setting change. At a 128³ patch it is most of a static quantization: 16 patches
    through a graph that outputs every activation's range: ~2.5 min and ~11.5 GB on one thread on
    ONNX Runtime, which builds that graph's session with every optimization off; MinMax ranges
    are therefore collected on OpenVINO when it is installed (:func:`calibrate_on_openvino`, ``threads``
    threads; ``collected_on`` says where). With ``src_record`` (simplify.json), ``src`` is first
    checked against the sha256 it states.
    """
    if src_record is not None:
        verify_recorded(src, src_record)
    _choice("calibrate_method", calibrate_method, CALIBRATION_METHODS)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="nnbridge-calib-") as tmp:
        ranges = Path(tmp) / "ranges.json"
        collected_on = "onnxruntime"
        if calibrates_on_openvino(calibrate_method):
            calibrate_on_openvino(src, calibration, ranges, threads)
            collected_on = "openvino"
        else:  # ONNX Runtime writes the ranges as it quantizes; the quantized graph is not kept
            quantize_static_int8(src, Path(tmp) / "probe.onnx", calibration, calibrate_method=calibrate_method,
                                 calibration_cache=ranges, threads=threads)
        partial = out.with_name(f".{out.name}.part")
        shutil.copyfile(ranges, partial)
        os.replace(partial, out)
    return {"calibrate_method": calibrate_method, "collected_on": collected_on,
            "n_calibration_patches": int(len(calibration)),
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
