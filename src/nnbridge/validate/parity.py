"""Patch parity: every variant of a fold against eager PyTorch on the held-out patches, gated per
class pooled over the patches and, where the gate asks for it (``min_case_dice``), per class per
held-out case (the worst case counts); recorded with the CPU kind it was measured on.

The reference — eager PyTorch's logits on the held-out patches, and the self-check set the
bundle ships for ``nnbridge verify`` (:mod:`.selfcheck`) — is computed once per fold
(:func:`.reference.reference_logits`, its own stage) and kept; each variant is then run and compared with it
(:func:`validate_fold`). A variant's result is kept in a cache keyed by everything it depends on
(the file's sha256, runtime, gate, the reference, threads, the code and the CPU kind), so that
when one variant changes (a quantization setting) the others are not run again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..core.artifacts import artifact_sha256, verify_variant_files
from ..core.cpu import cpu_kind
from ..core.dice import case_dice, dice_of, label_classes, overlap_counts, to_labels
from ..core.runlog import json_digest, read_json, sha256_file, write_json
from ..predict.verify import read_selfcheck
from ..runtime import make_runner, run_patches, run_variant
from ..runtime.ov import PrecisionUnavailable
from .metrics import Tolerance, certain_failures, validate_variant

def _cache_key(name: str, variant: dict[str, Any], tol: Tolerance, reference: dict[str, Any], threads: int,
               salt: str) -> str:
    """Everything a variant's parity result depends on."""
    parts = {"name": name, "path": str(variant["path"]),
             "file": artifact_sha256(variant["path"]) if Path(variant["path"]).is_file() else None,
             "kind": variant["kind"], "backend": variant.get("backend", "onnxruntime"), "gate": tol.to_dict(),
             "reference": reference["sha256"], "selfcheck": (reference.get("selfcheck") or {}).get("sha256"),
             "threads": threads, "code": salt, "machine": cpu_kind()}
    return json_digest(parts)


def _on_selfcheck(reference: dict[str, Any], variant: dict[str, Any], tol: Tolerance, threads: int) -> dict[str, Any]:
    """A variant's Dice on the fold's self-check set (its bounds in ``nnbridge verify`` are no
    lower than these)."""
    labels_by_class = {int(k): v for k, v in reference["labels"].items()}
    region_based = reference["region_based"]
    values, labels, cases = read_selfcheck(Path(reference["selfcheck"]["file"]))
    logits = run_variant(variant["kind"], Path(variant["path"]), values, threads, variant.get("backend", "onnxruntime"))
    classes = label_classes(labels_by_class, region_based, logits.shape[1])
    names = [labels_by_class.get(c, str(c)) for c in classes]
    counts = overlap_counts(labels, to_labels(logits, region_based), classes, region_based)
    pooled = {n: round(float(d), 6) for n, d in zip(names, dice_of(counts.sum(axis=0)))}
    per_case = case_dice(counts, cases, names, min_voxels=tol.case_gate[1])
    return {"dice": pooled, "min_dice": min(pooled.values()) if pooled else 1.0,
            "min_case_dice": per_case["min_case_dice"]}


EARLY_PATCHES = 2  # an exact variant is decided on this many patches when far inside its gate
EARLY_MARGIN = 0.1  # ... its errors within this share of their bounds and its label maps identical


def _decided_early(metrics: dict[str, Any], tol: Tolerance) -> bool:
    """Whether a variant's result on the first patches already decides its gate: a gate that
    bounds the logits' error (an exact variant's), every bounded error within
    :data:`EARLY_MARGIN` of its bound, and label maps identical to the reference's."""
    bounds = [(metrics.get(k), getattr(tol, k)) for k in ("max_abs_err", "max_rel_err", "mean_abs_err")
              if getattr(tol, k) is not None]
    return (bool(bounds) and metrics.get("passed", False) and metrics.get("voxel_agreement") == 1.0
            and all(v is not None and np.isfinite(v) and v <= EARLY_MARGIN * b for v, b in bounds))


