"""What the pipeline will process: models, folds and the variants of each fold.

Pure functions over the validated config (no snakemake import), used by the workflow's
``common.smk`` and by the report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import NNBridgeError
from ..core.keys import fold_order
from ..core.plans import default_previous_stage_segs, model_previous_stage


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


def discover_folds(folder: Path, checkpoint: str) -> tuple[str, ...]:
    """Folds of a model folder that hold ``checkpoint`` (``fold_0``…, ``fold_all``)."""
    found = []
    for sub in sorted(Path(folder).glob("fold_*")):
        if (sub / checkpoint).is_file():
            found.append(sub.name[len("fold_"):])
    return tuple(sorted(found, key=fold_order))


def discover_models(entries: list[dict[str, Any]], demo_folder: str | None = None,
                    quantize_names: list[str] | tuple[str, ...] = ()) -> dict[str, ModelEntry]:
    """Validated ``models:`` entries keyed by ``<dataset>/<model>``.

    nnU-Net folds listed in the config are taken as given (the demo's are produced by the
    pipeline); otherwise every ``fold_*`` folder holding the checkpoint is used. Plain PyTorch
    entries (``kind: pytorch``) are one branch each.
    """
    models: dict[str, ModelEntry] = {}
    for i, entry in enumerate(entries):
        kind = entry.get("kind", "nnunet")
        model = (_nnunet_entry(entry, i, demo_folder) if kind == "nnunet"
                 else _plain_entry(entry, i))
        where = f"config models[{i}] ({model.name})"
        for name in model.quantize or ():
            if name not in quantize_names:
                raise NNBridgeError(f"{where}: quantize variant {name!r} is not in the config's quantize section {list(quantize_names)}")
        key = f"{model.dataset}/{model.name}"
        if key in models:
            raise NNBridgeError(f"{where}: {key} is listed twice; merge the two entries or rename one")
        models[key] = model
    return models


def _nnunet_entry(entry: dict[str, Any], i: int, demo_folder: str | None) -> ModelEntry:
    folder = str(entry.get("folder", "")).rstrip("/")
    where = f"config models[{i}] ({folder})"
    if not folder:
        raise NNBridgeError(f"config models[{i}]: `folder:` missing (an nnU-Net model folder; plain PyTorch models need `kind: pytorch`)")
    if len(Path(folder).name.split("__")) != 3:
        raise NNBridgeError(
            f"{where}: folder name must be <Trainer>__<Plans>__<configuration> "
            "(the folder nnU-Net writes under nnUNet_results/<Dataset>/)"
        )
    checkpoint = entry.get("checkpoint", "checkpoint_final.pth")
    if checkpoint not in ("checkpoint_final.pth", "checkpoint_best.pth"):
        raise NNBridgeError(f"{where}: checkpoint {checkpoint!r}: an nnU-Net fold has checkpoint_final.pth or checkpoint_best.pth")
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
    if not entry.get("preprocessed"):
        raise NNBridgeError(
            f"{where}: `preprocessed:` missing; point it at the dataset's nnUNet_preprocessed "
            "folder (calibration and held-out patches come from it)"
        )
    raw = str(entry["raw"]).rstrip("/") if entry.get("raw") else None
    previous, segs = _previous_stage(entry, folder, where)
    return ModelEntry(folder, str(entry["preprocessed"]).rstrip("/"), folds, checkpoint, raw,
                      "nnunet", dict(entry), previous, segs)


def _previous_stage(entry: dict[str, Any], folder: str, where: str) -> tuple[str | None, str | None]:
    """(previous stage, folder of its segmentations) of a cascade stage, else (None, None)."""
    previous = model_previous_stage(folder)
    if previous is None:
        if entry.get("previous_stage_segs") and (Path(folder) / "plans.json").is_file():
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
    """The quantize entries that run on OpenVINO only (method ``bf16``: ONNX Runtime would run
    the same fp32 graph as ``onnx_simplified``); refused in one line when the config's
    ``backends`` lack openvino."""
    names = [n for n, q in (config.get("quantize") or {}).items() if (q or {}).get("method") == "bf16"]
    if names and "openvino" not in config.get("backends", ["onnxruntime"]):
        raise NNBridgeError(f"config quantize.{names[0]}: method bf16 runs on OpenVINO; add openvino to "
                            f"backends (now {config.get('backends', ['onnxruntime'])}) or remove the entry")
    return names


def fold_variants(results: str, key: FoldKey, config: dict[str, Any],
                  quantize: tuple[str, ...] | None = None) -> dict[str, dict[str, str]]:
    """Name → {kind, path, backend} of every (artifact, backend) of a fold that is validated and
    benchmarked (``quantize``: the model's own subset of the quantized variants, default all).
    ONNX artifacts run on ONNX Runtime under their own name and on every other configured
    backend as ``<name>@<backend>`` (e.g. ``onnx_fp32@openvino``); a bf16 variant only as
    ``<name>@openvino`` (:func:`openvino_only_variants`)."""
    base = key.dir(results)
    openvino_only = openvino_only_variants(config)
    variants: dict[str, dict[str, str]] = {}
    if config["export"]["torchscript"]:
        variants["torchscript"] = {"kind": "torchscript", "path": f"{base}/export/model.ts"}
    variants["onnx_fp32"] = {"kind": "onnx", "path": f"{base}/export/model.onnx"}
    variants["onnx_simplified"] = {"kind": "onnx", "path": f"{base}/simplify/model.onnx"}
    for name in config["quantize"]:
        if quantize is None or name in quantize:
            variants[name] = {"kind": "onnx", "path": f"{base}/quantize/{name}.onnx"}
    for variant in variants.values():
        variant["backend"] = "torchscript" if variant["kind"] == "torchscript" else "onnxruntime"
    for backend in config.get("backends", ["onnxruntime"]):
        if backend == "onnxruntime":
            continue
        for name, variant in list(variants.items()):
            if variant["kind"] == "onnx" and variant["backend"] == "onnxruntime":
                variants[f"{name}@{backend}"] = {**variant, "backend": backend}
    for name in openvino_only:
        variants.pop(name, None)
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
    the config produces: only ONNX artifacts (no ``@backend`` suffix) can be shipped, and only
    shipped variants can be compared on whole cases."""
    openvino_only_variants(config)  # refuses a bf16 entry without openvino, before any job runs
    onnx_names = ["onnx_fp32", "onnx_simplified", *config.get("quantize", {})]
    shipped = list(config["bundle"]["variants"])
    for name in shipped:
        if name not in onnx_names:
            raise NNBridgeError(
                f"config bundle.variants: {name!r} is not an ONNX variant of this config; use some of {onnx_names}"
            )
    default = config["bundle"].get("default_variant") or shipped[0]
    if default not in shipped:
        raise NNBridgeError(f"config bundle.default_variant: {default!r} is not in bundle.variants {shipped}")
    compared = list(config["case_parity"]["variants"])
    for name in compared:
        if name not in shipped:
            raise NNBridgeError(f"config case_parity.variants: {name!r} is not in bundle.variants {shipped}; add it there")
    return shipped, default, compared
