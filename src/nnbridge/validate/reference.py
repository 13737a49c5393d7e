"""The reference of patch parity: eager PyTorch's logits on a fold's held-out patches, and the
self-check set the bundle ships for ``nnbridge verify`` (:mod:`.selfcheck`), computed once per
fold by its own stage (the validate stage compares every variant with them without torch:
:mod:`.parity`)."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..core.dice import label_classes
from ..core.runlog import sha256_file
from ..models.loader import load_model
from ..runtime.torchrun import run_torch, set_torch_threads
from .parity import validate_fold
from .selfcheck import build_selfcheck

SELFCHECK_DEFAULTS = {"patches": 4, "max_kb": 128}


def reference_logits(source: dict[str, Any], heldout_patches: np.ndarray, logits_path: Path, *,
                     groups: Sequence[str] | None = None, selfcheck_out: Path | None = None,
                     selfcheck: dict[str, Any] | None = None, threads: int = 0) -> dict[str, Any]:
    """Eager PyTorch's logits of the model ``source`` describes (:func:`nnbridge.models.loader.load_model`)
    on the held-out patches, written to ``logits_path`` (``.npy``, float32), and with
    ``selfcheck_out`` the fold's self-check set (``selfcheck``: ``patches``, ``max_kb``;
    :func:`.selfcheck.build_selfcheck`); returns the record the variants are compared against.
    ``groups``: the held-out case of each patch (default: each patch its own). ``threads``:
    torch's intra-op threads (0: its default); the logits differ between thread counts only in
    the order of fp32 sums."""
    set_torch_threads(threads)
    loaded = load_model(source)
    groups = [str(g) for g in groups] if groups is not None else [f"patch_{i}" for i in range(len(heldout_patches))]
    print(f"nnbridge: reference: torch eager on {len(heldout_patches)} held-out patches", flush=True)
    logits = run_torch(loaded.network, heldout_patches, progress="reference")
    logits_path = Path(logits_path)
    logits_path.parent.mkdir(parents=True, exist_ok=True)
    np.save(logits_path, logits.astype(np.float32))
    record: dict[str, Any] = {
        "model_folder": str(loaded.model_folder), "fold": loaded.fold,
        "reference": "torch eager (checkpoint loaded strictly)", "logits": str(logits_path),
        "sha256": sha256_file(logits_path), "n_patches": int(len(heldout_patches)), "groups": groups,
        "patch_shape": list(heldout_patches.shape[1:]),
        "labels": {str(k): v for k, v in loaded.label_names.items()}, "region_based": bool(loaded.region_based),
    }
    if selfcheck_out is not None:
        settings = {**SELFCHECK_DEFAULTS, **(selfcheck or {})}
        classes = label_classes(loaded.label_names, loaded.region_based, logits.shape[1])
        _, _, built = build_selfcheck(
            lambda x: run_torch(loaded.network, x), heldout_patches, logits, groups, classes, loaded.region_based,
            Path(selfcheck_out), patches=int(settings["patches"]), max_kb=float(settings["max_kb"]),
            multiple=tuple(loaded.stride_multiple), dynamic="spatial" in loaded.dynamic_axes)
        record["selfcheck"] = {**built, "sha256": sha256_file(selfcheck_out)}
    return record


def validate_source(source: dict[str, Any], heldout_patches: np.ndarray, variants: dict[str, dict[str, str]],
                    tolerances: dict[str, dict[str, Any]], threads: int = 0, *,
                    groups: Sequence[str] | None = None, selfcheck_out: Path | None = None,
                    selfcheck: dict[str, Any] | None = None) -> dict[str, Any]:
    """:func:`reference_logits` then :func:`validate_fold`, in one call without a cache (for
    library use; the workflow keeps the reference as its own stage)."""
    with tempfile.TemporaryDirectory(prefix="nnbridge-reference-") as tmp:
        reference = reference_logits(source, heldout_patches, Path(tmp) / "reference.npy", groups=groups,
                                     selfcheck_out=selfcheck_out, selfcheck=selfcheck)
        return validate_fold(reference, heldout_patches, variants, tolerances, threads)
