"""What the pipeline will process: models, folds and the variants of each fold.

Pure functions over the validated config (no snakemake import), used by the workflow's
``common.smk`` and by the report.
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Callable, Collection
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import onnx

from ..core.artifacts import KIND_RUNTIMES, artifact_path, method_kind, method_runtimes
from ..core.errors import NNBridgeError
from ..core.keys import Variant, fold_order
from ..core.metadata import read_metadata
from ..core.onnxgraph import activation_footprint
from ..core.plans import configuration_of, default_previous_stage_segs, previous_stage
from ..core.runlog import read_json
from ..intake.images import ImageSet, list_image_cases
from ..intake.modelzip import ModelZip, read_model_zip
from ..quantize.static import calibrates_on_openvino


@dataclass(frozen=True)
class FoldKey:
    """One cached branch of the pipeline: results/<dataset>/<model>/fold_<fold>."""

    dataset: str
    model: str
    fold: str

    @property
    def label(self) -> str:
        return f"{self.dataset}/{self.model}/fold_{self.fold}"

    def dir(self, results: str) -> str:
        return f"{results}/{self.dataset}/{self.model}/fold_{self.fold}"


@dataclass(frozen=True)
class ModelEntry:
    """A configured model: an nnU-Net model folder and its folds, or a plain PyTorch checkpoint
    (one branch, named by its ``fold:``, the split whose held-out cases it is checked on)."""

    folder: str
    preprocessed: str | None
    folds: tuple[str, ...]
    checkpoint: str
    raw: str | None = None
    kind: str = "nnunet"
    entry: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    """The validated config entry (plain models: everything :func:`nnbridge.models.load_model` needs)."""
    previous_stage: str | None = None
    """A cascade stage's previous stage (``3d_lowres``), from the model folder's plans.json."""
    previous_stage_segs: str | None = None
    """A cascade stage's input segmentations: ``previous_stage_segs:``, else where nnU-Net puts them."""
    zip: ModelZip | None = field(default=None, compare=False, hash=False)
    """The model zip the folder is unpacked from (``folder`` is then its place in the cache)."""
    zip_folder: str | None = None
    """The model folder's path inside the zip."""
    images: ImageSet | None = field(default=None, compare=False, hash=False)
    """The image folder patches and whole-case parity come from (instead of ``preprocessed``)."""

    @property
    def dataset(self) -> str:
        if self.kind == "nnunet":
            return Path(self.folder).parent.name
        return str(self.entry.get("dataset", "pytorch"))

    @property
    def name(self) -> str:
        return Path(self.folder).name if self.kind == "nnunet" else str(self.entry["name"])

    @property
    def checkpoint_path(self) -> str:
        """The file a fold's export reads (``{fold}`` filled by :meth:`checkpoint_of`)."""
        return f"{self.folder}/fold_{{fold}}/{self.checkpoint}" if self.kind == "nnunet" else self.checkpoint

    def checkpoint_of(self, fold: str) -> str:
        return self.checkpoint_path.replace("{fold}", str(fold))

    @property
    def quantize(self) -> tuple[str, ...] | None:
        """The quantized variants this model gets (``None``: every one in the config)."""
        names = self.entry.get("quantize")
        return None if names is None else tuple(names)

    def source(self, fold: str) -> dict[str, Any]:
        """What :func:`nnbridge.models.load_model` takes for one fold (JSON-serializable)."""
        trusted = bool(self.entry.get("trusted", False))
        if self.kind == "nnunet":
            source = {"kind": "nnunet", "folder": self.folder, "fold": str(fold),
                      "checkpoint": self.checkpoint, "trusted": trusted}
            if self.previous_stage_segs:
                source["previous_stage_segs"] = self.previous_stage_segs
            return source
        keys = ("name", "checkpoint", "format", "class", "init_kwargs", "trusted", "input_channels",
                "example_size", "spatial_multiple", "dynamic_axes", "labels", "output",
                "output_index", "output_key", "mirror_axes", "data_identifier")
        return {"kind": "pytorch", "fold": str(fold),
                **{k: self.entry[k] for k in keys if k in self.entry}}

    def fold_keys(self) -> list[FoldKey]:
        return [FoldKey(self.dataset, self.name, f) for f in self.folds]

    def zip_member(self, path: str) -> str | None:
        """The zip member a file of the (unpacked) model folder comes from; ``None`` when the
        model is no zip's or the zip lacks that file."""
        if self.zip is None or not path.startswith(f"{self.folder}/"):
            return None
        relative = path[len(self.folder) + 1:]
        folder = next(f for f in self.zip.folders if f.path == self.zip_folder)
        return f"{self.zip_folder}/{relative}" if relative in folder.files else None


def discover_folds(folder: Path, checkpoint: str) -> tuple[str, ...]:
    """Folds of a model folder that hold ``checkpoint`` (``fold_0``…, ``fold_all``)."""
    found = []
    for sub in sorted(Path(folder).glob("fold_*")):
        if (sub / checkpoint).is_file():
            found.append(sub.name[len("fold_"):])
    return tuple(sorted(found, key=fold_order))


class MissingInput(NNBridgeError):
    """An input a model or fold needs is missing or unreadable (not a mistake in the config's
    form): with ``--keep-going`` that model or fold is reported failed and the others run."""


INPUTS_STAGE = "inputs (checked before the run)"


def discover_models(entries: list[dict[str, Any]], demo_folder: str | None = None,
                    quantize_names: list[str] | tuple[str, ...] = (),
                    zip_cache: str | Path | None = None) -> dict[str, ModelEntry]:
    """Validated ``models:`` entries keyed by ``<dataset>/<model>``; the first missing input
    raises (:func:`plan_models` with ``keep_going`` reports them instead)."""
    return plan_models(entries, demo_folder=demo_folder, quantize_names=quantize_names, zip_cache=zip_cache)[0]


