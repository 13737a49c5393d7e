"""InstanceNormalization written as reductions one axis at a time, for patches where the fp32
runtimes' fused kernels lose precision.

ONNX Runtime's InstanceNormalization and OpenVINO's MVN sum a channel's values (and squares) in
one fp32 accumulation over every voxel of the patch. At nnU-Net's real patch sizes that sum is
millions of terms, and a case's constant background (equal values added to an ever larger sum)
makes its rounding systematic: at a 128³ patch of a real-size 3d_fullres network (2.1 M voxels per
channel), the first normalization of one held-out patch was off by 0.022 on ONNX Runtime and
0.009 on OpenVINO (PyTorch: 8e-7, against float64), and the network's logits by 0.46 % / 0.69 %
of their range: the exact variants failed their 1e-4 gate for it, not for anything the export did
(AMD EPYC Zen 4, 2026-12-04). On Gaussian data the same kernels stay within 1e-4 up to ~2^20
voxels; with half the voxels constant they pass 1e-4 at ~2^17.

:func:`two_pass_instance_norms` rewrites each InstanceNormalization as ``mean`` = ReduceMean over
the last spatial axis, then the next, then the first (each a sum of one axis' length of terms),
``d = x - mean``, ``var`` = the same of ``d²``, ``d / sqrt(var + eps) * scale + bias``: the same
function (two passes, as PyTorch computes it), within ~3e-6 of PyTorch's logits on both runtimes
at that patch, for ~5 % of a forward pass (ONNX Runtime 6.56 s vs 6.26, OpenVINO 4.69 vs 4.48 at
2 threads; same machine). Neighbouring reductions alternate ``keepdims``: OpenVINO merges
consecutive reductions of equal ``keepdims`` back into one sum over every voxel, as inaccurate
as MVN. Small patches keep the fused kernels: at the demo's 40³ they are accurate (ONNX Runtime
4.8e-6, OpenVINO 2.2e-5 of the logits' range) and the rewrite would cost OpenVINO 71 % there
(16.7 ms vs 28.6); a graph is rewritten only when its largest normalization reaches
``min_voxels`` per channel at the patch size, and then every InstanceNormalization of it (the
smaller ones cost nothing measurable at 128³ and take the logits' error from 2e-5 to 3e-6).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..core.onnxgraph import tensor_shapes

MIN_VOXELS = 2**17  # per channel at the patch size: the largest normalization from which on a graph is rewritten
REWRITTEN_OP = "InstanceNormalization"


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _constants(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """Tensor name → the TensorProto holding its value, for every initializer, Constant node output
    and Identity of one (a raw torch export can give InstanceNormalization its bias as an Identity
    of another equal tensor; onnxsim folds both into initializers). Nothing is converted: only the
    rewritten nodes' scale and bias are read."""
    values = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type == "Constant":
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None:
                values[node.output[0]] = value
        elif node.op_type == "Identity" and node.input[0] in values:
            values[node.output[0]] = values[node.input[0]]
    return values


def _eligible(model: onnx.ModelProto, shapes: dict[str, list[int]],
              constants: dict[str, onnx.TensorProto]) -> tuple[dict[int, int], dict[str, str]]:
    """Index of each InstanceNormalization node this module rewrites → its voxels per channel at
    the patch size; and the others → why not (a 1-D one, e.g. what GroupNorm exports as: no axes to
    split its sum over; scale or bias not constant)."""
    rewritable: dict[int, int] = {}
    left: dict[str, str] = {}
    for index, node in enumerate(model.graph.node):
        if node.op_type != REWRITTEN_OP or node.domain not in ("", "ai.onnx"):
            continue
        name = node.name or node.output[0]
        shape = shapes.get(node.input[0])
        if not shape or len(shape) not in (4, 5) or any(d <= 0 for d in shape[2:]):
            left[name] = f"input shape {shape} at the patch size: not 2 or 3 known spatial axes"
        elif len(node.input) < 3 or node.input[1] not in constants or node.input[2] not in constants:
            left[name] = "scale or bias not a constant"
        else:
            rewritable[index] = int(np.prod(shape[2:]))
    return rewritable, left


def _reduction_steps(rank: int) -> list[tuple[int, int]]:
    """(original axis, keepdims) of the mean's reductions: the last spatial axis first, keepdims
    alternating 0, 1, 0 so that no two neighbours can be merged."""
    return [(axis, (i % 2)) for i, axis in enumerate(range(rank - 1, 1, -1))]


