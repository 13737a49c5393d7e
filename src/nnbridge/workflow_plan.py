"""What the pipeline will process: models, folds and the variants of each fold.

Pure functions over the validated config (no snakemake import), used by the workflow's
``common.smk`` and by the report.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import NNBridgeError


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
    """A configured nnU-Net model folder and the folds to process."""

    folder: str
    preprocessed: str
    folds: tuple[str, ...]
    checkpoint: str
    raw: str | None = None

    @property
    def dataset(self) -> str:
        return Path(self.folder).parent.name

    @property
    def name(self) -> str:
        return Path(self.folder).name

    def fold_keys(self) -> list[FoldKey]:
        return [FoldKey(self.dataset, self.name, f) for f in self.folds]


def discover_folds(folder: Path, checkpoint: str) -> tuple[str, ...]:
    """Folds of a model folder that hold ``checkpoint`` (``fold_0``…, ``fold_all``)."""
    found = []
    for sub in sorted(Path(folder).glob("fold_*")):
        if (sub / checkpoint).is_file():
            found.append(sub.name[len("fold_"):])
    return tuple(sorted(found, key=fold_order))


def fold_order(fold: str) -> tuple[bool, int]:
    """Sort key of fold names: numbered folds in order, ``all`` last."""
    return (fold == "all", int(fold) if fold.isdigit() else 0)


def discover_models(entries: list[dict[str, Any]], demo_folder: str | None = None) -> dict[str, ModelEntry]:
    """Validated ``models:`` entries keyed by ``<dataset>/<model>``.

    Folds listed in the config are taken as given (the demo's are produced by the pipeline);
    otherwise every ``fold_*`` folder holding the checkpoint is used.
    """
    models: dict[str, ModelEntry] = {}
    for i, entry in enumerate(entries):
        folder = str(entry["folder"]).rstrip("/")
        where = f"config models[{i}] ({folder})"
        if len(Path(folder).name.split("__")) != 3:
            raise NNBridgeError(
                f"{where}: folder name must be <Trainer>__<Plans>__<configuration> "
                "(the folder nnU-Net writes under nnUNet_results/<Dataset>/)"
            )
        checkpoint = entry.get("checkpoint", "checkpoint_final.pth")
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
        model = ModelEntry(folder, str(entry["preprocessed"]).rstrip("/"), folds, checkpoint, raw)
        key = f"{model.dataset}/{model.name}"
        if key in models:
            raise NNBridgeError(f"{where}: listed twice; merge the two entries")
        models[key] = model
    return models


def fold_variants(results: str, key: FoldKey, config: dict[str, Any]) -> dict[str, dict[str, str]]:
    """Name → {kind, path, backend} of every (artifact, backend) of a fold that is validated and
    benchmarked. ONNX artifacts run on ONNX Runtime under their own name and on every other
    configured backend as ``<name>@<backend>`` (e.g. ``onnx_fp32@openvino``)."""
    base = key.dir(results)
    variants: dict[str, dict[str, str]] = {}
    if config["export"]["torchscript"]:
        variants["torchscript"] = {"kind": "torchscript", "path": f"{base}/export/model.ts"}
    variants["onnx_fp32"] = {"kind": "onnx", "path": f"{base}/export/model.onnx"}
    variants["onnx_simplified"] = {"kind": "onnx", "path": f"{base}/simplify/model.onnx"}
    for name in config["quantize"]:
        variants[name] = {"kind": "onnx", "path": f"{base}/quantize/{name}.onnx"}
    for variant in variants.values():
        variant["backend"] = "torchscript" if variant["kind"] == "torchscript" else "onnxruntime"
    for backend in config.get("backends", ["onnxruntime"]):
        if backend == "onnxruntime":
            continue
        for name, variant in list(variants.items()):
            if variant["kind"] == "onnx" and variant["backend"] == "onnxruntime":
                variants[f"{name}@{backend}"] = {**variant, "backend": backend}
    return variants


def base_variant(name: str) -> str:
    """The artifact behind a variant name: ``onnx_fp32@openvino`` → ``onnx_fp32``."""
    return name.split("@", 1)[0]


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