def plan_models(entries: list[dict[str, Any]], *, demo_folder: str | None = None,
                quantize_names: list[str] | tuple[str, ...] = (), demo_root: str | None = None,
                zip_cache: str | Path | None = None, produced_folders: tuple[str, ...] = (),
                keep_going: bool = False) -> tuple[dict[str, ModelEntry], list[dict[str, Any]]]:
    """(validated ``models:`` entries keyed by ``<dataset>/<model>``, failure rows).

    nnU-Net folds listed in the config are used as given, each checked for its checkpoint (the
    demo's, under ``demo_root``, are produced by the pipeline); otherwise every ``fold_*`` folder
    holding the checkpoint is used. ``produced_folders``: other model folders a rule writes
    (the real-size model of ``make bench-pipeline``), taken like the demo's. A ``zip:`` entry gives one model per configuration in the zip
    (``configurations:`` narrows them), unpacked into ``zip_cache/<sha256 prefix>/`` by the
    pipeline. Plain PyTorch entries (``kind: pytorch``) are one branch each.
    Every input no rule produces is checked here, before any job runs (plans.json, dataset.json,
    splits_final.json, checkpoints, patch files, raw dataset.json): a missing one raises a
    one-line :class:`MissingInput`, or with ``keep_going`` drops that model or fold and adds a row
    (dataset, model, fold, stage, cause, log) for the report, so the other models and folds run.
    Mistakes in the config's form always raise.
    """
    models: dict[str, ModelEntry] = {}
    failures: list[dict[str, Any]] = []

    def failed(dataset: str, name: str, fold: str | None, exc: NNBridgeError) -> None:
        if not keep_going:
            raise exc
        failures.append({"dataset": dataset, "model": name, "fold": fold, "stage": INPUTS_STAGE,
                         "cause": str(exc), "log": None})

    for i, entry in enumerate(entries):
        kind = entry.get("kind", "nnunet")
        _refuse_other_kind_keys(entry, i)
        try:
            found = (_nnunet_entries(entry, i, demo_folder, zip_cache) if kind == "nnunet"
                     else [_plain_entry(entry, i)])
        except MissingInput as exc:
            failed(*_entry_names(entry), None, exc)
            continue
        for model in found:
            where = f"config models[{i}] ({model.name})"
            for name in model.quantize or ():
                if name not in quantize_names:
                    raise NNBridgeError(f"{where}: quantize variant {name!r} is not in the config's quantize section {list(quantize_names)}")
            key = f"{model.dataset}/{model.name}"
            if key in models:
                raise NNBridgeError(f"{where}: {key} is listed twice; merge the two entries or rename one")
            produced = (lambda p: _under(p, demo_root)) if demo_root else (lambda p: False)
            if model.folder == demo_folder or model.folder in produced_folders or model.zip is not None:
                produced = lambda p: True  # noqa: E731 - the demo model, a zip's: every input comes from a rule
            problem = _missing_model_input(model, where, produced)
            if problem is not None:
                failed(model.dataset, model.name, None, problem)
                continue
            if model.raw and not produced(model.raw) and not (Path(model.raw) / "dataset.json").is_file():
                failed(model.dataset, model.name, None, MissingInput(
                    f"{where}: {model.raw}/dataset.json missing, which whole-case parity reads; `raw:` must be the "
                    "dataset's nnUNet_raw folder (or remove `raw:`)"))
                model = replace(model, raw=None)
            folds = []
            for fold in model.folds:
                problem = _missing_fold_input(model, fold, where, produced)
                if problem is None:
                    folds.append(fold)
                else:
                    failed(model.dataset, model.name, fold, problem)
            if folds:
                models[key] = replace(model, folds=tuple(folds))
    return models, failures


def _entry_names(entry: dict[str, Any]) -> tuple[str, str]:
    """(dataset, model name) of a ``models:`` entry, as its results folder names them."""
    if entry.get("kind", "nnunet") == "nnunet":
        folder = Path(str(entry.get("folder", "")).rstrip("/"))
        return folder.parent.name, folder.name
    return str(entry.get("dataset", "pytorch")), str(entry.get("name"))


def _under(path: str, root: str) -> bool:
    return Path(os.path.normpath(path)).is_relative_to(os.path.normpath(root))


def _missing_model_input(model: ModelEntry, where: str, produced: Callable[[str], bool]) -> MissingInput | None:
    """The first input of the model (all folds) that is missing or unreadable."""
    if model.kind == "nnunet":
        for name in ("plans.json", "dataset.json"):
            path = Path(model.folder) / name
            if produced(str(path)):
                continue
            try:
                read_json(path, fix=MODEL_FOLDER_FIX)
            except NNBridgeError as exc:
                return MissingInput(f"{where}: {exc}")
    else:
        if not produced(model.checkpoint) and not Path(model.checkpoint).is_file():
            return MissingInput(f"{where}: {model.checkpoint}: checkpoint missing; fix `checkpoint:` of the model")
        for role, path in sorted((model.entry.get("patches") or {}).items()):
            if not produced(path) and not Path(path).is_file():
                return MissingInput(f"{where}: {path}: patch file missing; fix `patches: {role}:` of the model")
    if model.preprocessed and not produced(model.preprocessed):
        splits = Path(model.preprocessed) / "splits_final.json"
        try:
            content = read_json(splits, fix="it is written when nnU-Net trains a fold: copy it from the training "
                                "machine's nnUNet_preprocessed folder, or fix `preprocessed:`")
        except NNBridgeError as exc:
            return MissingInput(f"{where}: {exc}")
        if not isinstance(content, list):
            return MissingInput(f"{where}: {splits}: not nnU-Net's splits (a list with one entry per fold)")
    return None


