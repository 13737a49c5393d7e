"""Building the deployable bundle from the pipeline's per-fold results (``nnbridge.predict.bundle``
reads it)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ..bench.sweep import MIN_GAIN
from ..core.artifacts import ARTIFACT_SUFFIXES, artifact_files, artifact_kind
from ..core.errors import NNBridgeError
from ..core.keys import fold_order
from ..core.metadata import inference_precision, read_metadata
from ..core.runlog import read_json, sha256_file
from ..predict.bundle import FORMAT, MANIFEST, refuse_cascade
from ..predict.verify import SELFCHECK_DIR
from ..runtime import ONNX_BACKENDS


SWEPT_GRAPH = "onnx_fp32"  # whose thread/batch sweep stands in for variants not swept themselves


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def choose_backend(gates: dict[str, dict[str, bool]], latency_ms: dict[str, float]) -> str | None:
    """The fastest backend whose gate passed on every fold (``gates``: fold → backend → passed;
    ``latency_ms``: backend → median latency). None when no backend passed everywhere."""
    backends = set.intersection(*(set(b for b, ok in per.items() if ok) for per in gates.values())) if gates else set()
    if not backends:
        return None
    return min(sorted(backends), key=lambda b: latency_ms.get(b, float("inf")))


def write_bundle(
    out_dir: Path,
    *,
    plans_file: Path,
    dataset_file: Path,
    info: dict[str, Any],
    variants: dict[str, dict[str, Any]],
    default_variant: str,
    selfcheck: dict[str, Path] | None = None,
    gated_on: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Assemble a bundle. ``variants``: name → {"files": {fold: ONNX file or IR .xml}, "gates": {fold: {backend:
    passed}}, "latency_ms": {backend: p50}, "ort_settings": tuned ONNX Runtime settings,
    "run_settings": {backend: threads and batch size, see :func:`run_settings`}, "recheck":
    {fold: {backend: {"tolerance", "at_gate"}}} for ``nnbridge verify``}. ``info``:
    configuration, patch size, mirror axes… ``selfcheck``: fold → the validate stage's
    self-check set (shipped as ``selfcheck/fold_<k>.npz``); ``gated_on``: fold → the CPU kind
    its gates were measured on. An OpenVINO IR is shipped as ``<variant>/fold_<k>.xml`` with its
    ``.bin`` beside it (``weights``), each with its sha256; ``kind`` says which a variant is."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(plans_file, out_dir / "plans.json")
    shutil.copyfile(dataset_file, out_dir / "dataset.json")
    entries: dict[str, Any] = {}
    for name, variant in variants.items():
        files, sums, weights, weight_sums = {}, {}, {}, {}
        kinds = {artifact_kind(src) for src in variant["files"].values()}
        if len(kinds) != 1:
            raise NNBridgeError(f"bundle variant {name!r}: its folds are files of different kinds {sorted(kinds)}; "
                                "build every fold with the same quantize method")
        kind = kinds.pop()
        for fold, src in sorted(variant["files"].items()):
            main, *parts = artifact_files(src)
            rel = f"{name}/fold_{fold}{ARTIFACT_SUFFIXES[kind][0]}"
            _link_or_copy(main, out_dir / rel)
            files[str(fold)] = rel
            sums[str(fold)] = sha256_file(out_dir / rel)
            for part in parts:  # an IR's .bin, named like its .xml (OpenVINO reads it from there)
                part_rel = str(Path(rel).with_suffix(part.suffix))
                _link_or_copy(part, out_dir / part_rel)
                weights[str(fold)], weight_sums[str(fold)] = part_rel, sha256_file(out_dir / part_rel)
        backend = choose_backend(variant["gates"], variant.get("latency_ms", {}))
        entries[name] = {
            "kind": kind,
            "inference_precision": inference_precision(out_dir / next(iter(files.values()))),
            "files": files,
            "sha256": sums,
            **({"weights": weights, "weights_sha256": weight_sums} if weights else {}),
            "gates": variant["gates"],
            "latency_ms": variant.get("latency_ms", {}),
            "backend": backend,
            "passed": backend is not None,
            "ort_settings": variant.get("ort_settings", {}),
            "run_settings": variant.get("run_settings", {}),
            "recheck": variant.get("recheck", {}),
        }
    if default_variant not in entries:
        raise NNBridgeError(f"bundle default variant {default_variant!r} is not among {sorted(entries)}")
    manifest = {
        "format": FORMAT,
        **info,
        "folds": sorted({f for v in entries.values() for f in v["files"]}, key=fold_order),
        "variants": entries,
        "default_variant": default_variant,
        "plans": "plans.json",
        "dataset_json": "dataset.json",
        "plans_sha256": sha256_file(out_dir / "plans.json"),
        "dataset_json_sha256": sha256_file(out_dir / "dataset.json"),
        "gated_on": dict(gated_on or {}),
    }
    if selfcheck:
        files, sums, shapes = {}, {}, {}
        for fold, src in sorted(selfcheck.items()):
            rel = f"{SELFCHECK_DIR}/fold_{fold}.npz"
            _link_or_copy(Path(src), out_dir / rel)
            files[str(fold)], sums[str(fold)] = rel, sha256_file(out_dir / rel)
            with np.load(out_dir / rel) as archive:
                shapes[str(fold)] = list(archive["patches"].shape)
        manifest["selfcheck"] = {"files": files, "sha256": sums, "shape": shapes,
                                 "bytes": sum((out_dir / rel).stat().st_size for rel in files.values()),
                                 "reference": "PyTorch eager label maps on the stored float16 patches"}
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


def _sweep_key(name: str, backend: str) -> str:
    """A variant's name in the benchmark on ``backend`` (``name`` on ONNX Runtime, else ``name@backend``)."""
    return name if backend == "onnxruntime" else f"{name}@{backend}"


