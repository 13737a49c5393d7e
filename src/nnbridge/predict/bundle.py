"""The deployable bundle as ``nnbridge predict`` reads it: every fold's model per variant (an ONNX
file, or an OpenVINO IR: ``.xml`` and its weights ``.bin``), plans, dataset.json and a manifest
(built by :mod:`nnbridge.bundle.build`).

Layout::

    bundle/
      bundle.json            manifest (folds, variants, gates, chosen backend, checksums)
      plans.json dataset.json
      <variant>/fold_<k>.onnx  (an OpenVINO IR variant: fold_<k>.xml + fold_<k>.bin)
      selfcheck/fold_<k>.npz   held-out patches and PyTorch's label maps (nnbridge verify)
      postprocessing/        nnU-Net's postprocessing.pkl files, copied (the manifest holds their steps)
      previous_stage/        a cascade stage's previous stage (3d_lowres): a complete bundle of its own
      verified-<cpu>.json    nnbridge verify's result on another CPU kind (not in the manifest)

Reading a bundle checks every file against the manifest's sha256, so a swapped or truncated model
is refused before it predicts anything; a previous stage's bundle is checked the same way (its
``bundle.json`` against the outer manifest, its files against its own).

Cascades: the bundle of ``3d_cascade_fullres`` holds the bundle of its ``3d_lowres`` model in
``previous_stage/`` (manifest key ``previous_stage``: configuration, model, folder and the sha256
of its manifest), so one folder deploys the whole cascade and each stage keeps its own variants,
gates, run settings and self-check set.

Postprocessing: ``postprocessing`` records what ``nnUNetv2_find_best_configuration`` chose for the
model itself (``crossval_results_folds_<folds>/postprocessing.pkl``) and ``ensembles`` what it
chose for the ensembles of this model with another configuration
(``<Dataset>/ensembles/ensemble___<model A>___<model B>___<folds>/postprocessing.pkl``): the
file's steps as JSON (:mod:`.components`; ``nnbridge predict`` applies those and never unpickles),
the copied pkl, its sha256 and where it came from."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.errors import NNBridgeError
from ..core.runlog import read_json, sha256_file
from .components import Step, check_steps


MANIFEST = "bundle.json"


FORMAT = "nnbridge-bundle/1"

#: what every manifest holds (bundle.build writes them)
REQUIRED = ("folds", "variants", "default_variant", "plans", "dataset_json")


@dataclass
class Bundle:
    """A verified bundle on disk."""

    root: Path
    manifest: dict[str, Any]
    plans: dict[str, Any]
    dataset_json: dict[str, Any]
    previous_stage: Bundle | None = None

    @classmethod
    def load(cls, root: Path, verify: bool = True) -> Bundle:
        root = Path(root)
        manifest_path = root / MANIFEST
        if not manifest_path.is_file():
            raise NNBridgeError(f"{root}: not an nnbridge bundle (no {MANIFEST}); point -m at the bundle folder "
                                "the pipeline wrote (results/<dataset>/<model>/bundle)")
        try:
            manifest = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as exc:
            raise NNBridgeError(f"{manifest_path}: not valid JSON ({exc}); rebuild the bundle") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
            raise NNBridgeError(f"{manifest_path}: format {found!r}, expected {FORMAT!r}")
        required = (*REQUIRED, *(("plans_sha256", "dataset_json_sha256") if verify else ()))
        lacking = [key for key in required if key not in manifest]
        if lacking:
            raise NNBridgeError(f"{manifest_path}: no {lacking[0]!r} entry; the manifest is incomplete: rebuild the "
                                "bundle or copy it again")
        if verify:
            checks = [(manifest["plans"], manifest["plans_sha256"]),
                      (manifest["dataset_json"], manifest["dataset_json_sha256"])]
            for variant in manifest["variants"].values():
                checks += [(variant["files"][f], variant["sha256"][f]) for f in variant["files"]]
                checks += [(rel, variant["weights_sha256"][f]) for f, rel in (variant.get("weights") or {}).items()]
            selfcheck = manifest.get("selfcheck") or {}
            checks += [(rel, selfcheck["sha256"][f]) for f, rel in (selfcheck.get("files") or {}).items()]
            for record in [manifest.get("postprocessing") or {}, *(manifest.get("ensembles") or [])]:
                if record.get("file"):
                    checks.append((record["file"], record["sha256"]))
            if manifest.get("previous_stage"):
                stage = manifest["previous_stage"]
                checks.append((f"{stage['bundle']}/{MANIFEST}", stage["manifest_sha256"]))
            for rel, expected in checks:
                path = root / rel
                if not path.is_file():
                    raise NNBridgeError(f"{path}: missing from the bundle; rebuild or copy the whole bundle folder")
                if sha256_file(path) != expected:
                    raise NNBridgeError(f"{path}: sha256 differs from {MANIFEST}; the file was changed or "
                                        "truncated, copy the bundle again")
        fix = "rebuild the bundle, or copy the whole bundle folder again"
        plans = read_json(root / manifest["plans"], fix=fix)
        dataset_json = read_json(root / manifest["dataset_json"], fix=fix)
        check_model_files(plans, dataset_json, manifest.get("configuration"), root / manifest["plans"],
                          root / manifest["dataset_json"], fix)
        previous = None
        if manifest.get("previous_stage"):
            previous = cls.load(root / manifest["previous_stage"]["bundle"], verify=verify)
        return cls(root, manifest, plans, dataset_json, previous)

    @property
    def model(self) -> str:
        """The model folder's name, ``<Trainer>__<Plans>__<configuration>`` (nnU-Net's identifier)."""
        return str(self.manifest.get("model") or "")

    def postprocessing(self) -> tuple[list[Step], str] | None:
        """The steps nnU-Net chose for this model alone and where they come from (``None``:
        the bundle records none)."""
        record = self.manifest.get("postprocessing")
        if not record:
            return None
        return check_steps(record["steps"], f"{self.root / MANIFEST} postprocessing"), record["source"]

    def ensemble_postprocessing(self, models: list[str], folds: list[str] | None = None
                                ) -> tuple[list[Step], str] | None:
        """The steps nnU-Net chose for the ensemble of ``models`` (model identifiers, this one
        among them), preferring the record over ``folds``; ``None`` when the bundle has none."""
        wanted = sorted(models)
        found = [r for r in self.manifest.get("ensembles") or [] if sorted(r["members"]) == wanted]
        if not found:
            return None
        chosen = next((r for r in found if folds and sorted(r["folds"]) == sorted(folds)), found[0])
        return check_steps(chosen["steps"], f"{self.root / MANIFEST} ensembles"), chosen["source"]

    @property
    def configuration(self) -> str:
        return self.manifest["configuration"]

    @property
    def folds(self) -> list[str]:
        return list(self.manifest["folds"])

    def variant(self, name: str | None) -> tuple[str, dict[str, Any]]:
        name = name or self.manifest["default_variant"]
        if name not in self.manifest["variants"]:
            raise NNBridgeError(f"{self.root}: no variant {name!r}; the bundle has {sorted(self.manifest['variants'])}")
        return name, self.manifest["variants"][name]

    def model_files(self, variant: str | None, folds: list[str] | None) -> list[Path]:
        """The main file of each fold's model (an ONNX file, or an IR's .xml with its .bin beside it)."""
        name, entry = self.variant(variant)
        folds = [str(f) for f in folds] if folds else self.folds
        missing = [f for f in folds if f not in entry["files"]]
        if missing:
            raise NNBridgeError(f"{self.root}: variant {name!r} has no fold(s) {missing}; it has {sorted(entry['files'])}")
        return [self.root / entry["files"][f] for f in folds]


def check_model_files(plans: Any, dataset_json: Any, configuration: str | None, plans_path: Path,
                      dataset_path: Path, fix: str) -> None:
    """Refuse, naming the file, a bundle's plans.json or dataset.json that lacks what prediction
    reads from it (with ``--no-verify`` no sha256 caught the edit): nnU-Net's dataset.json keys
    and the bundle's configuration in the plans."""
    if not isinstance(dataset_json, dict):
        raise NNBridgeError(f"{dataset_path}: not a dataset.json (a JSON object expected); {fix}")
    if not (dataset_json.get("channel_names") or dataset_json.get("modality")):
        raise NNBridgeError(f"{dataset_path}: no 'channel_names'; nnU-Net needs them to find the input channels: {fix}")
    for key in ("labels", "file_ending"):
        if not dataset_json.get(key):
            raise NNBridgeError(f"{dataset_path}: no {key!r}; nnU-Net's dataset.json has it: {fix}")
    configurations = plans.get("configurations") if isinstance(plans, dict) else None
    if not isinstance(configurations, dict):
        raise NNBridgeError(f"{plans_path}: not nnU-Net plans (no 'configurations'); {fix}")
    if configuration and configuration not in configurations:
        raise NNBridgeError(f"{plans_path}: no configuration {configuration!r} (it has {sorted(configurations)}); "
                            f"{fix}")


def require_previous_stage(configuration: str | None, previous_stage: str | None, has_it: bool,
                           where: Path | str) -> None:
    """A cascade stage predicts only with its previous stage: its input includes that stage's
    segmentation of each case."""
    if previous_stage and not has_it:
        raise NNBridgeError(
            f"{where}: {configuration} is a cascade stage (its input includes the {previous_stage} "
            f"segmentation) but the bundle holds no {previous_stage} stage; configure the {previous_stage} "
            f"model folder too, so the bundle of {configuration} takes the {previous_stage} bundle in"
        )
