"""Which operators of a quantized model really run in INT8 (or a bf16 variant in bf16), read from
the graph each runtime really runs.

ONNX Runtime rewrites a QDQ model when it builds a session: DequantizeLinear → Conv →
QuantizeLinear becomes one ``QLinearConv``, while operators without an INT8 kernel on the CPU
(ConvTranspose, InstanceNormalization) stay in fp32 between DequantizeLinear/QuantizeLinear
pairs. The optimized graph the session writes (``optimized_model_filepath``) is therefore the
truth about INT8 coverage; the quantized file alone is not. Compute nodes keep their names
through the rewrite (dynamic quantization adds ``_quant``), so each compute node of the fp32
graph is matched to what runs in its place, and its FLOPs (at a given input shape) weigh it.

Imports no torch.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import onnx

from ..core.onnxgraph import compute_node_flops, module_name
from ..runtime.ort import onnx_session
from ..runtime.ov import openvino_model


# operators that compute in INT8 on ONNX Runtime's CPU execution provider
INT8_OPS = frozenset({
    "QLinearConv", "ConvInteger", "QLinearMatMul", "MatMulInteger", "MatMulIntegerToFloat",
    "QGemm", "DynamicQuantizeMatMul", "QLinearAdd", "QLinearMul", "QLinearConcat",
    "QLinearLeakyRelu", "QLinearSigmoid", "QLinearAveragePool", "QLinearGlobalAveragePool",
    "QLinearSoftmax", "QLinearReduceMean", "QLinearWhere", "QLinearConvTranspose", "QAttention",
})


# conversions between fp32 and INT8 (pure overhead)
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})


def runtime_graph(path: Path, *, optimization: str = "ORT_ENABLE_ALL") -> onnx.ModelProto:
    """The graph an ONNX Runtime CPU session actually runs for ``path``."""

    with tempfile.TemporaryDirectory(prefix="nnbridge-opt-") as tmp:
        optimized = Path(tmp) / "optimized.onnx"
        onnx_session(Path(path), optimization=optimization, optimized_model_path=optimized)
        return onnx.load(str(optimized))


def _op_precision(node: onnx.NodeProto, int8_tensors: set[str]) -> str:
    if node.op_type in QDQ_OPS:
        return "conversion"
    if node.op_type == "MaxPool":  # ORT's MaxPool runs in INT8 when fed INT8
        return "int8" if node.input and node.input[0] in int8_tensors else "float"
    return "int8" if node.op_type in INT8_OPS else "float"


def _coverage_record(backend: str, optimization: str, input_shape: tuple[int, ...],
                     nodes: list[dict[str, Any]], histogram: Counter[tuple[str, str]],
                     low: str = "int8") -> dict[str, Any]:
    """The coverage record of either runtime: compute nodes (with ``flops`` and a ``low`` flag:
    runs in the variant's low precision, ``int8`` or ``bf16``) and the operator histogram by
    (operator, precision). Keys are named after ``low`` (``n_int8_compute_nodes``,
    ``int8_flop_share``, …); ``float_compute_nodes`` are those left in fp32."""
    total = sum(n["flops"] for n in nodes)
    low_flops = sum(n["flops"] for n in nodes if n[low])
    ops = [{"op": op, "precision": precision, "count": count}
           for (op, precision), count in sorted(histogram.items())]
    return {
        "backend": backend,
        "precision": low,
        "graph_optimization": optimization,
        "input_shape": list(input_shape),
        "n_compute_nodes": len(nodes),
        f"n_{low}_compute_nodes": sum(1 for n in nodes if n[low]),
        "gflops": round(total / 1e9, 4),
        f"{low}_flop_share": round(low_flops / total, 4) if total else 0.0,
        "float_compute_nodes": [n["module"] for n in nodes if not n[low]],
        "compute_nodes": nodes,
        "ops": ops,
        "n_conversions": sum(c["count"] for c in ops if c["precision"] == "conversion"),
    }


def int8_coverage(quantized: Path, float_model: Path, input_shape: tuple[int, ...], *,
                  optimization: str = "ORT_ENABLE_ALL") -> dict[str, Any]:
    """INT8 coverage of ``quantized`` on ONNX Runtime's CPU provider, relative to ``float_model``.

    Returns the share of compute nodes and of FLOPs that run in INT8, the list of compute nodes
    (with their PyTorch module names) and what runs in their place, and an operator histogram
    of the runtime graph split into int8 / float / conversion.
    """
    reference = compute_node_flops(onnx.load(str(float_model), load_external_data=False), input_shape)
    graph = runtime_graph(Path(quantized), optimization=optimization).graph
    int8_tensors = {out for n in graph.node if n.op_type in INT8_OPS | {"QuantizeLinear", "DynamicQuantizeLinear"}
                    for out in n.output}
    runtime: dict[str, str] = {}
    histogram: Counter[tuple[str, str]] = Counter()
    for node in graph.node:
        precision = _op_precision(node, int8_tensors)
        histogram[(node.op_type, precision)] += 1
        runtime[node.name] = node.op_type
    nodes = []
    for name, info in reference.items():
        runs_as = runtime.get(name) or runtime.get(f"{name}_quant")
        if runs_as is None:  # fused or renamed beyond recognition: look for a name that contains it
            runs_as = next((op for n, op in runtime.items() if n.startswith(name)), "?")
        nodes.append({"node": name, "module": module_name(name, info["weight"]), "op": info["op"],
                      "runs_as": runs_as, "int8": runs_as in INT8_OPS, "flops": info["flops"]})
    return _coverage_record("onnxruntime-cpu", optimization, input_shape, nodes, histogram)


OPENVINO_CONVERSIONS = frozenset({"Convert", "Reorder", "FakeQuantize"})


OPENVINO_SKIP = frozenset({"Const", "Input", "Output", "Parameter", "Result"})


OPENVINO_COMPUTE = frozenset({"Convolution", "Deconvolution", "FullyConnected", "MatMul"})


# what OpenVINO's runtime precision of a layer means for each low precision it may run in
OPENVINO_LOW = {"int8": ("u8", "i8"), "bf16": ("bf16",)}


def openvino_coverage(model_path: Path, float_model: Path, input_shape: tuple[int, ...], *,
                      low: str = "int8") -> dict[str, Any]:
    """Which compute layers of ``model_path`` (an ONNX file or an OpenVINO IR ``.xml``) OpenVINO's
    CPU plugin runs in ``low`` precision (``int8`` for a quantized file, ``bf16`` for a bf16
    variant), compiled as :func:`nnbridge.runtime.ov.openvino_model` compiles it
    (:func:`compiled_coverage`)."""
    return compiled_coverage(openvino_model(Path(model_path), 1, shape=input_shape), float_model, input_shape, low=low)


def compiled_coverage(compiled: Any, float_model: Path, input_shape: tuple[int, ...], *,
                      low: str = "int8") -> dict[str, Any]:
    """Which compute layers an OpenVINO compiled model runs in ``low`` precision, in the record of
    :func:`int8_coverage`: each runtime layer's ``runtimePrecision``, matched to the compute nodes
    of the fp32 ONNX graph ``float_model`` through the ``originalLayersNames`` OpenVINO keeps
    (an IR converted from that graph keeps its names too)."""

    lows = OPENVINO_LOW[low]
    reference = compute_node_flops(onnx.load(str(float_model), load_external_data=False), input_shape)
    runtime = compiled.get_runtime_model()
    compute: list[tuple[list[str], str, str]] = []
    histogram: Counter[tuple[str, str]] = Counter()
    for op in runtime.get_ordered_ops():
        info = op.get_rt_info()
        layer = info["layerType"].astype(str)
        precision = info["runtimePrecision"].astype(str)
        if layer in OPENVINO_SKIP:
            continue
        kind = ("conversion" if layer in OPENVINO_CONVERSIONS else low if precision in lows else "float")
        histogram[(layer, kind)] += 1
        if layer in OPENVINO_COMPUTE:  # a bias Eltwise also names the conv it came from
            compute.append((info["originalLayersNames"].astype(str).split(","), layer, precision))
    def runs_as(name: str) -> tuple[str, str]:
        # OpenVINO names a fused layer after its parts: "<node>/WithoutBiases", "<node>_output_0_..."
        for originals, layer, precision in compute:
            if any(o == name or o.startswith((name + "/", name + "_")) for o in originals):
                return layer, precision
        return "?", "?"

    nodes = []
    for name, info in reference.items():
        layer, precision = runs_as(name)
        nodes.append({"node": name, "module": module_name(name, info["weight"]), "op": info["op"],
                      "runs_as": f"{layer} ({precision})", low: precision in lows, "flops": info["flops"]})
    return _coverage_record("openvino-cpu", "compiled model (runtime precision per layer)",
                            input_shape, nodes, histogram, low)


def openvino_int8_coverage(quantized: Path, float_model: Path, input_shape: tuple[int, ...]) -> dict[str, Any]:
    """INT8 coverage of ``quantized`` (a QDQ ONNX file or an INT8 IR) as OpenVINO's CPU plugin
    compiles it (:func:`openvino_coverage`)."""
    return openvino_coverage(quantized, float_model, input_shape, low="int8")
