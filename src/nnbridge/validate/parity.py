"""Patch parity: every variant of a fold against eager PyTorch on the held-out patches.

The reference — eager PyTorch's logits on the held-out patches — is computed once per fold
(:func:`reference_logits`, its own stage) and kept; each variant is then run and compared with it
(:func:`validate_fold`). A variant's result is kept in a cache keyed by everything it depends on
(the file's sha256, runtime, gate, the reference, threads, the code and the CPU kind), so that
when one variant changes (a quantization setting) the others are not run again.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..core.cpu import cpu_identity
from ..core.runlog import read_json, sha256_file, write_json
from ..models.loader import load_model
from ..runtime import run_variant
from ..runtime.ov import PrecisionUnavailable
from ..runtime.torchrun import run_torch
from .metrics import Tolerance, validate_variant


def reference_logits(source: dict[str, Any], heldout_patches: np.ndarray, logits_path: Path) -> dict[str, Any]:
    """Eager PyTorch's logits of the model ``source`` describes (:func:`nnbridge.models.loader.load_model`)
    on the held-out patches, written to ``logits_path`` (``.npy``, float32); returns the record
    the variants are compared against (labels, region-based flag, the file's sha256)."""
    loaded = load_model(source)
    print(f"nnbridge: reference: torch eager on {len(heldout_patches)} held-out patches", flush=True)
    logits = run_torch(loaded.network, heldout_patches)
    logits_path = Path(logits_path)
    logits_path.parent.mkdir(parents=True, exist_ok=True)
    np.save(logits_path, logits.astype(np.float32))
    return {
        "model_folder": str(loaded.model_folder), "fold": loaded.fold,
        "reference": "torch eager (checkpoint loaded strictly)", "logits": str(logits_path),
        "sha256": sha256_file(logits_path), "n_patches": int(len(heldout_patches)),
        "patch_shape": list(heldout_patches.shape[1:]),
        "labels": {str(k): v for k, v in loaded.label_names.items()}, "region_based": bool(loaded.region_based),
    }


def _cache_key(name: str, variant: dict[str, Any], tol: Tolerance, reference: dict[str, Any], threads: int,
               salt: str) -> str:
    """Everything a variant's parity result depends on."""
    machine = {k: v for k, v in cpu_identity().items() if k != "host"}
    parts = {"name": name, "path": str(variant["path"]), "file": sha256_file(variant["path"]) if Path(variant["path"]).is_file() else None,
             "kind": variant["kind"], "backend": variant.get("backend", "onnxruntime"), "gate": tol.to_dict(),
             "reference": reference["sha256"], "threads": threads, "code": salt, "machine": machine}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


def validate_fold(
    reference: dict[str, Any],
    heldout_patches: np.ndarray,
    variants: dict[str, dict[str, str]],
    tolerances: dict[str, dict[str, Any]],
    threads: int = 0,
    cache_dir: Path | None = None,
    cache_salt: str = "",
) -> dict[str, Any]:
    """Gate every variant (``{name: {"kind": "onnx"|"torchscript", "path": ..., "backend": ...}}``)
    against the reference (:func:`reference_logits`) on the held-out patches. A failing variant
    is recorded, never raised. With ``cache_dir``, a variant whose inputs are unchanged since an
    earlier run (``cache_salt``: the code's version) reuses that run's result."""
    ref = np.load(reference["logits"])
    if sha256_file(reference["logits"]) != reference["sha256"]:
        raise ValueError(f"{reference['logits']}: differs from the reference record's sha256; rerun the reference")
    labels = {int(k): v for k, v in reference["labels"].items()}
    results: dict[str, Any] = {}
    for index, (name, variant) in enumerate(variants.items(), 1):
        tol = Tolerance.from_config(tolerances.get(name))
        cached = Path(cache_dir) / f"{_cache_key(name, variant, tol, reference, threads, cache_salt)}.json" if cache_dir else None
        if cached is not None and cached.is_file():
            results[name] = {**read_json(cached), "from_cache": True}
            print(f"nnbridge: validate {index}/{len(variants)}: {name}: unchanged, result reused", flush=True)
            continue
        print(f"nnbridge: validate {index}/{len(variants)}: {name} on {len(heldout_patches)} patches", flush=True)
        try:
            logits = run_variant(variant["kind"], Path(variant["path"]), heldout_patches, threads,
                                 variant.get("backend", "onnxruntime"))
            results[name] = validate_variant(ref, logits, labels, tol, reference["region_based"])
        except PrecisionUnavailable as exc:  # a bf16 variant on a CPU without bf16: not run, not passed
            results[name] = {"passed": False, "skipped": str(exc), "tolerance": tol.to_dict(),
                             "failures": [f"skipped: {exc}"]}
        except Exception as exc:  # noqa: BLE001 - a broken variant fails its gate, others go on
            results[name] = {"passed": False, "tolerance": tol.to_dict(),
                             "failures": [f"could not run: {type(exc).__name__}: {exc}"[:500]]}
        results[name]["path"] = variant["path"]
        results[name]["kind"] = variant["kind"]
        results[name]["backend"] = variant.get("backend", "onnxruntime")
        if cached is not None and "could not run" not in " ".join(results[name].get("failures", [])):
            write_json(cached, results[name])
    return {
        "model_folder": reference["model_folder"],
        "fold": reference["fold"],
        "reference": reference["reference"],
        "n_patches": int(len(heldout_patches)),
        "patch_shape": list(heldout_patches.shape[1:]),
        "labels": reference["labels"],
        "variants": results,
        "all_passed": all(r["passed"] for r in results.values()),
    }


def validate_source(source: dict[str, Any], heldout_patches: np.ndarray, variants: dict[str, dict[str, str]],
                    tolerances: dict[str, dict[str, Any]], threads: int = 0) -> dict[str, Any]:
    """:func:`reference_logits` then :func:`validate_fold`, in one call without a cache (for
    library use; the workflow keeps the reference as its own stage)."""
    with tempfile.TemporaryDirectory(prefix="nnbridge-reference-") as tmp:
        reference = reference_logits(source, heldout_patches, Path(tmp) / "reference.npy")
        return validate_fold(reference, heldout_patches, variants, tolerances, threads)