def _missing_fold_input(model: ModelEntry, fold: str, where: str,
                        produced: Callable[[str], bool]) -> MissingInput | None:
    """The first input of one fold that is missing: its checkpoint, its split."""
    checkpoint = model.checkpoint_of(fold) if model.kind == "nnunet" else None
    if checkpoint and not produced(checkpoint) and not Path(checkpoint).is_file():
        return MissingInput(f"{where}: {checkpoint}: missing, so fold {fold} cannot be exported; remove {fold} "
                            "from `folds:` or copy the fold's checkpoint")
    if model.preprocessed and fold != "all" and not produced(model.preprocessed):
        splits = read_json(Path(model.preprocessed) / "splits_final.json")
        if int(fold) >= len(splits):
            return MissingInput(f"{where}: {model.preprocessed}/splits_final.json has {len(splits)} folds, fold "
                                f"{fold} is configured; remove it from `folds:` or use the split it was trained on")
    return None


MODEL_FOLDER_FIX = ("an nnU-Net model folder holds it: copy it from the training machine's "
                    "nnUNet_results/<Dataset>/<Trainer>__<Plans>__<configuration>")


def check_plans(plans: Any, plans_file: str | Path, configuration: str, where: str) -> None:
    """A model folder's plans.json holds nnU-Net's plans with the folder's ``configuration`` (its
    name's last part), else a one-line :class:`MissingInput` naming the file."""
    configurations = plans.get("configurations") if isinstance(plans, dict) else None
    if not isinstance(configurations, dict):
        raise MissingInput(f"{where}: {plans_file}: not nnU-Net's plans (no 'configurations' object); "
                           f"{MODEL_FOLDER_FIX}")
    if configuration not in configurations:
        raise MissingInput(f"{where}: {plans_file}: has no configuration {configuration!r} (the folder name's last "
                           f"part); it has {sorted(configurations)}: fix the folder name or copy the model's own "
                           "plans.json")


#: keys of a ``models:`` entry that only one kind of model takes (the other kind would ignore them)
NNUNET_ONLY_KEYS = ("folder", "zip", "configurations", "images", "splits", "folds", "raw", "previous_stage_segs")
PLAIN_ONLY_KEYS = ("name", "dataset", "format", "class", "init_kwargs", "input_channels", "example_size",
                   "spatial_multiple", "dynamic_axes", "output", "output_index", "output_key", "mirror_axes",
                   "data_identifier", "fold", "patches")


def _refuse_other_kind_keys(entry: dict[str, Any], i: int) -> None:
    """A key the entry's kind ignores (``folds:`` on a plain model, ``class:`` on an nnU-Net
    folder) is refused in one line rather than dropped without a word."""
    kind = entry.get("kind", "nnunet")
    foreign = PLAIN_ONLY_KEYS if kind == "nnunet" else NNUNET_ONLY_KEYS
    found = [k for k in foreign if k in entry]
    if not found:
        return
    if kind == "nnunet":
        name = entry.get("folder") or entry.get("zip") or ""
        raise NNBridgeError(
            f"config models[{i}] ({name}): `{found[0]}:` is for plain PyTorch models (`kind: pytorch`); an nnU-Net "
            "model folder takes its network, labels and folds from the folder: remove it, or add `kind: pytorch`")
    hint = (" (a plain model is one checkpoint; `fold:` names the split whose held-out cases it is checked on)"
            if found[0] == "folds" else "")
    raise NNBridgeError(f"config models[{i}] ({entry.get('name', 'kind: pytorch')}): `{found[0]}:` is for nnU-Net "
                        f"model folders, a plain PyTorch model ignores it{hint}; remove it")


def _checkpoint_name(entry: dict[str, Any], where: str) -> str:
    checkpoint = entry.get("checkpoint", "checkpoint_final.pth")
    if checkpoint not in ("checkpoint_final.pth", "checkpoint_best.pth"):
        raise NNBridgeError(f"{where}: checkpoint {checkpoint!r}: an nnU-Net fold has checkpoint_final.pth or checkpoint_best.pth")
    return checkpoint


def _nnunet_entries(entry: dict[str, Any], i: int, demo_folder: str | None,
                    zip_cache: str | Path | None) -> list[ModelEntry]:
    if entry.get("zip"):
        return _zip_entries(entry, i, zip_cache)
    folder = str(entry.get("folder", "")).rstrip("/")
    where = f"config models[{i}] ({folder})"
    if not folder:
        raise NNBridgeError(f"config models[{i}]: `folder:` or `zip:` missing (an nnU-Net model folder or a zip "
                            "from nnUNetv2_export_model_to_zip; plain PyTorch models need `kind: pytorch`)")
    if entry.get("configurations"):
        raise NNBridgeError(f"{where}: `configurations:` is for `zip:` entries (a model folder is one configuration); "
                            "remove it")
    if len(Path(folder).name.split("__")) != 3:
        raise NNBridgeError(
            f"{where}: folder name must be <Trainer>__<Plans>__<configuration> "
            "(the folder nnU-Net writes under nnUNet_results/<Dataset>/)"
        )
    checkpoint = _checkpoint_name(entry, where)
    if entry.get("folds"):
        folds = tuple(str(f) for f in entry["folds"])
    elif folder == demo_folder:
        raise NNBridgeError(f"{where}: the demo model is trained by the pipeline; list its folds")
    else:
        if not Path(folder).is_dir():
            raise MissingInput(f"{where}: folder does not exist; fix the path in config/config.yaml")
        folds = discover_folds(Path(folder), checkpoint)
        if not folds:
            raise MissingInput(f"{where}: no fold_*/{checkpoint} found; list `folds:` or fix the path")
    plans_file, dataset_file = Path(folder) / "plans.json", Path(folder) / "dataset.json"
    try:
        plans = read_json(plans_file, fix=MODEL_FOLDER_FIX) if plans_file.is_file() else None
    except NNBridgeError as exc:
        raise MissingInput(f"{where}: {exc}") from None
    if plans is not None:
        check_plans(plans, plans_file, configuration_of(folder)[2], where)

    def dataset_json() -> dict[str, Any]:
        if not dataset_file.is_file():
            raise MissingInput(f"{where}: {dataset_file} missing; `images:` needs the model folder's dataset.json")
        return read_json(dataset_file, fix=MODEL_FOLDER_FIX)

    return [_nnunet_model(entry, where, folder, folds, checkpoint, plans, dataset_json)]


