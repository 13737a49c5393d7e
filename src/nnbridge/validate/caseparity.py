"""Whole-case parity: nnU-Net's own predictor (torch, CPU) against ``nnbridge predict`` on the
validation cases of a fold, stage by stage.

Both sides run the same stages on the same files: read, preprocess, sliding window with
mirroring (the fold's network), resample back and write. The reference calls nnunetv2's own
functions in the order ``nnUNetv2_predict`` does, so every intermediate can be compared:
preprocessed input, aggregated logits, final labels. Every number in the report's case-parity
section comes from here. The gate takes each class's Dice on each case (the worst case decides;
classes smaller than ``min_case_voxels`` in a case are listed, not gated); the record gives the
per-class distribution over cases and the CPU kind it was measured on.

A cascade stage is compared as nnU-Net runs it: its previous stage's nnU-Net predictor segments
the case and writes it, the cascade's preprocessor reads that file back as the segmentation
(``-prev_stage_predictions``) and its one-hot channels join the image; ``nnbridge predict`` runs the
bundle's own previous stage. Postprocessing is not part of the comparison (both sides without).
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..core.cpu import cpu_kind
from ..core.errors import NNBridgeError
from ..core.runlog import json_digest, read_json, sha256_file, write_json
from ..intake.images import list_image_cases
from ..models.nnunet import load_nnunet_fold, trainer_or_default
from ..patches.sampling import fold_cases
from ..predict.bundle import Bundle
from ..predict.io import case_files, reader_writer
from ..predict.predictor import Predictor, openvino_only
from ..runtime.ov import precision_unavailable
from .metrics import dice_per_class as dice

DEFAULT_GATE = {"min_voxel_agreement": 0.9999, "min_dice": 0.999}
PREPROCESS_ATOL = 1e-4


def validation_cases(preprocessed_dir: Path, fold: str, raw_dir: Path, file_ending: str, channels: int | None = None,
                     max_cases: int = 0) -> dict[str, dict[str, Any]]:
    """Case → {images, label} of a fold's validation split (nnU-Net's ``splits_final.json`` in
    ``preprocessed_dir``), from nnU-Net's raw dataset folder. A case's images are found as nnU-Net
    finds them (:func:`nnbridge.predict.io.case_files`): every ``<case>_XXXX<file_ending>``; how
    many channels they hold is the reader's business (one RGB ``.png`` holds 3), checked when
    they are read. ``channels`` is not used (kept for callers)."""

    if fold == "all":
        raise NNBridgeError("fold 'all' has no validation cases; whole-case parity needs a numbered fold")
    names = fold_cases(Path(preprocessed_dir), fold)[1]
    if max_cases:
        names = names[:max_cases]
    images_dir = Path(raw_dir) / "imagesTr"
    if not images_dir.is_dir():
        raise NNBridgeError(f"{images_dir}: missing; `raw:` must be the dataset's nnUNet_raw folder")
    found = case_files(images_dir, file_ending, names)
    cases = {}
    for name in names:
        label = Path(raw_dir) / "labelsTr" / f"{name}{file_ending}"
        if not found[name]:
            raise NNBridgeError(f"{images_dir / f'{name}_0000{file_ending}'}: missing; `raw:` must be the dataset's "
                                "nnUNet_raw folder")
        if not label.is_file():
            raise NNBridgeError(f"{label}: missing; `raw:` must be the dataset's nnUNet_raw folder")
        cases[name] = {"images": found[name], "label": label}
    return cases


def heldout_image_cases(patches_record: str | Path, images: str | Path, labels: str | Path | None,
                        dataset_json: dict[str, Any], max_cases: int = 0) -> dict[str, dict[str, Any]]:
    """Case → {images, label} of the held-out cases of a fold whose patches came from an image
    folder (the split its ``patches.json`` records); ``label`` is ``None`` without labels."""
    names = read_json(patches_record)["split"]["heldout"]
    if max_cases:
        names = names[:max_cases]
    found = list_image_cases(images, dataset_json, labels)
    missing = [n for n in names if n not in found]
    if missing:
        raise NNBridgeError(f"{images}: held-out case {missing[0]!r} of {patches_record} is gone; rerun the patches stage")
    return {n: {"images": [Path(f) for f in found[n]["images"]],
                "label": Path(found[n]["label"]) if found[n]["label"] else None} for n in names}


def dice_per_class(a: np.ndarray, b: np.ndarray, classes: Sequence[int]) -> dict[str, float]:
    """Dice of each class between two label maps (1.0 when both lack the class), keyed for JSON."""

    return {str(c): round(v, 6) for c, v in dice(a, b, list(classes)).items()}


class NNUNetReference:
    """nnU-Net's predictor for one fold, run stage by stage on CPU.

    When the fold's trainer class is not installed, nnU-Net's own loading cannot build the network;
    the predictor then gets the network nnU-Net's default trainer builds, loaded strictly and
    proven against the checkpoint (:func:`nnbridge.models.nnunet.load_nnunet_fold`), and
    ``note`` says so."""

    def __init__(self, model_folder: Path, fold: str, checkpoint: str, *, step: float, mirroring: bool,
                 threads: int, trusted: bool = False, previous_stage: NNUNetReference | None = None):
        import torch  # noqa: PLC0415
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor  # noqa: PLC0415
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager  # noqa: PLC0415

        # also makes nnbridge's trainers findable
        _trainer, self.note = trainer_or_default(Path(model_folder).name.split("__")[0])
        self.previous_stage = previous_stage
        torch.set_num_threads(max(1, threads))
        self.torch = torch
        self.predictor = nnUNetPredictor(
            tile_step_size=step, use_gaussian=True, use_mirroring=mirroring,
            perform_everything_on_device=False, device=torch.device("cpu"), verbose=False,
            verbose_preprocessing=False, allow_tqdm=False,
        )
        if self.note is None:
            self.predictor.initialize_from_trained_model_folder(
                str(model_folder), use_folds=(fold if fold == "all" else int(fold),), checkpoint_name=checkpoint
            )
            return
        loaded = load_nnunet_fold(model_folder, fold, checkpoint, trusted=trusted)
        plans_manager = PlansManager(loaded.plans)
        self.predictor.manual_initialization(
            loaded.network, plans_manager, plans_manager.get_configuration(loaded.configuration), [loaded.weights],
            loaded.dataset_json, loaded.trainer_name, loaded.mirror_axes or None,
        )

    def predict_case(self, files: Sequence[Path], out_file: Path) -> dict[str, Any]:
        from nnunetv2.inference.export_prediction import (  # noqa: PLC0415
            convert_predicted_logits_to_segmentation_with_correct_shape,
        )
        from nnunetv2.utilities.label_handling.label_handling import convert_labelmap_to_one_hot  # noqa: PLC0415

        p = self.predictor
        timings: dict[str, float] = {}
        t = time.perf_counter()
        rw = p.plans_manager.image_reader_writer_class()
        data, properties = rw.read_images([str(f) for f in files])
        timings["read"] = time.perf_counter() - t
        previous = None
        if self.previous_stage is not None:  # nnUNetv2_predict of the previous stage, then -prev_stage_predictions
            t = time.perf_counter()
            previous_file = Path(out_file).parent / "previous_stage" / Path(out_file).name
            previous_file.parent.mkdir(parents=True, exist_ok=True)
            self.previous_stage.predict_case(files, previous_file)
            previous, _ = rw.read_seg(str(previous_file))
            timings["previous_stage"] = time.perf_counter() - t
        t = time.perf_counter()
        preprocessor = p.configuration_manager.preprocessor_class(verbose=False)
        data, seg, properties = preprocessor.run_case_npy(data, previous, properties, p.plans_manager,
                                                          p.configuration_manager, p.dataset_json)
        if previous is not None:
            data = np.vstack((data, convert_labelmap_to_one_hot(seg[0], p.label_manager.foreground_labels, data.dtype)))
        timings["preprocess"] = time.perf_counter() - t
        t = time.perf_counter()
        logits = p.predict_logits_from_preprocessed_data(self.torch.from_numpy(data)).cpu()
        timings["inference"] = time.perf_counter() - t
        t = time.perf_counter()
        seg, probs = convert_predicted_logits_to_segmentation_with_correct_shape(
            logits, p.plans_manager, p.configuration_manager, p.label_manager, properties,
            return_probabilities=True,
        )
        timings["resample_back"] = time.perf_counter() - t
        t = time.perf_counter()
        rw.write_seg(seg, str(out_file), properties)
        timings["write"] = time.perf_counter() - t
        return {"preprocessed": data, "logits": logits.float().numpy(), "segmentation": np.asarray(seg),
                "probabilities": np.asarray(probs, dtype=np.float32), "timings_s": timings}


def compare_case(ref: dict[str, Any], ours: dict[str, Any], truth: np.ndarray | None, classes: Sequence[int],
                 gate: dict[str, float]) -> dict[str, Any]:
    """Stage-by-stage agreement of one case, and the first stage that diverges."""
    rec: dict[str, Any] = {}
    same_pre_shape = ref["preprocessed"].shape == ours["preprocessed"].shape
    rec["preprocessed_max_abs_diff"] = (
        float(np.abs(ref["preprocessed"] - ours["preprocessed"]).max()) if same_pre_shape else None
    )
    same_logit_shape = ref["logits"].shape == ours["logits"].shape
    if same_logit_shape:
        rl, ol = ref["logits"].astype(np.float32), ours["logits"].astype(np.float32)
        rec["logits_max_abs_diff"] = float(np.abs(rl - ol).max())
        rec["logits_argmax_agreement"] = float((rl.argmax(0) == ol.argmax(0)).mean())
    else:
        rec["logits_max_abs_diff"] = rec["logits_argmax_agreement"] = None
    rseg, oseg = ref["segmentation"], ours["segmentation"]
    if rseg.shape != oseg.shape:
        raise NNBridgeError(f"segmentation shapes differ: nnU-Net {rseg.shape}, nnbridge {oseg.shape}")
    rec["voxel_agreement"] = float((rseg == oseg).mean())
    rec["dice_vs_nnunet"] = dice_per_class(rseg, oseg, classes)
    sizes = {str(c): int(np.count_nonzero(rseg == c)) + int(np.count_nonzero(oseg == c)) for c in classes}
    rec["voxels_nnunet"] = {str(c): int(np.count_nonzero(rseg == c)) for c in classes}
    small = int(gate.get("min_case_voxels", 0))
    gated = {c: d for c, d in rec["dice_vs_nnunet"].items() if sizes[c] >= small}
    rec["not_gated"] = {c: sizes[c] for c in rec["dice_vs_nnunet"] if c not in gated and sizes[c]}
    rec["min_dice_vs_nnunet"] = min(gated.values()) if gated else 1.0
    if ref.get("probabilities") is not None and ours.get("probabilities") is not None:
        diff = np.abs(ref["probabilities"] - ours["probabilities"].astype(np.float32))
        rec["prob_max_abs_diff"], rec["prob_mean_abs_diff"] = float(diff.max()), float(diff.mean())
    if truth is not None:
        rec["dice_nnunet_vs_truth"] = dice_per_class(rseg, truth, classes)
        rec["dice_nnbridge_vs_truth"] = dice_per_class(oseg, truth, classes)
    non_finite = [f"{k} = {v}" for k, v in rec.items()
                  if isinstance(v, float) and not math.isfinite(v)]
    non_finite += [f"{k} of class {c} = {v}" for k in ("dice_vs_nnunet",) for c, v in rec[k].items()
                   if not math.isfinite(v)]
    if non_finite:  # NaN compares false with every bound: it must fail, not pass
        rec["non_finite"] = non_finite
    if not same_pre_shape or not _at_most(rec["preprocessed_max_abs_diff"], PREPROCESS_ATOL):
        rec["diverges_at"] = "preprocessed input"
    elif (not same_logit_shape or not math.isfinite(rec["logits_max_abs_diff"])
          or not _at_least(rec["logits_argmax_agreement"], gate["min_voxel_agreement"])):
        rec["diverges_at"] = "aggregated logits"
    elif (not _at_least(rec["voxel_agreement"], gate["min_voxel_agreement"])
          or not _at_least(rec["min_dice_vs_nnunet"], gate["min_dice"])):
        rec["diverges_at"] = "final labels"
    else:
        rec["diverges_at"] = None
    rec["passed"] = (not non_finite and _at_least(rec["voxel_agreement"], gate["min_voxel_agreement"])
                     and _at_least(rec["min_dice_vs_nnunet"], gate["min_dice"]))
    return rec


def dice_distribution(per_case: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per class, the Dice against nnU-Net over the cases: min (with its case), median, max."""
    out: dict[str, dict[str, Any]] = {}
    classes = next(iter(per_case.values()))["dice_vs_nnunet"] if per_case else {}
    for c in classes:
        values = {case: rec["dice_vs_nnunet"][c] for case, rec in per_case.items()}
        worst = min(values, key=values.get)
        out[c] = {"min": values[worst], "worst_case": worst, "median": float(np.median(list(values.values()))),
                  "max": max(values.values()), "n_cases": len(values)}
    return out


