"""A folder of images in nnU-Net's naming instead of an ``nnUNet_preprocessed`` folder.

``images:`` holds ``<case>_0000<ending>`` … one file per input channel (as ``nnUNetv2_predict``
takes them), ``labels:`` optionally ``<case><ending>`` for every case. The workflow lists the cases
when it builds the DAG (:func:`list_image_cases`); the ``preprocess_images`` stage runs the plans'
own preprocessor class (``DefaultPreprocessor`` unless the plans name another), nnU-Net's
``run_case_save``, into the results cache, in the layout ``nnUNetv2_preprocess`` writes, so the
patches stage reads it with nnU-Net's dataset reader like any preprocessed dataset.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import NNBridgeError
from ..core.plans import configuration_of
from ..predict.io import find_cases, num_channels


@dataclass(frozen=True)
class ImageSet:
    """The images (and labels) a model's patches and whole-case parity come from."""

    folder: str
    labels: str | None
    splits: str | None
    """A ``splits_final.json`` whose fold splits the cases (else a seeded split)."""
    cases: dict[str, dict[str, Any]] = field(default_factory=dict, compare=False, hash=False)
    """Case → {"images": [one file per channel], "label": file or None}."""

    def files(self) -> list[str]:
        """Every image and label file (the preprocessing's inputs)."""
        out = [f for case in self.cases.values() for f in case["images"]]
        return out + [case["label"] for case in self.cases.values() if case["label"]]


def list_image_cases(images: str | Path, dataset_json: dict[str, Any], labels: str | Path | None = None,
                     where: str = "") -> dict[str, dict[str, Any]]:
    """Case → {"images", "label"} of an image folder, for the model's channels and file ending
    (from its ``dataset.json``); with ``labels``, every case needs its label file."""
    where = f"{where}: " if where else ""
    ending = dataset_json.get("file_ending")
    if not ending:
        raise NNBridgeError(f"{where}the model's dataset.json has no 'file_ending'; nnU-Net needs it to find images")
    if not Path(images).is_dir():
        raise NNBridgeError(f"{where}images folder {images} does not exist; fix `images:` of the model in the config")
    try:
        found = find_cases(Path(images), ending, num_channels(dataset_json))
    except NNBridgeError as error:
        raise NNBridgeError(f"{where}{error}") from None
    cases = {}
    for case, files in sorted(found.items()):
        label = None
        if labels is not None:
            label = Path(labels) / f"{case}{ending}"
            if not label.is_file():
                raise NNBridgeError(f"{where}{label} missing: with `labels:` every case of {images} needs its label "
                                    f"file <case>{ending}; add it or remove `labels:` (patches then centre on the "
                                    "model's own predicted foreground)")
        cases[case] = {"images": [str(f) for f in files], "label": str(label) if label else None}
    return cases


def preprocess_images(model_folder: str | Path, cases: dict[str, dict[str, Any]], out_dir: str | Path
                      ) -> dict[str, Any]:
    """Preprocess ``cases`` with the model's plans: nnU-Net's preprocessor class named by the
    configuration (``preprocessor_name``), its ``run_case_save``, into
    ``out_dir/<data_identifier>/`` (``<case>.b2nd``, ``<case>_seg.b2nd``, ``<case>.pkl``; with
    labels the pickle holds nnU-Net's ``class_locations``). Written beside and renamed, so a
    failure leaves no half-preprocessed folder."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager  # noqa: PLC0415

    model_folder, out_dir = Path(model_folder), Path(out_dir)
    plans = json.loads((model_folder / "plans.json").read_text())
    dataset_json = json.loads((model_folder / "dataset.json").read_text())
    configuration = configuration_of(model_folder)[2]
    plans_manager = PlansManager(plans)
    cm = plans_manager.get_configuration(configuration)
    preprocessor_class = cm.preprocessor_class
    if preprocessor_class is None:
        raise NNBridgeError(f"{model_folder / 'plans.json'}: preprocessor {cm.preprocessor_name!r} of configuration "
                            f"{configuration} is not in nnunetv2.preprocessing; install the package that defines it")
    preprocessor = preprocessor_class(verbose=False)
    target = out_dir / cm.data_identifier
    work = out_dir / f".{cm.data_identifier}.part"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        for case, files in cases.items():
            preprocessor.run_case_save(str(work / case), list(files["images"]), files.get("label"),
                                       plans_manager, cm, dataset_json)
        shutil.rmtree(target, ignore_errors=True)
        work.replace(target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "configuration": configuration,
        "data_identifier": cm.data_identifier,
        "data_folder": str(target),
        "preprocessor": f"{preprocessor_class.__module__}.{preprocessor_class.__name__}",
        "cases": sorted(cases),
        "labels": all(files.get("label") for files in cases.values()),
    }
