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
from ..core.artifacts import ARTIFACT_SUFFIXES, artifact_files, artifact_kind, verify_recorded
from ..core.errors import NNBridgeError
from ..core.keys import Variant, fold_order
from ..core.metadata import inference_precision, read_metadata
from ..core.records import BenchmarkRecord, BundleManifest, ParityRecord, Sweep
from ..core.runlog import read_json, sha256_file
from ..core.stats import median
from ..predict.bundle import FORMAT, MANIFEST, Bundle, require_previous_stage
from ..predict.components import read_postprocessing_pkl
from ..predict.verify import SELFCHECK_DIR
from ..runtime import ONNX_BACKENDS


# whose thread/batch sweep stands in for variants not swept themselves (the first swept one)
SWEPT_GRAPHS = ("onnx_simplified", "onnx_fp32")


def _copy(src: Path, dst: Path, expected: str | None = None) -> str:
    """Copy ``src`` to ``dst`` (a copy, never a link: editing the bundle must not edit the
    pipeline's artifacts, nor the reverse) through a temporary name, so ``dst`` exists only
    complete; its sha256, checked against ``expected`` (the one its stage record states)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.partial")
    shutil.copyfile(src, tmp)
    digest = sha256_file(tmp)
    if expected is not None and digest != expected:
        tmp.unlink()
        raise NNBridgeError(f"{src}: copied into the bundle with sha256 {digest[:12]}…, not the {expected[:12]}… its "
                            "record states; the file changed while the bundle was written: rerun")
    os.replace(tmp, dst)
    return digest


PREVIOUS_STAGE_DIR = "previous_stage"
POSTPROCESSING_DIR = "postprocessing"


def _copy_bundle(src: Path, dst: Path) -> None:
    """A bundle folder copied into ``dst`` (never linked, as every bundle file), without nnbridge
    verify's per-machine results (not part of a bundle)."""
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, copy_function=shutil.copyfile, ignore=shutil.ignore_patterns("verified-*.json"))