def _at_least(value: float, bound: float) -> bool:
    """``value >= bound`` for a finite value; NaN or Inf never passes."""
    return math.isfinite(value) and value >= bound


def _at_most(value: float, bound: float) -> bool:
    """``value <= bound`` for a finite value; NaN or Inf never passes."""
    return math.isfinite(value) and value <= bound


def _sum_timings(records: list[dict[str, float]]) -> dict[str, float]:
    keys = records[0].keys() if records else []
    return {k: round(sum(r[k] for r in records), 4) for k in keys}


ARRAYS = ("preprocessed", "logits", "segmentation", "probabilities")  # what compare_case reads of nnU-Net's side


def _reference_key(model_folder: Path, fold: str, checkpoint: str, cases: dict[str, dict[str, Any]], *,
                   step: float, mirroring: bool, threads: int, trusted: bool,
                   previous_stage: dict[str, Any] | None, salt: str) -> str:
    """Everything nnU-Net's side of the comparison depends on: its model files, the cases' files,
    the predictor's settings, the CPU kind and the code."""
    def files_of(folder: Path, ckpt: str) -> dict[str, str | None]:
        folder = Path(folder)
        paths = [folder / "plans.json", folder / "dataset.json", folder / f"fold_{fold}" / ckpt]
        return {p.name: sha256_file(p) if p.is_file() else None for p in paths}

    return json_digest({
        "model": files_of(model_folder, checkpoint), "fold": fold, "trusted": trusted,
        "previous_stage": previous_stage and {**previous_stage, "files": files_of(Path(previous_stage["folder"]),
                                                                                   previous_stage["checkpoint"])},
        "cases": {case: {"images": [sha256_file(f) for f in files["images"]],
                         "label": sha256_file(files["label"]) if files.get("label") else None}
                  for case, files in cases.items()},
        "step": step, "mirroring": mirroring, "threads": threads, "machine": cpu_kind(), "code": salt})


