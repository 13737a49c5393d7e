"""The bf16 variant: the fp32 graph, marked to run on OpenVINO in bf16 where the CPU has it natively."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import onnx

from ..core.metadata import META_PREFIX, PRECISION_KEY
from ..runtime.ov import precision_unavailable
from .common import _file_record, _paths
from .coverage import openvino_coverage


def make_bf16(src: Path, dst: Path, input_shape: tuple[int, ...] | None = None) -> dict[str, Any]:
    """The bf16 variant: ``src`` unchanged (fp32 weights, same graph), marked by its metadata
    (``nnbridge.inference_precision = bf16``) to run on OpenVINO with bf16 inference precision,
    which CPUs with AVX512_BF16 or AMX execute natively (OpenVINO keeps what is not worth bf16 in
    fp32). No calibration; the validate stage gates it like every variant. With ``input_shape``,
    the record's ``coverage_openvino`` says which compute layers really run in bf16 here (None,
    with the reason, on a CPU without native bf16)."""

    src, dst = _paths(src, dst)
    started = time.perf_counter()
    model = onnx.load(str(src))
    for prop in [p for p in model.metadata_props if p.key == META_PREFIX + PRECISION_KEY]:
        model.metadata_props.remove(prop)
    model.metadata_props.add(key=META_PREFIX + PRECISION_KEY, value="bf16")
    onnx.save(model, str(dst))
    unavailable = precision_unavailable("bf16")
    record: dict[str, Any] = {
        "method": "bf16", "inference_precision": "bf16", "runtime": "openvino", "n_calibration_patches": 0,
        "native_bf16_here": unavailable is None, **({"bf16_unavailable": unavailable} if unavailable else {}),
        "seconds": round(time.perf_counter() - started, 3), **_file_record(dst)}
    if input_shape is not None:
        record["coverage_openvino"] = (openvino_coverage(dst, src, input_shape, low="bf16")
                                       if unavailable is None else None)
    return record