def _zip_entries(entry: dict[str, Any], i: int, zip_cache: str | Path | None) -> list[ModelEntry]:
    """One model per configuration folder of the zip (narrowed by ``configurations:``)."""
    where = f"config models[{i}] ({entry['zip']})"
    if entry.get("folder"):
        raise NNBridgeError(f"{where}: give `zip:` or `folder:`, not both")
    if zip_cache is None:
        raise NNBridgeError(f"{where}: model zips need a cache folder to be unpacked into (zip_cache)")
    checkpoint = _checkpoint_name(entry, where)
    archive = read_model_zip(entry["zip"], Path(zip_cache) / "sha256.json")
    available = sorted({f.configuration for f in archive.folders})
    wanted = [str(c) for c in entry.get("configurations") or available]
    unknown = [c for c in wanted if c not in available]
    if unknown:
        raise NNBridgeError(f"{where}: configuration {unknown[0]!r} is not in the zip; it holds {available}; "
                            "fix `configurations:`")
    models = []
    for zipped in archive.folders:
        if zipped.configuration not in wanted:
            continue
        model_where = f"{where} {zipped.path}"
        for needed in ("plans.json", "dataset.json"):
            if needed not in zipped.files:
                raise NNBridgeError(f"{model_where}: no {needed} in the zip; re-export the model with "
                                    "nnUNetv2_export_model_to_zip")
        present = zipped.folds(checkpoint)
        folds = tuple(str(f) for f in entry.get("folds") or present)
        missing = [f for f in folds if f not in present]
        if missing or not folds:
            raise NNBridgeError(
                f"{model_where}: no fold_{missing[0] if missing else '*'}/{checkpoint} in the zip (it has folds "
                f"{list(present)} with {checkpoint}); fix `folds:` or `checkpoint:`"
            )
        folder = f"{str(zip_cache).rstrip('/')}/{archive.key}/{zipped.path}"
        plans = archive.read_json(f"{zipped.path}/plans.json")
        check_plans(plans, f"{entry['zip']}: {zipped.path}/plans.json", zipped.configuration, model_where)
        model = _nnunet_model(entry, model_where, folder, folds, checkpoint, plans,
                              lambda z=zipped: archive.read_json(f"{z.path}/dataset.json"))
        models.append(replace(model, zip=archive, zip_folder=zipped.path))
    return models


def _nnunet_model(entry: dict[str, Any], where: str, folder: str, folds: tuple[str, ...], checkpoint: str,
                  plans: dict[str, Any] | None, dataset_json: Any) -> ModelEntry:
    """A model folder's entry with its data: ``preprocessed:`` (+ ``raw:``) or ``images:``."""
    has_preprocessed, has_images = bool(entry.get("preprocessed")), bool(entry.get("images"))
    if has_preprocessed == has_images:
        raise NNBridgeError(
            f"{where}: " + ("both `images:` and `preprocessed:` given; keep one" if has_images else
                            "`images:` or `preprocessed:` missing (calibration and held-out patches come from it)")
            + ": `images:` is a folder of <case>_0000<ending> images (nnbridge preprocesses them with the model's "
            "plans), `preprocessed:` the dataset's nnUNet_preprocessed folder"
        )
    previous, segs = _previous_stage(entry, folder, where, plans)
    raw, images = None, None
    if has_images:
        for key, why in (("raw", "whole-case parity runs on the held-out images"),
                         ("previous_stage_segs", "cascade stages need `preprocessed:`")):
            if entry.get(key):
                raise NNBridgeError(f"{where}: `{key}:` is for `preprocessed:` entries ({why}); remove it")
        labels = entry.get("labels")
        if labels is not None and not isinstance(labels, str):
            raise NNBridgeError(f"{where}: `labels:` of an nnU-Net model is a folder of label files <case><ending>; "
                                "label names come from its dataset.json")
        if previous is not None:
            raise NNBridgeError(
                f"{where}: {configuration_of(folder)[2]} is a cascade stage (it takes the {previous} segmentation "
                "as input); from `images:` nnbridge does not run its previous stage: narrow `configurations:` to "
                "the other configurations, or give `preprocessed:` and `previous_stage_segs:`"
            )
        splits = str(entry["splits"]) if entry.get("splits") else None
        if splits and not Path(splits).is_file():
            raise NNBridgeError(f"{where}: splits file {splits} does not exist; fix `splits:` or remove it")
        cases = list_image_cases(str(entry["images"]).rstrip("/"), dataset_json(), labels, where)
        images = ImageSet(str(entry["images"]).rstrip("/"), str(labels).rstrip("/") if labels else None,
                          splits, cases)
    else:
        for key in ("labels", "splits"):
            if entry.get(key):
                raise NNBridgeError(f"{where}: `{key}:` goes with `images:`; with `preprocessed:` labels and splits "
                                    "come from the preprocessed folder; remove it")
        raw = str(entry["raw"]).rstrip("/") if entry.get("raw") else None
    preprocessed = str(entry["preprocessed"]).rstrip("/") if has_preprocessed else None
    return ModelEntry(folder, preprocessed, folds, checkpoint, raw, "nnunet", dict(entry), previous, segs,
                      images=images)


