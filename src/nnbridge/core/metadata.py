"""nnbridge's provenance metadata in ONNX files and OpenVINO IRs, and nnU-Net label names; imports
no torch and no runtime."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import onnx

from .errors import NNBridgeError


META_PREFIX = "nnbridge."


# the key (nnbridge.<key>) of a file that asks OpenVINO for another inference precision than
# fp32: "bf16" for the bf16 variant (quantize method bf16)
PRECISION_KEY = "inference_precision"


def _check_file(path: Path, what: str, fix: str) -> None:
    """One-line refusal of a missing path, a folder or an empty file where ``what`` is expected."""
    if not path.exists():
        raise NNBridgeError(f"{path}: no such file; give the path of {what}")
    if path.is_dir():
        raise NNBridgeError(f"{path}: is a folder; give the path of {what} in it")
    if path.stat().st_size == 0:
        raise NNBridgeError(f"{path}: empty file (0 bytes), not {fix}")


def load_onnx_model(path: Path | str) -> onnx.ModelProto:
    """An ONNX file's model (without external data), or a one-line :class:`NNBridgeError` for a
    missing path, a folder, an empty file or one that is not ONNX (or truncated)."""
    path = Path(path)
    _check_file(path, "an .onnx file", "an ONNX model; copy or export it again")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf raises DecodeError and others on junk
        raise NNBridgeError(f"{path}: not an ONNX model, or truncated ({type(exc).__name__}); copy or export it "
                            "again") from None
    if not model.graph.output or not model.opset_import or not model.ir_version:
        # protobuf parses some non-ONNX or cut byte strings into a partial message instead of failing
        raise NNBridgeError(f"{path}: not an ONNX model, or truncated (no graph in it); copy or export it again")
    return model


# OpenVINO keeps an ONNX file's metadata_props under the model's rt_info section "framework";
# nnbridge writes its provenance into an IR there too, so one reader serves both
RT_SECTION = "framework"


def read_ir(path: str | Path) -> ET.Element:
    """The ``<net>`` element of an OpenVINO IR ``.xml`` (read without OpenVINO); one-line refusal
    of a missing path, a folder, an empty file or a file that is not one (or truncated)."""
    path = Path(path)
    _check_file(path, "an OpenVINO IR .xml file", "an OpenVINO IR; copy or write it again")
    try:
        root = ET.parse(str(path)).getroot()
    except (ET.ParseError, OSError) as exc:
        raise NNBridgeError(f"{path}: not a readable OpenVINO IR .xml ({exc}); write it again") from None
    if root.tag != "net" or root.find("layers") is None:
        raise NNBridgeError(f"{path}: not an OpenVINO IR (no <net><layers>); write it again")
    return root


def ir_rt_info(path: str | Path, section: str = RT_SECTION) -> dict[str, str]:
    """The model-level rt_info entries of an IR under ``section`` (name → value)."""
    node = read_ir(path).find(f"rt_info/{section}")
    return {} if node is None else {child.tag: child.get("value", "") for child in node}


def _ir_output_channels(path: str | Path) -> int:
    """The second dimension of an IR's first output (0 when dynamic or absent)."""
    for layer in read_ir(path).iter("layer"):
        if layer.get("type") == "Result":
            dims = [int(d.text or -1) for d in layer.findall("input/port/dim")]
            return max(dims[1], 0) if len(dims) > 1 else 0
    return 0


def read_metadata(path: Path) -> dict[str, str]:
    """nnbridge metadata of an ONNX file (its metadata_props) or an OpenVINO IR ``.xml`` (its
    rt_info, where OpenVINO keeps an ONNX file's metadata and nnbridge writes it), keys without the
    prefix."""
    if Path(path).suffix.lower() == ".xml":
        return {k[len(META_PREFIX):]: v for k, v in ir_rt_info(path).items() if k.startswith(META_PREFIX)}
    model = load_onnx_model(path)
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
        channels = _ir_output_channels(path)
    else:
        dims = onnx.load(str(path), load_external_data=False).graph.output[0].type.tensor_type.shape.dim
        channels = dims[1].dim_value if len(dims) > 1 else 0
    if not channels:
        raise NNBridgeError(f"{path}: no labels in its metadata and no fixed number of output channels; "
                            "export it with nnbridge")
    return {i: str(i) for i in range(int(channels))}, False
