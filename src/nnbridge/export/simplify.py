"""Simplify an exported ONNX graph (onnxsim, onnxslim as fallback); keep it only if its outputs
match and it still carries the export's weights (in whatever form the simplifier left them:
reshaped, transposed, BatchNorm folded into convolutions, ...). At patches where the runtimes'
fused InstanceNormalization loses precision, the deployable graph then gets the two-pass form
(:mod:`.norms`); the quantizers keep the fused one."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ..core.artifacts import verify_recorded
from ..core.metadata import read_metadata
from ..core.runlog import read_json, sha256_file
from ..runtime.ort import run_onnx
from .graph_proof import carriers, verify_derived_graph
from .norms import MIN_VOXELS, prove_each, two_pass_instance_norms

TOOLS = ("onnxsim", "onnxslim")

# where the check's size is one at which the fused normalizations are inexact (the trace fixed
# the patch, or twice the stride multiple is that large), the two-pass graph's logits are checked
# within this share of their range (the fused kernels' drift there: ~2e-5 for a MONAI UNETR at
# 96^3; a wrong rewrite is off by a whole normalization's scale), each normalization on its own
# within atol (norms.prove_each)
INEXACT_CHECK_RTOL = 1e-3


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
                  export_record: dict[str, Any] | None = None, threads: int = 0,
                  quantizable: Path | None = None, two_pass_norm_voxels: int = MIN_VOXELS) -> dict[str, Any]:
    """Write a simplified ``src`` to ``dst`` if it reproduces ``src``'s logits within ``atol``
    and carries ``src``'s weight tensors (those the export's weight proof in ``export_record``
    — default: the record ``src_record`` — found the checkpoint in; without either, every float
    initializer), proven like the export (:func:`nnbridge.export.graph_proof.verify_derived_graph`).

    The ``tools`` are tried in order (onnxsim, then onnxslim when onnxsim fails or its graph
    does not match); every attempt is recorded. With ``src_record`` (export.json), ``src`` is first
    checked against the sha256 it states. When none gives a matching graph, ``dst`` is a
    copy of ``src`` and the record says why, so later stages never run an unverified graph.
    ``threads``: ONNX Runtime's threads for the check (0: its default, every core).

    With ``quantizable`` (where the quantizers' graph goes), a graph whose largest
    InstanceNormalization has ``two_pass_norm_voxels`` voxels per channel (or group) or more at the patch
    size is then written to ``dst`` in the two-pass form (:func:`.norms.two_pass_instance_norms`;
    0: never), proven like the simplification (the weights, and the logits of both forms on a
    small Gaussian patch, where the fused kernels are exact to ~1e-6); ``quantizable`` gets the
    graph before it (the quantizers fold the fused normalization into their own: OpenVINO's MVN
    for NNCF), or the same file when nothing was rewritten. The record's ``norms`` says which and
    why, its ``quantizable`` the file and its sha256.
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
    if quantizable is not None:
        record["norms"] = _two_pass_norms(dst, Path(quantizable), original, weight_carriers, check_patches,
                                          atol, threads, two_pass_norm_voxels)
        record["quantizable"] = {"path": str(quantizable), "sha256": sha256_file(quantizable)}
    record.update({"kept_simplified": kept, "path": str(dst), "sha256": sha256_file(dst),
                   "size_bytes": dst.stat().st_size})
    return record


def _check_shape(dst: Path, check_patches: np.ndarray) -> tuple[tuple[int, ...], str]:
    """A small patch the network takes (twice its stride multiple per axis, at most the patch,
    as the export's own check), where the fused normalization sums few enough terms to be exact;
    the patch itself when the export fixed the spatial size (its ``dynamic_axes`` metadata). With
    it, what that size is, in words for the record."""
    meta = read_metadata(dst)
    stride = json.loads(meta.get("stride_multiple", "null") or "null")
    dynamic = json.loads(meta.get("dynamic_axes", "null") or "null")
    patch = list(check_patches.shape[2:])
    if dynamic is not None and "spatial" not in dynamic:
        return (1, check_patches.shape[1], *patch), "the only size it takes"
    if not stride or len(stride) != len(patch):
        return (1, check_patches.shape[1], *patch), "its patch"
    spatial = [min(p, 2 * int(m)) for p, m in zip(patch, stride)]
    return (1, check_patches.shape[1], *spatial), ("its patch" if spatial == patch else
                                                   "twice its stride multiple (smaller sizes leave its deepest "
                                                   "normalizations one voxel)")


def _two_pass_norms(dst: Path, quantizable: Path, original: onnx.ModelProto, weight_carriers: list[str] | None,
                    check_patches: np.ndarray, atol: float, threads: int, min_voxels: int) -> dict[str, Any]:
    """Write ``dst``'s graph to ``quantizable`` and, where :func:`.norms.two_pass_instance_norms`
    rewrites it, the two-pass form to ``dst``; what was done, as the record's ``norms``."""
    plain = onnx.load(str(dst))
    rewritten, norms = two_pass_instance_norms(plain, (1, *check_patches.shape[1:]), min_voxels)
    quantizable.parent.mkdir(parents=True, exist_ok=True)
    quantizable.unlink(missing_ok=True)
    if not norms["rewritten"]:
        try:
            os.link(dst, quantizable)  # the same graph: one file on disk
        except OSError:
            shutil.copyfile(dst, quantizable)
        return norms
    shape, size_is = _check_shape(dst, check_patches)
    proof = verify_derived_graph(rewritten, original, weight_carriers, shape)
    each = prove_each(plain, (1, *check_patches.shape[1:]), threads)
    probe = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    partial = dst.with_name(f".{dst.name}.two_pass")
    onnx.save(rewritten, str(partial))
    try:
        fused = run_onnx(dst, probe, threads).astype(np.float64)
        err = float(np.max(np.abs(fused - run_onnx(partial, probe, threads))))
    except Exception:
        partial.unlink(missing_ok=True)
        raise
    tolerance = atol
    norms.update({"check_shape": list(shape), "check_max_abs_err": err, "each": each,
                  "weights": {k: proof[k] for k in ("ok", "summary")}})
    # the largest normalization at the check shape: every level scales with the patch's voxels
    if norms["largest_voxels"] * np.prod(shape[2:]) // np.prod(check_patches.shape[2:]) >= min_voxels:
        # even the check's size is one where the fused kernels are the inaccurate side (the trace
        # fixed the patch, or twice the stride multiple is that large: a 128^3 nnU-Net's 64^3):
        # each normalization's own proof decides; the whole graph is checked for what a rewrite
        # could break beyond them, within a share of its logits' range
        tolerance = max(atol, INEXACT_CHECK_RTOL * float(np.max(np.abs(fused))))
        norms["check_tolerance"] = tolerance
        norms["check_note"] = (f"whole graph at {'x'.join(map(str, shape[2:]))} within {INEXACT_CHECK_RTOL:g} of its "
                               f"logits' range: the fused kernels are inexact at this size, {size_is}")
    if not proof["ok"] or not err <= tolerance or not each["max_abs_err"] <= atol:
        partial.unlink(missing_ok=True)
        shutil.copyfile(dst, quantizable)
        norms["error"] = (f"the two-pass graph does not carry the export's weights ({proof['summary']})"
                          if not proof["ok"] else
                          f"two-pass outputs differ by {err:.3g} > {tolerance:g} on a Gaussian patch"
                          if not err <= tolerance else
                          f"two-pass normalizations differ from the fused ones by {each['max_abs_err']:.3g} > "
                          f"{atol:g} on their own")
        norms["rewritten"] = 0
        return norms
    os.replace(dst, quantizable)
    os.replace(partial, dst)
    return norms
