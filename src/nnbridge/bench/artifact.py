"""The speed of one artifact of a model — torch eager, TorchScript, or one ONNX variant on every
runtime — measured once, on the model's reference fold (its first).

The folds of a model share their architecture, so an artifact's speed is the same for every fold
whose graph is the same (:func:`nnbridge.core.onnxgraph.graph_signature`): the per-fold benchmark
(:mod:`nnbridge.bench.fold`) reuses these numbers and times only what differs in its own fold
(an OpenVINO IR's signature is read off its ``.xml``: :func:`nnbridge.core.irgraph.ir_signature`).
ONNX Runtime's session settings are searched here (``tune``) and the thread and batch sweep runs
here (``sweep``): once per machine and architecture, not once per fold.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..core.artifacts import verify_variant_files
from ..core.cpu import cpu_identity
from ..core.graphs import graph_signature
from ..core.metadata import read_metadata
from .measure import benchmark_variants
from .peak import peak_for_this_machine
from .sweep import sweep, tune_onnxruntime

TORCH_EAGER = "torch_eager"


def input_shape_of(onnx_file: str | Path) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """(batch-1 input shape of one training patch, dynamic axes) from an nnbridge export's
    metadata: no model needs loading to know what to time."""
    meta = read_metadata(Path(onnx_file))
    if "patch_size" not in meta:
        raise ValueError(f"{onnx_file}: no nnbridge metadata; benchmark an nnbridge export")
    shape = (1, int(meta["num_input_channels"]), *json.loads(meta["patch_size"]))
    return shape, tuple(json.loads(meta.get("dynamic_axes", '["batch", "spatial"]')))


def artifact_specs(artifact: str, source: dict[str, Any], variants: dict[str, dict[str, str]]) -> dict[str, dict[str, Any]]:
    """Result key → what :func:`nnbridge.bench.measure.measure` runs: torch eager from the
    checkpoint, or each (artifact, runtime) of ``variants`` (:func:`nnbridge.pipeline.plan.fold_variants`
    entries of this artifact)."""
    if artifact == TORCH_EAGER:
        return {TORCH_EAGER: {"backend": "torch", "source": dict(source)}}
    return {key: {"backend": v.get("backend") or ("torchscript" if v["kind"] == "torchscript" else "onnxruntime"),
                  "path": v["path"]} for key, v in variants.items()}


def benchmark_artifact(artifact: str, source: dict[str, Any], variants: dict[str, dict[str, str]],
                       shape_from: str | Path, *, threads: int, warmup: int, repeats: int,
                       stop: dict[str, Any] | None = None, tune: list[str] | tuple[str, ...] = (),
                       sweep_keys: list[str] | tuple[str, ...] = (), sweep_batch: int = 2,
                       peak: dict[str, Any] | None = None) -> dict[str, Any]:
    """Time ``artifact`` of the reference fold on each of its runtimes, each in its own process
    (``stop``: when timing stops, :class:`nnbridge.runtime.timing.StopRule` fields; ``repeats``
    is its maximum). The ONNX Runtime keys in ``tune`` first get their session settings searched;
    the keys in ``sweep_keys`` are then timed at 1..``threads`` threads and at ``sweep_batch``."""
    verify_variant_files(variants)  # each file is what its stage wrote (sha256 in its record)
    shape, dynamic_axes = input_shape_of(shape_from)
    if "batch" not in dynamic_axes:
        sweep_batch = 1  # a fixed-batch export runs batch 1 only
    specs = artifact_specs(artifact, source, variants)
    for spec in specs.values():
        if stop is not None:
            spec["stop"] = dict(stop)
    tuning = {}
    for key in tune:
        if key in specs and specs[key]["backend"] == "onnxruntime":
            print(f"nnbridge: {artifact}: searching ONNX Runtime settings for {key}", flush=True)
            tuning[key] = tune_onnxruntime(specs[key], shape, threads, min(warmup, 2), max(5, repeats // 2))
            specs[key]["settings"] = tuning[key]["chosen"]
    print(f"nnbridge: {artifact}: timing {', '.join(specs)} at {list(shape)}", flush=True)
    record = benchmark_variants(specs, shape, threads, warmup, repeats, baseline=None)
    for key, result in tuning.items():
        record["results"][key]["ort_settings"] = result["chosen"]
    signature = None
    files = [v["path"] for v in variants.values() if v.get("kind") in ("onnx", "ir") and Path(v["path"]).is_file()]
    if files:
        signature = graph_signature(files[0])
    record.update({
        "artifact": artifact, "fold": str(source.get("fold")), "signature": signature,
        "architecture": graph_signature(shape_from), "tuning": tuning, "stop": stop,
        "peak": peak_for_this_machine(peak, threads), "machine": cpu_identity(),
        "specs": {k: {kk: vv for kk, vv in s.items() if kk in ("backend", "path", "settings")} for k, s in specs.items()},
    })
    keys = [k for k in sweep_keys if k in specs]
    if keys:
        print(f"nnbridge: {artifact}: thread/batch sweep of {', '.join(keys)}", flush=True)
        record["sweep"] = sweep(specs, keys, tuple(shape), threads, sweep_batch, min(warmup, 1), max(3, repeats // 4))
    return record
