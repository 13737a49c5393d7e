"""Real patches from nnU-Net's preprocessed data, for calibration and held-out parity checks.

Patches are drawn as nnU-Net draws training patches: a share of them centred on a random
foreground voxel of a random class (from the ``class_locations`` nnU-Net stores per case),
the rest at random positions; images smaller than the patch are zero-padded. Calibration uses
the fold's training cases, parity checks its validation cases, so the two never overlap.
A cascade stage's patches carry the previous stage's segmentation as one-hot channels after the
image channels, zeros outside the image, as nnU-Net's training and validation feed it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import NNBridgeError
from ..core.runlog import read_json, sha256_file
from ..core.plans import configuration_of, default_previous_stage_segs


PLANS_FIX = "copy it again from the model folder nnU-Net wrote (nnUNet_results/<Dataset>/<Trainer>__<Plans>__<configuration>)"


def fold_cases(preprocessed_dataset_dir: Path, fold: str) -> tuple[list[str], list[str]]:
    """(training cases, validation cases) of a fold from nnU-Net's ``splits_final.json``.

    ``fold_all`` trained on every case, so there is no held-out set: validation cases are then
    the last fifth of the sorted cases (reported as such by the caller).
    """
    splits_file = Path(preprocessed_dataset_dir) / "splits_final.json"
    if not splits_file.is_file():
        raise NNBridgeError(
            f"{splits_file}: missing; it is written when nnU-Net trains a fold "
            "(copy it from the training machine's nnUNet_preprocessed folder)"
        )
    splits = read_json(splits_file, fix="copy it again from the training machine's nnUNet_preprocessed folder")
    if not isinstance(splits, list) or not all(isinstance(s, dict) and {"train", "val"} <= set(s) for s in splits):
        raise NNBridgeError(f"{splits_file}: not nnU-Net's splits (a list of {{\"train\": [...], \"val\": [...]}} per "
                            "fold); copy it again from the training machine's nnUNet_preprocessed folder")
    if fold == "all":
        cases = sorted({c for split in splits for c in split["train"] + split["val"]})
        cut = max(1, len(cases) // 5)
        return cases, cases[-cut:]
    k = int(fold)
    if k >= len(splits):
        raise NNBridgeError(f"{splits_file}: has {len(splits)} folds, fold {k} requested")
    return list(splits[k]["train"]), list(splits[k]["val"])


@dataclass(frozen=True)
class PreviousStage:
    """A cascade stage's extra input: the previous stage's segmentations, fed as one one-hot
    channel per label of ``labels`` after the image channels (nnU-Net's foreground labels)."""

    name: str
    segs: Path
    labels: tuple[int, ...]


def open_dataset(data_folder: Path, cases: list[str], previous: PreviousStage | None = None) -> Any:
    """nnU-Net's own dataset reader (blosc2 or numpy) for ``data_folder``; with ``previous``, its
    ``load_case`` also returns the previous stage's segmentation (as in cascade training)."""
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class  # noqa: PLC0415

    data_folder = Path(data_folder)
    if not data_folder.is_dir():
        raise NNBridgeError(
            f"{data_folder}: preprocessed data folder missing; run nnUNetv2_preprocess for this "
            "configuration or set `preprocessed:` of the model in the config"
        )
    if previous is not None:
        check_previous_stage_segs(previous, cases)
    return infer_dataset_class(str(data_folder))(
        str(data_folder), cases,
        folder_with_segs_from_previous_stage=str(previous.segs) if previous is not None else None,
    )


def check_previous_stage_segs(previous: PreviousStage, cases: list[str]) -> None:
    """Every case has a segmentation from the previous stage, or a one-line error with the fix."""
    missing = [c for c in cases if not any((previous.segs / f"{c}{ext}").is_file() for ext in (".b2nd", ".npz", ".npy"))]
    if missing:
        raise NNBridgeError(
            f"{previous.segs}: no {previous.name} segmentation of case {missing[0]} ({len(missing)} of "
            f"{len(cases)} cases missing), which this cascade stage takes as input; nnU-Net writes them "
            f"there when the {previous.name} folds finish training: train every {previous.name} fold, or "
            "set `previous_stage_segs:` of the model in the config to the folder that holds them"
        )


def with_previous_stage(data: np.ndarray, seg_prev: Any, previous: PreviousStage, case: str) -> np.ndarray:
    """The image channels plus the previous stage's segmentation as one-hot channels, as nnU-Net
    feeds a cascade stage (``convert_labelmap_to_one_hot`` with the foreground labels)."""
    from nnunetv2.utilities.label_handling.label_handling import (  # noqa: PLC0415
        convert_labelmap_to_one_hot,
    )

    seg = np.asarray(seg_prev[:])
    if seg.shape != data.shape[1:]:
        raise NNBridgeError(
            f"{previous.segs}: the {previous.name} segmentation of case {case} has shape {seg.shape}, "
            f"its preprocessed image {data.shape[1:]}; they come from different preprocessings"
        )
    onehot = convert_labelmap_to_one_hot(seg, previous.labels, output_dtype=np.float32)
    return np.concatenate([data, np.asarray(onehot, dtype=np.float32)])


def _crop(data: np.ndarray, start: np.ndarray, patch: tuple[int, ...]) -> np.ndarray:
    """Crop ``data`` (C, *spatial) at ``start``; regions outside the image are zeros."""
    out = np.zeros((data.shape[0], *patch), dtype=np.float32)
    src, dst = [slice(None)], [slice(None)]
    for s, p, size in zip(start, patch, data.shape[1:]):
        lo, hi = max(s, 0), min(s + p, size)
        src.append(slice(lo, hi))
        dst.append(slice(lo - s, hi - s))
    out[tuple(dst)] = data[tuple(src)]
    return out


def sample_patches(
    data_folder: Path,
    cases: list[str],
    patch_size: tuple[int, ...],
    n: int,
    seed: int,
    foreground_fraction: float = 0.33,
    previous: PreviousStage | None = None,
    class_locations: dict[str, dict] | None = None,
    details: list[dict[str, Any]] | None = None,
) -> tuple[np.ndarray, list[str]]:
    """``n`` patches (n, C, *patch_size) from ``cases``, cycling through the cases in order (a
    cascade stage's with the ``previous`` stage's one-hot channels after the image channels).

    Foreground voxels come from nnU-Net's ``class_locations`` of each case, or from
    ``class_locations`` (case → class → voxels) when given; ``details`` (a list) receives per
    patch its case, start and the class it is centred on (``None``: a random position)."""
    if not cases:
        raise NNBridgeError(f"{data_folder}: no cases to sample patches from")
    rng = np.random.default_rng(seed)
    dataset = open_dataset(data_folder, cases, previous)
    patch = tuple(int(p) for p in patch_size)
    patches, origins = [], []
    loaded: dict[str, tuple[np.ndarray, dict]] = {}
    for i in range(n):
        case = cases[i % len(cases)]
        if case not in loaded:
            data, _seg, seg_prev, props = dataset.load_case(case)
            data = np.asarray(data[:], dtype=np.float32)
            if previous is not None:
                data = with_previous_stage(data, seg_prev, previous, case)
            loaded[case] = (data, props)
        data, props = loaded[case]
        spatial = np.array(data.shape[1:])
        if len(patch) == 2 and len(spatial) == 3:  # 2d configuration: one slice per patch
            z = int(rng.integers(spatial[0]))
            data, spatial = data[:, z], spatial[1:]
        start = rng.integers(np.minimum(0, spatial - patch), np.maximum(spatial - patch, 0) + 1)
        known = class_locations[case] if class_locations is not None else props.get("class_locations")
        locations = {k: v for k, v in (known or {}).items() if len(v)}
        cls = None
        if locations and rng.random() < foreground_fraction:
            cls = list(locations)[int(rng.integers(len(locations)))]
            voxel = locations[cls][int(rng.integers(len(locations[cls])))][1:]  # drop channel
            voxel = np.asarray(voxel)[-len(patch):]
            start = voxel - np.array(patch) // 2
        patches.append(_crop(data, start, patch))
        origins.append(case)
        if details is not None:
            details.append({"case": case, "start": [int(s) for s in start],
                            "class": None if cls is None else (list(cls) if isinstance(cls, tuple) else int(cls))})
    return np.stack(patches).astype(np.float32), origins


def patch_source(source: dict[str, Any], preprocessed_dataset_dir: Path
                 ) -> tuple[Path, tuple[int, ...], PreviousStage | None]:
    """(preprocessed data folder, patch size, previous stage) of a model: nnU-Net's from its
    plans and configuration, a plain model's from its ``data_identifier`` and ``example_size``.

    The previous stage is set for a cascade stage: its segmentations are the entry's
    ``previous_stage_segs``, by default where nnU-Net's training reads them from
    (:func:`nnbridge.plans.default_previous_stage_segs`)."""
    if source.get("kind", "nnunet") != "nnunet":
        if not source.get("data_identifier"):
            raise NNBridgeError(
                f"model {source.get('name')!r}: `data_identifier:` missing (the folder inside "
                f"{preprocessed_dataset_dir} that holds the preprocessed cases, e.g. nnUNetPlans_3d_fullres)"
            )
        return Path(preprocessed_dataset_dir) / source["data_identifier"], tuple(source["example_size"]), None
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager  # noqa: PLC0415

    model_folder = Path(source["folder"])
    _trainer, _plans, configuration = configuration_of(model_folder)
    plans_manager = PlansManager(read_json(model_folder / "plans.json", fix=PLANS_FIX))
    cm = plans_manager.get_configuration(configuration)
    previous = None
    if cm.previous_stage_name is not None:
        labels = plans_manager.get_label_manager(read_json(model_folder / "dataset.json", fix=PLANS_FIX)).foreground_labels
        segs = source.get("previous_stage_segs") or default_previous_stage_segs(model_folder, cm.previous_stage_name)
        previous = PreviousStage(cm.previous_stage_name, Path(segs), tuple(int(label) for label in labels))
    return Path(preprocessed_dataset_dir) / cm.data_identifier, tuple(int(p) for p in cm.patch_size), previous


def write_patch_sets(
    source: dict[str, Any],
    preprocessed_dataset_dir: Path,
    fold: str,
    calibration_out: Path,
    heldout_out: Path,
    *,
    n_calibration: int,
    n_heldout: int,
    seed: int,
    foreground_fraction: float,
) -> dict[str, Any]:
    """Calibration patches from the fold's training cases, held-out ones from its validation
    cases (``source`` as :func:`nnbridge.models.load_model` takes it)."""
    data_folder, patch_size, previous = patch_source(source, preprocessed_dataset_dir)
    train_cases, val_cases = fold_cases(Path(preprocessed_dataset_dir), fold)
    summary: dict[str, Any] = {"patch_size": list(patch_size), "data_folder": str(data_folder),
                               "fold": fold}
    if fold == "all":
        summary["note"] = ("fold all trained on every case: the held-out patches (the last fifth of the cases) "
                           "were seen in training")
    if previous is not None:
        summary["previous_stage"] = {"name": previous.name, "segs": str(previous.segs),
                                     "onehot_labels": list(previous.labels)}
    sampled = {}
    for name, cases, n, s in (("calibration", train_cases, n_calibration, seed),
                              ("heldout", val_cases, n_heldout, seed + 1)):
        patches, origins = sample_patches(data_folder, cases, patch_size, n, s, foreground_fraction, previous)
        check_patches(patches, str(data_folder), origins=origins)
        sampled[name] = (patches, origins)
        summary[name] = {"n": int(n), "cases": sorted(set(origins)), "seed": s}
    overlap = set(summary["calibration"]["cases"]) & set(summary["heldout"]["cases"])
    if overlap and fold != "all":
        raise NNBridgeError(f"calibration and held-out patches share cases {sorted(overlap)}")
    for name, out in (("calibration", calibration_out), ("heldout", heldout_out)):
        summary[name].update(_save_patches(out, *sampled[name]))
    return summary


def check_patches(patches: np.ndarray, where: str, *, origins: list[str] | None = None,
                  multiple: tuple[int, ...] | None = None, exact: tuple[int, ...] | None = None) -> None:
    """Refuse patches no later stage could use truthfully, in one line naming ``where``: none at
    all, complex or non-numeric values, NaN/Inf values (every gate would compare against them),
    spatial sizes the network does not take (not a multiple of ``multiple``, or not ``exact``
    for a model without dynamic spatial axes). ``origins``: the case of each patch, to name the
    cases holding the non-finite values."""
    if len(patches) == 0:
        raise NNBridgeError(f"{where}: holds 0 patches; give at least one (N, C, *spatial) patch")
    if np.iscomplexobj(patches):
        raise NNBridgeError(f"{where}: complex-valued patches ({patches.dtype}); give real-valued images")
    if patches.dtype.kind not in "fiub":
        raise NNBridgeError(f"{where}: patches of dtype {patches.dtype}; give a numeric (float) array")
    finite = np.isfinite(patches)
    if not finite.all():
        bad = int(patches.size - np.count_nonzero(finite))
        per_patch = ~finite.reshape(len(patches), -1).all(axis=1)
        cases = sorted({origins[i] for i in np.flatnonzero(per_patch)}) if origins else []
        in_cases = f" (from case(s) {', '.join(cases)})" if cases else ""
        raise NNBridgeError(
            f"{where}: {bad} NaN/Inf value(s) in {int(per_patch.sum())} of {len(patches)} patches{in_cases}; "
            "the parity gates cannot compare against them: replace the non-finite voxels in the data"
        )
    spatial = tuple(int(s) for s in patches.shape[2:])
    if exact is not None and spatial != tuple(exact):
        raise NNBridgeError(f"{where}: patches of spatial size {list(spatial)}; this model has no dynamic "
                            f"spatial axes and takes {list(exact)}")
    if multiple is not None:
        bad_axes = [(s, m) for s, m in zip(spatial, multiple) if s % m]
        if len(multiple) != len(spatial) or bad_axes:
            raise NNBridgeError(f"{where}: patches of spatial size {list(spatial)}; the network takes multiples of "
                                f"{list(multiple)} per axis (spatial_multiple): crop or pad the patches")


def read_patch_file(path: Path, channels: int, spatial: tuple[int, ...]) -> np.ndarray:
    """User-given patches (``.npy``, or ``.npz`` with a ``patches`` array): (N, C, *spatial) of
    real numbers (complex or non-numeric arrays are refused, never cast)."""
    path = Path(path)
    if not path.is_file():
        raise NNBridgeError(f"{path}: patch file not found; fix `patches:` of the model in the config")
    try:
        if path.suffix == ".npz":
            with np.load(path) as archive:
                names = list(archive.files)
                if "patches" in names or len(names) == 1:
                    array = archive["patches" if "patches" in names else names[0]]
        else:
            array = np.load(path, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - numpy's errors vary by corruption
        raise NNBridgeError(f"{path}: not a readable .npy/.npz array ({exc})") from exc
    if path.suffix == ".npz" and "patches" not in names and len(names) != 1:
        # which of several arrays holds the patches would be a guess (the first: the same for both
        # `calibration:` and `heldout:` when they name one file)
        raise NNBridgeError(f"{path}: holds {len(names)} arrays {names[:5]}, none named 'patches'; save one array "
                            "per file (np.save), or name it 'patches' (np.savez(path, patches=...))")
    want = (channels, *spatial)
    if array.ndim != len(want) + 1 or tuple(array.shape[1:2]) != (channels,):
        raise NNBridgeError(f"{path}: patches of shape {array.shape}; expected (N, {', '.join(map(str, want))})")
    if np.iscomplexobj(array) or array.dtype.kind not in "fiub":
        check_patches(array, str(path))  # refuses it, naming the dtype
    return np.ascontiguousarray(array, dtype=np.float32)


def copy_patch_sets(calibration_in: Path, heldout_in: Path, calibration_out: Path, heldout_out: Path,
                    *, channels: int, spatial: tuple[int, ...], n_calibration: int,
                    n_heldout: int, multiple: int | list[int] | tuple[int, ...] = 1,
                    dynamic_spatial: bool = True) -> dict[str, Any]:
    """Patches the user supplies as arrays (models without nnU-Net preprocessed data), checked
    (:func:`check_patches`) before anything is written: spatial sizes multiples of ``multiple``
    (the model's ``spatial_multiple``), exactly ``spatial`` without ``dynamic_spatial``."""
    multiples = tuple([multiple] * len(spatial) if isinstance(multiple, int) else multiple)
    summary: dict[str, Any] = {"patch_size": list(spatial), "data_folder": None, "fold": None}
    arrays = {}
    for name, src, n in (("calibration", calibration_in, n_calibration), ("heldout", heldout_in, n_heldout)):
        arrays[name] = read_patch_file(Path(src), channels, spatial)[:n]
        check_patches(arrays[name], str(src), multiple=multiples, exact=None if dynamic_spatial else tuple(spatial))
    for name, src, out in (("calibration", calibration_in, calibration_out), ("heldout", heldout_in, heldout_out)):
        patches = arrays[name]
        summary[name] = {"n": int(len(patches)), "cases": [str(src)], "seed": None,
                         **_save_patches(out, patches, [f"{Path(src).name}[{i}]" for i in range(len(patches))])}
        # no case is known: each patch is its own group for the per-case gates
    return summary


def _save_patches(out: Path, patches: np.ndarray, origins: list[str]) -> dict[str, str]:
    """Write a patch set; its file name and sha256 for the record (later stages check it)."""
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, patches=patches, cases=np.array(origins))
    return {"path": Path(out).name, "sha256": sha256_file(out)}


def load_patches(path: Path, record: Path | None = None) -> np.ndarray:
    """Patches written by :func:`write_patch_sets`; with ``record`` (the stage's patches.json)
    the file is first checked against the sha256 it states."""
    if record is not None:
        summary = read_json(record, fix="rerun the patches stage")
        entry = next((e for e in summary.values() if isinstance(e, dict) and e.get("path") == Path(path).name), None)
        if entry is None or "sha256" not in entry:
            raise NNBridgeError(f"{record}: states no sha256 of {Path(path).name}; rerun the patches stage")
        if sha256_file(path) != entry["sha256"]:
            raise NNBridgeError(f"{path}: sha256 differs from the one {record} states; the file changed after "
                                "the patches stage wrote it: delete both files and rerun")
    with np.load(path) as archive:
        return archive["patches"]


def load_patch_cases(path: Path) -> list[str]:
    """The case each patch of :func:`write_patch_sets` (or :func:`copy_patch_sets`) comes from."""
    with np.load(path) as archive:
        return [str(c) for c in archive["cases"]]
