"""Facts read off an ONNX graph without running it: compute nodes and their FLOPs, the PyTorch module
a node came from, operator counts, whether a file is quantized. Imports no torch and no runtime."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from .metadata import META_PREFIX, PRECISION_KEY


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
    # data_prop: shapes computed in the graph (Reshape to Shape(x), as GroupNorm exports) propagate
    return onnx.shape_inference.infer_shapes(model, data_prop=True)


def tensor_shapes(model: onnx.ModelProto, input_shape: tuple[int, ...]) -> dict[str, list[int]]:
    """Tensor name → its shape when the first input is ``input_shape`` (ONNX shape inference;
    -1 where it cannot tell)."""
    inferred = _static_shapes(model, input_shape)
    shapes: dict[str, list[int]] = {}
    for info in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        dims = info.type.tensor_type.shape.dim
        shapes[info.name] = [d.dim_value if d.HasField("dim_value") else -1 for d in dims]
    return shapes


def _shape_of(shapes: dict[str, list[int]], name: str) -> list[int] | None:
    shape = shapes.get(name)
    return shape if shape and all(d > 0 for d in shape) else None


def compute_node_flops(model: onnx.ModelProto, input_shape: tuple[int, ...]) -> dict[str, dict[str, Any]]:
    """Name → {op, weight, flops} of every Conv/ConvTranspose/MatMul/Gemm of a float graph.

    FLOPs count a multiply-add as 2 at ``input_shape`` (bias and activation ignored):
    Conv ``2·N·C_out·∏out·(C_in/g)·∏k``, ConvTranspose ``2·N·C_in·∏in·(C_out/g)·∏k``.
    """
    shapes = tensor_shapes(model, input_shape)
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


def activation_footprint(path: str | Path, spatial: list[int] | tuple[int, ...]) -> dict[str, int]:
    """What a batch-1 forward of the ONNX file at spatial size ``spatial`` computes: ``activations``,
    the elements of every tensor its nodes produce (rank 3 and up, shapes by ONNX inference), and
    ``parameters``, the elements of its float initializers. Read without the weights' data: large
    float initializers become inputs of their shape, so a 400 MB graph is shaped in ~1 s."""
    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    parameters, kept, typed = 0, [], []
    for init in graph.initializer:
        size = int(np.prod(init.dims)) if init.dims else 1
        if init.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16,
                              onnx.TensorProto.DOUBLE):
            parameters += size
            if size > 1024:  # shape inference needs its dims only
                typed.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
                continue
        kept.append(init)
    del graph.initializer[:]
    graph.initializer.extend(kept)
    graph.input.extend(typed)
    channels = graph.input[0].type.tensor_type.shape.dim[1]
    shapes = tensor_shapes(model, (1, channels.dim_value if channels.HasField("dim_value") else 1, *spatial))
    produced = {out for node in graph.node for out in node.output}
    activations = sum(int(np.prod(shape)) for name, shape in shapes.items()
                      if name in produced and len(shape) >= 3 and min(shape) > 0)
    return {"activations": activations, "parameters": parameters}


def module_name(node_name: str, weight: str = "") -> str:
    """PyTorch module behind an exported node: from its weight (``a.b.conv.weight`` → ``a.b.conv``),
    else from the exporter's scope path (``/a/b/conv/Conv`` → ``a/b/conv``)."""
    if weight.endswith(".weight"):
        return weight[: -len(".weight")]
    return node_name.strip("/").rsplit("/", 1)[0] if "/" in node_name.strip("/") else node_name


def op_histogram(path: Path) -> dict[str, int]:
    """Operator counts of an ONNX graph."""
    model = onnx.load(str(path), load_external_data=False)
    return dict(sorted(Counter(node.op_type for node in model.graph.node).items()))


def is_int8_model(path: str | Path) -> bool:
    """Whether an ONNX file holds quantized operators (QDQ pairs or integer convolutions/matmuls)."""

    quantized = {"QuantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "ConvInteger", "MatMulInteger",
                 "QLinearMatMul"}
    graph = onnx.load(str(path), load_external_data=False).graph
    return any(node.op_type in quantized for node in graph.node)


def graph_signature(path: str | Path) -> str:
    """A hash of what decides an ONNX file's speed and nothing else: its operators, their
    attributes and connections, and the names, shapes and types of its tensors, without the
    initializers' values, plus the inference precision its metadata asks for (a bf16 variant is
    the fp32 graph run in bf16). The folds of one model share it unless their graphs differ (e.g.
    an accuracy-aware INT8 variant that kept other blocks in fp32), so their speed is measured once."""
    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    digest = hashlib.sha256()
    for item in (*graph.input, *graph.output):
        digest.update(item.SerializeToString())
    for init in graph.initializer:
        digest.update(f"{init.name}:{init.data_type}:{list(init.dims)};".encode())
    for node in graph.node:
        digest.update(f"{node.op_type}|{node.domain}|{list(node.input)}|{list(node.output)}|".encode())
        for attribute in node.attribute:
            digest.update(attribute.SerializeToString())
    for opset in model.opset_import:
        digest.update(f"{opset.domain}:{opset.version}".encode())
    for prop in model.metadata_props:
        if prop.key == META_PREFIX + PRECISION_KEY:
            digest.update(f"precision:{prop.value}".encode())
    return digest.hexdigest()[:16]