def _previous_stage(entry: dict[str, Any], folder: str, where: str,
                    plans: dict[str, Any] | None) -> tuple[str | None, str | None]:
    """(previous stage, folder of its segmentations) of a cascade stage, else (None, None)
    (``plans``: the model's plans.json, ``None`` while the pipeline has yet to write it)."""
    previous = previous_stage(plans, configuration_of(folder)[2]) if plans is not None else None
    if previous is None:
        if entry.get("previous_stage_segs") and plans is not None:
            raise NNBridgeError(f"{where}: `previous_stage_segs:` is for cascade stages only (plans.json "
                                "gives this configuration no previous_stage); remove it")
        return None, None
    segs = str(entry.get("previous_stage_segs") or default_previous_stage_segs(folder, previous)).rstrip("/")
    if not Path(segs).is_dir():
        raise MissingInput(
            f"{where}: {segs} does not exist; this cascade stage takes the {previous} segmentations that "
            f"nnU-Net writes there when the {previous} folds finish training: train them, or set "
            "`previous_stage_segs:` of the model to the folder that holds them"
        )
    return previous, segs


PLAIN_REQUIRED = ("name", "checkpoint", "input_channels", "example_size")


def _plain_entry(entry: dict[str, Any], i: int) -> ModelEntry:
    where = f"config models[{i}] ({entry.get('name', 'kind: pytorch')})"
    missing = [k for k in PLAIN_REQUIRED if k not in entry]
    if missing:
        raise NNBridgeError(f"{where}: a plain PyTorch model needs {', '.join(missing)}; see config/README.md")
    if isinstance(entry.get("labels"), str):
        raise NNBridgeError(f"{where}: `labels:` of a plain model maps label names to class indices, e.g. "
                            "{background: 0, liver: 1}")
    fmt = entry.get("format", "state_dict")
    if fmt == "state_dict" and not entry.get("class"):
        raise NNBridgeError(f"{where}: `class:` missing; a state dict needs its model class (package.module.Class or file.py:Class)")
    if fmt == "pickle" and not entry.get("trusted"):
        raise NNBridgeError(f"{where}: `format: pickle` runs arbitrary code when loaded; add `trusted: true` if you trust the file")
    example = list(entry["example_size"])
    multiple = entry.get("spatial_multiple", 1)
    multiple = [multiple] * len(example) if isinstance(multiple, int) else list(multiple)
    if len(multiple) != len(example):
        raise NNBridgeError(f"{where}: spatial_multiple {multiple} has not one value per axis of example_size {example}")
    bad = [(s, m) for s, m in zip(example, multiple) if s % m]
    if bad:
        raise NNBridgeError(
            f"{where}: example_size {example} is not a multiple of spatial_multiple {multiple}; "
            f"use sizes divisible by {multiple} per axis"
        )
    has_preprocessed = bool(entry.get("preprocessed"))
    has_patches = bool(entry.get("patches"))
    if has_preprocessed == has_patches:
        raise NNBridgeError(
            f"{where}: give either `preprocessed:` (+ `data_identifier:`, nnU-Net preprocessed "
            "cases) or `patches: {calibration: ..., heldout: ...}` (arrays), not both or neither"
        )
    if has_preprocessed and not entry.get("data_identifier"):
        raise NNBridgeError(f"{where}: `data_identifier:` missing (the folder in {entry['preprocessed']} holding the cases)")
    fold = str(entry.get("fold", "all"))
    preprocessed = str(entry["preprocessed"]).rstrip("/") if has_preprocessed else None
    return ModelEntry(str(Path(entry["checkpoint"]).parent), preprocessed, (fold,),
                      str(entry["checkpoint"]), None, "pytorch", dict(entry))


def openvino_only_variants(config: dict[str, Any]) -> list[str]:
    """The quantize entries that run on OpenVINO only (:func:`nnbridge.core.artifacts.method_runtimes`:
    method ``bf16``, whose fp32 graph ONNX Runtime would run as ``onnx_simplified``, and the
    OpenVINO IR methods); refused in one line when the config's ``backends`` lack openvino."""
    names = [n for n, q in (config.get("quantize") or {}).items()
             if method_runtimes((q or {}).get("method")) == ("openvino",)]
    if names and "openvino" not in config.get("backends", ["onnxruntime"]):
        method = config["quantize"][names[0]].get("method")
        raise NNBridgeError(f"config quantize.{names[0]}: method {method} runs on OpenVINO; add openvino to "
                            f"backends (now {config.get('backends', ['onnxruntime'])}) or remove the entry")
    return names


