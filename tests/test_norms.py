"""The deployable graph's InstanceNormalization as reductions one axis at a time
(nnbridge.export.norms): the same function as the fused operator, accurate on both runtimes at
sizes where their fused kernels sum millions of terms in one fp32 accumulation, applied only from
the configured size on, proven and recorded by the simplify stage, the quantizers keeping the fused
form."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from nnbridge.core.artifacts import verify_recorded
from nnbridge.core.errors import NNBridgeError
from nnbridge.core.records import SimplifyRecord
from nnbridge.export.norms import MIN_VOXELS, two_pass_instance_norms
from nnbridge.export.simplify import simplify_onnx
from nnbridge.runtime.ort import run_onnx

EPS = 1e-5


def _norm_model(channels: int, spatial: int, opset: int, scale: np.ndarray, bias: np.ndarray,
                extra_flat: bool = False) -> onnx.ModelProto:
    """One InstanceNormalization over a (1, C, spatial...) input with dynamic spatial axes (as an
    nnbridge export has them); with ``extra_flat``, a second one behind a reshape to (1, C, -1),
    as GroupNorm exports (one axis: nothing to split its sum over)."""
    dims = [1, channels, *(f"s{i}" for i in range(spatial))]
    nodes = [helper.make_node("InstanceNormalization", ["x", "scale", "bias"], ["y"], epsilon=EPS, name="norm")]
    inits = [helper.make_tensor("scale", TensorProto.FLOAT, [channels], scale),
             helper.make_tensor("bias", TensorProto.FLOAT, [channels], bias)]
    out, out_dims = "y", dims
    if extra_flat:
        inits += [helper.make_tensor("flat", TensorProto.INT64, [3], [1, channels, -1]),
                  helper.make_tensor("scale2", TensorProto.FLOAT, [channels], scale),
                  helper.make_tensor("bias2", TensorProto.FLOAT, [channels], bias)]
        nodes += [helper.make_node("Reshape", ["y", "flat"], ["y_flat"], name="to_groups"),
                  helper.make_node("InstanceNormalization", ["y_flat", "scale2", "bias2"], ["z"], epsilon=EPS,
                                   name="group_norm")]
        out, out_dims = "z", [1, channels, "flat"]
    graph = helper.make_graph(nodes, "norm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, out_dims)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _exact(x: np.ndarray, scale: np.ndarray, bias: np.ndarray) -> np.ndarray:
    x64 = x.astype(np.float64)
    axes = tuple(range(2, x.ndim))
    mean = x64.mean(axis=axes, keepdims=True)
    var = ((x64 - mean) ** 2).mean(axis=axes, keepdims=True)
    shape = (1, -1, *([1] * (x.ndim - 2)))
    return (x64 - mean) / np.sqrt(var + EPS) * scale.reshape(shape) + bias.reshape(shape)


def _background_case(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Gaussian voxels, half of each channel one constant (a case's background after
    normalization): the data on which one fp32 sum over the channel drifts most."""
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    x[:, :, : shape[2] // 2] = 0.9
    return x


def _run_both(model: onnx.ModelProto, x: np.ndarray) -> dict[str, np.ndarray]:
    import onnxruntime as ort
    import openvino as ov

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    core = ov.Core()
    # exact: fp32 precision hint (OpenVINO would run bf16 by itself on an AMX CPU)
    compiled = core.compile_model(core.read_model(model.SerializeToString(), b""), "CPU",
                                  {"INFERENCE_PRECISION_HINT": "f32"})
    return {"onnxruntime": session.run(None, {"x": x})[0], "openvino": np.asarray(compiled({0: x})[0])}


def _ops(model: onnx.ModelProto) -> set[str]:
    return {n.op_type for n in model.graph.node}


@pytest.mark.parametrize("opset,shape", [(17, (1, 4, 96, 96, 96)), (18, (1, 4, 96, 96, 96)), (17, (1, 4, 768, 768))],
                         ids=["3d-opset17", "3d-opset18", "2d-opset17"])
def test_two_pass_form_is_accurate_on_both_runtimes_where_the_fused_kernels_sum_millions(opset, shape):
    channels = shape[1]
    scale = np.linspace(0.5, 2.0, channels).astype(np.float32)
    bias = np.linspace(-1.0, 1.0, channels).astype(np.float32)
    model = _norm_model(channels, len(shape) - 2, opset, scale, bias)
    rewritten, record = two_pass_instance_norms(model, shape)
    assert record["rewritten"] == record["instance_norms"] == 1 and record["largest_voxels"] == np.prod(shape[2:])
    assert "InstanceNormalization" not in _ops(rewritten) and "ReduceMean" in _ops(rewritten)
    onnx.checker.check_model(rewritten, full_check=True)
    x = _background_case(shape)
    exact = _exact(x, scale, bias)
    fused = {k: float(np.abs(v - exact).max()) for k, v in _run_both(model, x).items()}
    for runtime, y in _run_both(rewritten, x).items():
        # 1.3e-6 to 2.8e-6 on both runtimes (AMD Zen 4, 2026-12-04); the fused kernels 3.7e-4 to
        # 5.5e-4 on the same input (in the assertion's message),
        # and 1e-3 to 2e-2 on a real-size network's first normalization (nnbridge.export.norms).
        # OpenVINO merging the reductions back into one sum would fail this bound
        assert np.abs(y - exact).max() < 2e-5, (runtime, float(np.abs(y - exact).max()), fused)


def test_small_patches_keep_the_fused_kernels_and_other_norms_are_left_with_a_reason():
    channels = 2
    scale, bias = np.ones(channels, np.float32), np.zeros(channels, np.float32)
    model = _norm_model(channels, 3, 17, scale, bias, extra_flat=True)
    small = (1, channels, 40, 40, 40)  # the demo's patch: 64000 voxels per channel
    same, record = two_pass_instance_norms(model, small)
    assert same is model and record["rewritten"] == 0
    assert record["why"] == (f"largest normalization 64000 voxels per channel < {MIN_VOXELS}: the fused kernels are "
                             "accurate at this size")
    assert two_pass_instance_norms(model, small, min_voxels=0)[1]["why"] == "turned off (min_voxels 0)"
    rewritten, record = two_pass_instance_norms(model, small, min_voxels=64000)
    assert (record["instance_norms"], record["rewritten"]) == (2, 1)
    assert list(record["left"]) == ["group_norm"] and "not 2 or 3 known spatial axes" in record["left"]["group_norm"]
    assert [n.op_type for n in rewritten.graph.node].count("InstanceNormalization") == 1
    x = np.random.default_rng(1).standard_normal(small).astype(np.float32)
    for runtime, y in _run_both(rewritten, x).items():  # the same function: the fused op's own result
        expected = _run_both(model, x)[runtime]
        assert np.abs(y - expected).max() < 1e-5, runtime


def test_simplify_deploys_the_two_pass_graph_and_keeps_the_fused_one_for_the_quantizers(exported, patch_sets,
                                                                                        tmp_path):
    out, _, _ = exported
    _, _, heldout = patch_sets
    n_norms = [n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node].count("InstanceNormalization")
    assert n_norms > 0
    deployed, quantizable = tmp_path / "model.onnx", tmp_path / "quantizable.onnx"
    # the tiny model's patches are small: a threshold below them makes simplify rewrite
    record = simplify_onnx(out / "model.onnx", deployed, heldout[:2], quantizable=quantizable,
                           two_pass_norm_voxels=1000)
    norms = record["norms"]
    assert norms["rewritten"] == norms["instance_norms"] == n_norms, norms
    assert norms["weights"]["ok"] and norms["check_max_abs_err"] <= 1e-4, norms
    assert "InstanceNormalization" not in _ops(onnx.load(str(deployed)))
    plain = simplify_onnx(out / "model.onnx", tmp_path / "plain.onnx", heldout[:2])  # no rewrite asked
    assert quantizable.read_bytes() == (tmp_path / "plain.onnx").read_bytes()
    assert np.abs(run_onnx(deployed, heldout) - run_onnx(quantizable, heldout)).max() < 1e-4
    # the record states both files: a stage reading the quantizers' graph checks it against it
    SimplifyRecord.of(record).write(tmp_path / "simplify.json")
    assert verify_recorded(quantizable, tmp_path / "simplify.json") == record["quantizable"]["sha256"]
    assert verify_recorded(deployed, tmp_path / "simplify.json") == record["sha256"]
    quantizable.write_bytes(quantizable.read_bytes() + b"\0")
    with pytest.raises(NNBridgeError, match="quantizable.onnx: sha256 .* differs"):
        verify_recorded(quantizable, tmp_path / "simplify.json")
    # a rewrite that does not reproduce the fused graph is not deployed (an impossible tolerance)
    refused = simplify_onnx(out / "model.onnx", tmp_path / "r.onnx", heldout[:2], atol=-1.0,
                            quantizable=tmp_path / "rq.onnx", two_pass_norm_voxels=1000)
    assert refused["norms"]["rewritten"] == 0 and refused["norms"]["error"].startswith("two-pass outputs differ by")
    assert "InstanceNormalization" in _ops(onnx.load(str(tmp_path / "r.onnx")))
    assert refused["sha256"] == refused["quantizable"]["sha256"] and not list(tmp_path.glob(".*two_pass"))
    # at the default threshold the tiny patches keep the fused graph: one file, two names
    kept = simplify_onnx(out / "model.onnx", tmp_path / "kept.onnx", heldout[:2], quantizable=tmp_path / "q2.onnx")
    assert kept["norms"]["rewritten"] == 0 and kept["sha256"] == kept["quantizable"]["sha256"]
    assert (tmp_path / "kept.onnx").read_bytes() == (tmp_path / "plain.onnx").read_bytes()