def _variant_key(reference_key: str, bundle: Bundle, name: str, fold: str, gate: dict[str, float]) -> str:
    """Everything a bundle variant's comparison depends on beyond nnU-Net's side: its fold's file,
    how nnbridge predict runs it (runtime, precision, settings) and the bundle's plans."""
    entry = bundle.variant(name)[1]
    return json_digest({"reference": reference_key, "name": name, "gate": gate,
                    "file": (entry.get("sha256") or {}).get(str(fold)),
                    **{k: entry.get(k) for k in ("kind", "inference_precision", "backend", "ort_settings",
                                                 "run_settings")},
                    "plans": bundle.manifest.get("plans_sha256"), "dataset": bundle.manifest.get("dataset_json_sha256")})


def refused_on_fold(entry: dict[str, Any], fold: str) -> str | None:
    """Why a bundle variant is not compared on whole cases: it failed its patch gate on this fold on
    every runtime it was validated on (``nnbridge predict`` refuses it; at a 128³ patch its
    comparison would cost minutes to confirm a refusal). None when it passed on one."""
    per = (entry.get("gates") or {}).get(str(fold)) or {}
    if not per or any(per.values()):
        return None
    return (f"failed its patch gate on fold {fold} on {' and '.join(sorted(per))} (validate): nnbridge predict "
            "refuses it, so it is not compared on whole cases (case_parity.compare_failed: true compares it)")


