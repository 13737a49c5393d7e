"""Quantized variants of exported ONNX models: INT8 static/dynamic and fp16 with onnxruntime,
INT8 by NNCF's post-training quantization (OpenVINO's quantizer, ONNX backend: still a QDQ file),
bf16 (the fp32 graph, marked to run on OpenVINO in bf16 on CPUs that have it), and OpenVINO IR
variants (``.xml`` + ``.bin``, OpenVINO only): INT8 by NNCF's OpenVINO backend, and the fp32 graph
(:mod:`.openvino_ir`). The kind of file a method writes: :func:`nnbridge.core.artifacts.method_kind`.

Static INT8 is calibrated on real patches of the fold's training cases. When a static variant
asks for it (``accuracy_aware``), the blocks whose fp32 version helps the label maps most
(measured by keeping one block at a time in fp32) are kept in fp32, round by round, until the
label maps agree with the fp32 model's on the calibration patches or the step budget is spent
(the validate stage then gates the result on held-out patches it never saw). Every INT8 variant gets an INT8 coverage
record (:mod:`nnbridge.coverage`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..core.artifacts import artifact_kind, method_kind, method_runtimes, verify_recorded
from ..core.errors import NNBridgeError
from ..core.records import QuantizeRecord
from .accuracy import accuracy_aware_int8
from .bf16 import make_bf16
from .common import _choice
from .cpudefaults import cpu_record, decision_features, resolve
from .coverage import int8_coverage, openvino_int8_coverage
from .dynamic import quantize_dynamic_int8
from .fp16 import convert_fp16
from .nncf_ptq import NNCF_KEYS, quantize_nncf_int8
from .openvino_ir import convert_openvino_fp32, quantize_openvino_int8
from .static import STATIC_DEFAULTS, _quantize_static, calibrate_ranges, calibration_file, quantize_static_int8

__all__ = ["METHODS", "quantize_variant", "read_decision", "calibrate_ranges", "quantize_static_int8", "quantize_dynamic_int8", "convert_fp16",
           "make_bf16", "quantize_nncf_int8", "quantize_openvino_int8", "convert_openvino_fp32",
           "accuracy_aware_int8"]


METHODS = ("static", "dynamic", "fp16", "nncf", "bf16", "openvino_int8", "openvino_fp32")


NNCF_METHODS = ("nncf", "openvino_int8")  # the methods NNCF's settings (NNCF_KEYS) go with


def read_decision(path: str | Path | None, fold: str) -> dict[str, Any] | None:
    """``decided`` for :func:`quantize_variant`: fold ``fold``'s quantize record of the same entry
    (``path``), or None without one."""
    if not path:
        return None
    return {"fold": str(fold), "record": QuantizeRecord.read(path).to_dict()}


def quantize_variant(src: Path, dst: Path, calibration: np.ndarray, settings: dict[str, Any],
                     *, threads: int = 1, backends: tuple[str, ...] | list[str] = ("onnxruntime",),
                     cpu: dict[str, Any] | None = None, src_record: Path | None = None,
                     decided: dict[str, Any] | None = None,
                     calibration_ranges: Path | None = None) -> dict[str, Any]:
    """Build one configured variant (the config's ``quantize.<name>`` entry) and its INT8 coverage.

    ``settings["method"]``: ``static`` (calibrated INT8; with ``accuracy_aware`` the layer
    exclusion loop), ``dynamic`` (INT8 weights, run-time activation ranges), ``fp16``, or
    ``nncf`` (calibrated INT8 by NNCF, :func:`quantize_nncf_int8`), ``bf16`` (the fp32 graph,
    run by OpenVINO in bf16, :func:`make_bf16`), ``openvino_int8`` (INT8 by NNCF's OpenVINO
    backend, an IR: :func:`quantize_openvino_int8`) or ``openvino_fp32`` (the fp32 graph as IR:
    :func:`convert_openvino_fp32`). ``dst`` has the suffix of the method's kind (``.xml`` for an
    IR, else ``.onnx``). INT8 coverage is recorded for ONNX Runtime (``coverage``; not for an IR,
    which it does not run) and, when ``backends`` names it, OpenVINO (``coverage_openvino``).

    Settings the entry leaves out (None) that the CPU decides (``reduce_range``, the activation
    type, NNCF's ``overflow_fix``: :mod:`.cpudefaults`) are chosen for ``cpu`` (the features of
    :func:`.cpudefaults.decision_features`, as the pipeline passes them; default this machine's);
    the INT8 methods' record says what was chosen and why under ``cpu``. With ``src_record``
    (simplify.json), ``src`` is first checked against the sha256 it states.

    ``decided`` (``{"fold": ..., "record": that fold's record of this entry}``): for an entry
    with ``accuracy_aware`` or ``accuracy_control``, another fold of the model searched which
    parts stay in fp32; this fold quantizes with its choice and checks it, without a search of its
    own (the pipeline does this unless the entry sets ``per_fold: true``). Ignored otherwise.

    ``calibration_ranges``: ONNX Runtime's calibration ranges of ``src`` on these patches
    (:func:`.static.calibrate_ranges`, the pipeline's calibrate stage: once per fold and method),
    which a static variant then quantizes from instead of calibrating itself; the record's
    ``calibration`` names them.
    """
    if src_record is not None:
        verify_recorded(src, src_record)

    method = settings.get("method", "static")
    _choice("quantize method", method, METHODS)
    kind = method_kind(method)
    if artifact_kind(dst) != kind:
        what, suffix = ("an OpenVINO IR (.xml + .bin)", ".xml") if kind == "ir" else ("ONNX", ".onnx")
        raise NNBridgeError(f"{dst}: method {method!r} writes {what}; name the output {Path(dst).with_suffix(suffix).name}")
    excluded = settings.get("nodes_to_exclude") or []
    if settings.get("accuracy_aware") and method != "static":
        raise NNBridgeError(f"accuracy_aware works with method 'static' only, not {method!r}; "
                            "remove it from this quantize entry")
    if method in NNCF_METHODS:
        misplaced = [k for k, v in STATIC_DEFAULTS.items() if settings.get(k) not in (None, v)]
        where = "with methods other than 'nncf' and 'openvino_int8'"
        hint = " (NNCF's preset chooses the activations' symmetry)"
    elif method in ("bf16", "openvino_fp32"):
        misplaced = ([k for k, v in STATIC_DEFAULTS.items() if settings.get(k) not in (None, v)]
                     + [key for key in NNCF_KEYS if key in settings])
        where, hint = "with the INT8 methods only", f" ({method} has no settings)"
    else:
        misplaced = [key for key in NNCF_KEYS if key in settings]
        where, hint = "with methods 'nncf' and 'openvino_int8' only", ""
        if method != "static" and settings.get("weight_type") is not None:
            raise NNBridgeError(f"weight_type works with method 'static' only, not {method!r}; remove it from "
                                "this quantize entry")
    if misplaced:
        raise NNBridgeError(f"{', '.join(misplaced)} work(s) {where}, not {method!r}; remove them "
                            f"from this quantize entry{hint}")
    if "openvino" not in backends and method_runtimes(method) == ("openvino",):
        raise NNBridgeError(f"method {method!r} runs on OpenVINO; add openvino to the config's backends")
    if method == "fp16":
        return convert_fp16(src, dst, nodes_to_exclude=excluded)
    if method in ("bf16", "openvino_fp32"):
        if excluded:
            raise NNBridgeError(f"nodes_to_exclude does not work with method {method!r} (nothing is quantized"
                                f"{': OpenVINO chooses per layer what runs in bf16' if method == 'bf16' else ''}); "
                                "remove it from this quantize entry")
        if method == "openvino_fp32":
            return convert_openvino_fp32(src, dst)
        return make_bf16(src, dst, tuple(calibration[:1].shape) if len(calibration) else None)
    features = cpu or decision_features()  # {} from the pipeline: nothing here depends on the CPU
    settings, choices = resolve(settings, features)
    if method == "dynamic":
        record = quantize_dynamic_int8(src, dst, per_channel=settings.get("per_channel", True),
                                       reduce_range=bool(settings["reduce_range"]), nodes_to_exclude=excluded)
    elif method in NNCF_METHODS:
        quantizer = quantize_nncf_int8 if method == "nncf" else quantize_openvino_int8
        record = quantizer(
            src, dst, calibration, preset=settings.get("preset", "performance"),
            subset_size=settings.get("subset_size"),
            fast_bias_correction=settings.get("fast_bias_correction", True),
            model_type=settings.get("model_type"), nodes_to_exclude=list(excluded),
            ignored_types=settings.get("ignored_types"), accuracy_control=settings.get("accuracy_control"),
            threads=threads, overflow_fix=settings["overflow_fix"], decided=decided)
    else:
        with calibration_file(calibration_ranges) as (cache, reuse):
            if settings.get("accuracy_aware"):
                record = accuracy_aware_int8(src, dst, calibration, settings, threads=threads,
                                             backends=tuple(backends), decided=decided, calibration_cache=cache,
                                             u8_weights_fallback=_u8_fallback(settings, choices))
            else:
                record = _quantize_static(src, dst, calibration, settings, list(excluded), cache)
        record["calibration"] = reuse
    record["cpu"] = cpu_record(features, choices, from_pipeline=bool(cpu))
    if len(calibration):
        shape = tuple(calibration[:1].shape)
        if kind == "onnx":  # ONNX Runtime does not run an IR
            record["coverage"] = int8_coverage(Path(dst), Path(src), shape)
        if "openvino" in backends:
            record["coverage_openvino"] = openvino_int8_coverage(Path(dst), Path(src), shape)
    return record


def _u8_fallback(settings: dict[str, Any], choices: list[dict[str, Any]]) -> bool:
    """Whether accuracy-aware INT8 may end with 8-bit u8 weights: the CPU chose 7-bit weights (no INT8
    dot products), the entry gives neither ``reduce_range`` nor ``weight_type``, and its
    ``accuracy_aware.u8_weights_fallback`` is not false."""
    chosen = {c["setting"]: c for c in choices}
    cpu_chose_7_bit = bool(settings.get("reduce_range")) and not chosen.get("reduce_range", {}).get("given", True)
    return (cpu_chose_7_bit and not chosen.get("weight_type", {}).get("given", True)
            and bool(settings["accuracy_aware"].get("u8_weights_fallback", True)))
