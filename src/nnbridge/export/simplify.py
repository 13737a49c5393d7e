"""Simplify an exported ONNX graph (onnxsim, onnxslim as fallback); keep it only if its outputs
match and it still carries the export's weights (in whatever form the simplifier left them:
reshaped, transposed, BatchNorm folded into convolutions, ...)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ..core.artifacts import verify_recorded
from ..core.runlog import read_json, sha256_file
from ..runtime.ort import run_onnx
from .graph_proof import carriers, verify_derived_graph

TOOLS = ("onnxsim", "onnxslim")


def _run_tool(tool: str, model: onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    """``(simplified model, "tool version")``; raises whatever the tool raises."""
    if tool == "onnxsim":
        import onnxsim  # noqa: PLC0415

        simplified, checked = onnxsim.simplify(model)
        if not checked:
            raise RuntimeError("onnxsim's own check of the simplified graph failed")
        return simplified, f"onnxsim {onnxsim.__version__}"
    if tool == "onnxslim":
        import onnxslim  # noqa: PLC0415

        return onnxslim.slim(onnx.ModelProto.FromString(model.SerializeToString())), f"onnxslim {onnxslim.__version__}"
    raise ValueError(f"unknown simplifier {tool!r}; use one of {TOOLS}")


def simplify_onnx(src: Path, dst: Path, check_patches: np.ndarray, atol: float = 1e-4,
                  tools: tuple[str, ...] = TOOLS, src_record: Path | None = None,
                  export_record: dict[str, Any] | None = None, threads: int = 0) -> dict[str, Any]:
    """Write a simplified ``src`` to ``dst`` if it reproduces ``src``'s logits within ``atol``
    and carries ``src``'s weight tensors (those the export's weight proof in ``export_record``
    — default: the record ``src_record`` — found the checkpoint in; without either, every float
    initializer), proven like the export (:func:`nnbridge.export.graph_proof.verify_derived_graph`).

    The ``tools`` are tried in order (onnxsim, then onnxslim when onnxsim fails or its graph
    does not match); every attempt is recorded. With ``src_record`` (export.json), ``src`` is first
    checked against the sha256 it states. When none gives a matching graph, ``dst`` is a
    copy of ``src`` and the record says why, so later stages never run an unverified graph.
    ``threads``: ONNX Runtime's threads for the check (0: its default, every core).
    """
    src, dst = Path(src), Path(dst)
    if src_record is not None:  # the export this stage simplifies is the one export.json states
        verify_recorded(src, src_record)
        export_record = export_record if export_record is not None else read_json(src_record)
    dst.parent.mkdir(parents=True, exist_ok=True)
    original = onnx.load(str(src))
    record: dict[str, Any] = {"source": str(src), "nodes_before": len(original.graph.node),
                              "attempts": [], "check_atol": atol}
    reference = run_onnx(src, check_patches, threads)
    proven = (export_record or {}).get("weights", {})
    weight_carriers = carriers(proven) if "tensors" in proven else None
    record["weights_checked"] = ("the initializers the export's weight proof found the checkpoint in"
                                 if weight_carriers is not None else "every float initializer of the export")
    kept = False
    for tool in tools:
        attempt: dict[str, Any] = {"tool": tool}
        record["attempts"].append(attempt)
        try:
            simplified, attempt["tool"] = _run_tool(tool, original)
        except Exception as exc:  # noqa: BLE001 - simplifiers raise many kinds; try the next one
            attempt["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
            continue
        del simplified.metadata_props[:]
        simplified.metadata_props.extend(original.metadata_props)
        proof = verify_derived_graph(simplified, original, weight_carriers, (1, *check_patches.shape[1:]))
        attempt["weights"] = {k: proof[k] for k in ("ok", "summary", "matched")}
        if not proof["ok"]:
            attempt["error"] = f"the simplified graph does not carry the export's weights ({proof['summary']})"
            continue
        onnx.save(simplified, str(dst))
        max_abs = float(np.max(np.abs(reference.astype(np.float64) - run_onnx(dst, check_patches, threads))))
        attempt.update({"nodes_after": len(simplified.graph.node), "check_max_abs_err": max_abs})
        if max_abs <= atol:
            kept = True
            record.update({"tool": attempt["tool"], "nodes_after": len(simplified.graph.node),
                           "check_max_abs_err": max_abs, "weights": proof})
            break
        attempt["error"] = f"simplified outputs differ by {max_abs:.3g} > {atol:g}"
    if not kept:
        shutil.copyfile(src, dst)
        record.update({"tool": None, "nodes_after": record["nodes_before"],
                       "error": "; ".join(f"{a['tool']}: {a['error']}" for a in record["attempts"])
                       or "no simplifier configured"})
    record.update({"kept_simplified": kept, "path": str(dst), "sha256": sha256_file(dst),
                   "size_bytes": dst.stat().st_size})
    return record
