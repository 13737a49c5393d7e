"""The benchmark record of one fold, assembled from the model's per-artifact measurements
(:mod:`nnbridge.bench.artifact`): an artifact whose graph is the reference fold's takes its
numbers; one whose graph differs in this fold (e.g. accuracy-aware INT8 that kept other blocks in
fp32) is timed here, with the same settings. Speed-ups are against the model's torch eager time,
throughput against the machine's measured peaks; ``timed_on`` says where each number comes from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx

from ..core.artifacts import verify_variant_files
from ..core.cpu import cpu_identity
from ..core.graphs import graph_signature
from ..core.onnxgraph import compute_node_flops
from ..core.keys import Variant
from .accelerators import accelerator_status
from .artifact import TORCH_EAGER, artifact_specs, input_shape_of
from .measure import benchmark_variants
from .peak import add_throughput, peak_for_this_machine, peak_kinds, with_adjacent_peaks

BASELINE = TORCH_EAGER


def _artifact_of(key: str) -> str:
    return TORCH_EAGER if key == TORCH_EAGER else Variant.parse(key).name


def benchmark_fold(source: dict[str, Any], variants: dict[str, dict[str, str]],
                   artifacts: dict[str, dict[str, Any]], *, threads: int, warmup: int, repeats: int,
                   stop: dict[str, Any] | None = None, peak: dict[str, Any] | None = None,
                   export: str | None = None) -> dict[str, Any]:
    """Torch eager and every variant of a fold (``variants``: :func:`nnbridge.pipeline.plan.fold_variants`),
    from ``artifacts`` (artifact name → its :func:`nnbridge.bench.artifact.benchmark_artifact`
    record) where this fold's graph is the measured one, else timed here. ``export``: the fold's
    ONNX export, whose input shape and architecture are compared with the reference fold's
    (default the ``onnx_fp32`` variant's file: a fold that is not the reference has no such variant
    with ``comparison.folds: reference``)."""
    verify_variant_files(variants)  # each file is what its stage wrote (sha256 in its record)
    fp32 = export or variants["onnx_fp32"]["path"]
    shape, _ = input_shape_of(fp32)
    architecture = graph_signature(fp32)
    same_arch = all(a.get("architecture") == architecture for a in artifacts.values())
    results: dict[str, Any] = {}
    timed_on: dict[str, str] = {}
    own: dict[str, dict[str, Any]] = {}
    keys = [BASELINE, *variants]
    for key in keys:
        record = artifacts[_artifact_of(key)]
        ref_fold = record.get("fold")
        shared = same_arch and (key == BASELINE or variants[key]["kind"] == "torchscript"
                                or graph_signature(variants[key]["path"]) == record.get("signature"))
        if shared and key in record["results"]:
            results[key] = dict(record["results"][key])
            timed_on[key] = ("this fold" if ref_fold == str(source.get("fold")) else
                             f"fold {ref_fold} (the same graph)")
            if results[key].get("timed_as"):  # an artifact whose graph is another's took its timing
                timed_on[key] += f", as {results[key]['timed_as']} (the same graph)"
        else:
            spec = artifact_specs(_artifact_of(key), source, {key: variants[key]} if key in variants else {})[key]
            settings = (record.get("specs", {}).get(key) or {}).get("settings")
            if settings:
                spec["settings"] = settings
            if stop is not None:
                spec["stop"] = dict(stop)
            own[key] = spec
            timed_on[key] = (f"this fold (its graph differs from fold {ref_fold}'s)" if same_arch else
                             "this fold (its architecture differs from the reference fold's)")
    if own:
        print(f"nnbridge: fold {source.get('fold')}: timing {', '.join(own)} (graphs of this fold)", flush=True)
        measured = benchmark_variants(with_adjacent_peaks(own), shape, threads, warmup, repeats,
                                      baseline=None)["results"]
        results.update(measured)
    base = (results.get(BASELINE) or {}).get("p50_ms")
    for result in results.values():
        if base and "p50_ms" in result:
            result[f"speedup_vs_{BASELINE}"] = round(base / result["p50_ms"], 3)
    tuning = {k: t for a in artifacts.values() for k, t in (a.get("tuning") or {}).items() if k in variants}
    for key, tune in tuning.items():
        if key in results and "p50_ms" in results[key]:
            results[key]["ort_settings"] = tune["chosen"]
    sweeps = [a["sweep"] for a in artifacts.values() if a.get("sweep")]
    record: dict[str, Any] = {
        "shape": list(shape), "threads": threads, "warmup": warmup, "repeats": repeats, "stop": stop,
        "baseline": BASELINE, "results": {k: results[k] for k in keys if k in results},
        "timed_on": timed_on, "model_folder": str(source.get("folder") or Path(source.get("checkpoint", "")).parent),
        "fold": str(source.get("fold")), "tuning": tuning,
    }
    if sweeps:
        record["sweep"] = {"threads": sweeps[0]["threads"], "batch": sweeps[0]["batch"],
                           "results": {k: v for s in sweeps for k, v in s["results"].items()},
                           **({"skipped": {k: v for s in sweeps for k, v in (s.get("skipped") or {}).items()}}
                              if any(s.get("skipped") for s in sweeps) else {})}
    machines = {str(a.get("machine")) for a in artifacts.values()}
    reference = artifacts.get(BASELINE) or next(iter(artifacts.values()))
    record["peak"] = reference.get("peak") if not own else peak_for_this_machine(peak, threads)
    record["machine"] = reference.get("machine") if not own else cpu_identity()
    if len(machines) > 1:
        record["machines_differ"] = sorted(machines)
    record["accelerators"] = accelerator_status()
    flops = sum(n["flops"] for n in compute_node_flops(onnx.load(fp32, load_external_data=False), tuple(shape)).values())
    specs = {k: {"backend": v["backend"], "path": v["path"]} for k, v in variants.items()}
    add_throughput(record, flops, record["peak"] or {}, peak_kinds(specs))
    return record