def fold_variants(results: str, key: FoldKey, config: dict[str, Any],
                  quantize: tuple[str, ...] | None = None,
                  only: Collection[str] | None = None) -> dict[str, dict[str, str]]:
    """Name → {kind, path, backend, record} of every (artifact, runtime) of a fold that is validated and
    benchmarked (``quantize``: the model's own subset of the quantized variants, default all;
    ``only``: the artifacts this fold gets, default all, see :func:`fold_artifacts`).
    An artifact's ``kind`` (``torchscript``, ``onnx``, ``ir``: an OpenVINO IR, ``path`` its
    ``.xml``) and file suffix come from its method (:func:`nnbridge.core.artifacts.method_kind`);
    it runs on every configured backend its kind runs on, under its own name on ONNX Runtime and
    as ``<name>@<backend>`` elsewhere (e.g. ``onnx_fp32@openvino``); a bf16 variant and an IR
    only as ``<name>@openvino`` (:func:`openvino_only_variants`). ``record``: the stage record
    stating the artifact's sha256 (:func:`record_of`)."""
    base = key.dir(results)
    openvino_only_variants(config)  # refuses OpenVINO-only entries without openvino
    artifacts: dict[str, tuple[dict[str, str], tuple[str, ...]]] = {}
    if config["export"]["torchscript"]:
        artifacts["torchscript"] = ({"kind": "torchscript", "path": f"{base}/export/model.ts"},
                                    KIND_RUNTIMES["torchscript"])
    artifacts["onnx_fp32"] = ({"kind": "onnx", "path": f"{base}/export/model.onnx"}, KIND_RUNTIMES["onnx"])
    artifacts["onnx_simplified"] = ({"kind": "onnx", "path": f"{base}/simplify/model.onnx"}, KIND_RUNTIMES["onnx"])
    for name, settings in config["quantize"].items():
        if quantize is None or name in quantize:
            method = (settings or {}).get("method")
            kind = method_kind(method)
            artifacts[name] = ({"kind": kind, "path": artifact_path(f"{base}/quantize/{name}", kind)},
                               method_runtimes(method))
    if only is not None:
        artifacts = {name: value for name, value in artifacts.items() if name in only}
    variants: dict[str, dict[str, str]] = {}
    for backend in ("torchscript", *config.get("backends", ["onnxruntime"])):
        for name, (artifact, runtimes) in artifacts.items():
            if backend in runtimes:
                key_name = name if backend == "torchscript" else Variant(name, backend).key
                variants[key_name] = {**artifact, "backend": backend, "record": record_of(artifact["path"])}
    return variants


def fold_artifacts(config: dict[str, Any], bundled: bool, reference: bool) -> tuple[str, ...] | None:
    """The artifacts a fold gets, None for all of them: a bundled model's folds other than its
    reference fold get only the shipped ones (``bundle.variants``) unless ``comparison.folds`` is
    ``all``. The others (TorchScript, quantize entries not shipped, the unsimplified export's
    own gate) are there to be compared, which the report does on the reference fold; at a 128³
    patch each costs minutes per fold (a TorchScript export ~1 min, each gate on each runtime)."""
    if reference or not bundled or (config.get("comparison") or {}).get("folds", "reference") == "all":
        return None
    return tuple(config["bundle"]["variants"])


def record_of(artifact: str) -> str:
    """The stage record that states an artifact's sha256: ``export/model.onnx`` → ``export/export.json``,
    ``export/model.ts`` → ``export/torchscript.json``, ``simplify/model.onnx`` → ``simplify/simplify.json``,
    ``quantize/<name>.onnx`` (or an IR's ``quantize/<name>.xml``) → ``quantize/<name>.json``."""
    path = Path(artifact)
    if path.parent.name == "export":
        return str(path.with_name("torchscript.json" if path.suffix == ".ts" else "export.json"))
    if path.parent.name == "simplify":
        return str(path.with_name("simplify.json"))
    return str(path.with_suffix(".json"))


def base_variant(name: str) -> str:
    """The artifact behind a variant name: ``onnx_fp32@openvino`` → ``onnx_fp32``."""
    return Variant.parse(name).name


def artifact_paths(variants: dict[str, dict[str, str]]) -> dict[str, str]:
    """Artifact name → its file, from :func:`fold_variants` (``bf16@openvino`` → ``bf16``)."""
    return {base_variant(name): v["path"] for name, v in variants.items()}


def variant_tolerance(name: str, validate: dict[str, Any]) -> dict[str, Any]:
    """The gate of a variant from the config's ``validate`` section: its own entry, else its
    artifact's (``onnx_fp32@openvino`` is gated like ``onnx_fp32``), else the default."""
    tolerances = validate.get("tolerances", {})
    if name in tolerances:
        return tolerances[name]
    return tolerances.get(base_variant(name), validate.get("default_tolerance", {}))


def bundle_plan(config: dict[str, Any]) -> tuple[list[str], str, list[str]]:
    """(bundle variants, default variant, case-parity variants), checked against the variants
    the config produces: only ONNX files and OpenVINO IRs (named without ``@backend``) can be
    shipped, and only shipped variants can be compared on whole cases."""
    openvino_only_variants(config)  # refuses an OpenVINO-only entry without openvino, before any job runs
    deployable = ["onnx_fp32", "onnx_simplified", *config.get("quantize", {})]
    shipped = list(config["bundle"]["variants"])
    for name in shipped:
        if name not in deployable:
            raise NNBridgeError(
                f"config bundle.variants: {name!r} is not an ONNX or OpenVINO IR variant of this config; use some "
                f"of {deployable}"
            )
    default = config["bundle"].get("default_variant") or shipped[0]
    if default not in shipped:
        raise NNBridgeError(f"config bundle.default_variant: {default!r} is not in bundle.variants {shipped}")
    compared = list(config["case_parity"]["variants"])
    for name in compared:
        if name not in shipped:
            raise NNBridgeError(f"config case_parity.variants: {name!r} is not in bundle.variants {shipped}; add it there")
    return shipped, default, compared


#: the schema's default ``benchmark.sweep`` (workflow/schemas/config.schema.yaml): its OpenVINO entry
#: is dropped, not refused, when the config's backends lack openvino (the user did not write it)
DEFAULT_SWEEP = ("onnx_simplified", "onnx_simplified@openvino")


