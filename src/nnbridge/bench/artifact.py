"""The speed of one artifact of a model — torch eager, TorchScript, or one ONNX variant on every
runtime — measured once, on the model's reference fold (its first).

The folds of a model share their architecture, so an artifact's speed is the same for every fold
whose graph is the same (:func:`nnbridge.core.onnxgraph.graph_signature`): the per-fold benchmark
(:mod:`nnbridge.bench.fold`) reuses these numbers and times only what differs in its own fold
(an OpenVINO IR's signature is read off its ``.xml``: :func:`nnbridge.core.irgraph.ir_signature`).
ONNX Runtime's session settings are searched here (``tune``) and the thread and batch sweep runs
here (``sweep``): once per machine and architecture, not once per fold.

An artifact whose graph is another's (``onnx_fp32`` when simplifying changed nothing in it, as
for most nnU-Net exports) takes that artifact's numbers instead of being timed again
(``same_graph``): the same operators on the same shapes run at the same speed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..core.artifacts import artifact_size, verify_variant_files
from ..core.cpu import cpu_identity
from ..core.graphs import graph_signature
from ..core.metadata import read_metadata
from .measure import benchmark_variants
from .peak import peak_for_this_machine, with_adjacent_peaks
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
                       peak: dict[str, Any] | None = None,
                       same_graph: dict[str, Any] | None = None) -> dict[str, Any]:
    """Time ``artifact`` of the reference fold on each of its runtimes, each in its own process
    (``stop``: when timing stops, :class:`nnbridge.runtime.timing.StopRule` fields; ``repeats``
    is its maximum). The ONNX Runtime keys in ``tune`` first get their session settings searched;
    the keys in ``sweep_keys`` are then timed at 1..``threads`` threads and at ``sweep_batch``.
    ``same_graph``: another artifact's record (``onnx_simplified``'s for ``onnx_fp32``), whose
    numbers this artifact takes when its graph is that one (:func:`reuse_same_graph`)."""
    verify_variant_files(variants)  # each file is what its stage wrote (sha256 in its record)
    if same_graph is not None:
        reused = reuse_same_graph(artifact, variants, same_graph, threads=threads, tune=tune,
                                  sweep_keys=sweep_keys)
        if isinstance(reused, dict):
            print(f"nnbridge: {artifact}: {reused['reused']}", flush=True)
            return reused
        print(f"nnbridge: {artifact}: timed itself: {reused}", flush=True)
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
    record = benchmark_variants(with_adjacent_peaks(specs), shape, threads, warmup, repeats, baseline=None)
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
        record["sweep"] = sweep(specs, keys, tuple(shape), threads, sweep_batch, min(warmup, 1), max(3, repeats // 4),
                                measured={k: record["results"].get(k, {}).get("p50_ms") for k in keys})
    return record


def reuse_same_graph(artifact: str, variants: dict[str, dict[str, str]], other: dict[str, Any], *,
                     threads: int, tune: list[str] | tuple[str, ...] = (),
                     sweep_keys: list[str] | tuple[str, ...] = ()) -> dict[str, Any] | str:
    """``other`` (a :func:`benchmark_artifact` record) as this artifact's record, its result keys
    renamed (``onnx_simplified@openvino`` → ``onnx_fp32@openvino``), when this artifact's graph
    has ``other``'s signature and ``other`` timed, on this CPU at these threads, every runtime,
    settings search and sweep asked for here; else why not (then this artifact is timed itself).
    Each result says where it comes from (``timed_as``)."""
    name = other.get("artifact")
    if not name or name == artifact:
        return "no other artifact's record"

    def theirs(key: str) -> str:
        return name + key[len(artifact):]

    signatures = {graph_signature(v["path"]) for v in variants.values() if v.get("kind") in ("onnx", "ir")}
    if len(signatures) != 1:
        return "not one graph file"
    signature = signatures.pop()
    if signature != other.get("signature"):
        return f"its graph differs from {name}'s"
    if other.get("machine") != cpu_identity():
        return f"{name} was timed on another CPU"
    results = other.get("results") or {}
    for key in variants:
        got = results.get(theirs(key)) or {}
        if "p50_ms" not in got or got.get("threads") != threads:
            return f"{name} has no timing of {theirs(key)} at {threads} thread(s)"
    for key in tune:
        if key in variants and theirs(key) not in (other.get("tuning") or {}):
            return f"{name} had no settings search for {theirs(key)}"
    swept = (other.get("sweep") or {}).get("results") or {}
    for key in sweep_keys:
        if key in variants and theirs(key) not in swept:
            return f"{name} had no thread/batch sweep of {theirs(key)}"
    note = f"the same graph as {name} (signature {signature}): its timing"
    record = dict(other)
    record.update({
        "artifact": artifact, "reused": note,
        "results": {key: {**results[theirs(key)], "timed_as": theirs(key),
                          "file_size_bytes": artifact_size(variants[key]["path"])} for key in variants},
        # the settings search and sweep asked for here (the results keep the settings they ran with)
        "tuning": {key: other["tuning"][theirs(key)] for key in tune if key in variants},
        "specs": {key: {**(other.get("specs") or {}).get(theirs(key), {}), "path": variants[key]["path"]}
                  for key in variants},
    })
    record.pop("sweep", None)
    keys = [key for key in sweep_keys if key in variants]
    if keys:
        record["sweep"] = {**other["sweep"], "results": {key: swept[theirs(key)] for key in keys}}
        record["sweep"].pop("skipped", None)
    return record