def _median(values: list[float]) -> float:
    return float(np.median(values))


def _fastest_threads(rows: list[dict[str, Any]]) -> tuple[int | None, str]:
    """The thread count with the lowest median p50 over folds, and the timings behind it."""
    by_threads: dict[int, list[float]] = {}
    for row in rows:
        for t, ms in row.get("p50_ms_by_threads", {}).items():
            if ms is not None:
                by_threads.setdefault(int(t), []).append(float(ms))
    if not by_threads:
        return None, "no timing succeeded"
    medians = {t: _median(v) for t, v in sorted(by_threads.items())}
    best = min(medians, key=lambda t: medians[t])
    timings = ", ".join(f"{t}: {ms:.1f} ms" for t, ms in medians.items())
    return best, f"lowest median p50 at {best} of {', '.join(map(str, medians))} threads ({timings})"


def _batch_choice(sweeps: list[dict[str, Any]], key: str, min_gain: float) -> tuple[int, str]:
    """The sweep's batch if its time per patch beats batch 1 at full threads by more than
    ``min_gain`` (medians over folds), else 1."""
    batch = int(sweeps[0].get("batch", 1))
    pairs = [(s["results"][key]["p50_ms_by_threads"].get(str(max(s["threads"]))),
              s["results"][key].get("p50_ms_per_patch_at_batch")) for s in sweeps if int(s.get("batch", 1)) == batch]
    pairs = [(one, per) for one, per in pairs if one is not None and per is not None]
    if batch <= 1 or not pairs:
        return 1, "batch 1 only (the sweep timed no larger batch)"
    one, per = _median([p[0] for p in pairs]), _median([p[1] for p in pairs])
    faster = per < one * (1 - min_gain)
    verdict = "more" if faster else "not more"
    return (batch if faster else 1), (f"{per:.1f} ms per window at batch {batch} vs {one:.1f} ms at batch 1, "
                                      f"{verdict} than {min_gain:.0%} faster")


def run_settings(sweeps: list[dict[str, Any]], name: str) -> dict[str, dict[str, Any]]:
    """Per runtime, the threads and batch size ``nnbridge predict`` uses for variant ``name``,
    from the benchmark's thread/batch sweeps (one per fold): the variant's own sweep on that
    runtime, else that of the fp32 graph (:data:`SWEPT_GRAPH`) on the same runtime. ``threads``
    None and batch 1 (the runtime's defaults) when neither was swept. ``from`` says why."""

    out = {}
    for backend in ONNX_BACKENDS:
        keys = [_sweep_key(n, backend) for n in dict.fromkeys((name, SWEPT_GRAPH))]
        key = next((k for k in keys if any(k in s.get("results", {}) for s in sweeps)), None)
        if key is None:
            why = f"default: the benchmark swept no {' or '.join(keys)}"
            out[backend] = {"threads": None, "batch_size": 1, "from": {"threads": why, "batch_size": why}}
            continue
        swept = [s for s in sweeps if key in s.get("results", {})]
        source = f"sweep of {key}" + ("" if key == keys[0] else ", the fp32 graph on this runtime")
        threads, threads_why = _fastest_threads([s["results"][key] for s in swept])
        batch, batch_why = _batch_choice(swept, key, MIN_GAIN)
        out[backend] = {"threads": threads, "batch_size": batch,
                        "from": {"threads": f"{source}: {threads_why}", "batch_size": f"{source}: {batch_why}"}}
    return out


