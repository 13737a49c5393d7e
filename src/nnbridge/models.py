"""Loading trained nnU-Net v2 folds with provably correct weights.

A fold is loaded the way nnU-Net's own predictor builds its network (trainer class,
``build_network_architecture`` with deep supervision off), but the checkpoint is read with
``torch.load(weights_only=True)`` and an explicit allow-list, the state dict is loaded
strictly, and every parameter and buffer is compared with the checkpoint afterwards.
:func:`load_model` is the entry point for every model source: nnU-Net folds here, plain PyTorch
checkpoints through :mod:`nnbridge.plainmodels`.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
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


def checkpoint_safe_globals() -> list[Any]:
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


def load_checkpoint(path: Path, *, trusted: bool = False) -> dict[str, Any]:
    """Read an nnU-Net checkpoint with ``weights_only=True`` and nnU-Net's allow-list (in full
    only when the config marks the model ``trusted``)."""
    from .plainmodels import read_torch_file  # noqa: PLC0415

    path = Path(path)
    if not path.is_file():
        raise NNBridgeError(f"{path}: checkpoint not found; train that fold or fix `folds:` in the config")
    checkpoint = read_torch_file(path, trusted=trusted, config_key="this model in the config's models:")
    if not isinstance(checkpoint, dict) or "network_weights" not in checkpoint:
        raise NNBridgeError(f"{path}: no 'network_weights' key; this is not an nnU-Net v2 checkpoint")
    return checkpoint


def strip_prefixes(state_dict: dict[str, torch.Tensor],
                   prefixes: tuple[str, ...] = (COMPILED_PREFIX,)) -> dict[str, torch.Tensor]:
    """Remove key prefixes (default: the ``_orig_mod.`` a ``torch.compile``-d network saves its
    weights under), repeatedly, so ``_orig_mod.module.`` goes too when both are given."""
    def strip(key: str) -> str:
        while prefix := next((p for p in prefixes if key.startswith(p)), None):
            key = key[len(prefix):]
        return key

    return {strip(key): value for key, value in state_dict.items()}


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


def load_strictly(network: torch.nn.Module, weights: dict[str, torch.Tensor], path: Path,
                  built_from: str, fix: str) -> None:
    """``load_state_dict(strict=True)`` (no missing or unexpected key), then eval mode; a
    mismatch names the checkpoint, the first keys and ``fix``."""
    try:
        network.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise NNBridgeError(
            f"{path}: weights do not fit {built_from} ({' '.join(first[:2])[:300]}); {fix}"
        ) from exc
    network.eval()


def verified(network: torch.nn.Module, weights: dict[str, torch.Tensor], path: Path) -> WeightCheck:
    """:func:`verify_state`, raising with the first mismatching tensor unless all match."""
    check = verify_state(network, weights)
    if not check.ok:
        raise NNBridgeError(f"{path}: {check.summary()}")
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
    """A trained network ready for export: an nnU-Net fold or a plain PyTorch model."""

    model_folder: Path
    fold: str
    checkpoint_path: Path
    checkpoint_sha256: str
    network: torch.nn.Module
    plans: dict[str, Any] | None
    dataset_json: dict[str, Any] | None
    configuration: str | None
    trainer_name: str
    patch_size: tuple[int, ...]
    num_input_channels: int
    num_outputs: int
    mirror_axes: tuple[int, ...]
    stride_multiple: tuple[int, ...]
    region_based: bool
    weights: dict[str, torch.Tensor]
    weight_check: WeightCheck
    kind: str = "nnunet"
    dynamic_axes: tuple[str, ...] = ("batch", "spatial")
    labels: dict[str, Any] | None = None
    """Label name → class index (or region list) for plain models; nnU-Net's come from dataset.json."""
    source: dict[str, Any] = field(default_factory=dict)
    """How the model was loaded (the config entry), stored in the artifacts' metadata."""
    weights_origin: str = "nnU-Net checkpoint (network_weights)"
    """Where in the checkpoint the weights were found (after removing prefixes)."""
    previous_stage: str | None = None
    """Cascade stage (e.g. ``3d_cascade_fullres``): the configuration whose segmentation it takes."""
    previous_stage_labels: tuple[int, ...] = ()
    """Cascade stage: the labels of its one-hot input channels, in order after the image channels
    (nnU-Net's foreground labels; ``determine_num_input_channels``)."""

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Batch-1 input shape of one training patch."""
        return (1, self.num_input_channels, *self.patch_size)

    @property
    def num_image_channels(self) -> int:
        """Input channels that are image channels (all but a cascade stage's one-hot ones)."""
        return self.num_input_channels - len(self.previous_stage_labels)

    @property
    def label_names(self) -> dict[int, str]:
        """Class index → label name; for region-based models, output channel → region name."""
        labels = self.dataset_json["labels"] if self.dataset_json is not None else self.labels
        return label_names(labels, self.region_based)


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
    load_strictly(network, weights, checkpoint_path, "the network built from plans.json",
                  "check that plans.json belongs to this checkpoint")
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


def load_model(source: dict[str, Any]) -> LoadedFold:
    """Load what a config ``models:`` entry describes, for one fold (see ``workflow_plan``)."""
    if source.get("kind", "nnunet") == "nnunet":
        return load_nnunet_fold(Path(source["folder"]), source["fold"],
                                source.get("checkpoint", "checkpoint_final.pth"),
                                trusted=bool(source.get("trusted", False)))
    return load_plain_model(source)


def _per_axis(value: int | list[int], dims: int, what: str, where: str) -> tuple[int, ...]:
    values = [int(value)] * dims if isinstance(value, int) else [int(v) for v in value]
    if len(values) != dims or min(values) < 1:
        raise NNBridgeError(f"{where}: `{what}` must be a positive integer or {dims} of them")
    return tuple(values)


def load_plain_model(source: dict[str, Any]) -> LoadedFold:
    """A plain PyTorch model from its config entry: network, weights proven, shapes checked."""
    from .plainmodels import build_plain_network  # noqa: PLC0415

    where = f"model {source.get('name', source['checkpoint'])!r}"
    network, weights, found = build_plain_network(source, where)
    check = verified(network, weights, Path(source["checkpoint"]))
    example = tuple(int(s) for s in source["example_size"])
    multiple = _per_axis(source.get("spatial_multiple", 1), len(example), "spatial_multiple", where)
    channels = int(source["input_channels"])
    with torch.no_grad():
        out = network(torch.zeros((1, channels, *example)))
    if isinstance(out, (list, tuple)):
        raise NNBridgeError(
            f"{where}: forward returns {len(out)} outputs (deep supervision on?); build the model "
            "with one output in `init_kwargs:`"
        )
    if tuple(out.shape[2:]) != example:
        raise NNBridgeError(f"{where}: output spatial size {tuple(out.shape[2:])} differs from the input's {example}")
    num_outputs = int(out.shape[1])
    region_based = source.get("output", "softmax") == "sigmoid"
    labels = source.get("labels") or (
        {f"channel_{i}": [i] for i in range(num_outputs)} if region_based
        else {"background": 0, **{f"class_{i}": i for i in range(1, num_outputs)}}
    )
    checkpoint = Path(source["checkpoint"])
    return LoadedFold(
        model_folder=checkpoint.parent,
        fold=str(source.get("fold", "all")),
        checkpoint_path=checkpoint,
        checkpoint_sha256=sha256_file(checkpoint),
        network=network,
        plans=None,
        dataset_json=None,
        configuration=None,
        trainer_name=str(source.get("class") or found),
        patch_size=example,
        num_input_channels=channels,
        num_outputs=num_outputs,
        mirror_axes=tuple(int(a) for a in source.get("mirror_axes") or ()),
        stride_multiple=multiple,
        region_based=region_based,
        weights=weights,
        weight_check=check,
        kind="pytorch",
        dynamic_axes=tuple(source.get("dynamic_axes", ("batch", "spatial"))),
        labels=labels,
        source={k: v for k, v in source.items() if k not in ("fold",)},
        weights_origin=found,
    )
