"""Find a graph's weight tensors in another graph, bit for bit, whatever form an exporter or
simplifier gave them; the proof :mod:`nnbridge.export.weights` gives for a checkpoint and
:mod:`nnbridge.export.simplify` for a simplified graph. Imports no torch (only the BatchNorm
folding replayed the way torch folds needs it, and imports it then).

Every tensor sought must be found in one of these forms, and the record says per tensor which:

- ``name``: the initializer of that name holds it (the legacy exporter names parameters by their
  state-dict key);
- ``content``: an initializer of another name holds it (deduplicated or renamed tensors);
- ``reshaped``: an initializer holds the same values in another shape (a PReLU slope or a
  GroupNorm scale unsqueezed for broadcasting, a bias reshaped by onnxsim);
- ``transposed``: an initializer holds it with its axes permuted (a ``Linear`` weight applied to
  a 3-D tensor is exported as ``MatMul`` with the transposed weight);
- ``split``: two or more initializers hold consecutive slices of it along one axis;
- ``folded``: derived from it and found in the graph: a BatchNorm folded into the convolution
  before it (the exporter with ``fold_batchnorm``, onnxsim's fuse pass), recomputed from the
  checkpoint's tensors with the same float32 operations in the same order as the folding code
  (``torch/csrc/jit/passes/onnx/eval_peephole.cpp``: var + eps, sqrt, scale = gamma / std,
  W·scale per output channel, (b − mean)·scale + beta), or any other constant folding (a scale
  multiplied in, a table gathered by a constant index), recomputed by evaluating the constant
  subgraphs of a reference graph that still holds the tensor by name (the export without constant
  folding) on the checkpoint's values.

Every comparison is exact (the same bytes); a planted wrong value in any of these forms leaves
the tensor unfound and the proof fails naming it. Identical checkpoint tensors (e.g. untrained
norm scales of the same width) cannot be told apart by content; their names tell them apart
whenever the exporter keeps the names.
"""

from __future__ import annotations

import hashlib
import itertools
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper


HOW = ("name", "content", "reshaped", "transposed", "split", "folded")
FLOAT_KINDS = "f"
# operators whose output depends on their input's shape only, not its values
SHAPE_ONLY_OPS = frozenset({"Shape", "Size", "ConstantOfShape", "EyeLike"})


