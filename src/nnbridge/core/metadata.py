"""nnbridge's provenance metadata in ONNX files and OpenVINO IRs, and nnU-Net label names; imports
no torch and no runtime."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import onnx

from . import irgraph
from .errors import NNBridgeError


META_PREFIX = "nnbridge."


# the key (nnbridge.<key>) of a file that asks OpenVINO for another inference precision than
# fp32: "bf16" for the bf16 variant (quantize method bf16)
PRECISION_KEY = "inference_precision"


def read_metadata(path: Path) -> dict[str, str]:
    """nnbridge metadata of an ONNX file (its metadata_props) or an OpenVINO IR ``.xml`` (its
    rt_info, where OpenVINO keeps an ONNX file's metadata and nnbridge writes it), keys without the
    prefix."""
    if Path(path).suffix.lower() == ".xml":
        return {k[len(META_PREFIX):]: v for k, v in irgraph.rt_info(path).items() if k.startswith(META_PREFIX)}
    model = onnx.load(str(path), load_external_data=False)
    return {
        p.key[len(META_PREFIX):]: p.value
        for p in model.metadata_props
        if p.key.startswith(META_PREFIX)
    }


def inference_precision(path: Path) -> str:
    """The inference precision an nnbridge ONNX file or IR asks for: ``bf16`` for a bf16 variant,
    else ``f32``."""
    return read_metadata(path).get(PRECISION_KEY, "f32")


def label_names(labels: dict[str, Any], region_based: bool) -> dict[int, str]:
    """Class index → label name from a ``dataset.json``'s ``labels``; for region-based models
    (labels that are lists of classes), output channel → region name."""
    if region_based:
        regions = [k for k, v in labels.items() if k != "background" and v != 0]
        return dict(enumerate(regions))
    return {int(v): k for k, v in labels.items() if isinstance(v, int)}


def is_region_based(labels: dict[str, Any]) -> bool:
    """nnU-Net's rule (``LabelManager``): a dataset is region-based when a label maps to a list of
    more than one class."""
    return any(isinstance(v, (list, tuple)) and len(v) > 1 for v in labels.values())


def output_labels(path: Path) -> tuple[dict[int, str], bool]:
    """Label names and region-based flag of an exported model, from the nnU-Net ``dataset.json``
    (or a plain model's configured labels) in its metadata; without them, classes ``0..C-1`` of
    the output (softmax / argmax)."""
    meta = read_metadata(path)
    dataset = json.loads(meta.get("dataset_json", "null") or "null")
    if meta.get("labels"):  # a plain PyTorch model: labels and output type as configured
        region_based = json.loads(meta.get("region_based", "false"))
        return label_names(json.loads(meta["labels"]), region_based), region_based
    if dataset:
        labels = dataset.get("labels", {})
        region_based = is_region_based(labels)
        return label_names(labels, region_based), region_based
    if Path(path).suffix.lower() == ".xml":
        dims = irgraph.output_dims(path)
        channels = max(dims[1], 0) if len(dims) > 1 else 0
    else:
        dims = onnx.load(str(path), load_external_data=False).graph.output[0].type.tensor_type.shape.dim
        channels = dims[1].dim_value if len(dims) > 1 else 0
    if not channels:
        raise NNBridgeError(f"{path}: no labels in its metadata and no fixed number of output channels; "
                            "export it with nnbridge")
    return {i: str(i) for i in range(int(channels))}, False
