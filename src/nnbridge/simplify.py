"""Simplify an exported ONNX graph with onnxsim and keep it only if its outputs match."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from .models import sha256_file
from .onnxrun import run_onnx


def simplify_onnx(src: Path, dst: Path, check_patches: np.ndarray, atol: float = 1e-4) -> dict[str, Any]:
    """Write the onnxsim-simplified ``src`` to ``dst`` if it reproduces ``src``'s logits.

    When onnxsim fails or changes the outputs beyond ``atol``, ``dst`` is a copy of ``src`` and
    the returned record says why, so later stages never run an unverified graph.
    """
    import onnxsim  # noqa: PLC0415

    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    original = onnx.load(str(src))
    record: dict[str, Any] = {"source": str(src), "tool": f"onnxsim {onnxsim.__version__}",
                              "nodes_before": len(original.graph.node)}
    try:
        simplified, checked = onnxsim.simplify(original)
    except Exception as exc:  # noqa: BLE001 - onnxsim raises many kinds; we fall back honestly
        simplified, checked = None, False
        record["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    if simplified is not None:
        del simplified.metadata_props[:]
        simplified.metadata_props.extend(original.metadata_props)
        onnx.save(simplified, str(dst))
        ref = run_onnx(src, check_patches)
        got = run_onnx(dst, check_patches)
        max_abs = float(np.max(np.abs(ref.astype(np.float64) - got)))
        record.update({"onnxsim_check": bool(checked), "nodes_after": len(simplified.graph.node),
                       "check_max_abs_err": max_abs, "check_atol": atol})
        kept = max_abs <= atol
        if not kept:
            record["error"] = f"simplified outputs differ by {max_abs:.3g} > {atol:g}"
    else:
        kept = False
    if not kept:
        shutil.copyfile(src, dst)
        record["nodes_after"] = record["nodes_before"]
    record.update({"kept_simplified": kept, "path": str(dst), "sha256": sha256_file(dst),
                   "size_bytes": dst.stat().st_size})
    return record
