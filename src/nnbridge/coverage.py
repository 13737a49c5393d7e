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

import numpy as np
import onnx

# operators that compute in INT8 on ONNX Runtime's CPU execution provider
INT8_OPS = frozenset({
    "QLinearConv", "ConvInteger", "QLinearMatMul", "MatMulInteger", "MatMulIntegerToFloat",
    "QGemm", "DynamicQuantizeMatMul", "QLinearAdd", "QLinearMul", "QLinearConcat",
    "QLinearLeakyRelu", "QLinearSigmoid", "QLinearAveragePool", "QLinearGlobalAveragePool",
    "QLinearSoftmax", "QLinearReduceMean", "QLinearWhere", "QLinearConvTranspose", "QAttention",
})
# conversions between fp32 and INT8 (pure overhead)
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})
COMPUTE_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm"})


def _static_shapes(model: onnx.ModelProto, input_shape: tuple[int, ...]) -> onnx.ModelProto:
    """``model`` with its first input fixed to ``input_shape`` and shapes inferred."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    dims = model.graph.input[0].type.tensor_type.shape.dim
    if len(dims) != len(input_shape):
        raise ValueError(f"input shape {input_shape} has {len(input_shape)} dims; the model's input has {len(dims)}")
    for dim, size in zip(dims, input_shape):
        dim.ClearField("dim_param")
        dim.dim_value = int(size)
    del model.graph.value_info[:]
    return onnx.shape_inference.infer_shapes(model)


def _shape_of(shapes: dict[str, list[int]], name: str) -> list[int] | None:
    shape = shapes.get(name)
    return shape if shape and all(d > 0 for d in shape) else None


def compute_node_flops(model: onnx.ModelProto, input_shape: tuple[int, ...]) -> dict[str, dict[str, Any]]:
    """Name → {op, weight, flops} of every Conv/ConvTranspose/MatMul/Gemm of a float graph.

    FLOPs count a multiply-add as 2 at ``input_shape`` (bias and activation ignored):
    Conv ``2·N·C_out·∏out·(C_in/g)·∏k``, ConvTranspose ``2·N·C_in·∏in·(C_out/g)·∏k``.
    """
    inferred = _static_shapes(model, input_shape)
    shapes: dict[str, list[int]] = {}
    for info in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        dims = info.type.tensor_type.shape.dim
        shapes[info.name] = [d.dim_value if d.HasField("dim_value") else -1 for d in dims]
    inits = {init.name: list(init.dims) for init in model.graph.initializer}
    out: dict[str, dict[str, Any]] = {}
    for index, node in enumerate(model.graph.node):
        if node.op_type not in COMPUTE_OPS:
            continue
        name = node.name or f"{node.op_type}_{index}"
        weight = node.input[1] if len(node.input) > 1 else ""
        w = inits.get(weight)
        x, y = _shape_of(shapes, node.input[0]), _shape_of(shapes, node.output[0])
        flops = 0
        if node.op_type == "Conv" and w and y:
            flops = 2 * int(np.prod(y)) * int(np.prod(w[1:]))
        elif node.op_type == "ConvTranspose" and w and x:  # weight (C_in, C_out/g, k...)
            flops = 2 * int(np.prod(x)) * int(np.prod(w[1:]))
        elif node.op_type in ("MatMul", "Gemm") and x and y:
            flops = 2 * int(np.prod(y)) * int(x[-1])
        out[name] = {"op": node.op_type, "weight": weight, "flops": int(flops)}
    return out


def module_name(node_name: str, weight: str = "") -> str:
    """PyTorch module behind an exported node: from its weight (``a.b.conv.weight`` → ``a.b.conv``),
    else from the exporter's scope path (``/a/b/conv/Conv`` → ``a/b/conv``)."""
    if weight.endswith(".weight"):
        return weight[: -len(".weight")]
    return node_name.strip("/").rsplit("/", 1)[0] if "/" in node_name.strip("/") else node_name


def runtime_graph(path: Path, *, optimization: str = "ORT_ENABLE_ALL") -> onnx.ModelProto:
    """The graph an ONNX Runtime CPU session actually runs for ``path``."""
    from .onnxrun import onnx_session  # noqa: PLC0415

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
    """Which compute layers of ``model_path`` OpenVINO's CPU plugin runs in ``low`` precision
    (``int8`` for a quantized file, ``bf16`` for a bf16 variant, compiled as
    :func:`nnbridge.onnxrun.openvino_model` compiles it), in the record of
    :func:`int8_coverage`: each runtime layer's ``runtimePrecision``, matched to the fp32
    graph's compute nodes through the ``originalLayersNames`` OpenVINO keeps."""
    from .onnxrun import openvino_model  # noqa: PLC0415

    lows = OPENVINO_LOW[low]
    reference = compute_node_flops(onnx.load(str(float_model), load_external_data=False), input_shape)
    runtime = openvino_model(Path(model_path), 1).get_runtime_model()
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
    """INT8 coverage of ``quantized`` as OpenVINO's CPU plugin compiles it (:func:`openvino_coverage`)."""
    return openvino_coverage(quantized, float_model, input_shape, low="int8")
