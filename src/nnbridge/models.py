"""Loading trained nnU-Net v2 folds with provably correct weights.

A fold is loaded the way nnU-Net's own predictor builds its network (trainer class,
``build_network_architecture`` with deep supervision off), but the checkpoint is read with
``torch.load(weights_only=True)`` and an explicit allow-list, the state dict is loaded
strictly, and every parameter and buffer is compared with the checkpoint afterwards.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import NNBridgeError
from .onnxmeta import label_names
from .runlog import sha256_file  # noqa: F401 (re-exported: export, simplify, quantize use it)

CHECKPOINT_NAMES = ("checkpoint_final.pth", "checkpoint_best.pth")
COMPILED_PREFIX = "_orig_mod."


def _checkpoint_safe_globals() -> list[Any]:
    """Types found in nnU-Net v2 checkpoints besides tensors and builtins.

    nnU-Net stores numpy scalars and dtypes in ``logging`` / ``_best_ema``; nothing else is
    allowed, so an arbitrary pickle is still refused.
    """
    import numpy.core.multiarray as multiarray  # noqa: PLC0415 (numpy 2 keeps this alias)

    allowed: list[Any] = [multiarray.scalar, np.dtype, np.ndarray, multiarray._reconstruct]
    for name in ("Float64DType", "Float32DType", "Int64DType", "Int32DType", "BoolDType"):
        dtype_cls = getattr(np.dtypes, name, None)
        if dtype_cls is not None:
            allowed.append(dtype_cls)
    return allowed


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read an nnU-Net checkpoint with ``weights_only=True`` and nnU-Net's allow-list."""
    path = Path(path)
    if not path.is_file():
        raise NNBridgeError(f"{path}: checkpoint not found; train that fold or fix `folds:` in the config")
    if not zipfile.is_zipfile(path):
        raise NNBridgeError(f"{path}: not a torch checkpoint (corrupt or truncated file); re-copy it")
    try:
        with torch.serialization.safe_globals(_checkpoint_safe_globals()):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError / RuntimeError with long texts
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise NNBridgeError(f"{path}: refused by safe loading ({first})") from exc
    if not isinstance(checkpoint, dict) or "network_weights" not in checkpoint:
        raise NNBridgeError(f"{path}: no 'network_weights' key; this is not an nnU-Net v2 checkpoint")
    return checkpoint


def strip_prefixes(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove the ``_orig_mod.`` prefix a ``torch.compile``-d network saves its weights under."""
    return {
        (key[len(COMPILED_PREFIX):] if key.startswith(COMPILED_PREFIX) else key): value
        for key, value in state_dict.items()
    }


def tensor_digest(tensor: torch.Tensor | np.ndarray) -> str:
    """Content hash of a tensor (dtype, shape and bytes)."""
    array = tensor.detach().cpu().numpy() if isinstance(tensor, torch.Tensor) else np.asarray(tensor)
    array = np.ascontiguousarray(array)
    digest = hashlib.sha256()
    digest.update(str(array.dtype).encode())
    digest.update(str(array.shape).encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


@dataclass
class WeightCheck:
    """Outcome of comparing a network's tensors with its checkpoint."""

    n_tensors: int
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self) -> str:
        if self.ok:
            return f"weights verified: {self.n_tensors} tensors"
        first = (self.missing or self.unexpected or self.mismatched)[0]
        kind = "missing" if self.missing else "unexpected" if self.unexpected else "mismatching"
        return f"weights NOT verified: first {kind} tensor {first}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "n_tensors": self.n_tensors,
            "missing": self.missing,
            "unexpected": self.unexpected,
            "mismatched": self.mismatched,
            "summary": self.summary(),
        }


def verify_state(network: torch.nn.Module, reference: dict[str, torch.Tensor]) -> WeightCheck:
    """Compare every parameter and buffer of ``network`` with ``reference`` exactly."""
    actual = network.state_dict()
    check = WeightCheck(n_tensors=len(reference))
    check.missing = sorted(set(reference) - set(actual))
    check.unexpected = sorted(set(actual) - set(reference))
    for key in sorted(set(actual) & set(reference)):
        a, b = actual[key], reference[key]
        if a.shape != b.shape or a.dtype != b.dtype or not torch.equal(a.cpu(), b.cpu()):
            check.mismatched.append(key)
    return check