def comparison_backend(entry: dict[str, Any]) -> str:
    """The runtime a bundle variant is compared on: the bundle's (the fastest that passed its gate
    everywhere); for one that passed nowhere (compared with ``compare_failed``), the fastest it was
    timed on — where it would be deployed had it passed, at a 128³ patch minutes faster than the
    default runtime —; else nnbridge predict's default."""
    if entry.get("backend"):
        return entry["backend"]
    if openvino_only(entry):
        return "openvino"
    latency = entry.get("latency_ms") or {}
    return min(sorted(latency), key=latency.get) if latency else "onnxruntime"


def _nnunet_side(model_folder: Path, fold: str, checkpoint: str, bundle: Bundle, cases: dict[str, dict[str, Any]],
                 out_dir: Path, ref_dir: Path | None, *, need_arrays: bool, step: float, mirroring: bool,
                 threads: int, trusted: bool, previous_stage: dict[str, Any] | None,
                 ) -> tuple[dict[str, Any], dict[str, dict[str, Any]], bool]:
    """nnU-Net's predictor on ``cases``: (summary — classes, notes, timings —, per case the
    arrays :func:`compare_case` reads, whether it ran here). With ``ref_dir`` holding an earlier
    run's summary (:func:`run_case_parity`'s cache) it does not run: the arrays are read back
    when ``need_arrays`` (a variant is compared again), else none are. A run fills ``ref_dir``."""
    if ref_dir is not None and (ref_dir / "summary.json").is_file():
        arrays: dict[str, dict[str, Any]] = {}
        if need_arrays:
            print("nnbridge: case parity: nnU-Net's predictions unchanged, reused", flush=True)
            for case in cases:
                with np.load(ref_dir / f"{case}.npz") as kept:
                    arrays[case] = {k: kept[k] for k in ARRAYS}
        return read_json(ref_dir / "summary.json"), arrays, False
    earlier = None
    if bundle.previous_stage is not None:
        if not previous_stage:
            raise NNBridgeError(f"{bundle.root}: a cascade stage; whole-case parity needs the model folder of its "
                                f"{bundle.previous_stage.configuration} stage (previous_stage)")
        earlier = NNUNetReference(Path(previous_stage["folder"]), fold, previous_stage["checkpoint"], step=step,
                                  mirroring=mirroring, threads=threads,
                                  trusted=bool(previous_stage.get("trusted", trusted)))
    reference = NNUNetReference(model_folder, fold, checkpoint, step=step, mirroring=mirroring, threads=threads,
                                trusted=trusted, previous_stage=earlier)
    labels = reference.predictor.label_manager
    ending = bundle.dataset_json["file_ending"]
    (out_dir / "nnunet").mkdir(parents=True, exist_ok=True)
    results = {}
    for index, (case, files) in enumerate(cases.items(), 1):
        print(f"nnbridge: case parity: nnU-Net predicts case {index}/{len(cases)} ({case})", flush=True)
        results[case] = reference.predict_case(files["images"], out_dir / "nnunet" / f"{case}{ending}")
    summary = {
        "classes": [int(c) for c in (labels.regions_class_order if labels.has_regions else labels.foreground_labels)],
        "reference_note": reference.note,
        "previous_stage": (None if earlier is None else
                           {"configuration": bundle.previous_stage.configuration,
                            "model_folder": str(previous_stage["folder"]), "reference_note": earlier.note}),
        "timings_s": _sum_timings([r["timings_s"] for r in results.values()]),
    }
    if ref_dir is not None:
        ref_dir.mkdir(parents=True, exist_ok=True)
        for case, r in results.items():
            np.savez(ref_dir / f"{case}.npz", **{k: r[k] for k in ARRAYS})
        write_json(ref_dir / "summary.json", summary)
    return summary, results, True