def config_variant_names(config: dict[str, Any]) -> list[str]:
    """Every variant name the config can produce for some model: artifacts, and ``<artifact>@<backend>``
    for each other configured backend (what validate, benchmark and the sweep key by)."""
    onnx = ["onnx_fp32", "onnx_simplified", *(config.get("quantize") or {})]
    names = (["torchscript"] if config.get("export", {}).get("torchscript", True) else []) + onnx
    names += [f"{n}@{b}" for b in config.get("backends", ["onnxruntime"]) if b != "onnxruntime" for n in onnx]
    return names


def check_config_names(config: dict[str, Any]) -> None:
    """Refuse, in one line, a setting that names something the config does not have and would
    otherwise be ignored without a word: a tolerance for a variant that does not exist (a typo:
    ``fp61``), a whole-case gate for a variant not compared on whole cases, a tuned or swept variant
    that is never benchmarked, a ``results:`` that is a file."""
    results = Path(str(config.get("results", "results")))
    if results.exists() and not results.is_dir():
        raise NNBridgeError(f"config results: {results} is a file; `results:` names the folder every artifact "
                            "and the report go to: give a folder (new or existing)")
    names = config_variant_names(config)
    artifacts = [n for n in names if "@" not in n]
    # torchscript stays a known name when its export is switched off (the shipped gates keep it)
    gated = names if "torchscript" in names else ["torchscript", *names]
    for name in (config.get("validate") or {}).get("tolerances") or {}:
        if name not in gated:
            raise NNBridgeError(f"config validate.tolerances.{name}: no variant {name!r} in this config, so the "
                                f"tolerance would never apply; use one of {names}")
    compared = list((config.get("case_parity") or {}).get("variants") or [])
    for name in (config.get("case_parity") or {}).get("tolerances") or {}:
        if name not in compared:
            raise NNBridgeError(f"config case_parity.tolerances.{name}: {name!r} is not compared on whole cases "
                                f"(case_parity.variants {compared}), so the gate would never apply")
    bench = config.get("benchmark") or {}
    openvino_only = openvino_only_variants(config)
    onnxruntime = [n for n in artifacts if n != "torchscript" and n not in openvino_only]
    for name in bench.get("tune") or []:
        if name not in onnxruntime:
            raise NNBridgeError(f"config benchmark.tune: {name!r} is not an ONNX Runtime variant of this config, "
                                f"so nothing would be tuned; use some of {onnxruntime}")
    benchmarked = ["torch_eager", *(n for n in names if n not in openvino_only)]
    sweep = list(bench.get("sweep") or [])
    if tuple(sweep) == DEFAULT_SWEEP:
        sweep = [n for n in sweep if n in benchmarked]
        bench["sweep"] = sweep
    for name in sweep:
        if name not in benchmarked:
            raise NNBridgeError(f"config benchmark.sweep: {name!r} is not a variant of this config, so it would "
                                f"never be swept; use some of {benchmarked}")


def previous_stage_model(model: ModelEntry, models: dict[str, ModelEntry]) -> ModelEntry | None:
    """The configured model a cascade stage's bundle takes its previous stage from: the same
    dataset, trainer and plans, the previous stage's configuration (``None`` when it is not
    configured, or ``model`` is no cascade stage)."""
    if model.kind != "nnunet" or model.previous_stage is None:
        return None
    trainer, plans, _ = configuration_of(model.folder)
    return models.get(f"{model.dataset}/{trainer}__{plans}__{model.previous_stage}")


def _folds_of(folder_name: str, prefix: str) -> list[str]:
    """``crossval_results_folds_0_1_2`` → ["0", "1", "2"] (nnU-Net's ``folds_tuple_to_string``)."""
    return folder_name[len(prefix):].split("_") if folder_name.startswith(prefix) else []


CROSSVAL_PREFIX = "crossval_results_folds_"


def postprocessing_sources(model: ModelEntry) -> dict[str, Any]:
    """nnU-Net's postprocessing files for a model's bundle, found when the DAG is built:
    ``own``, what ``nnUNetv2_find_best_configuration`` chose for the model alone
    (``<folder>/crossval_results_folds_<folds>/postprocessing.pkl``: the one over the model's
    folds, else the only one, else the one over most folds), and ``ensembles``, what it chose for
    ensembles of this model with another configuration
    (``<folder>/../ensembles/ensemble___<A>___<B>___<folds>/postprocessing.pkl``). Each is
    {pkl, source (relative to the dataset's results folder), folds[, members]}; for a model zip
    the files are where its members unpack to."""
    if model.kind != "nnunet":
        return {"own": None, "ensembles": []}
    folder = Path(model.folder)
    if model.zip is not None:
        zipped = next(f for f in model.zip.folders if f.path == model.zip_folder)
        own_found = sorted(f.split("/")[0] for f in zipped.files
                           if f.startswith(CROSSVAL_PREFIX) and f.endswith("/postprocessing.pkl") and f.count("/") == 1)
        dataset_in_zip = str(Path(model.zip_folder or "").parent)
        ensemble_names = sorted(Path(m).parent.name for m in model.zip.ensembles
                                if str(Path(m).parent.parent.parent) == dataset_in_zip)
    else:
        own_found = sorted(p.parent.name for p in folder.glob(f"{CROSSVAL_PREFIX}*/postprocessing.pkl"))
        ensemble_names = sorted(p.parent.name for p in (folder.parent / "ensembles").glob("ensemble___*/postprocessing.pkl"))
    own = None
    if own_found:
        wanted = sorted(model.folds, key=fold_order)
        by_folds = {name: _folds_of(name, CROSSVAL_PREFIX) for name in own_found}
        name = next((n for n, f in by_folds.items() if sorted(f, key=fold_order) == wanted),
                    max(own_found, key=lambda n: (len(by_folds[n]), n)))
        own = {"pkl": str(folder / name / "postprocessing.pkl"),
               "source": f"{folder.name}/{name}/postprocessing.pkl", "folds": by_folds[name]}
    ensembles = []
    for name in ensemble_names:
        _prefix, *members, folds = name.split("___")
        if folder.name in members and len(members) >= 2:
            ensembles.append({"pkl": str(folder.parent / "ensembles" / name / "postprocessing.pkl"),
                              "source": f"ensembles/{name}/postprocessing.pkl", "members": members,
                              "folds": folds.split("_")})
    return {"own": own, "ensembles": ensembles}


