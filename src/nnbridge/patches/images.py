"""Patches from a model's own preprocessing of an image folder (``images:`` in the config).

Calibration and held-out cases never overlap. With a ``splits_final.json`` (``splits:``) the
fold's own split decides: its training cases calibrate, every other case is held out (the fold's
validation cases, and cases no fold of that split trained on); fold ``all`` trained on every case
of the split, so it gets the seeded split. Without one, a seeded split holds out a fifth of the
cases (at least one); the record names the split either way.

With labels, patches centre on foreground as nnU-Net samples training patches (the
``class_locations`` nnU-Net's preprocessor stored). Without labels, they centre on the fold's own
foreground: nnU-Net's sliding window (``nnUNetPredictor``, no mirroring) runs the fp32 network on
each sampled case, and nnU-Net's ``_sample_foreground_locations`` collects the predicted voxels
per class; the other patches are drawn uniformly, as with labels.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import NNBridgeError
from ..models.loaded import LoadedFold
from ..models.loader import load_model
from .sampling import _save_patches, check_patches, open_dataset, patch_source, sample_patches

HELDOUT_SHARE = 0.2


def image_split(cases: list[str], fold: str, splits_file: str | Path | None = None, seed: int = 0
                ) -> dict[str, Any]:
    """{"source", "calibration", "heldout", …}: which cases calibrate and which are held out."""
    cases = sorted(cases)
    if splits_file is not None and fold != "all":
        splits = json.loads(Path(splits_file).read_text())
        k = int(fold)
        if k >= len(splits):
            raise NNBridgeError(f"{splits_file}: has {len(splits)} folds, fold {k} requested; fix `splits:` or `folds:`")
        trained = set(splits[k]["train"])
        calibration = [c for c in cases if c in trained]
        heldout = [c for c in cases if c not in trained]
        if not calibration or not heldout:
            which = "none is a training case" if not calibration else "every one is a training case"
            raise NNBridgeError(
                f"{splits_file}: of the {len(cases)} image cases {which} of fold {k}, so calibration and held-out "
                "cases cannot both come from it; remove `splits:` for a seeded split"
            )
        return {"source": "splits_final.json", "splits": str(splits_file), "fold": fold,
                "calibration": calibration, "heldout": heldout,
                "not_in_split": [c for c in heldout if c not in set(splits[k]["val"])]}
    if len(cases) < 2:
        raise NNBridgeError(f"{len(cases)} image case(s): calibration and held-out patches need two cases or more "
                            "(different cases); add images")
    order = [str(c) for c in np.random.default_rng(seed).permutation(cases)]
    n_held = max(1, int(round(len(cases) * HELDOUT_SHARE)))
    record = {"source": "seeded", "seed": int(seed), "heldout_share": HELDOUT_SHARE, "fold": fold,
              "calibration": sorted(order[n_held:]), "heldout": sorted(order[:n_held])}
    if splits_file is not None:
        record["note"] = f"fold all trained on every case of {splits_file}; seeded split instead"
    else:
        record["note"] = "no splits_final.json: held-out cases may have been seen in training"
    return record


def predicted_class_locations(fold: LoadedFold, data_folder: Path, cases: list[str]) -> dict[str, dict]:
    """Case → class (or region) → voxels of the fold's own fp32 segmentation of its preprocessed
    case: nnU-Net's sliding window (Gaussian, step 0.5, no mirroring) and label conversion, then
    nnU-Net's ``_sample_foreground_locations`` as its preprocessor runs it on labels."""
    import torch  # noqa: PLC0415
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor  # noqa: PLC0415
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor  # noqa: PLC0415
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager  # noqa: PLC0415

    plans_manager = PlansManager(fold.plans)
    cm = plans_manager.get_configuration(fold.configuration)
    labels = plans_manager.get_label_manager(fold.dataset_json)
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                perform_everything_on_device=False, device=torch.device("cpu"), verbose=False,
                                verbose_preprocessing=False, allow_tqdm=False)
    predictor.manual_initialization(fold.network, plans_manager, cm, None, fold.dataset_json, fold.trainer_name,
                                    fold.mirror_axes)
    wanted = labels.foreground_regions if labels.has_regions else labels.foreground_labels
    dataset = open_dataset(data_folder, cases)
    out = {}
    with torch.no_grad():
        for case in cases:
            data = np.asarray(dataset.load_case(case)[0][:], dtype=np.float32)
            logits = predictor.predict_sliding_window_return_logits(torch.from_numpy(data))
            seg = np.asarray(labels.convert_logits_to_segmentation(logits.float()))
            out[case] = DefaultPreprocessor._sample_foreground_locations(seg[None], list(wanted), verbose=False)
    return out


def write_image_patch_sets(
    source: dict[str, Any],
    preprocessed_dir: str | Path,
    fold: str,
    calibration_out: str | Path,
    heldout_out: str | Path,
    *,
    cases: list[str],
    labels: bool,
    splits: str | Path | None,
    n_calibration: int,
    n_heldout: int,
    seed: int,
    foreground_fraction: float,
) -> dict[str, Any]:
    """Calibration and held-out patches from the model's preprocessing of an image folder
    (:func:`nnbridge.intake.images.preprocess_images`), split by :func:`image_split`."""
    data_folder, patch_size, previous = patch_source(source, Path(preprocessed_dir))
    if previous is not None:
        raise NNBridgeError(f"{source['folder']}: a cascade stage takes the {previous.name} segmentation as input; "
                            "from `images:` this needs the cascade itself; use `preprocessed:` with "
                            "`previous_stage_segs:` for this configuration")
    split = image_split(cases, fold, splits, seed)
    summary: dict[str, Any] = {"patch_size": list(patch_size), "data_folder": str(data_folder), "fold": fold,
                               "split": split}
    sets = (("calibration", calibration_out, split["calibration"], n_calibration, seed),
            ("heldout", heldout_out, split["heldout"], n_heldout, seed + 1))
    locations = None
    if labels:
        summary["foreground"] = {"from": "labels", "note": "patches centred on labelled foreground "
                                 "(nnU-Net's class_locations)"}
    else:
        sampled = sorted({c for _n, _o, names, n, _s in sets for c in names[:n]})
        loaded = load_model(source)
        locations = predicted_class_locations(loaded, data_folder, sampled)
        summary["foreground"] = {
            "from": "prediction",
            "note": "no labels: patches drawn uniformly and around the fold's own foreground "
                    "(its fp32 prediction of each case, nnU-Net's sliding window without mirroring)",
            "predicted_voxels": {c: {str(k): int(len(v)) for k, v in loc.items()} for c, loc in locations.items()},
        }
    for name, out, names, n, s in sets:
        details: list[dict[str, Any]] = []
        patches, origins = sample_patches(data_folder, names, patch_size, n, s, foreground_fraction,
                                          class_locations=locations, details=details)
        check_patches(patches, f"{name} patches of {data_folder}", origins=list(origins))
        summary[name] = {"n": int(n), "cases": sorted(set(origins)), "seed": s,
                         "foreground_centred": sum(d["class"] is not None for d in details), "patches": details,
                         **_save_patches(Path(out), patches, list(origins))}
    overlap = set(summary["calibration"]["cases"]) & set(summary["heldout"]["cases"])
    if overlap:  # image_split never overlaps; this guards the sampling
        raise NNBridgeError(f"calibration and held-out patches share cases {sorted(overlap)}")
    return summary
