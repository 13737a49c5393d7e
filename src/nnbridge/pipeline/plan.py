"""What the pipeline will process: models, folds and the variants of each fold.

Pure functions over the validated config (no snakemake import), used by the workflow's
``common.smk`` and by the report.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..core.artifacts import KIND_RUNTIMES, artifact_path, method_kind, method_runtimes
from ..core.errors import NNBridgeError
from ..core.keys import DEFAULT_BACKEND, fold_order
from ..core.plans import configuration_of, default_previous_stage_segs, previous_stage
from ..intake.images import ImageSet, list_image_cases
from ..intake.modelzip import ModelZip, read_model_zip


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
                "mirror_axes", "data_identifier")
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


def discover_models(entries: list[dict[str, Any]], demo_folder: str | None = None,
                    quantize_names: list[str] | tuple[str, ...] = (),
                    zip_cache: str | Path | None = None) -> dict[str, ModelEntry]:
    """Validated ``models:`` entries keyed by ``<dataset>/<model>``.

    nnU-Net folds listed in the config are taken as given (the demo's are produced by the
    pipeline); otherwise every ``fold_*`` folder holding the checkpoint is used. A ``zip:`` entry
    gives one model per configuration in the zip (``configurations:`` narrows them), unpacked
    into ``zip_cache/<sha256 prefix>/``. Plain PyTorch entries (``kind: pytorch``) are one branch
    each.
    """
    models: dict[str, ModelEntry] = {}
    for i, entry in enumerate(entries):
        kind = entry.get("kind", "nnunet")
        found = (_nnunet_entries(entry, i, demo_folder, zip_cache) if kind == "nnunet"
                 else [_plain_entry(entry, i)])
        for model in found:
            where = f"config models[{i}] ({model.name})"
            for name in model.quantize or ():
                if name not in quantize_names:
                    raise NNBridgeError(f"{where}: quantize variant {name!r} is not in the config's quantize section {list(quantize_names)}")
            key = f"{model.dataset}/{model.name}"
            if key in models:
                raise NNBridgeError(f"{where}: {key} is listed twice; merge the two entries or rename one")
            models[key] = model
    return models


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
            raise NNBridgeError(f"{where}: folder does not exist; fix the path in config/config.yaml")
        folds = discover_folds(Path(folder), checkpoint)
        if not folds:
            raise NNBridgeError(f"{where}: no fold_*/{checkpoint} found; list `folds:` or fix the path")
    plans_file, dataset_file = Path(folder) / "plans.json", Path(folder) / "dataset.json"
    plans = json.loads(plans_file.read_text()) if plans_file.is_file() else None

    def dataset_json() -> dict[str, Any]:
        if not dataset_file.is_file():
            raise NNBridgeError(f"{where}: {dataset_file} missing; `images:` needs the model folder's dataset.json")
        return json.loads(dataset_file.read_text())

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
        raise NNBridgeError(
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
                  quantize: tuple[str, ...] | None = None) -> dict[str, dict[str, str]]:
    """Name → {kind, path, backend} of every (artifact, runtime) of a fold that is validated and
    benchmarked (``quantize``: the model's own subset of the quantized variants, default all).
    An artifact's ``kind`` (``torchscript``, ``onnx``, ``ir``: an OpenVINO IR, ``path`` its
    ``.xml``) and file suffix come from its method (:func:`nnbridge.core.artifacts.method_kind`);
    it runs on every configured backend its kind runs on, under its own name on ONNX Runtime and
    as ``<name>@<backend>`` elsewhere (e.g. ``onnx_fp32@openvino``); a bf16 variant and an IR
    only as ``<name>@openvino`` (:func:`openvino_only_variants`)."""
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
    variants: dict[str, dict[str, str]] = {}
    for backend in ("torchscript", *config.get("backends", ["onnxruntime"])):
        for name, (artifact, runtimes) in artifacts.items():
            if backend in runtimes:
                key_name = name if backend in (DEFAULT_BACKEND, "torchscript") else f"{name}@{backend}"
                variants[key_name] = {**artifact, "backend": backend}
    return variants


def base_variant(name: str) -> str:
    """The artifact behind a variant name: ``onnx_fp32@openvino`` → ``onnx_fp32``."""
    return name.split("@", 1)[0]


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