#: memory of a calibrate or quantize job above a 2 GB base, in bytes per element of the graph's
#: activations at its patch (every tensor a batch-1 forward produces: :func:`activation_footprint`)
#: by what the job does, plus :data:`QUANTIZE_MEM_PER_PARAMETER` bytes per weight (three fp32
#: copies: the ONNX model read, the runtime's, the calibration graph's). Measured peaks (AMD Zen 4,
#: 128^3 patch): nnU-Net's default 3d_fullres PlainConvUNet (31.2 M parameters, 1.35 G activation
#: elements) 6.0 GB with the calibrate stage's MinMax ranges collected on OpenVINO (its way where
#: OpenVINO is installed: :func:`nnbridge.quantize.static.calibrate_on_openvino`; 2026-12-02/03),
#: its ResEnc-M preset (102.3 M, 1.79 G) 9.0 GB (2026-12-05) — declared 8.4 and 11.3 GB; ONNX
#: Runtime's own static calibration (``calibrate_onnxruntime``: without OpenVINO, or for
#: Entropy/Percentile; NNCF's ONNX backend gathers its statistics the same way, not measured)
#: keeps every activation of a patch alive, 11.5 GB on the PlainConvUNet; NNCF's OpenVINO backend
#: (openvino_int8) 5.1 GB with accuracy control, 4.3 GB without (the ResEnc-M 7.2 GB without;
#: declared 7.1 and 9.5 GB). Sizing by the patch's voxels alone had declared 7.2 GB for the
#: ResEnc-M's 9.0 (Slurm's --mem would have killed it). Every other job only runs the graph, patch
#: by patch (the validate stage held 3.2 GB on the PlainConvUNet): the minimum, which is also what
#: the demo's models get.
QUANTIZE_MEM_BASE_MB, QUANTIZE_MEM_MIN_MB = 2000, 6000
QUANTIZE_MEM_PER_ACTIVATION = {"calibrate": 4.5, "calibrate_onnxruntime": 8.5, "nncf": 8.5, "openvino_int8": 3.5}
QUANTIZE_MEM_PER_PARAMETER = 12
#: the floor, MB per voxel of the patch (the earlier sizing, from the same PlainConvUNet peaks):
#: what a graph gets whose tensors shape inference cannot size (a partial count would be too low)
QUANTIZE_MEM_PER_VOXEL_MB = {"calibrate": 2.5e-3, "calibrate_onnxruntime": 5.5e-3, "nncf": 5.5e-3,
                             "openvino_int8": 2e-3}


def quantize_mem_mb(onnx_file: str | Path, method: str = "calibrate", calibration: str = "MinMax") -> int:
    """The ``mem_mb`` a calibrate job (``method`` ``calibrate``, of ``calibration``) or a quantize
    job of ``method`` on the graph ``onnx_file`` declares (Slurm's ``--mem``), from the graph's
    activations and weights at the patch size in its nnbridge metadata
    (:data:`QUANTIZE_MEM_PER_ACTIVATION`); the minimum when the file has none or the method only
    runs the graph (static INT8 from the calibrate stage's ranges, bf16, ...). A calibration
    OpenVINO cannot collect here counts as ONNX Runtime's."""
    if method == "calibrate" and not calibrates_on_openvino(calibration):
        method = "calibrate_onnxruntime"
    per_activation = QUANTIZE_MEM_PER_ACTIVATION.get(method, 0.0)
    if not per_activation:
        return QUANTIZE_MEM_MIN_MB
    try:
        text = read_metadata(Path(onnx_file)).get("patch_size")
        patch = tuple(int(size) for size in json.loads(text)) if text else None
    except (OSError, ValueError, NNBridgeError):  # unreadable: the job itself says why
        patch = None
    if not patch:
        return QUANTIZE_MEM_MIN_MB
    try:
        footprint = _footprint(str(onnx_file), patch)
    except (OSError, ValueError, onnx.shape_inference.InferenceError):  # unshapeable: the floor below
        footprint = {"activations": 0, "parameters": 0}
    need = (per_activation * footprint["activations"] + QUANTIZE_MEM_PER_PARAMETER * footprint["parameters"]) / 1e6
    floor = QUANTIZE_MEM_PER_VOXEL_MB[method] * math.prod(patch)
    return max(QUANTIZE_MEM_MIN_MB, int(QUANTIZE_MEM_BASE_MB + max(need, floor)))


@functools.lru_cache(maxsize=64)
def _footprint_of(path: str, patch: tuple[int, ...], _stamp: tuple[int, int]) -> dict[str, int]:
    return activation_footprint(path, patch)


def _footprint(path: str, patch: tuple[int, ...]) -> dict[str, int]:
    """:func:`activation_footprint`, once per file version in a snakemake process (its calibrate
    and quantize jobs ask for the same graph)."""
    stat = os.stat(path)
    return _footprint_of(path, patch, (stat.st_mtime_ns, stat.st_size))
