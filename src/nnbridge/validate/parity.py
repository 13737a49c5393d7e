"""Patch parity: every variant of a fold against eager PyTorch on the held-out patches."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..core.runlog import verify_variant_files
from ..models.loader import load_model
from ..runtime import run_variant
from ..runtime.ov import PrecisionUnavailable
from ..runtime.torchrun import run_torch
from .metrics import Tolerance, validate_variant


def validate_fold(
    source: dict[str, Any],
    heldout_patches: np.ndarray,
    variants: dict[str, dict[str, str]],
    tolerances: dict[str, dict[str, Any]],
    threads: int = 0,
) -> dict[str, Any]:
    """Gate every variant (``{name: {"kind": "onnx"|"torchscript", "path": ...}}``) against eager
    PyTorch (the model ``source`` describes, see :func:`nnbridge.models.load_model`) on held-out
    patches. A failing variant is recorded, never raised."""


    verify_variant_files(variants)  # each file is what its stage wrote (sha256 in its record)
    loaded = load_model(source)
    reference = run_torch(loaded.network, heldout_patches)
    results: dict[str, Any] = {}
    for name, variant in variants.items():
        tol = Tolerance.from_config(tolerances.get(name))
        try:
            logits = run_variant(variant["kind"], Path(variant["path"]), heldout_patches, threads,
                                 variant.get("backend", "onnxruntime"))
            results[name] = validate_variant(reference, logits, loaded.label_names, tol,
                                             loaded.region_based)
        except PrecisionUnavailable as exc:  # a bf16 variant on a CPU without bf16: not run, not passed
            results[name] = {"passed": False, "skipped": str(exc), "tolerance": tol.to_dict(),
                             "failures": [f"skipped: {exc}"]}
        except Exception as exc:  # noqa: BLE001 - a broken variant fails its gate, others go on
            results[name] = {"passed": False, "tolerance": tol.to_dict(),
                             "failures": [f"could not run: {type(exc).__name__}: {exc}"[:500]]}
        results[name]["path"] = variant["path"]
        results[name]["kind"] = variant["kind"]
        results[name]["backend"] = variant.get("backend", "onnxruntime")
    return {
        "model_folder": str(loaded.model_folder),
        "fold": loaded.fold,
        "reference": "torch eager (checkpoint loaded strictly)",
        "n_patches": int(len(heldout_patches)),
        "patch_shape": list(heldout_patches.shape[1:]),
        "labels": {str(k): v for k, v in loaded.label_names.items()},
        "variants": results,
        "all_passed": all(r["passed"] for r in results.values()),
    }