def _postprocessing_record(out_dir: Path, spec: dict[str, Any], name: str) -> dict[str, Any]:
    """nnU-Net's postprocessing.pkl ``spec["pkl"]`` copied into the bundle, with its steps read
    safely (:func:`nnbridge.predict.components.read_postprocessing_pkl`) for ``nnbridge predict``."""
    steps = read_postprocessing_pkl(spec["pkl"])
    rel = f"{POSTPROCESSING_DIR}/{name}"
    record = {"steps": steps, "file": rel, "sha256": _copy(Path(spec["pkl"]), out_dir / rel), "source": spec["source"],
              "folds": [str(f) for f in spec.get("folds") or []]}
    if spec.get("members"):
        record["members"] = list(spec["members"])
    return record


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
    previous_stage: Path | None = None,
    postprocessing: dict[str, Any] | None = None,
    ensembles: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Assemble a bundle. ``variants``: name → {"files": {fold: ONNX file or IR .xml}, "records": {fold: the
    stage record stating its sha256, checked before and after copying (optional)}, "gates": {fold: {backend:
    passed}}, "latency_ms": {backend: p50}, "ort_settings": tuned ONNX Runtime settings,
    "run_settings": {backend: threads and batch size, see :func:`run_settings`}, "recheck":
    {fold: {backend: {"tolerance", "at_gate"}}} for ``nnbridge verify``, "built_for": the CPU
    features its CPU-decided quantization settings were chosen for (optional)}. ``info``:
    configuration, patch size, mirror axes… ``selfcheck``: fold → the validate stage's
    self-check set (shipped as ``selfcheck/fold_<k>.npz``); ``gated_on``: fold → the CPU kind
    its gates were measured on. An OpenVINO IR is shipped as ``<variant>/fold_<k>.xml`` with its
    ``.bin`` beside it (``weights``), each with its sha256; ``kind`` says which a variant is.
    ``previous_stage``: a cascade stage's previous stage, a bundle folder copied in as
    ``previous_stage/``. ``postprocessing``: nnU-Net's postprocessing of the model ({"pkl", "source":
    its path in the model folder, "folds"}); ``ensembles``: those of its ensembles with other
    configurations (the same, plus "members": the model identifiers)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in (PREVIOUS_STAGE_DIR, POSTPROCESSING_DIR):
        if (out_dir / stale).exists():
            shutil.rmtree(out_dir / stale)
    shutil.copyfile(plans_file, out_dir / "plans.json")
    shutil.copyfile(dataset_file, out_dir / "dataset.json")
    entries: dict[str, Any] = {}
    for name, variant in variants.items():
        files, sums, weights, weight_sums = {}, {}, {}, {}
        records = variant.get("records") or {}
        kinds = {artifact_kind(src) for src in variant["files"].values()}
        if len(kinds) != 1:
            raise NNBridgeError(f"bundle variant {name!r}: its folds are files of different kinds {sorted(kinds)}; "
                                "build every fold with the same quantize method")
        kind = kinds.pop()
        for fold, src in sorted(variant["files"].items()):
            main, *parts = artifact_files(src)
            rel = f"{name}/fold_{fold}{ARTIFACT_SUFFIXES[kind][0]}"
            # the record's sha256: the main file's, joined by its other files' for an IR (artifact_sha256)
            expected = verify_recorded(src, records[fold]).split("+") if records.get(fold) else [None] * (1 + len(parts))
            files[str(fold)] = rel
            sums[str(fold)] = _copy(main, out_dir / rel, expected[0])
            for part, part_expected in zip(parts, expected[1:], strict=True):
                # an IR's .bin, named like its .xml (OpenVINO reads it from there)
                part_rel = str(Path(rel).with_suffix(part.suffix))
                weights[str(fold)], weight_sums[str(fold)] = part_rel, _copy(part, out_dir / part_rel, part_expected)
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
            **({"built_for": variant["built_for"]} if variant.get("built_for") else {}),
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
    if previous_stage is not None:
        _copy_bundle(Path(previous_stage), out_dir / PREVIOUS_STAGE_DIR)
        stage = Bundle.load(out_dir / PREVIOUS_STAGE_DIR)  # checks what was copied
        manifest["previous_stage"] = {"configuration": stage.configuration, "model": stage.model,
                                      "bundle": PREVIOUS_STAGE_DIR,
                                      "manifest_sha256": sha256_file(out_dir / PREVIOUS_STAGE_DIR / MANIFEST)}
    if postprocessing:
        manifest["postprocessing"] = _postprocessing_record(out_dir, postprocessing, "postprocessing.pkl")
    if ensembles:
        manifest["ensembles"] = [
            _postprocessing_record(out_dir, spec, f"{Path(spec['source']).parent.name}.pkl") for spec in ensembles
        ]
    if selfcheck:
        files, sums, shapes = {}, {}, {}
        for fold, src in sorted(selfcheck.items()):
            rel = f"{SELFCHECK_DIR}/fold_{fold}.npz"
            files[str(fold)], sums[str(fold)] = rel, _copy(Path(src), out_dir / rel)
            with np.load(out_dir / rel) as archive:
                shapes[str(fold)] = list(archive["patches"].shape)
        manifest["selfcheck"] = {"files": files, "sha256": sums, "shape": shapes,
                                 "bytes": sum((out_dir / rel).stat().st_size for rel in files.values()),
                                 "reference": "PyTorch eager label maps on the stored float16 patches"}
    record = BundleManifest.of(manifest)
    tmp = out_dir / f".{MANIFEST}.partial"  # the manifest last, whole: a bundle without it is no bundle
    record.write(tmp)
    os.replace(tmp, out_dir / MANIFEST)
    return record.to_dict()



