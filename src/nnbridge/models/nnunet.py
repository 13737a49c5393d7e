"""Loading trained nnU-Net v2 folds with provably correct weights.

A fold is loaded the way nnU-Net's own predictor builds its network (trainer class,
``build_network_architecture`` with deep supervision off; a trainer whose source proves that it
keeps nnU-Net's default builder is not imported, :mod:`nnbridge.models.trainer_source`), but the
checkpoint is read with ``torch.load(weights_only=True)`` and an explicit allow-list, the state
dict is loaded strictly, and every parameter and buffer is compared with the checkpoint
afterwards."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import NNBridgeError
from ..core.runlog import read_json, sha256_file
from .checkpoint import load_strictly, read_torch_file, strip_prefixes, verified
from .loaded import LoadedFold
from .trainer_source import BASE_TRAINER, default_network_proof, ext_trainer_paths



def load_checkpoint(path: Path, *, trusted: bool = False) -> dict[str, Any]:
    """Read an nnU-Net checkpoint with ``weights_only=True`` and nnU-Net's allow-list (in full
    only when the config marks the model ``trusted``)."""

    path = Path(path)
    if not path.is_file():
        raise NNBridgeError(f"{path}: checkpoint not found; train that fold or fix `folds:` in the config")
    checkpoint = read_torch_file(path, trusted=trusted, config_key="this model in the config's models:")
    if not isinstance(checkpoint, dict) or "network_weights" not in checkpoint:
        raise NNBridgeError(f"{path}: no 'network_weights' key; this is not an nnU-Net v2 checkpoint")
    return checkpoint


def find_trainer_class(trainer_name: str) -> type:
    """Locate a trainer class the way nnU-Net does, with nnbridge's own trainers appended."""

    ext_trainer_paths()
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name  # noqa: PLC0415

    try:
        return recursive_find_trainer_class_by_name(trainer_name)
    except RuntimeError as exc:
        raise NNBridgeError(
            f"trainer class {trainer_name!r} is not importable; add the folder that defines it to "
            "the nnUNet_extTrainer environment variable"
        ) from exc


DEFAULT_TRAINER = BASE_TRAINER


def trainer_or_default(trainer_name: str) -> tuple[type, str | None]:
    """(trainer class, note): the checkpoint's trainer class, or nnU-Net's default trainer
    ``nnUNetTrainer`` when it is not installed, with a one-line note saying so. The default trainer
    builds the network from the plans' ``architecture`` entry (``get_network_from_plans``), as
    most custom trainers (other epochs, losses, augmentation) do too; one that builds another
    network is caught by the strict load and the weight proof."""
    try:
        return find_trainer_class(trainer_name), None
    except NNBridgeError:
        from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer  # noqa: PLC0415

        return nnUNetTrainer, _not_installed_note(trainer_name)


def _not_installed_note(trainer_name: str) -> str:
    return (f"trainer class {trainer_name!r} is not installed: network built from plans.json's architecture as "
            f"nnU-Net's default trainer ({DEFAULT_TRAINER}) builds it; the strict load and weight proof check it")


