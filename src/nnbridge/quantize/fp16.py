"""fp16 weights and compute behind an fp32 interface."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import onnx

from .common import _copy_metadata, _file_record, _paths


def convert_fp16(src: Path, dst: Path, *, nodes_to_exclude: list[str] | None = None) -> dict[str, Any]:
    """fp16 weights and compute with fp32 inputs and outputs (the deployed interface stays fp32)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16  # noqa: PLC0415

    src, dst = _paths(src, dst)
    started = time.perf_counter()
    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True,
                                     node_block_list=list(nodes_to_exclude or []) or None)
    onnx.save(model, str(dst))
    _copy_metadata(src, dst)
    return {"method": "fp16", "nodes_to_exclude": list(nodes_to_exclude or []),
            "n_calibration_patches": 0, "seconds": round(time.perf_counter() - started, 3),
            **_file_record(dst)}