def _fastest_threads(rows: list[dict[str, Any]]) -> tuple[int | None, str]:
    """The thread count with the lowest median p50 over folds, and the timings behind it."""
    by_threads: dict[int, list[float]] = {}
    for row in rows:
        for t, ms in row.get("p50_ms_by_threads", {}).items():
            if ms is not None:
                by_threads.setdefault(int(t), []).append(float(ms))
    if not by_threads:
        return None, "no timing succeeded"
    medians = {t: median(v) for t, v in sorted(by_threads.items())}
    best = min(medians, key=lambda t: medians[t])
    timings = ", ".join(f"{t}: {ms:.1f} ms" for t, ms in medians.items())
    return best, f"lowest median p50 at {best} of {', '.join(map(str, medians))} threads ({timings})"


def _batch_choice(sweeps: list[Sweep], key: Variant, min_gain: float) -> tuple[int, str]:
    """The sweep's batch if its time per patch beats batch 1 at full threads by more than
    ``min_gain`` (medians over folds), else 1."""
    batch = int(sweeps[0].batch)
    pairs = [(s.results[key]["p50_ms_by_threads"].get(str(max(s.threads))),
              s.results[key].get("p50_ms_per_patch_at_batch")) for s in sweeps if int(s.batch) == batch]
    pairs = [(one, per) for one, per in pairs if one is not None and per is not None]
    if batch <= 1 or not pairs:
        return 1, "batch 1 only (the sweep timed no larger batch)"
    one, per = median(p[0] for p in pairs), median(p[1] for p in pairs)
    faster = per < one * (1 - min_gain)
    verdict = "more" if faster else "not more"
    return (batch if faster else 1), (f"{per:.1f} ms per window at batch {batch} vs {one:.1f} ms at batch 1, "
                                      f"{verdict} than {min_gain:.0%} faster")


def run_settings(sweeps: list[Sweep], name: str) -> dict[str, dict[str, Any]]:
    """Per runtime, the threads and batch size ``nnbridge predict`` uses for variant ``name``,
    from the benchmark's thread/batch sweeps (one per fold): the variant's own sweep on that
    runtime, else that of the fp32 graph (:data:`SWEPT_GRAPHS`) on the same runtime. ``threads``
    None and batch 1 (the runtime's defaults) when neither was swept. ``from`` says why."""

    out = {}
    for backend in ONNX_BACKENDS:
        keys = [Variant(n, backend) for n in dict.fromkeys((name, *SWEPT_GRAPHS))]
        key = next((k for k in keys if any(k in s.results for s in sweeps)), None)
        if key is None:
            why = f"default: the benchmark swept no {' or '.join(map(str, keys))}"
            out[backend] = {"threads": None, "batch_size": 1, "from": {"threads": why, "batch_size": why}}
            continue
        swept = [s for s in sweeps if key in s.results]
        source = f"sweep of {key}" + ("" if key == keys[0] else ", the fp32 graph on this runtime")
        threads, threads_why = _fastest_threads([s.results[key] for s in swept])
        batch, batch_why = _batch_choice(swept, key, MIN_GAIN)
        out[backend] = {"threads": threads, "batch_size": batch,
                        "from": {"threads": f"{source}: {threads_why}", "batch_size": f"{source}: {batch_why}"}}
    return out


