"""What the ONNX and TorchScript exports share: tensor names, shape checks, provenance metadata."""

from __future__ import annotations

import json
import platform

import numpy as np
import onnx
import torch

from .. import __version__
from ..core.errors import NNBridgeError
from ..core.metadata import META_PREFIX
from ..models.loaded import LoadedFold


INPUT_NAME = "input"


OUTPUT_NAME = "logits"


def check_spatial_shape(spatial: tuple[int, ...], multiple: tuple[int, ...]) -> None:
    """Refuse spatial sizes that the network's total stride does not divide."""
    bad = [(s, m) for s, m in zip(spatial, multiple) if s % m]
    if bad:
        raise NNBridgeError(
            f"spatial size {tuple(spatial)} is not a multiple of the network's total stride "
            f"{tuple(multiple)}; use sizes divisible by {tuple(multiple)} per axis"
        )


def probe_shapes(fold: LoadedFold) -> list[tuple[int, ...]]:
    """Two valid input shapes: the patch, and the patch grown by one stride on the first axis
    (or batch 2 when only the batch axis is dynamic; just the patch when nothing is)."""
    first = fold.input_shape
    grown = list(first)
    if "spatial" in fold.dynamic_axes:
        grown[2] += fold.stride_multiple[0]
    elif "batch" in fold.dynamic_axes:
        grown[0] = 2
    else:
        return [first]
    return [first, tuple(grown)]


def software_versions() -> dict[str, str]:
    versions = {"nnbridge": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
                "python": platform.python_version()}
    try:
        from importlib.metadata import version  # noqa: PLC0415

        versions["nnunetv2"] = version("nnunetv2")
    except Exception:  # noqa: BLE001 - nnunetv2 absent is reported, not fatal
        versions["nnunetv2"] = "unavailable"
    return versions


def fold_metadata(fold: LoadedFold, opset: int) -> dict[str, str]:
    """Provenance stored in every ONNX file (all values strings, as ONNX requires)."""
    meta = {
        "source_checkpoint": str(fold.checkpoint_path),
        "source_sha256": fold.checkpoint_sha256,
        "model_kind": fold.kind,
        "fold": fold.fold,
        "patch_size": json.dumps(list(fold.patch_size)),
        "stride_multiple": json.dumps(list(fold.stride_multiple)),
        "dynamic_axes": json.dumps(list(fold.dynamic_axes)),
        "num_input_channels": str(fold.num_input_channels),
        "num_outputs": str(fold.num_outputs),
        "mirror_axes": json.dumps(list(fold.mirror_axes)),
        "opset": str(opset),
        "versions": json.dumps(software_versions()),
    }
    if fold.kind == "nnunet":
        meta.update(trainer=fold.trainer_name, configuration=str(fold.configuration),
                    plans=json.dumps(fold.plans), dataset_json=json.dumps(fold.dataset_json))
        if fold.trainer_note is not None:  # the trainer class was not installed: default network
            meta.update(trainer_fallback=fold.trainer_note)
        if fold.previous_stage is not None:  # cascade: image channels, then one-hot of these labels
            meta.update(previous_stage=fold.previous_stage,
                        num_image_channels=str(fold.num_image_channels),
                        onehot_labels=json.dumps(list(fold.previous_stage_labels)))
    else:
        meta.update(model_class=fold.trainer_name,
                    init_kwargs=json.dumps(fold.source.get("init_kwargs") or {}),
                    checkpoint_format=str(fold.source.get("format", "state_dict")),
                    labels=json.dumps(fold.labels), region_based=json.dumps(fold.region_based))
    return {META_PREFIX + k: v for k, v in meta.items()}


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))
