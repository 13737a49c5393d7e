"""Dynamic INT8: weights quantized ahead of time, activation ranges at run time."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .common import _copy_metadata, _file_record, _paths


def quantize_dynamic_int8(src: Path, dst: Path, *, per_channel: bool = True, reduce_range: bool = False,
                          nodes_to_exclude: list[str] | None = None) -> dict[str, Any]:
    """Dynamic INT8: weights quantized ahead of time, activations at run time (no calibration);
    ``reduce_range``: 7-bit weights (x86 CPUs without VNNI, see :mod:`.cpudefaults`)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic  # noqa: PLC0415

    src, dst = _paths(src, dst)
    started = time.perf_counter()
    quantize_dynamic(str(src), str(dst), per_channel=per_channel, reduce_range=reduce_range,
                     weight_type=QuantType.QInt8,
                     nodes_to_exclude=list(nodes_to_exclude or []))
    _copy_metadata(src, dst)
    return {"method": "dynamic", "per_channel": per_channel, "reduce_range": reduce_range,
            "nodes_to_exclude": list(nodes_to_exclude or []), "n_calibration_patches": 0,
            "seconds": round(time.perf_counter() - started, 3), **_file_record(dst)}