def _built_for(record_path: str | Path) -> dict[str, Any] | None:
    """The CPU features a quantize record's CPU-decided settings were chosen for
    (:mod:`nnbridge.quantize.cpudefaults`; ``decided_for``), None for other records."""
    record = read_json(record_path, fix="rerun the stage that writes it")
    decided = (record.get("cpu") or {}).get("decided_for") if isinstance(record, dict) else None
    return dict(decided) if isinstance(decided, dict) and "int8_dot" in decided else None


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
    previous_stage: Path | None = None,
    postprocessing: dict[str, Any] | None = None,
    ensembles: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A bundle from the pipeline's per-fold results. ``folds``: fold → {"files": {variant: ONNX
    file or IR .xml}, "records": {variant: the record stating its sha256}, "parity": parity.json,
    "benchmark": benchmark.json, "selfcheck": the validate stage's
    self-check set (optional)}. A variant's gate on a backend is its parity verdict there
    (``name`` on ONNX Runtime, ``name@openvino`` on OpenVINO), measured on the CPU kind the
    parity record names (``gated_on``); its Dice bounds and its Dice on the self-check set go
    into ``recheck`` for ``nnbridge verify``; its latency is the median over folds of the
    benchmark's p50; its threads and batch size per runtime come from the benchmark's sweeps
    (:func:`run_settings`); an INT8 variant's ``built_for``, the CPU features its quantize record's
    settings were decided for (``nnbridge verify`` names the remedy when this CPU lacks one of
    them). A cascade stage needs ``previous_stage`` (the bundle of its previous
    stage's model); ``postprocessing`` and ``ensembles`` as :func:`write_bundle` takes them."""
    first = next(iter(folds.values()))["files"][variant_names[0]]
    meta = read_metadata(Path(first))
    require_previous_stage(meta.get("configuration"), meta.get("previous_stage"), previous_stage is not None, first)
    if previous_stage is not None and not meta.get("previous_stage"):
        raise NNBridgeError(f"{first}: {meta.get('configuration')} is no cascade stage; it takes no previous stage "
                            f"bundle ({previous_stage})")
    if previous_stage is not None:
        stage = Bundle.load(Path(previous_stage))
        if stage.configuration != meta.get("previous_stage"):
            raise NNBridgeError(f"{previous_stage}: a bundle of {stage.configuration}, but {meta.get('configuration')} "
                                f"takes the {meta.get('previous_stage')} segmentation")
    parity = {f: ParityRecord.read(spec["parity"]) for f, spec in folds.items()}
    bench = {f: BenchmarkRecord.read(spec["benchmark"]) for f, spec in folds.items()}
    variants: dict[str, dict[str, Any]] = {}
    for name in variant_names:
        gates: dict[str, dict[str, bool]] = {}
        recheck: dict[str, dict[str, Any]] = {}
        latencies: dict[str, list[float]] = {}
        # the ONNX Runtime settings the benchmark chose (first fold's; each fold searched alone)
        tuned = [bench[f].tuning[Variant(name)].chosen for f in folds if Variant(name) in bench[f].tuning]
        for fold in folds:
            gates[fold] = {}
            at_gate_all = (parity[fold].extra.get("selfcheck") or {}).get("variants") or {}
            for v, gate in parity[fold].variants.items():
                if v.name != name:
                    continue
                gates[fold][v.backend] = bool(gate.passed)
                bounds = {k: x for k, x in (gate.tolerance or {}).items()
                          if k in ("min_dice", "min_case_dice", "min_case_voxels") and x is not None}
                at_gate = at_gate_all.get(v.key)
                if bounds and at_gate:
                    recheck.setdefault(fold, {})[v.backend] = {
                        "tolerance": bounds, "at_gate": {k: at_gate.get(k) for k in ("min_dice", "min_case_dice")}}
            for v, result in bench[fold].results.items():
                if v.name == name and result.timed:
                    latencies.setdefault(v.backend, []).append(float(result.p50_ms))
        variants[name] = {
            "built_for": next((d for d in (_built_for(spec["records"][name]) for spec in folds.values()
                                           if (spec.get("records") or {}).get(name)) if d), None),
            "files": {fold: spec["files"][name] for fold, spec in folds.items()},
            "records": {fold: spec["records"][name] for fold, spec in folds.items()
                        if (spec.get("records") or {}).get(name)},
            "gates": gates,
            "latency_ms": {b: round(median(v), 3) for b, v in latencies.items()},
            "ort_settings": next((t for t in tuned if t is not None), {}),
            "run_settings": run_settings([bench[f].sweep for f in folds if bench[f].sweep], name),
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
                 if spec.get("selfcheck") and parity[f].extra.get("selfcheck")}
    gated_on = {f: parity[f].extra["cpu_kind"] for f in folds if parity[f].extra.get("cpu_kind")}
    return write_bundle(out_dir, plans_file=plans_file, dataset_file=dataset_file, info=info,
                        variants=variants, default_variant=default_variant, selfcheck=selfcheck,
                        gated_on=gated_on, previous_stage=previous_stage, postprocessing=postprocessing,
                        ensembles=ensembles)