def graph_tensors(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Initializers and Constant-node values of a graph, by name."""
    tensors = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    tensors[node.output[0]] = numpy_helper.to_array(attr.t)
    return tensors


def _flat_key(array: np.ndarray) -> tuple[str, str]:
    """Values and dtype, not shape: equal keys are the same numbers in the same order."""
    array = np.ascontiguousarray(array)
    return str(array.dtype), hashlib.sha256(array.tobytes()).hexdigest()


def _is_float(array: np.ndarray) -> bool:
    return array.dtype.kind == FLOAT_KINDS or str(array.dtype) == "bfloat16"


class _Graph:
    """A graph's tensors indexed by their values."""

    def __init__(self, tensors: dict[str, np.ndarray]) -> None:
        self.tensors = {k: v for k, v in tensors.items() if _is_float(v)}
        self.by_flat: dict[tuple[str, str], list[str]] = defaultdict(list)
        self.shapes: dict[tuple[str, int], set[tuple[int, ...]]] = defaultdict(set)
        for name, array in self.tensors.items():
            self.by_flat[_flat_key(array)].append(name)
            self.shapes[(str(array.dtype), array.size)].add(tuple(array.shape))

    def holding(self, array: np.ndarray) -> list[str]:
        return self.by_flat.get(_flat_key(array), [])

    def match(self, array: np.ndarray, graph_name: str | None) -> dict[str, Any] | None:
        """How ``array`` is held, by name, content, reshaped or transposed (or None)."""
        named = self.tensors.get(graph_name) if graph_name else None
        if named is not None and named.shape == array.shape and _flat_key(named) == _flat_key(array):
            return {"how": "name", "initializers": [graph_name]}
        holders = self.holding(array)
        same = [n for n in holders if self.tensors[n].shape == array.shape]
        if same:
            return {"how": "content", "initializers": same[:1]}
        if holders:
            return {"how": "reshaped", "initializers": holders[:1], "shape": list(self.tensors[holders[0]].shape)}
        return self.transposed(array)

    def transposed(self, array: np.ndarray) -> dict[str, Any] | None:
        if array.ndim < 2:
            return None
        present = self.shapes.get((str(array.dtype), array.size), set())
        identity = tuple(range(array.ndim))
        for perm in itertools.permutations(identity):
            if perm == identity:
                continue
            # 2-D/3-D: every permutation (then maybe reshaped); more axes: only permutations
            # giving a shape some initializer has, so the search stays cheap
            if array.ndim > 3 and tuple(array.shape[p] for p in perm) not in present:
                continue
            holders = self.holding(np.transpose(array, perm))
            if holders:
                return {"how": "transposed", "initializers": holders[:1], "perm": list(perm),
                        "shape": list(self.tensors[holders[0]].shape)}
        return None

    def split(self, array: np.ndarray) -> dict[str, Any] | None:
        """``array`` held as consecutive slices along one axis (each piece maybe a transposed 2-D)."""
        for axis in range(array.ndim):
            n = array.shape[axis]
            moved = np.moveaxis(array, axis, 0).reshape(n, -1)
            pieces: dict[int, tuple[int, str, bool]] = {}
            for name, cand in self.tensors.items():
                if cand.dtype != array.dtype or cand.size >= array.size or cand.size == 0:
                    continue
                for piece, transposed in ((cand, False), *(((cand.T, True),) if cand.ndim == 2 else ())):
                    if piece.ndim != array.ndim or any(
                            piece.shape[j] != array.shape[j] for j in range(array.ndim) if j != axis):
                        continue
                    k = piece.shape[axis]
                    flat = np.moveaxis(piece, axis, 0).reshape(k, -1)
                    starts = np.flatnonzero(np.all(moved[: n - k + 1] == flat[0], axis=1))
                    for start in starts:
                        if np.array_equal(moved[start:start + k], flat):
                            pieces.setdefault(int(start), (int(start + k), name, transposed))
            position, used = 0, []
            while position < n and position in pieces:
                stop, name, transposed = pieces[position]
                used.append({"initializer": name, "slice": [position, stop], "transposed": transposed})
                position = stop
            if position == n and len(used) > 1:
                return {"how": "split", "axis": axis, "initializers": [u["initializer"] for u in used],
                        "pieces": used}
        return None


def batchnorm_pairs(model: onnx.ModelProto) -> list[dict[str, Any]]:
    """Conv → BatchNormalization pairs (the convolution's output feeding only the norm), by the
    names of their tensors: what an exporter or simplifier folds into one convolution."""
    producer = {out: node for node in model.graph.node for out in node.output}
    uses = Counter(name for node in model.graph.node for name in node.input)
    pairs = []
    for node in model.graph.node:
        if node.op_type != "BatchNormalization" or len(node.input) < 5:
            continue
        conv = producer.get(node.input[0])
        if conv is None or conv.op_type not in ("Conv", "ConvTranspose") or uses[conv.output[0]] != 1 \
                or len(conv.input) < 2:
            continue
        group = next((a.i for a in conv.attribute if a.name == "group"), 1)
        if conv.op_type == "ConvTranspose" and group != 1:
            continue
        eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
        # output channels are axis 0 of a Conv weight, axis 1 of a ConvTranspose weight (group 1)
        pairs.append({"conv": conv.name, "weight": conv.input[1], "axis": int(conv.op_type == "ConvTranspose"),
                      "bias": conv.input[2] if len(conv.input) > 2 and conv.input[2] else None,
                      "scale": node.input[1], "beta": node.input[2], "mean": node.input[3],
                      "var": node.input[4], "eps": float(eps)})
    return pairs


def fold_batchnorm(weight: np.ndarray, bias: np.ndarray | None, scale: np.ndarray, beta: np.ndarray,
                   mean: np.ndarray, var: np.ndarray, eps: float, axis: int = 0
                   ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(W', b') of a convolution with the BatchNorm after it folded in, by the float32 operations
    of the folding code in its order (var + eps, sqrt, scale / std, W·factor per output channel,
    (b − mean)·factor + beta, or beta − mean·factor without a conv bias), computed twice, as the
    two folders compute: ``torch`` (the exporter's ``eval_peephole.cpp`` runs torch's kernels,
    whose vectorised float32 sqrt can differ from IEEE's by one ulp) and ``ieee`` (onnxoptimizer's
    fuse_bn_into_conv in onnxsim: correctly rounded C++ float operations, as numpy's). ``axis``:
    the weight's output-channel axis (1 for a ConvTranspose)."""
    out = {}
    per_channel = [1] * weight.ndim
    per_channel[axis] = -1
    for kind in ("torch", "ieee"):
        if kind == "torch":
            import torch  # noqa: PLC0415 - torch only where a BatchNorm folding is replayed

            t = {k: torch.from_numpy(np.array(v, copy=True)) for k, v in
                 {"w": weight, "s": scale, "beta": beta, "mean": mean, "var": var}.items()}
            factor = t["s"].div(t["var"].add(eps).sqrt())
            folded_w = (t["w"] * factor.reshape(per_channel)).numpy()
            folded_b = (torch.from_numpy(np.array(bias, copy=True)).sub(t["mean"]).mul(factor).add(t["beta"])
                        if bias is not None else t["beta"].sub(t["mean"].mul(factor))).numpy()
        else:
            f32 = var.dtype.type
            factor = scale / np.sqrt(var + f32(eps))
            folded_w = weight * factor.reshape(per_channel)
            folded_b = (bias - mean) * factor + beta if bias is not None else beta - mean * factor
        out[kind] = (folded_w, folded_b)
    return out


def constant_values(model: onnx.ModelProto, truth: dict[str, np.ndarray],
                    input_shape: tuple[int, ...] | None = None
                    ) -> tuple[list[tuple[str, np.ndarray, frozenset[str], tuple[str, ...], bool]], str | None]:
    """Every value of ``model`` that does not depend on its input's values (its constant
    subgraphs, and with ``input_shape`` also what depends on the input's shape only, as a
    simplifier with static shapes folds it), computed by ONNX Runtime without graph optimisation
    with the graph's tensors named in ``truth`` replaced by those values: ``(name, value, names of
    the truth tensors it derives from, operators on the way, whether a computing node takes it)``,
    and an error text if that failed.
    """
    inputs = {i.name for i in model.graph.input} - {init.name for init in model.graph.initializer}
    provenance: dict[str, frozenset[str]] = {init.name: frozenset({init.name}) if init.name in truth else frozenset()
                                             for init in model.graph.initializer}
    chain: dict[str, tuple[str, ...]] = {n: () for n in provenance}
    varying = set(inputs)  # values that depend on the input's values
    shaped = set()  # values that depend on the input's shape
    for node in model.graph.node:
        ins = [i for i in node.input if i]
        subgraph = any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)
        shape_only = node.op_type in SHAPE_ONLY_OPS
        vary = subgraph or (not shape_only and any(i in varying for i in ins))
        shape = any(i in shaped or (shape_only and i in varying) for i in ins)
        prov = frozenset() if shape_only else frozenset().union(*(provenance.get(i, frozenset()) for i in ins))
        ops = tuple(dict.fromkeys(op for i in ins if provenance.get(i) for op in chain.get(i, ())))
        for out in node.output:
            if vary:
                varying.add(out)
            if shape:
                shaped.add(out)
            provenance[out] = prov
            chain[out] = (*ops, node.op_type) if node.op_type != "Constant" else ()
    wanted = [out for node in model.graph.node if node.op_type != "Constant" for out in node.output
              if out and out not in varying and provenance.get(out) and (input_shape or out not in shaped)]
    # frontier: constant values a computing node (or the graph's output) takes; what a folder leaves
    frontier = {i for node in model.graph.node if any(o in varying for o in node.output) for i in node.input}
    frontier |= {o.name for o in model.graph.output}
    if not wanted:
        return [], None
    work = onnx.ModelProto.FromString(model.SerializeToString())
    for init in work.graph.initializer:
        if init.name in truth:
            init.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(truth[init.name]), init.name))
    try:
        inferred = onnx.shape_inference.infer_shapes(work)
        types = {v.name: v for v in [*inferred.graph.value_info, *inferred.graph.output]
                 if v.type.tensor_type.elem_type}
        wanted = [n for n in wanted if n in types]
        del work.graph.output[:]
        work.graph.output.extend(types[n] for n in wanted)
        import onnxruntime as ort  # noqa: PLC0415 - only when folded tensors are looked for

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.log_severity_level = 3
        session = ort.InferenceSession(work.SerializeToString(), options, providers=["CPUExecutionProvider"])
        feeds = {i.name: np.zeros(input_shape or [d if isinstance(d, int) else 1 for d in i.shape],
                                  _ORT_TYPES.get(i.type, np.float32))
                 for i in session.get_inputs() if i.name in inputs}
        values = session.run(wanted, feeds)
    except Exception as exc:  # noqa: BLE001 - an operator or graph ONNX Runtime cannot evaluate: say so
        return [], f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"[:200]
    return [(n, np.asarray(v), provenance[n], chain[n], n in frontier) for n, v in zip(wanted, values)], None


