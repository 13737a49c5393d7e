"""The benchmark of one fold: torch eager and every variant on every runtime, each in its own process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx

from ..core.cpu import cpu_identity
from ..core.onnxgraph import compute_node_flops
from ..core.runlog import verify_variant_files
from ..models.loader import load_model
from .accelerators import accelerator_status
from .measure import benchmark_variants
from .peak import add_throughput, peak_for_this_machine, peak_kinds
from .sweep import sweep, tune_onnxruntime


def benchmark_fold(source: dict[str, Any],
                   variants: dict[str, dict[str, str]], *, threads: int, warmup: int,
                   repeats: int, sweep_variants: list[str] | tuple[str, ...] = (),
                   sweep_batch: int = 2, tune: list[str] | tuple[str, ...] = (),
                   peak: dict[str, Any] | None = None) -> dict[str, Any]:
    """Torch eager (the baseline) and every variant of a fold, at the fold's patch size; the ONNX
    Runtime variants named in ``tune`` first get their session settings searched (the timed run
    then uses the chosen ones); then a thread and batch sweep of ``sweep_variants``. ``peak``: the
    machine's peaks (:func:`measure_peak_gflops`, measured once per run by the workflow so every
    fold's "% of peak" refers to the same number); used if it came from this kind of CPU, else
    measured here (:func:`peak_for_this_machine`)."""

    verify_variant_files(variants)  # each file is what its stage wrote (sha256 in its record)
    loaded = load_model(source)
    shape = loaded.input_shape
    if "batch" not in loaded.dynamic_axes:
        sweep_batch = 1  # a fixed-batch export runs batch 1 only
    specs: dict[str, dict[str, Any]] = {"torch_eager": {"backend": "torch", "source": dict(source)}}
    for name, variant in variants.items():
        backend = variant.get("backend") or ("torchscript" if variant["kind"] == "torchscript" else "onnxruntime")
        specs[name] = {"backend": backend, "path": variant["path"]}
    tuning = {}
    for name in tune:
        if name in specs and specs[name]["backend"] == "onnxruntime":
            tuning[name] = tune_onnxruntime(specs[name], shape, threads, min(warmup, 2), max(5, repeats // 2))
            specs[name]["settings"] = tuning[name]["chosen"]
    record = benchmark_variants(specs, shape, threads, warmup, repeats)
    for name, result in tuning.items():
        record["results"][name]["ort_settings"] = result["chosen"]
    record.update({"model_folder": str(loaded.model_folder), "fold": loaded.fold, "tuning": tuning})
    if sweep_variants:
        record["sweep"] = sweep(specs, sweep_variants, tuple(shape), threads, sweep_batch,
                                min(warmup, 1), max(3, repeats // 4))
    record["peak"] = peak_for_this_machine(peak, threads)
    record["machine"] = cpu_identity()
    record["accelerators"] = accelerator_status()
    reference = next((v["path"] for v in variants.values() if v["kind"] == "onnx"
                      and Path(v["path"]).is_file()), None)
    if reference:


        flops = sum(n["flops"] for n in compute_node_flops(onnx.load(reference, load_external_data=False),
                                                          tuple(shape)).values())
        add_throughput(record, flops, record["peak"], peak_kinds(specs))
    return record
