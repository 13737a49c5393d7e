"""Facts read off an OpenVINO IR (``.xml`` + ``.bin``) without OpenVINO, as :mod:`.onnxgraph` reads
them off an ONNX file: operator counts, whether it holds INT8, and a signature of what decides its
speed. Only the ``.xml`` is read (the ``.bin`` holds the weights' values; its rt_info:
:func:`nnbridge.core.metadata.ir_rt_info`). Imports no runtime and no torch."""

from __future__ import annotations

import hashlib
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

from .metadata import RT_SECTION, read_ir


# element types of constants that hold quantized weights
LOW_BIT_TYPES = frozenset({"i8", "u8", "i4", "u4"})


def layer_types(path: str | Path) -> dict[str, int]:
    """Operator (layer type) counts of an IR."""
    return dict(sorted(Counter(layer.get("type", "?") for layer in read_ir(path).iter("layer")).items()))


def holds_int8(path: str | Path) -> bool:
    """Whether an IR computes in low precision: FakeQuantize layers or 8-/4-bit weight constants."""
    for layer in read_ir(path).iter("layer"):
        if layer.get("type") == "FakeQuantize":
            return True
        data = layer.find("data")
        if layer.get("type") == "Const" and data is not None and data.get("element_type") in LOW_BIT_TYPES:
            return True
    return False


def ir_signature(path: str | Path, keep_rt: tuple[str, ...] = ()) -> str:
    """A hash of what decides an IR's speed and nothing else: every layer (type, version,
    attributes, ports, shapes, precisions) and edge, without the weights' values or their place
    in the ``.bin`` (``offset``/``size``: OpenVINO stores equal constants once, so places move
    with the values), without names (OpenVINO numbers the layers it makes, ``Constant_12127``,
    from a per-process counter), and without the model's rt_info except the entries named in
    ``keep_rt`` (the inference precision a bf16 file asks for)."""
    root = read_ir(path)
    digest = hashlib.sha256()

    def feed(element: ET.Element, const: bool) -> None:
        attrs = {k: v for k, v in element.attrib.items()
                 if k not in ("name", "names") and not (const and element.tag == "data" and k in ("offset", "size"))}
        digest.update(f"<{element.tag} {sorted(attrs.items())}>{(element.text or '').strip()}".encode())
        for child in element:
            feed(child, const or (element.tag == "layer" and element.get("type") == "Const"))

    for child in root:
        if child.tag != "rt_info":  # the model's provenance (fold, checkpoint sha256) is not speed
            feed(child, False)
    section = root.find(f"rt_info/{RT_SECTION}")
    for key in keep_rt:
        entry = next((c for c in section if c.tag == key), None) if section is not None else None  # tags hold dots
        if entry is not None:
            digest.update(f"{key}:{entry.get('value')}".encode())
    return digest.hexdigest()[:16]