def _gate_variant(variant: dict[str, Any], heldout: np.ndarray, ref: np.ndarray, labels: dict[int, str],
                  tol: Tolerance, region_based: bool, groups: list[str], threads: int) -> dict[str, Any]:
    """Run a variant on as many held-out patches as its gate needs: the first
    :data:`EARLY_PATCHES`, and the rest only when those do not decide it: an exact variant far
    inside its gate passes there (:func:`_decided_early`), a variant that fails whatever the other
    patches give fails there (:func:`.metrics.certain_failures`, e.g. a class whose Dice stays
    under the bound even if every other patch agreed exactly)."""
    backend = "torchscript" if variant["kind"] == "torchscript" else variant.get("backend", "onnxruntime")
    run = make_runner({"backend": backend, "path": Path(variant["path"])}, threads)  # an IR: on OpenVINO
    n = len(heldout)
    if n <= EARLY_PATCHES:
        return {**validate_variant(ref, run_patches(run, heldout), labels, tol, region_based, groups), "n_patches": n}
    head = run_patches(run, heldout[:EARLY_PATCHES])
    first = validate_variant(ref[:EARLY_PATCHES], head, labels, tol, region_based, groups[:EARLY_PATCHES])
    if _decided_early(first, tol):
        return {**first, "n_patches": EARLY_PATCHES,
                "decided_early": (f"{EARLY_PATCHES} of {n} patches: errors within {EARLY_MARGIN:g} of the "
                                  "gate's bounds and label maps identical to PyTorch's")}
    certain = certain_failures(ref, head, labels, tol, region_based)
    if certain:
        return {**first, "passed": False, "failures": certain, "n_patches": EARLY_PATCHES,
                "decided_early": (f"{EARLY_PATCHES} of {n} patches: fails whatever the other {n - EARLY_PATCHES} "
                                  f"give ({certain[0]})")}
    logits = np.concatenate([head, run_patches(run, heldout[EARLY_PATCHES:])])  # the first ones are not run again
    return {**validate_variant(ref, logits, labels, tol, region_based, groups), "n_patches": n}


def validate_fold(
    reference: dict[str, Any],
    heldout_patches: np.ndarray,
    variants: dict[str, dict[str, str]],
    tolerances: dict[str, dict[str, Any]],
    threads: int = 0,
    *,
    cache_dir: Path | None = None,
    cache_salt: str = "",
) -> dict[str, Any]:
    """Gate every variant (``{name: {"kind": "onnx"|"ir"|"torchscript", "path": ..., "backend": ...}}``)
    against the reference (:func:`.reference.reference_logits`) on the held-out patches, per held-out case
    too (the reference's ``groups``). A failing variant is recorded, never raised. With
    ``cache_dir``, a variant whose inputs are unchanged since an earlier run (``cache_salt``: the
    code's version) reuses that run's result. An exact variant far inside its gate on the first
    patches is decided there (``decided_early``, ``n_patches``). Each deployable variant's (ONNX
    file or OpenVINO IR) Dice on the self-check set is recorded under ``selfcheck``."""
    verify_variant_files(variants)  # each file is what its stage wrote (sha256 in its record)
    ref = np.load(reference["logits"])
    if sha256_file(reference["logits"]) != reference["sha256"]:
        raise ValueError(f"{reference['logits']}: differs from the reference record's sha256; rerun the reference")
    labels = {int(k): v for k, v in reference["labels"].items()}
    groups = reference.get("groups") or [f"patch_{i}" for i in range(len(heldout_patches))]
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
            results[name] = _gate_variant(variant, heldout_patches, ref, labels, tol, reference["region_based"],
                                          list(groups), threads)
            if variant["kind"] != "torchscript" and reference.get("selfcheck"):
                results[name]["selfcheck"] = _on_selfcheck(reference, variant, tol, threads)
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
    record = {
        "model_folder": reference["model_folder"],
        "fold": reference["fold"],
        "reference": reference["reference"],
        "cpu_kind": cpu_kind(),
        "n_patches": int(len(heldout_patches)),
        "n_cases": len(set(groups)),
        "patch_shape": list(heldout_patches.shape[1:]),
        "labels": reference["labels"],
        "variants": results,
        "all_passed": all(r["passed"] for r in results.values()),
    }
    if reference.get("selfcheck"):
        check = {k: v for k, v in reference["selfcheck"].items() if k != "sha256"}
        record["selfcheck"] = {**check, "variants": {n: r["selfcheck"] for n, r in results.items() if "selfcheck" in r}}
    return record