def run_case_parity(
    *,
    model_folder: Path,
    fold: str,
    checkpoint: str,
    bundle_dir: Path,
    cases: dict[str, dict[str, Any]],
    variants: dict[str, dict[str, Any]],
    out_dir: Path,
    step: float = 0.5,
    mirroring: bool = True,
    threads: int = 1,
    trusted: bool = False,
    previous_stage: dict[str, Any] | None = None,
    cache_salt: str | None = None,
    compare_failed: bool = False,
) -> dict[str, Any]:
    """Predict ``cases`` with nnU-Net and with each bundle variant (name → {"backend", "gate"});
    per-case agreement, stage timings, gates and the end-to-end speed ratio. A case without a
    ``label`` file gets no Dice against the truth (the gate compares the two predictors). A
    cascade stage needs ``previous_stage``: {"folder", "checkpoint"[, "trusted"]} of its previous
    stage's model (the same fold predicts).

    With ``cache_salt`` (the code's version), results are kept in ``out_dir/cache``: a variant
    whose comparison depends on nothing that changed since an earlier run (its file and run
    settings in the bundle, nnU-Net's model files, the cases, the settings, the CPU kind, the
    code) reuses that run's result (``from_cache``), and nnU-Net's predictor runs only when a
    variant needs it (its arrays are kept for the next run). At a 128³ patch nnU-Net's side is
    ~8 min per case on the 2-core machines: a quantization change of a variant that is not
    bundled reran all of it before.

    A variant that failed its patch gate on this fold on every runtime (:func:`refused_on_fold`) is
    reported as skipped unless ``compare_failed``; nnU-Net's predictor runs only if a variant is
    compared."""

    out_dir = Path(out_dir)
    bundle = Bundle.load(bundle_dir)
    cache = out_dir / "cache" if cache_salt is not None else None
    ref_key = _reference_key(model_folder, fold, checkpoint, cases, step=step, mirroring=mirroring, threads=threads,
                             trusted=trusted, previous_stage=previous_stage, salt=cache_salt or "")
    ref_dir = cache / "nnunet" / ref_key if cache else None
    gates = {name: {**DEFAULT_GATE, **(spec.get("gate") or {})} for name, spec in variants.items()}
    keys = {name: _variant_key(ref_key, bundle, name, fold, gates[name]) for name in variants}
    hits = {name: read_json(cache / f"{keys[name]}.json") for name in variants
            if cache and (cache / f"{keys[name]}.json").is_file()}
    skipped = {}
    for name in variants:
        entry = bundle.variant(name)[1]
        why = (precision_unavailable(entry.get("inference_precision"))  # predict would run it in fp32 here
               or (None if compare_failed else refused_on_fold(entry, fold)))
        if why:
            skipped[name] = {"backend": comparison_backend(entry),
                             "gate": gates[name], "skipped": why, "passed": False}
    compared = [name for name in variants if name not in skipped]
    result: dict[str, Any] = {
        "fold": fold, "step": step, "mirroring": mirroring, "threads": threads, "cpu_kind": cpu_kind(),
        "cases": list(cases), "variants": {},
    }
    if not compared:  # nothing to compare: nnU-Net's predictor is not run either
        print("nnbridge: case parity: no variant to compare on whole cases "
              + "; ".join(f"{n}: {v['skipped']}" for n, v in skipped.items()), flush=True)
        result.update(nnunet=None, variants=skipped, all_passed=None)
        return result
    summary, ref_results, predicted = _nnunet_side(
        model_folder, fold, checkpoint, bundle, cases, out_dir, ref_dir,
        need_arrays=any(name not in hits for name in compared),
        step=step, mirroring=mirroring, threads=threads, trusted=trusted, previous_stage=previous_stage)
    classes = summary["classes"]
    rw = reader_writer(bundle.plans.get("image_reader_writer", "SimpleITKIO"))
    truths = {case: rw.read_seg(str(files["label"]))[0][0] if files.get("label") else None
              for case, files in cases.items()}
    result.update({
        "classes": classes, "reference_note": summary["reference_note"], "previous_stage": summary["previous_stage"],
        "nnunet": {"timings_s": summary["timings_s"], **({} if predicted else {"from_cache": True})},
    })
    result["nnunet"]["total_s"] = round(sum(result["nnunet"]["timings_s"].values()), 4)
    for name, spec in variants.items():
        gate = gates[name]
        if name in skipped:
            print(f"nnbridge: case parity: {name}: skipped, {skipped[name]['skipped']}", flush=True)
            result["variants"][name] = skipped[name]
            continue
        if name in hits:
            print(f"nnbridge: case parity: {name}: unchanged, result reused", flush=True)
            result["variants"][name] = {**hits[name], "from_cache": True}
            continue
        predictor = Predictor(bundle, variant=name, folds=[fold],
                              backend=spec.get("backend") or comparison_backend(bundle.variant(name)[1]),
                              threads=threads, step=step, mirroring=mirroring, allow_ungated=True,
                              selfcheck=False,  # measured here against nnU-Net itself
                              postprocessing=False)  # nnU-Net's predictor does not postprocess
        predictor.load()
        (out_dir / name).mkdir(parents=True, exist_ok=True)
        per_case, timings = {}, []
        for index, (case, files) in enumerate(cases.items(), 1):
            print(f"nnbridge: case parity: {name} predicts case {index}/{len(cases)} ({case})", flush=True)
            ours = predictor.predict_case(case, files["images"], save_probabilities=True, keep_intermediates=True)
            # the segmentation only, like the reference (probabilities are compared in memory)
            predictor.write_case(replace(ours, probabilities=None), out_dir / name)
            timings.append(ours.timings_s)
            mine = {"preprocessed": ours.preprocessed, "logits": ours.logits, "segmentation": ours.segmentation,
                    "probabilities": ours.probabilities}
            per_case[case] = compare_case(ref_results[case], mine, truths[case], classes, gate)
        total = _sum_timings(timings)
        result["variants"][name] = {
            "backend": predictor.backend,
            "inference_precision": predictor.precision,
            "gate": gate,
            "cases": per_case,
            "timings_s": total,
            "total_s": round(sum(total.values()), 4),
            "speedup_vs_nnunet": round(result["nnunet"]["total_s"] / max(sum(total.values()), 1e-9), 3),
            "min_voxel_agreement": min(c["voxel_agreement"] for c in per_case.values()),
            "min_dice_vs_nnunet": min(c["min_dice_vs_nnunet"] for c in per_case.values()),
            "dice_distribution": dice_distribution(per_case),
            "passed": all(c["passed"] for c in per_case.values()),
            "first_divergence": next((f"{k}: {c['diverges_at']}" for k, c in per_case.items() if c["diverges_at"]),
                                     None),
        }
        if cache is not None:
            write_json(cache / f"{keys[name]}.json", result["variants"][name])
    result["all_passed"] = all(v["passed"] for v in result["variants"].values() if not v.get("skipped"))
    return result