def _rewrite_node(node: onnx.NodeProto, rank: int, opset: int, constants: dict[str, onnx.TensorProto],
                  prefix: str) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
    x, scale, bias = node.input[:3]
    scale_value, bias_value = numpy_helper.to_array(constants[scale]), numpy_helper.to_array(constants[bias])
    broadcast = [scale_value.size] + [1] * (rank - 2)
    new_inits = [
        numpy_helper.from_array(scale_value.astype(np.float32).reshape(broadcast), f"{prefix}/scale"),
        numpy_helper.from_array(bias_value.astype(np.float32).reshape(broadcast), f"{prefix}/bias"),
        numpy_helper.from_array(np.array(eps, dtype=np.float32), f"{prefix}/epsilon"),
    ]
    nodes: list[onnx.NodeProto] = []

    def const_axes(name: str, axes: list[int]) -> str:
        new_inits.append(numpy_helper.from_array(np.array(axes, dtype=np.int64), name))
        return name

    def mean(src: str, tag: str) -> str:
        dims, current = list(range(rank)), src
        for step, (axis, keep) in enumerate(_reduction_steps(rank)):
            out, position = f"{prefix}/{tag}_{step}", dims.index(axis)
            if opset >= 18:
                nodes.append(helper.make_node("ReduceMean", [current, const_axes(f"{out}/axes", [position])], [out],
                                              keepdims=keep, name=out))
            else:
                nodes.append(helper.make_node("ReduceMean", [current], [out], axes=[position], keepdims=keep, name=out))
            if not keep:
                dims.remove(axis)
            current = out
        missing = [axis for axis in range(rank) if axis not in dims]
        if missing:  # back to (N, C, 1, ...) for broadcasting
            out = f"{prefix}/{tag}"
            if opset >= 13:
                nodes.append(helper.make_node("Unsqueeze", [current, const_axes(f"{out}/axes", missing)], [out], name=out))
            else:
                nodes.append(helper.make_node("Unsqueeze", [current], [out], axes=missing, name=out))
            current = out
        return current

    centred, squared = f"{prefix}/centred", f"{prefix}/squared"
    nodes += [helper.make_node("Sub", [x, mean(x, "mean")], [centred], name=centred),
              helper.make_node("Mul", [centred, centred], [squared], name=squared)]
    var = mean(squared, "var")
    nodes += [helper.make_node("Add", [var, f"{prefix}/epsilon"], [f"{prefix}/var_eps"], name=f"{prefix}/var_eps"),
              helper.make_node("Sqrt", [f"{prefix}/var_eps"], [f"{prefix}/std"], name=f"{prefix}/std"),
              helper.make_node("Div", [centred, f"{prefix}/std"], [f"{prefix}/normed"], name=f"{prefix}/normed"),
              helper.make_node("Mul", [f"{prefix}/normed", f"{prefix}/scale"], [f"{prefix}/scaled"], name=f"{prefix}/scaled"),
              helper.make_node("Add", [f"{prefix}/scaled", f"{prefix}/bias"], [node.output[0]], name=f"{prefix}/shifted")]
    return nodes, new_inits


def two_pass_instance_norms(model: onnx.ModelProto, input_shape: tuple[int, ...],
                            min_voxels: int = MIN_VOXELS) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """``model`` with every InstanceNormalization written as reductions one axis at a time (the
    module doc), if its largest one has at least ``min_voxels`` voxels per channel at
    ``input_shape`` (one patch, batch 1; ``min_voxels`` 0: never); else ``model`` itself. Returns
    it and a record: how many were rewritten of how many, the largest one's voxels, the threshold,
    and the nodes left as they were, with why."""
    shapes = tensor_shapes(model, tuple(input_shape))
    rewritable, left = _eligible(model, shapes, _constants(model))
    largest = max(rewritable.values(), default=0)
    record: dict[str, Any] = {"instance_norms": len(rewritable) + len(left), "rewritten": 0,
                              "largest_voxels": largest, "min_voxels": int(min_voxels), "left": left}
    if not rewritable or min_voxels <= 0 or largest < min_voxels:
        record["why"] = ("no InstanceNormalization it can rewrite" if not rewritable else
                         "turned off (min_voxels 0)" if min_voxels <= 0 else
                         f"largest normalization {largest} voxels per channel < {min_voxels}: the fused kernels "
                         "are accurate at this size")
        return model, record
    out = onnx.ModelProto.FromString(model.SerializeToString())
    constants = _constants(out)
    opset = _opset(out)
    nodes: list[onnx.NodeProto] = []
    added: list[onnx.TensorProto] = []
    replaced_params: set[str] = set()
    for index, node in enumerate(out.graph.node):
        if index not in rewritable:
            nodes.append(node)
            continue
        replaced_params.update(node.input[1:3])
        replaced, tensors = _rewrite_node(node, len(shapes[node.input[0]]), opset, constants,
                                          f"{node.name or node.output[0]}/two_pass")
        nodes += replaced
        added += tensors
    used = {name for node in nodes for name in node.input} | {o.name for o in out.graph.output}
    # the 1-D scale/bias the rewrite replaced by their (C, 1, ...) forms, where nothing else reads them
    nodes = [n for n in nodes
             if n.op_type not in ("Constant", "Identity") or n.output[0] not in replaced_params or n.output[0] in used]
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    out.graph.initializer.extend(added)
    kept = [i for i in out.graph.initializer if i.name not in replaced_params or i.name in used]
    del out.graph.initializer[:]
    out.graph.initializer.extend(kept)
    del out.graph.value_info[:]  # shapes of the old graph; runtimes infer their own
    record["rewritten"] = len(rewritable)
    record["why"] = (f"largest normalization {largest} voxels per channel >= {min_voxels}: "
                     "fp32 runtimes' one-sum kernels lose precision there")
    return out, record
