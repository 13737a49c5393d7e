"""OpenVINO IR variants (``.xml`` + ``.bin``): INT8 by NNCF's OpenVINO backend, and the fp32 graph.

``openvino_int8``: NNCF quantizes the OpenVINO model read from the simplified ONNX file, not the
ONNX graph, so its quantizers sit where OpenVINO's own graph has room for them: on the inputs of
MVN (what InstanceNormalization becomes) as well as of the convolutions and transposed
convolutions, where a QDQ ONNX file read by OpenVINO leaves MVN in fp32 (the coverage records of
the two say what runs in INT8, the benchmark what it is worth). Calibrated on the same patches as
the other INT8 variants, optionally with NNCF's accuracy control driven by the worst per-class
Dice (:class:`.nncf_ptq.DiceControl`, on OpenVINO: the only runtime an IR runs on).

``openvino_fp32``: the simplified ONNX converted to IR once, weights kept in fp32 (exact), so that
loading reads no ONNX; the benchmark records both load times (``load_ms``).

Both carry nnbridge's provenance metadata in the IR's rt_info (``framework``, where OpenVINO keeps
an ONNX file's metadata, so :func:`nnbridge.core.metadata.read_metadata` and
:func:`nnbridge.runtime.ov.file_precision` read either kind alike). OpenVINO is imported only here.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ..core.errors import NNBridgeError
from ..core.metadata import META_PREFIX, RT_SECTION, read_metadata
from ..core.onnxgraph import module_name
from ..runtime.ov import fix_input_shape, openvino_threads
from .common import _file_record, _paths
from .nncf_ptq import DiceControl, _import_nncf, decided_nodes, nncf_parameters, run_nncf


# OpenVINO operations that hold a layer's weights (input 1)
WEIGHTED_OPS = frozenset({"Convolution", "GroupConvolution", "ConvolutionBackpropData",
                          "GroupConvolutionBackpropData", "MatMul"})


# operations between a weight constant and its layer that keep it what it is (decompression)
WEIGHT_PATH_OPS = frozenset({"Convert", "Subtract", "Multiply", "Reshape", "Transpose", "Unsqueeze"})


def _import_openvino():
    try:
        import openvino  # noqa: PLC0415
    except ImportError as exc:
        raise NNBridgeError("OpenVINO IR variants need OpenVINO: pip install 'nnbridge[openvino]' "
                            f"(import failed: {exc})") from exc
    return openvino


def _ir_paths(src: Path, dst: Path, calibration: np.ndarray | None = None) -> tuple[Path, Path]:
    if Path(dst).suffix.lower() != ".xml":
        raise NNBridgeError(f"{dst}: an OpenVINO IR is written as <name>.xml (+ <name>.bin); name the output .xml")
    return _paths(src, dst, calibration)


def read_onnx(src: Path) -> Any:
    """The OpenVINO model of an ONNX file (OpenVINO's ONNX frontend; its metadata under rt_info)."""
    return _import_openvino().Core().read_model(str(src))


def save_ir(model: Any, src: Path, dst: Path) -> None:
    """Write ``model`` as IR ``dst`` (+ ``.bin``) with ``src``'s nnbridge metadata in its rt_info,
    constants in their own precision (no fp16 compression: the fp32 weights stay exact)."""
    ov = _import_openvino()
    for key, value in read_metadata(src).items():
        model.set_rt_info(value, [RT_SECTION, META_PREFIX + key])
    ov.save_model(model, str(dst), compress_to_fp16=False)


def convert_openvino_fp32(src: Path, dst: Path) -> dict[str, Any]:
    """The fp32 graph of ``src`` as an OpenVINO IR: what OpenVINO reads from the ONNX file, written
    once, so that loading it skips the ONNX import."""
    ov = _import_openvino()
    src, dst = _ir_paths(src, dst)
    started = time.perf_counter()
    save_ir(read_onnx(src), src, dst)
    return {"method": "openvino_fp32", "precision": "fp32", "runtime": "openvino", "openvino_version": ov.__version__,
            "converted_from": str(src), "n_calibration_patches": 0,
            "seconds": round(time.perf_counter() - started, 3), **_file_record(dst)}


def _onnx_patterns(src: Path, nodes: set[str], names: list[str]) -> list[str]:
    """NNCF ignored-scope patterns matching the OpenVINO operations an ONNX node became (named after
    it: ``<node>``, ``<node>/WithoutBiases``); a name that is none of ``src``'s ``nodes`` is refused."""
    unknown = [n for n in names if n not in nodes]
    if unknown:
        raise NNBridgeError(f"nodes_to_exclude: {unknown[0]!r} is no node of {src}; use ONNX node names "
                            "(nnbridge inspect, or Netron)")
    return [f"^{re.escape(name)}(/.*)?$" for name in names]


def _quantized_weights(op: Any) -> bool:
    """Whether a weighted OpenVINO operation takes INT8 weights (a FakeQuantize, or a low-bit
    constant through its decompression)."""
    node = op.input_value(1).get_node()
    for _ in range(8):
        kind = node.get_type_name()
        if kind == "FakeQuantize":
            return True
        if kind == "Constant":
            return node.get_element_type().get_type_name() in ("i8", "u8", "i4", "u4")
        if kind not in WEIGHT_PATH_OPS:
            return False
        node = node.input_value(0).get_node()
    return False


# operations NNCF quantizes the inputs of beside the weighted ones (MVN: InstanceNormalization)
INPUT_QUANTIZED_OPS = frozenset({"MVN"})


def _quantized(node: Any, depth: int = 4) -> bool:
    """Whether the activation ``node`` outputs is quantized: a FakeQuantize's, through reshapes,
    or a Concat of quantized ones (the decoder's skip connections)."""
    kind = node.get_type_name()
    if kind == "FakeQuantize":
        return True
    if depth == 0:
        return False
    if kind == "Concat":
        return all(_quantized(node.input_value(i).get_node(), depth - 1) for i in range(node.get_input_size()))
    return kind in ("Reshape", "Transpose", "Convert") and _quantized(node.input_value(0).get_node(), depth - 1)


def _quantized_input(op: Any) -> bool:
    """Whether an OpenVINO operation's activation input (input 0) is quantized."""
    return _quantized(op.input_value(0).get_node())


def _onnx_node_of(op: Any, nodes: set[str]) -> str | None:
    """The ONNX node an OpenVINO operation came from: its own name (``<node>``,
    ``<node>/WithoutBiases``), else the nearest consumer's (OpenVINO names the MVN of an
    InstanceNormalization ``MVN_<n>`` and its scale and shift after the node)."""
    frontier = [op]
    for _ in range(4):
        for candidate in frontier:
            name = candidate.get_friendly_name()
            node = next((n for n in nodes if name == n or name.startswith(n + "/")), None)
            if node:
                return node
        frontier = [t.get_node() for c in frontier for t in c.output(0).get_target_inputs()
                    if t.get_node().get_type_name() != "ShapeOf"] if frontier else []
    return None


def fp32_operations(model: Any, src: Path) -> tuple[list[str], list[str], list[str], list[str]]:
    """What of ``model`` (an INT8 OpenVINO model of ``src``) computes in fp32, by PyTorch module:
    (compute nodes whose weights or inputs are not quantized — what NNCF's accuracy control put
    back, or its ignored scope kept; other operations NNCF quantizes the inputs of, MVN, left
    with fp32 inputs; the ONNX nodes of the first, as an ignored scope names them; the ONNX
    nodes of the second, :func:`_input_ops_of` finds their operations again)."""
    graph = onnx.load(str(src), load_external_data=False).graph
    modules = {n.name: module_name(n.name, n.input[1] if len(n.input) > 1 else "") for n in graph.node}
    compute, inputs, nodes, input_nodes = [], [], [], []
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        weighted = kind in WEIGHTED_OPS and not (_quantized_weights(op) and _quantized_input(op))
        if weighted or (kind in INPUT_QUANTIZED_OPS and not _quantized_input(op)):
            node = _onnx_node_of(op, set(modules))
            (compute if weighted else inputs).append(modules[node] if node else op.get_friendly_name())
            if node:
                (nodes if weighted else input_nodes).append(node)
    return tuple(list(dict.fromkeys(x)) for x in (compute, inputs, nodes, input_nodes))


def _input_ops_of(model: Any, known: set[str], nodes: list[str]) -> list[str]:
    """The OpenVINO names of ``model``'s operations that NNCF quantizes the inputs of (MVN) and
    that came from the ONNX ``nodes`` (of the graph whose node names are ``known``): an ignored
    scope names them so (OpenVINO numbers an MVN, ``MVN_<n>``, instead of naming it after its node)."""
    if not nodes:
        return []
    return [op.get_friendly_name() for op in model.get_ordered_ops()
            if op.get_type_name() in INPUT_QUANTIZED_OPS and _onnx_node_of(op, known) in nodes]


def quantize_openvino_int8(src: Path, dst: Path, calibration: np.ndarray, *, preset: str = "performance",
                           subset_size: int | None = None, fast_bias_correction: bool = True,
                           model_type: str | None = None, nodes_to_exclude: list[str] | None = None,
                           ignored_types: list[str] | None = None,
                           accuracy_control: dict[str, Any] | None = None, threads: int = 1,
                           overflow_fix: str | None = None, decided: dict[str, Any] | None = None) -> dict[str, Any]:
    """INT8 of ``src`` (an ONNX file) by NNCF's OpenVINO backend, written as IR ``dst`` (``.xml``,
    weights in the ``.bin`` beside it). The settings are those of
    :func:`.nncf_ptq.quantize_nncf_int8`, except that ``ignored_types`` are OpenVINO operation
    types (``Concat``, ``MVN``, ``ConvolutionBackpropData``…); ``nodes_to_exclude`` are ONNX node
    names (each excludes the operations OpenVINO made of it); ``accuracy_control`` runs the
    candidates on OpenVINO (its ``runtime`` can only be ``openvino``); ``decided``: another
    fold's accuracy control chose the compute nodes left in fp32 (:func:`.nncf_ptq.decided_nodes`)
    and the MVN left on fp32 inputs (``fp32_input_nodes``): both join the ignored scope, so the
    fold's IR has that fold's graph (one benchmark for all of them)."""
    nncf = _import_nncf()
    ov = _import_openvino()
    src, dst = _ir_paths(src, dst, calibration)
    names, types = list(nodes_to_exclude or []), list(ignored_types or [])
    model = read_onnx(src)
    declared = model.input(0).get_partial_shape()
    # NNCF compiles the model as given: fixed to one patch, as the pipeline's other runs are
    # (fix_input_shape: some graphs run on OpenVINO only so), and given back its own input after
    fix_input_shape(model, (1, *calibration.shape[1:]), src)
    known = {n.name for n in onnx.load(str(src), load_external_data=False).graph.node}  # read once
    mvn: list[str] = []  # the MVN whose inputs the deciding fold's control left in fp32
    if decided is not None and accuracy_control:
        names += [n for n in decided_nodes(decided) if n not in names]
        mvn = _input_ops_of(model, known, (decided["record"].get("accuracy_control") or {}).get("fp32_input_nodes", []))
    patches = calibration.astype(np.float32)
    scope = (nncf.IgnoredScope(names=mvn, patterns=_onnx_patterns(src, known, names), types=types)
             if names or types or mvn else None)
    options, advanced = nncf_parameters(nncf, len(patches), preset=preset, subset_size=subset_size,
                                        fast_bias_correction=fast_bias_correction, model_type=model_type,
                                        ignored_scope=scope, overflow_fix=overflow_fix)
    if accuracy_control and accuracy_control.get("runtime", "openvino") != "openvino":
        raise NNBridgeError(f"accuracy_control runtime {accuracy_control['runtime']!r}: an OpenVINO IR runs on "
                            "openvino only; remove runtime from this quantize entry")
    control = DiceControl(src, patches, accuracy_control, threads, runtimes=("openvino",)) if accuracy_control else None
    started = time.perf_counter()
    with openvino_threads(threads):  # NNCF compiles its models on every core unless told
        quantized = run_nncf(nncf, src, model, nncf.Dataset(list(patches), lambda patch: patch[None]),
                             options, advanced, None if decided else control)
    quantized.reshape({quantized.input(0): declared})
    save_ir(quantized, src, dst)
    record = {"method": "openvino_int8", "backend": "openvino", "precision": "int8", "runtime": "openvino",
              "nncf_version": nncf.__version__, "openvino_version": ov.__version__, "preset": preset,
              "fast_bias_correction": fast_bias_correction, "model_type": model_type,
              "nodes_to_exclude": names, "ignored_types": types, "subset_size": options["subset_size"],
              "overflow_fix": overflow_fix or "first_layer_only", "n_calibration_patches": len(patches),
              "converted_from": str(src), "seconds": round(time.perf_counter() - started, 3), **_file_record(dst)}
    if control is not None:
        compute, inputs, nodes, input_nodes = fp32_operations(quantized, src)
        record["accuracy_control"] = control.summary(dst, fp32=compute, fp32_inputs=inputs, fp32_nodes=nodes,
                                                     decided_on=decided and str(decided["fold"]))
        record["accuracy_control"]["fp32_input_nodes"] = input_nodes
    return record