_ORT_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16}
# replayed constant folding that is not bit-identical (a reduction summed in another order, a
# transcendental function of another library): accepted within this many float32 ulps of the
# value's largest magnitude, and recorded as such
REPLAY_ULPS = 4


def _close(a: np.ndarray, b: np.ndarray) -> float | None:
    """Largest difference of ``a`` and ``b`` in ulps of ``a``'s largest magnitude, if within
    :data:`REPLAY_ULPS`."""
    if a.size != b.size or a.dtype != b.dtype or not _is_float(a):
        return None
    scale = float(np.max(np.abs(a))) if a.size else 0.0
    if scale == 0.0:
        return None
    ulp = float(np.spacing(np.float32(scale)))
    diff = float(np.max(np.abs(a.astype(np.float64).ravel() - b.astype(np.float64).ravel())))
    return diff / ulp if diff <= REPLAY_ULPS * ulp else None


def prove_tensors(target: onnx.ModelProto, truth: dict[str, np.ndarray], *,
                  graph_names: dict[str, str] | None = None,
                  reference: onnx.ModelProto | Callable[[], onnx.ModelProto] | None = None,
                  reference_what: str = "", input_shape: tuple[int, ...] | None = None) -> dict[str, Any]:
    """Where each ``truth`` tensor is in ``target`` (see the module doc): ``{key: {"how": ...,
    "initializers": [...]}}`` plus ``missing``. ``graph_names``: key → the name the tensor has in
    the graphs (default the key). ``reference``: a graph (or a function making it, called only if
    some tensor is not found directly) that holds the tensors by name before folding: its
    Conv → BatchNorm pairs and constant subgraphs, evaluated on the truth values, give the folded
    forms."""
    graph_names = graph_names or {}
    graph = _Graph(graph_tensors(target))
    found: dict[str, dict[str, Any]] = {}
    missing: list[str] = []
    for key, array in truth.items():
        hit = graph.match(array, graph_names.get(key, key)) or graph.split(array)
        if hit:
            found[key] = hit
        else:
            missing.append(key)
    notes: list[str] = []
    if missing and reference is not None:
        ref = reference() if callable(reference) else reference
        by_graph_name = {graph_names.get(k, k): k for k in truth}
        values = {name: truth[key] for name, key in by_graph_name.items()}
        ref_tensors = graph_tensors(ref)

        def value(name: str) -> np.ndarray | None:
            return values.get(name, ref_tensors.get(name))

        for pair in batchnorm_pairs(ref):
            parts = {r: value(pair[r]) for r in ("weight", "scale", "beta", "mean", "var")}
            bias = value(pair["bias"]) if pair["bias"] else None
            if any(v is None for v in parts.values()) or (pair["bias"] and bias is None):
                continue
            held_w, held_b, arithmetic = [], [], []
            for kind, (folded_w, folded_b) in fold_batchnorm(parts["weight"], bias, parts["scale"], parts["beta"],
                                                             parts["mean"], parts["var"], pair["eps"],
                                                             pair["axis"]).items():
                w, b = graph.holding(folded_w), graph.holding(folded_b)
                held_w, held_b = held_w or w, held_b or b
                if w or b:
                    arithmetic.append(kind)
            # W' carries W, gamma and var; b' carries b, mean, beta, gamma and var
            roles = {**({r: held_w for r in ("weight", "scale", "var")} if held_w else {}),
                     **({r: held_b for r in ("bias", "mean", "beta", "scale", "var")} if held_b else {})}
            for role, held in roles.items():
                key = by_graph_name.get(pair[role]) if pair[role] else None
                if key in missing:
                    missing.remove(key)
                    found[key] = {"how": "folded", "into": "BatchNormalization into Conv",
                                  "role": role, "initializers": held[:1], "exact": True,
                                  "arithmetic": arithmetic}
        if missing:
            derived, error = constant_values(ref, values, input_shape)
            if error:
                notes.append(f"constant subgraphs of the {reference_what or 'reference'} graph not evaluated ({error})")
            # a tensor is proven folded when every frontier value derived from it (what a folder
            # leaves for the computing nodes: both halves of a split, ...) is in the graph
            held_by: dict[str, list[dict[str, Any]]] = defaultdict(list)
            unheld: set[str] = set()
            for name, array, prov, ops, front in derived:
                keys = [by_graph_name[g] for g in prov if by_graph_name.get(g) in missing]
                if not keys or not front:
                    continue
                held = graph.holding(array) if _is_float(array) else []
                hit = ({"how": "folded", "into": "constant folding", "ops": list(ops),
                        "initializers": held[:1], "exact": True} if held else None)
                if hit is None:
                    for candidate_name, candidate in graph.tensors.items():
                        ulps = _close(array, candidate)
                        if ulps is not None:  # not bit-identical: within a few ulps, recorded so
                            hit = {"how": "folded", "into": "constant folding", "ops": list(ops),
                                   "initializers": [candidate_name], "exact": False, "max_ulps": round(ulps, 2),
                                   "why_not_exact": "the folder and ONNX Runtime compute these operators "
                                                    "with different rounding"}
                            break
                for key in keys:
                    if hit is None:
                        unheld.add(key)
                    else:
                        held_by[key].append(hit)
            for key, hits in held_by.items():
                if key in unheld:
                    continue
                missing.remove(key)
                found[key] = {**hits[0], "initializers": list(dict.fromkeys(n for h in hits for n in h["initializers"])),
                              "exact": all(h["exact"] for h in hits)}
    return {"found": found, "missing": missing, "notes": notes,
            "untraced": _untraced(graph, found)}