def _default_network(cm: Any, num_input_channels: int, num_outputs: int) -> Any:
    """What ``nnUNetTrainer.build_network_architecture`` builds (deep supervision off), where
    :func:`nnbridge.models.trainer_source.default_network_proof` proved it is that call."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans  # noqa: PLC0415

    return get_network_from_plans(cm.network_arch_class_name, cm.network_arch_init_kwargs,
                                  cm.network_arch_init_kwargs_req_import, num_input_channels, num_outputs,
                                  allow_init=True, deep_supervision=False)


def _trainer_network(trainer_class: type, plans_manager: Any, cm: Any, num_input_channels: int,
                     num_outputs: int) -> Any:
    """The network ``trainer_class.build_network_architecture`` builds (deep supervision off), in
    either of its signatures (nnunetv2 >= 2.5: plans and configuration managers)."""
    if "plans_manager" in inspect.signature(trainer_class.build_network_architecture).parameters:
        return trainer_class.build_network_architecture(
            plans_manager, cm, num_input_channels, num_outputs, enable_deep_supervision=False
        )
    return trainer_class.build_network_architecture(
        cm.network_arch_class_name,
        cm.network_arch_init_kwargs,
        cm.network_arch_init_kwargs_req_import,
        num_input_channels,
        num_outputs,
        enable_deep_supervision=False,
    )


def fold_dirname(fold: str | int) -> str:
    return f"fold_{fold}"


MODEL_FOLDER_FILES = ("an nnU-Net model folder holds plans.json and dataset.json: copy it again from the model "
                      "folder nnU-Net wrote")


def total_stride(pool_op_kernel_sizes: list[list[int]] | tuple) -> tuple[int, ...]:
    """Per-axis product of the pooling strides: spatial sizes must be multiples of it."""
    dims = len(pool_op_kernel_sizes[0])
    return tuple(int(np.prod([stage[d] for stage in pool_op_kernel_sizes])) for d in range(dims))


def load_nnunet_fold(
    model_folder: Path, fold: str | int, checkpoint_name: str = "checkpoint_final.pth",
    trusted: bool = False,
) -> LoadedFold:
    """Build the fold's network as nnU-Net's predictor does and load its weights strictly."""
    from nnunetv2.utilities.label_handling.label_handling import (  # noqa: PLC0415
        determine_num_input_channels,
    )
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager  # noqa: PLC0415

    model_folder = Path(model_folder)
    checkpoint_path = model_folder / fold_dirname(fold) / checkpoint_name
    checkpoint = load_checkpoint(checkpoint_path, trusted=trusted)
    plans = read_json(model_folder / "plans.json", fix=MODEL_FOLDER_FILES)
    dataset_json = read_json(model_folder / "dataset.json", fix=MODEL_FOLDER_FILES)
    configuration = checkpoint["init_args"]["configuration"]
    trainer_name = checkpoint["trainer_name"]

    plans_manager = PlansManager(plans)
    cm = plans_manager.get_configuration(configuration)
    num_input_channels = determine_num_input_channels(plans_manager, cm, dataset_json)
    label_manager = plans_manager.get_label_manager(dataset_json)
    num_outputs = label_manager.num_segmentation_heads
    # proven from the trainers' source: the default network, without importing a trainer (~4 s)
    proof = default_network_proof(trainer_name)
    if proof is not None:
        trainer_note = None if proof == "proven" else _not_installed_note(trainer_name)
        network = _default_network(cm, num_input_channels, num_outputs)
    else:
        trainer_class, trainer_note = trainer_or_default(trainer_name)
        network = _trainer_network(trainer_class, plans_manager, cm, num_input_channels, num_outputs)
    weights = strip_prefixes(checkpoint["network_weights"])
    if trainer_note is None:
        load_strictly(network, weights, checkpoint_path, "the network built from plans.json",
                      "check that plans.json belongs to this checkpoint")
    else:
        load_strictly(network, weights, checkpoint_path,
                      f"the network nnU-Net's default trainer builds from plans.json (trainer class "
                      f"{trainer_name!r} is not installed)",
                      f"{trainer_name} builds another network: add the folder that defines it to the "
                      "nnUNet_extTrainer environment variable")
    check = verified(network, weights, checkpoint_path)
    mirror_axes = checkpoint.get("inference_allowed_mirroring_axes") or ()
    return LoadedFold(
        model_folder=model_folder,
        fold=str(fold),
        checkpoint_path=checkpoint_path,
        checkpoint_sha256=sha256_file(checkpoint_path),
        network=network,
        plans=plans,
        dataset_json=dataset_json,
        configuration=configuration,
        trainer_name=trainer_name,
        patch_size=tuple(int(p) for p in cm.patch_size),
        num_input_channels=int(num_input_channels),
        num_outputs=int(num_outputs),
        mirror_axes=tuple(int(a) for a in mirror_axes),
        stride_multiple=total_stride(cm.pool_op_kernel_sizes),
        region_based=bool(label_manager.has_regions),
        weights=weights,
        weight_check=check,
        previous_stage=cm.previous_stage_name,
        previous_stage_labels=(tuple(int(label) for label in label_manager.foreground_labels)
                               if cm.previous_stage_name is not None else ()),
        trainer_note=trainer_note,
    )


def nnunet_source(model_folder: str | Path, fold: str | int, checkpoint: str = "checkpoint_final.pth",
                  trusted: bool = False, previous_stage_segs: str | Path | None = None) -> dict[str, Any]:
    """The source description of an nnU-Net fold (what :func:`load_model` takes;
    ``previous_stage_segs``: a cascade stage's input segmentations, if not where nnU-Net puts them)."""
    source = {"kind": "nnunet", "folder": str(model_folder), "fold": str(fold),
              "checkpoint": checkpoint, "trusted": bool(trusted)}
    if previous_stage_segs is not None:
        source["previous_stage_segs"] = str(previous_stage_segs)
    return source