def build_from_pipeline(
    out_dir: Path,
    *,
    plans_file: Path,
    dataset_file: Path,
    folds: dict[str, dict[str, Any]],
    variant_names: list[str],
    default_variant: str,
    model: str,
    dataset: str,
) -> dict[str, Any]:
    """A bundle from the pipeline's per-fold results. ``folds``: fold → {"files": {variant: ONNX
    file or IR .xml}, "parity": parity.json, "benchmark": benchmark.json, "selfcheck": the validate stage's
    self-check set (optional)}. A variant's gate on a backend is its parity verdict there
    (``name`` on ONNX Runtime, ``name@openvino`` on OpenVINO), measured on the CPU kind the
    parity record names (``gated_on``); its Dice bounds and its Dice on the self-check set go
    into ``recheck`` for ``nnbridge verify``; its latency is the median over folds of the
    benchmark's p50; its threads and batch size per runtime come from the benchmark's sweeps
    (:func:`run_settings`)."""
    first = next(iter(folds.values()))["files"][variant_names[0]]
    meta = read_metadata(Path(first))
    refuse_cascade(meta.get("configuration"), meta.get("previous_stage"), first)
    parity = {f: read_json(spec["parity"]) for f, spec in folds.items()}
    bench = {f: read_json(spec["benchmark"]) for f, spec in folds.items()}
    variants: dict[str, dict[str, Any]] = {}
    for name in variant_names:
        gates: dict[str, dict[str, bool]] = {}
        recheck: dict[str, dict[str, Any]] = {}
        latencies: dict[str, list[float]] = {}
        # the ONNX Runtime settings the benchmark chose (first fold's; each fold searched alone)
        tuned = [bench[f].get("tuning", {}).get(name, {}).get("chosen") for f in folds]
        for fold in folds:
            gates[fold] = {}
            for key, verdict in parity[fold]["variants"].items():
                base, _, backend = key.partition("@")
                if base == name:
                    gates[fold][backend or "onnxruntime"] = bool(verdict["passed"])
                    bounds = {k: v for k, v in (verdict.get("tolerance") or {}).items()
                              if k in ("min_dice", "min_case_dice", "min_case_voxels") and v is not None}
                    at_gate = ((parity[fold].get("selfcheck") or {}).get("variants") or {}).get(key)
                    if bounds and at_gate:
                        recheck.setdefault(fold, {})[backend or "onnxruntime"] = {
                            "tolerance": bounds,
                            "at_gate": {k: at_gate.get(k) for k in ("min_dice", "min_case_dice")}}
            for key, res in bench[fold].get("results", {}).items():
                base, _, backend = key.partition("@")
                if base == name and "p50_ms" in res:
                    latencies.setdefault(backend or "onnxruntime", []).append(float(res["p50_ms"]))
        variants[name] = {
            "files": {fold: spec["files"][name] for fold, spec in folds.items()},
            "gates": gates,
            "latency_ms": {b: round(float(np.median(v)), 3) for b, v in latencies.items()},
            "ort_settings": next((t for t in tuned if t is not None), {}),
            "run_settings": run_settings([bench[f]["sweep"] for f in folds if bench[f].get("sweep")], name),
            "recheck": recheck,
        }
    info = {
        "dataset": dataset,
        "model": model,
        "configuration": meta.get("configuration"),
        "trainer": meta.get("trainer"),
        "patch_size": json.loads(meta.get("patch_size", "null")),
        "mirror_axes": json.loads(meta.get("mirror_axes", "[]")),
        "num_input_channels": int(meta.get("num_input_channels", 0)),
        "num_outputs": int(meta.get("num_outputs", 0)),
        "exported_with": json.loads(meta.get("versions", "{}")),
    }
    if info["configuration"] is None:
        raise NNBridgeError(f"{first}: no nnbridge metadata; bundles are built from nnbridge exports")
    selfcheck = {f: Path(spec["selfcheck"]) for f, spec in folds.items()
                 if spec.get("selfcheck") and parity[f].get("selfcheck")}
    gated_on = {f: parity[f]["cpu_kind"] for f in folds if parity[f].get("cpu_kind")}
    return write_bundle(out_dir, plans_file=plans_file, dataset_file=dataset_file, info=info,
                        variants=variants, default_variant=default_variant, selfcheck=selfcheck,
                        gated_on=gated_on)