def _untraced(graph: _Graph, found: dict[str, dict[str, Any]]) -> list[str]:
    """Float initializers of more than one element, not all equal, that no checkpoint tensor was
    found in (derived constants such as position grids, or tensors of another origin): listed,
    not refused."""
    used = {n for hit in found.values() for n in hit["initializers"]}
    return sorted(n for n, a in graph.tensors.items()
                  if a.size > 1 and n not in used and not np.all(a == a.flat[0]))


def proof_record(n: int, result: dict[str, Any], unused: list[str] | tuple[str, ...]) -> dict[str, Any]:
    counts = Counter(hit["how"] for hit in result["found"].values())
    missing = result["missing"]
    if missing:
        summary = f"weights NOT verified: first mismatching tensor {missing[0]}"
    else:
        summary = f"weights verified: {n} tensors"
        if set(counts) - {"name"}:
            summary += " (" + ", ".join(f"{how} {counts[how]}" for how in HOW if counts.get(how)) + ")"
    return {
        "ok": not missing,
        "n_tensors": n,
        "matched": {how: counts[how] for how in HOW if counts.get(how)},
        "matched_by_content": sum(v for k, v in counts.items() if k != "name"),
        "tensors": result["found"],
        "unused_at_inference": list(unused),
        "missing": missing,
        "untraced_initializers": result["untraced"][:20],
        "n_untraced_initializers": len(result["untraced"]),
        "notes": result["notes"],
        "summary": summary,
    }


def verify_derived_graph(target: onnx.ModelProto, source: onnx.ModelProto,
                         carriers: list[str] | None = None,
                         input_shape: tuple[int, ...] | None = None) -> dict[str, Any]:
    """A graph made from ``source`` (a simplifier's) carries ``source``'s weight tensors:
    ``carriers`` (the initializers the export's proof found the checkpoint in; default every
    float initializer of more than one element), in any form of the module doc, ``source``
    being the reference for what folding made of them."""
    tensors = graph_tensors(source)
    names = carriers if carriers is not None else [n for n, a in tensors.items() if _is_float(a) and a.size > 1]
    truth = {n: tensors[n] for n in dict.fromkeys(names) if n in tensors}
    result = prove_tensors(target, truth, reference=source, reference_what="exported",
                           input_shape=input_shape)
    return proof_record(len(truth), result, ())


def carriers(proof: dict[str, Any]) -> list[str]:
    """The initializers an ONNX weight proof found the checkpoint's tensors in."""
    return sorted({n for hit in proof.get("tensors", {}).values() for n in hit["initializers"]})
