"""nnU-Net plans and model folder names, without torch or numpy (the workflow reads them at DAG
time, ``nnbridge predict`` at run time).

Cascades: a configuration with ``previous_stage`` in the plans (``3d_cascade_fullres``, whose
previous stage is ``3d_lowres``) takes the image channels plus one one-hot channel per foreground
label of the previous stage's segmentation. nnU-Net trains it on the segmentations the previous
stage's folds wrote for the next stage when their final validation ran
(``nnUNetTrainer.folder_with_segs_from_previous_stage``):
``<nnUNet_results>/<Dataset>/<Trainer>__<Plans>__<previous stage>/predicted_next_stage/<configuration>``.
"""

from __future__ import annotations

from copy import deepcopy
from pathlib import Path

from .errors import NNBridgeError
from .runlog import read_json


def configuration(plans: dict, name: str) -> dict:
    """The configuration ``name`` of ``plans`` with ``inherits_from`` resolved like ``PlansManager``.

    The parent's entries are updated with the child's (recursively); the result is a deep copy.
    """
    configurations = plans.get("configurations", {})
    if name not in configurations:
        raise NNBridgeError(
            f"configuration {name!r} is not in the plans; available configurations: {sorted(configurations)}"
        )
    return _resolve_configuration(configurations, name, ())


def _resolve_configuration(configurations: dict, name: str, visited: tuple[str, ...]) -> dict:
    if name not in configurations:
        raise NNBridgeError(
            f"configuration {visited[-1]!r} inherits from {name!r}, which is not in the plans; "
            f"available configurations: {sorted(configurations)}"
        )
    config = deepcopy(configurations[name])
    parent = config.get("inherits_from")
    if parent is None:
        return config
    visited = (*visited, name)
    if parent in visited:
        raise NNBridgeError(
            f"circular 'inherits_from' in the plans: {' -> '.join((*visited, parent))}; fix plans.json"
        )
    base = _resolve_configuration(configurations, parent, visited)
    base.update(config)
    return base


def configuration_of(model_folder: str | Path) -> tuple[str, str, str]:
    """(trainer, plans, configuration) from an nnU-Net model folder's name."""
    parts = Path(model_folder).name.split("__")
    if len(parts) != 3:
        raise NNBridgeError(
            f"{model_folder}: not an nnU-Net model folder name; expected "
            "<Trainer>__<Plans>__<configuration>"
        )
    return parts[0], parts[1], parts[2]


def previous_stage(plans: dict, name: str) -> str | None:
    """The previous stage of configuration ``name`` (``None`` unless it is a cascade stage)."""
    return configuration(plans, name).get("previous_stage")


def model_previous_stage(model_folder: str | Path) -> str | None:
    """The previous stage of an nnU-Net model folder's configuration, from its ``plans.json``
    (``None`` when the folder has no plans yet, e.g. a model the pipeline trains itself)."""
    plans_file = Path(model_folder) / "plans.json"
    if not plans_file.is_file():
        return None
    plans = read_json(plans_file, fix="copy it again from the model folder nnU-Net wrote")
    try:
        return previous_stage(plans, configuration_of(model_folder)[2])
    except NNBridgeError as exc:
        raise NNBridgeError(f"{plans_file}: {exc}") from None


def default_previous_stage_segs(model_folder: str | Path, previous: str) -> Path:
    """Where nnU-Net writes (and its cascade training reads) the previous stage's segmentations:
    ``<Dataset>/<Trainer>__<Plans>__<previous>/predicted_next_stage/<configuration>``."""
    trainer, plans_name, config_name = configuration_of(model_folder)
    return Path(model_folder).parent / f"{trainer}__{plans_name}__{previous}" / "predicted_next_stage" / config_name
