"""Patch parity: every variant of a fold against eager PyTorch on the held-out patches, gated per
class pooled over the patches and, where the gate asks for it (``min_case_dice``), per class per
held-out case (the worst case counts); recorded with the CPU kind it was measured on, plus the
self-check set the bundle ships for ``nnbridge verify`` (:mod:`.selfcheck`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..core.cpu import cpu_kind
from ..core.dice import case_dice, dice_of, label_classes, overlap_counts, to_labels
from ..models.loader import load_model
from ..runtime import run_variant
from ..runtime.ov import PrecisionUnavailable
from ..runtime.torchrun import run_torch
from .metrics import Tolerance, validate_variant
from .selfcheck import build_selfcheck

SELFCHECK_DEFAULTS = {"patches": 4, "max_kb": 128}


def validate_fold(
    source: dict[str, Any],
    heldout_patches: np.ndarray,
    variants: dict[str, dict[str, str]],
    tolerances: dict[str, dict[str, Any]],
    threads: int = 0,
    *,
    groups: Sequence[str] | None = None,
    selfcheck_out: Path | None = None,
    selfcheck: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Gate every variant (``{name: {"kind": "onnx"|"torchscript", "path": ...}}``) against eager
    PyTorch (the model ``source`` describes, see :func:`nnbridge.models.load_model`) on held-out
    patches. A failing variant is recorded, never raised.

    ``groups``: the held-out case of each patch (default: each patch its own), for the per-case
    Dice and the ``min_case_dice`` gates. ``selfcheck_out``: where to write the fold's self-check
    set (``selfcheck``: ``patches``, ``max_kb``; :func:`.selfcheck.build_selfcheck`); each ONNX
    variant's Dice on it is recorded under ``selfcheck``."""

    loaded = load_model(source)
    groups = [str(g) for g in groups] if groups is not None else [f"patch_{i}" for i in range(len(heldout_patches))]
    reference = run_torch(loaded.network, heldout_patches)
    results: dict[str, Any] = {}
    for name, variant in variants.items():
        tol = Tolerance.from_config(tolerances.get(name))
        try:
            logits = run_variant(variant["kind"], Path(variant["path"]), heldout_patches, threads,
                                 variant.get("backend", "onnxruntime"))
            results[name] = validate_variant(reference, logits, loaded.label_names, tol,
                                             loaded.region_based, groups)
        except PrecisionUnavailable as exc:  # a bf16 variant on a CPU without bf16: not run, not passed
            results[name] = {"passed": False, "skipped": str(exc), "tolerance": tol.to_dict(),
                             "failures": [f"skipped: {exc}"]}
        except Exception as exc:  # noqa: BLE001 - a broken variant fails its gate, others go on
            results[name] = {"passed": False, "tolerance": tol.to_dict(),
                             "failures": [f"could not run: {type(exc).__name__}: {exc}"[:500]]}
        results[name]["path"] = variant["path"]
        results[name]["kind"] = variant["kind"]
        results[name]["backend"] = variant.get("backend", "onnxruntime")
    record = {
        "model_folder": str(loaded.model_folder),
        "fold": loaded.fold,
        "reference": "torch eager (checkpoint loaded strictly)",
        "cpu_kind": cpu_kind(),
        "n_patches": int(len(heldout_patches)),
        "n_cases": len(set(groups)),
        "patch_shape": list(heldout_patches.shape[1:]),
        "labels": {str(k): v for k, v in loaded.label_names.items()},
        "variants": results,
        "all_passed": all(r["passed"] for r in results.values()),
    }
    if selfcheck_out is not None:
        record["selfcheck"] = _selfcheck(loaded, heldout_patches, reference, groups, variants, tolerances,
                                         results, Path(selfcheck_out), {**SELFCHECK_DEFAULTS, **(selfcheck or {})},
                                         threads)
    return record


def _selfcheck(loaded, heldout: np.ndarray, reference: np.ndarray, groups: list[str],
               variants: dict[str, dict[str, str]], tolerances: dict[str, dict[str, Any]],
               results: dict[str, Any], out: Path, settings: dict[str, Any], threads: int) -> dict[str, Any]:
    """Write the self-check set and measure each ONNX variant that ran on it (its bounds in
    ``nnbridge verify`` are no lower than these)."""
    classes = label_classes(loaded.label_names, loaded.region_based, reference.shape[1])
    names = [loaded.label_names.get(c, str(c)) for c in classes]
    values, cases, record = build_selfcheck(
        lambda x: run_torch(loaded.network, x), heldout, reference, groups, classes, loaded.region_based, out,
        patches=int(settings["patches"]), max_kb=float(settings["max_kb"]), multiple=tuple(loaded.stride_multiple),
        dynamic="spatial" in loaded.dynamic_axes)
    with np.load(out) as archive:
        labels = archive["labels"]
    measured = {}
    for name, variant in variants.items():
        if variant["kind"] != "onnx" or "skipped" in results[name] or "dice" not in results[name]:
            continue
        min_voxels = Tolerance.from_config(tolerances.get(name)).case_gate[1]
        logits = run_variant("onnx", Path(variant["path"]), values, threads, variant.get("backend", "onnxruntime"))
        counts = overlap_counts(labels, to_labels(logits, loaded.region_based), classes, loaded.region_based)
        pooled = {n: round(float(d), 6) for n, d in zip(names, dice_of(counts.sum(axis=0)))}
        per_case = case_dice(counts, cases, names, min_voxels=min_voxels)
        measured[name] = {"dice": pooled, "min_dice": min(pooled.values()) if pooled else 1.0,
                          "min_case_dice": per_case["min_case_dice"]}
    record["variants"] = measured
    return record
