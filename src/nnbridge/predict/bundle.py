"""The deployable bundle as ``nnbridge predict`` reads it: every fold's model per variant (an ONNX
file, or an OpenVINO IR: ``.xml`` and its weights ``.bin``), plans, dataset.json and a manifest
(built by :mod:`nnbridge.bundle.build`).

Layout::

    bundle/
      bundle.json            manifest (folds, variants, gates, chosen backend, checksums)
      plans.json dataset.json
      <variant>/fold_<k>.onnx  (an OpenVINO IR variant: fold_<k>.xml + fold_<k>.bin)
      selfcheck/fold_<k>.npz   held-out patches and PyTorch's label maps (nnbridge verify)
      verified-<cpu>.json    nnbridge verify's result on another CPU kind (not in the manifest)

Reading a bundle checks every file against the manifest's sha256, so a swapped or truncated model
is refused before it predicts anything."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.errors import NNBridgeError
from ..core.runlog import sha256_file


MANIFEST = "bundle.json"


FORMAT = "nnbridge-bundle/1"


@dataclass
class Bundle:
    """A verified bundle on disk."""

    root: Path
    manifest: dict[str, Any]
    plans: dict[str, Any]
    dataset_json: dict[str, Any]

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
        if manifest.get("format") != FORMAT:
            raise NNBridgeError(f"{manifest_path}: format {manifest.get('format')!r}, expected {FORMAT!r}")
        if verify:
            checks = [(manifest["plans"], manifest["plans_sha256"]),
                      (manifest["dataset_json"], manifest["dataset_json_sha256"])]
            for variant in manifest["variants"].values():
                checks += [(variant["files"][f], variant["sha256"][f]) for f in variant["files"]]
                checks += [(rel, variant["weights_sha256"][f]) for f, rel in (variant.get("weights") or {}).items()]
            selfcheck = manifest.get("selfcheck") or {}
            checks += [(rel, selfcheck["sha256"][f]) for f, rel in (selfcheck.get("files") or {}).items()]
            for rel, expected in checks:
                path = root / rel
                if not path.is_file():
                    raise NNBridgeError(f"{path}: missing from the bundle; rebuild or copy the whole bundle folder")
                if sha256_file(path) != expected:
                    raise NNBridgeError(f"{path}: sha256 differs from {MANIFEST}; the file was changed or "
                                        "truncated, copy the bundle again")
        plans = json.loads((root / manifest["plans"]).read_text())
        dataset_json = json.loads((root / manifest["dataset_json"]).read_text())
        return cls(root, manifest, plans, dataset_json)

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


def refuse_cascade(configuration: str | None, previous_stage: str | None, where: Path | str) -> None:
    """``nnbridge predict`` runs one stage: a cascade stage would need its previous stage's
    segmentation of each case as extra input channels, which it does not produce."""
    if previous_stage:
        raise NNBridgeError(
            f"{where}: {configuration} is a cascade stage (its input includes the {previous_stage} "
            f"segmentation); nnbridge predict does not run cascades: use nnUNetv2_predict with "
            f"-prev_stage_predictions, or bundle a single-stage configuration"
        )
