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

GroupNorm (MONAI's SegResNet, and any network built with ``norm="group"``) exports as a Reshape of
(N, C, spatial...) to (N, G, -1), a 1-D InstanceNormalization with scale 1 and bias 0, a Reshape
back and the affine Mul and Add: one sum over a group's C/G · voxels values, the same loss. Its
normalization reads the tensor before that reshape split to (N, G, C/G, spatial...) instead and
reduces over those axes one at a time (the reshape to (N, G, -1) is dropped when nothing else
reads it); its size is the values per group. Measured on a MONAI SegResNet (init_filters 16, 25
GroupNorms of 8 groups) at 128³ with half the patch background: logits off PyTorch (float64) by
6.0e-4 / 3.9e-4 of their range fused, 3.0e-7 / 6.0e-7 rewritten (ONNX Runtime / OpenVINO), for
+3 % / +6 % of a forward pass (2.57 → 2.64 s, 1.88 → 1.99 s at 2 threads; AMD Zen 4, 2026-12-05).

:func:`prove_each` proves every rewritten normalization on its own (fused and two-pass as two
small graphs at :data:`LOCAL_SPATIAL` voxels per axis): the proof for graphs that run only at
their patch (a trace that fixed it, as MONAI's UNETR's), where comparing the whole graph's
logits would measure the fused kernels' own drift.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..core.onnxgraph import tensor_shapes
from ..runtime.ort import onnx_session

MIN_VOXELS = 2**17  # per channel (or group) at the patch size: the largest normalization from which on a graph is rewritten
REWRITTEN_OP = "InstanceNormalization"
LOCAL_SPATIAL = 6  # voxels per axis of each normalization's own proof (prove_each): the fused kernels are exact there


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


@dataclass(frozen=True)
class _Site:
    """One InstanceNormalization the rewrite replaces: how many values each of its sums adds at the
    patch size, the rank of the tensor its reductions read and, for GroupNorm's export
    (``Reshape`` of (N, C, spatial...) to (N, G, -1), then a 1-D InstanceNormalization), the
    tensor before that reshape and its split (N, G, C/G, spatial...), whose axes the sums run
    over one at a time like an InstanceNormalization's."""

    terms: int
    rank: int
    grouped: tuple[str, int, int, int] | None = None  # (source tensor, its rank, G, C/G)


def _grouped_source(node: onnx.NodeProto, shapes: dict[str, list[int]],
                    producers: dict[str, onnx.NodeProto]) -> tuple[str, int, int, int] | str:
    """GroupNorm's form of a 1-D InstanceNormalization: ``(source, its rank, G, C/G)`` when its
    input is a Reshape of a (N, C, spatial...) tensor with 2 or 3 known spatial axes into
    (N, G, C/G · voxels); else why not."""
    reshape = producers.get(node.input[0])
    source = reshape.input[0] if reshape is not None and reshape.op_type == "Reshape" else None
    src_shape, shape = shapes.get(source or ""), shapes.get(node.input[0])
    if not src_shape or len(src_shape) not in (4, 5) or any(d <= 0 for d in src_shape[1:]):
        return f"input shape {shape} at the patch size: not 2 or 3 known spatial axes, nor a reshape of them"
    channels, groups = src_shape[1], shape[1]
    if groups <= 0 or channels % groups or shape[2] != channels // groups * int(np.prod(src_shape[2:])):
        return f"input shape {shape}: not the groups of its reshaped input {src_shape}"
    return source, len(src_shape), groups, channels // groups


def _eligible(model: onnx.ModelProto, shapes: dict[str, list[int]],
              constants: dict[str, onnx.TensorProto]) -> tuple[dict[int, _Site], dict[str, str]]:
    """Index of each InstanceNormalization node this module rewrites → what it sums at the patch
    size; and the others → why not (scale or bias not constant; a 1-D one that is not GroupNorm's
    export of a 2-D or 3-D tensor: no axes to split its sum over)."""
    rewritable: dict[int, _Site] = {}
    left: dict[str, str] = {}
    producers = {out: node for node in model.graph.node for out in node.output}
    for index, node in enumerate(model.graph.node):
        if node.op_type != REWRITTEN_OP or node.domain not in ("", "ai.onnx"):
            continue
        name = node.name or node.output[0]
        shape = shapes.get(node.input[0])
        grouped = (_grouped_source(node, shapes, producers) if shape and len(shape) == 3 and shape[2] > 0
                   else None)
        if isinstance(grouped, str):
            left[name] = grouped
        elif grouped is None and (not shape or len(shape) not in (4, 5) or any(d <= 0 for d in shape[2:])):
            left[name] = f"input shape {shape} at the patch size: not 2 or 3 known spatial axes"
        elif len(node.input) < 3 or node.input[1] not in constants or node.input[2] not in constants:
            left[name] = "scale or bias not a constant"
        elif grouped is not None:
            rewritable[index] = _Site(terms=shape[2], rank=grouped[1] + 1, grouped=grouped)
        else:
            rewritable[index] = _Site(terms=int(np.prod(shape[2:])), rank=len(shape))
    return rewritable, left


def _reduction_steps(rank: int) -> list[tuple[int, int]]:
    """(original axis, keepdims) of the mean's reductions: the last axis first, down to axis 2,
    keepdims alternating 0, 1, 0 so that no two neighbours can be merged."""
    return [(axis, (i % 2)) for i, axis in enumerate(range(rank - 1, 1, -1))]


def _rewrite_node(node: onnx.NodeProto, site: _Site, opset: int, constants: dict[str, onnx.TensorProto],
                  prefix: str) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
    x, scale, bias = node.input[:3]
    rank = site.rank
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

    if site.grouped is not None:  # (N, C, spatial...) split to (N, G, C/G, spatial...)
        source, source_rank, groups, per_group = site.grouped
        nodes += [
            helper.make_node("Shape", [source], [f"{prefix}/source_shape"], name=f"{prefix}/source_shape"),
            helper.make_node("Slice", [f"{prefix}/source_shape", const_axes(f"{prefix}/spatial/starts", [2]),
                                       const_axes(f"{prefix}/spatial/ends", [source_rank]),
                                       const_axes(f"{prefix}/spatial/axes", [0])],
                             [f"{prefix}/spatial"], name=f"{prefix}/spatial"),
            helper.make_node("Concat", [const_axes(f"{prefix}/groups", [0, groups, per_group]), f"{prefix}/spatial"],
                             [f"{prefix}/split_shape"], axis=0, name=f"{prefix}/split_shape"),
            helper.make_node("Reshape", [source, f"{prefix}/split_shape"], [f"{prefix}/split"], name=f"{prefix}/split"),
        ]
        x = f"{prefix}/split"

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
    shifted = node.output[0] if site.grouped is None else f"{prefix}/shifted_split"
    nodes += [helper.make_node("Sub", [x, mean(x, "mean")], [centred], name=centred),
              helper.make_node("Mul", [centred, centred], [squared], name=squared)]
    var = mean(squared, "var")
    nodes += [helper.make_node("Add", [var, f"{prefix}/epsilon"], [f"{prefix}/var_eps"], name=f"{prefix}/var_eps"),
              helper.make_node("Sqrt", [f"{prefix}/var_eps"], [f"{prefix}/std"], name=f"{prefix}/std"),
              helper.make_node("Div", [centred, f"{prefix}/std"], [f"{prefix}/normed"], name=f"{prefix}/normed"),
              helper.make_node("Mul", [f"{prefix}/normed", f"{prefix}/scale"], [f"{prefix}/scaled"], name=f"{prefix}/scaled"),
              helper.make_node("Add", [f"{prefix}/scaled", f"{prefix}/bias"], [shifted], name=f"{prefix}/shifted")]
    if site.grouped is not None:  # back to the (N, G, C/G · voxels) the InstanceNormalization gave
        nodes.append(helper.make_node("Reshape", [shifted, const_axes(f"{prefix}/groups_flat", [0, site.grouped[2], -1])],
                                      [node.output[0]], name=f"{prefix}/groups_flat"))
    return nodes, new_inits


def two_pass_instance_norms(model: onnx.ModelProto, input_shape: tuple[int, ...],
                            min_voxels: int = MIN_VOXELS) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """``model`` with every InstanceNormalization written as reductions one axis at a time (the
    module doc), if its largest one has at least ``min_voxels`` voxels per channel (values per
    group for GroupNorm's form) at ``input_shape`` (one patch, batch 1; ``min_voxels`` 0: never);
    else ``model`` itself. Returns it and a record: how many were rewritten of how many (of them
    GroupNorm's, ``group_norms``), the largest one's voxels, the threshold, and the nodes left as
    they were, with why."""
    shapes = tensor_shapes(model, tuple(input_shape))
    rewritable, left = _eligible(model, shapes, _constants(model))
    largest = max((site.terms for site in rewritable.values()), default=0)
    # what the largest one's sums run over: a channel's voxels, or a GroupNorm group's values
    unit = ("values per group" if any(site.grouped and site.terms == largest for site in rewritable.values())
            else "voxels per channel")
    record: dict[str, Any] = {"instance_norms": len(rewritable) + len(left), "rewritten": 0,
                              "group_norms": sum(site.grouped is not None for site in rewritable.values()),
                              "largest_voxels": largest, "min_voxels": int(min_voxels), "left": left}
    if not rewritable or min_voxels <= 0 or largest < min_voxels:
        record["why"] = ("no InstanceNormalization it can rewrite" if not rewritable else
                         "turned off (min_voxels 0)" if min_voxels <= 0 else
                         f"largest normalization {largest} {unit} < {min_voxels}: the fused kernels "
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
        replaced, tensors = _rewrite_node(node, rewritable[index], opset, constants,
                                          f"{node.name or node.output[0]}/two_pass")
        nodes += replaced
        added += tensors
    outputs = {o.name for o in out.graph.output}
    # GroupNorm's reshape to (N, G, -1), which the split form reads around, where nothing else reads it
    flattened = {out.graph.node[index].input[0] for index, site in rewritable.items() if site.grouped}
    inputs = {name for node in nodes for name in node.input} | outputs
    dropped = [n for n in nodes if n.op_type == "Reshape" and n.output[0] in flattened and n.output[0] not in inputs]
    replaced_params.update(n.input[1] for n in dropped)
    nodes = [n for n in nodes if not any(n is d for d in dropped)]
    used = {name for node in nodes for name in node.input} | outputs
    # the 1-D scale/bias the rewrite replaced by their (C, 1, ...) forms, and the dropped reshapes'
    # shapes, where nothing else reads them
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
    record["why"] = (f"largest normalization {largest} {unit} >= {min_voxels}: "
                     "fp32 runtimes' one-sum kernels lose precision there")
    return out, record


def _local_models(model: onnx.ModelProto, node: onnx.NodeProto, site: _Site, opset: int,
                  constants: dict[str, onnx.TensorProto]) -> tuple[onnx.ModelProto, onnx.ModelProto, list[int]]:
    """One normalization alone, as two graphs of the tensor it reads: the fused node (GroupNorm's
    with its reshape to (N, G, -1)) and its two-pass form; and the input shape to prove them at
    (:data:`LOCAL_SPATIAL` voxels per axis)."""
    params = []
    for name in node.input[1:3]:
        tensor = onnx.TensorProto()
        tensor.CopyFrom(constants[name])
        tensor.name = name
        params.append(tensor)
    if site.grouped is not None:
        source, source_rank, groups, per_group = site.grouped
        channels = groups * per_group
        flat = helper.make_tensor(f"{node.name}/local_flat", onnx.TensorProto.INT64, [3], [0, groups, -1])
        fused_nodes = [helper.make_node("Reshape", [source, flat.name], [node.input[0]]), node]
        fused_inits = [flat]
    else:
        source, source_rank = node.input[0], site.rank
        channels = int(numpy_helper.to_array(params[0]).size)  # the scale's: one per channel
        fused_nodes, fused_inits = [node], []
    shape = [1, channels] + [LOCAL_SPATIAL] * (source_rank - 2)
    rewritten_nodes, rewritten_inits = _rewrite_node(node, site, opset, constants, f"{node.name or node.output[0]}/two_pass")

    def graph(nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto]) -> onnx.ModelProto:
        g = helper.make_graph(nodes, "local", [helper.make_tensor_value_info(source, onnx.TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info(node.output[0], onnx.TensorProto.FLOAT, None)], inits)
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=model.ir_version)

    return graph(fused_nodes, fused_inits + params), graph(rewritten_nodes, rewritten_inits), shape


def prove_each(model: onnx.ModelProto, input_shape: tuple[int, ...], threads: int = 1) -> dict[str, Any]:
    """Each normalization :func:`two_pass_instance_norms` rewrites in ``model`` (at ``input_shape``),
    alone: its fused form and its two-pass form as two small graphs on the same input of
    :data:`LOCAL_SPATIAL` voxels per axis (Gaussian, each channel its own mean and spread, so a
    reduction over the wrong axes shows), run by ONNX Runtime, where the fused kernels sum few
    enough terms to be exact. The proof that does not depend on the graph taking small inputs (a
    graph whose trace fixed its spatial size runs only at its patch, where the fused kernels are
    the inaccurate side). Returns {normalizations, max_abs_err}."""
    shapes = tensor_shapes(model, tuple(input_shape))
    constants = _constants(model)
    rewritable, _ = _eligible(model, shapes, constants)
    opset = _opset(model)
    worst = 0.0
    for index, site in rewritable.items():
        fused, rewritten, shape = _local_models(model, model.graph.node[index], site, opset, constants)
        rng = np.random.default_rng(index)
        channel = (1, shape[1]) + (1,) * (len(shape) - 2)
        x = (rng.standard_normal(shape) * rng.uniform(0.5, 3.0, channel) + rng.uniform(-2.0, 2.0, channel))
        x = x.astype(np.float32)
        outputs = [onnx_session(m.SerializeToString(), threads).run(None, {m.graph.input[0].name: x})[0]
                   for m in (fused, rewritten)]
        worst = max(worst, float(np.max(np.abs(outputs[0].astype(np.float64) - outputs[1]))))
    return {"normalizations": len(rewritable), "max_abs_err": worst}