def find_trainer_class(trainer_name: str) -> type:
    """Locate a trainer class the way nnU-Net does, with nnbridge's own trainers appended."""
    from .demo import TRAINER_DIR  # noqa: PLC0415

    ext = os.environ.get("nnUNet_extTrainer", "")
    paths = [p for p in ext.split(os.pathsep) if p]
    if str(TRAINER_DIR) not in paths:
        os.environ["nnUNet_extTrainer"] = os.pathsep.join([*paths, str(TRAINER_DIR)])
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name  # noqa: PLC0415

    try:
        return recursive_find_trainer_class_by_name(trainer_name)
    except RuntimeError as exc:
        raise NNBridgeError(
            f"trainer class {trainer_name!r} is not importable; add the folder that defines it to "
            "the nnUNet_extTrainer environment variable"
        ) from exc


@dataclass
class LoadedFold:
    """A trained nnU-Net fold, ready for export."""

    model_folder: Path
    fold: str
    checkpoint_path: Path
    checkpoint_sha256: str
    network: torch.nn.Module
    plans: dict[str, Any]
    dataset_json: dict[str, Any]
    configuration: str
    trainer_name: str
    patch_size: tuple[int, ...]
    num_input_channels: int
    num_outputs: int
    mirror_axes: tuple[int, ...]
    stride_multiple: tuple[int, ...]
    region_based: bool
    weights: dict[str, torch.Tensor]
    weight_check: WeightCheck

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Batch-1 input shape of one training patch."""
        return (1, self.num_input_channels, *self.patch_size)

    @property
    def label_names(self) -> dict[int, str]:
        """Class index → label name; for region-based models, output channel → region name."""
        return label_names(self.dataset_json["labels"], self.region_based)


def fold_dirname(fold: str | int) -> str:
    return f"fold_{fold}"


def read_json(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise NNBridgeError(f"{path}: missing; an nnU-Net model folder holds plans.json and dataset.json")
    with open(path) as handle:
        return json.load(handle)


def total_stride(pool_op_kernel_sizes: list[list[int]] | tuple) -> tuple[int, ...]:
    """Per-axis product of the pooling strides: spatial sizes must be multiples of it."""
    dims = len(pool_op_kernel_sizes[0])
    return tuple(int(np.prod([stage[d] for stage in pool_op_kernel_sizes])) for d in range(dims))


def load_nnunet_fold(
    model_folder: Path, fold: str | int, checkpoint_name: str = "checkpoint_final.pth"
) -> LoadedFold:
    """Build the fold's network as nnU-Net's predictor does and load its weights strictly."""
    from nnunetv2.utilities.label_handling.label_handling import (  # noqa: PLC0415
        determine_num_input_channels,
    )
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager  # noqa: PLC0415

    model_folder = Path(model_folder)
    checkpoint_path = model_folder / fold_dirname(fold) / checkpoint_name
    checkpoint = load_checkpoint(checkpoint_path)
    plans = read_json(model_folder / "plans.json")
    dataset_json = read_json(model_folder / "dataset.json")
    configuration = checkpoint["init_args"]["configuration"]
    trainer_name = checkpoint["trainer_name"]

    plans_manager = PlansManager(plans)
    cm = plans_manager.get_configuration(configuration)
    num_input_channels = determine_num_input_channels(plans_manager, cm, dataset_json)
    label_manager = plans_manager.get_label_manager(dataset_json)
    num_outputs = label_manager.num_segmentation_heads
    trainer_class = find_trainer_class(trainer_name)
    if "plans_manager" in inspect.signature(trainer_class.build_network_architecture).parameters:
        network = trainer_class.build_network_architecture(
            plans_manager, cm, num_input_channels, num_outputs, enable_deep_supervision=False
        )
    else:
        network = trainer_class.build_network_architecture(
            cm.network_arch_class_name,
            cm.network_arch_init_kwargs,
            cm.network_arch_init_kwargs_req_import,
            num_input_channels,
            num_outputs,
            enable_deep_supervision=False,
        )
    weights = strip_prefixes(checkpoint["network_weights"])
    try:
        network.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise NNBridgeError(
            f"{checkpoint_path}: weights do not fit the network built from plans.json "
            f"({' '.join(first[:2])[:300]}); check that plans.json belongs to this checkpoint"
        ) from exc
    network.eval()
    check = verify_state(network, weights)
    if not check.ok:
        raise NNBridgeError(f"{checkpoint_path}: {check.summary()}")
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
    )
