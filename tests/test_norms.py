"""The deployable graph's InstanceNormalization as reductions one axis at a time
(nnbridge.export.norms): the same function as the fused operator, accurate on both runtimes at
sizes where their fused kernels sum millions of terms in one fp32 accumulation, applied only from
the configured size on, proven and recorded by the simplify stage, the quantizers keeping the fused
form."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from nnbridge.core.artifacts import verify_recorded
from nnbridge.core.errors import NNBridgeError
from nnbridge.core.records import SimplifyRecord
from nnbridge.export import norms as norms_module
from nnbridge.export.norms import MIN_VOXELS, prove_each, two_pass_instance_norms
from nnbridge.export.onnx_export import write_onnx
from nnbridge.export.simplify import simplify_onnx
from nnbridge.runtime.ort import run_onnx

EPS = 1e-5


def _norm_model(channels: int, spatial: int, opset: int, scale: np.ndarray, bias: np.ndarray,
                extra_flat: bool = False) -> onnx.ModelProto:
    """One InstanceNormalization over a (1, C, spatial...) input with dynamic spatial axes (as an
    nnbridge export has them); with ``extra_flat``, a second one over a (1, C, L) sequence input
    (1-D, and no reshape of spatial axes before it: nothing to split its sum over)."""
    dims = [1, channels, *(f"s{i}" for i in range(spatial))]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)]
    nodes = [helper.make_node("InstanceNormalization", ["x", "scale", "bias"], ["y"], epsilon=EPS, name="norm")]
    inits = [helper.make_tensor("scale", TensorProto.FLOAT, [channels], scale),
             helper.make_tensor("bias", TensorProto.FLOAT, [channels], bias)]
    if extra_flat:
        nodes.append(helper.make_node("InstanceNormalization", ["seq", "scale", "bias"], ["z"], epsilon=EPS,
                                      name="sequence_norm"))
        inputs.append(helper.make_tensor_value_info("seq", TensorProto.FLOAT, [1, channels, "length"]))
        outputs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, channels, "length"]))
    graph = helper.make_graph(nodes, "norm", inputs, outputs, inits)
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


def _run_both(model: onnx.ModelProto, x: np.ndarray, **extra: np.ndarray) -> dict[str, np.ndarray]:
    import onnxruntime as ort
    import openvino as ov

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    core = ov.Core()
    # exact: fp32 precision hint (OpenVINO would run bf16 by itself on an AMX CPU)
    compiled = core.compile_model(core.read_model(model.SerializeToString(), b""), "CPU",
                                  {"INFERENCE_PRECISION_HINT": "f32"})
    feeds = {session.get_inputs()[0].name: x, **extra}
    return {"onnxruntime": session.run(None, feeds)[0], "openvino": np.asarray(compiled(list(feeds.values()))[0])}


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
    assert (record["instance_norms"], record["rewritten"], record["group_norms"]) == (2, 1, 0)
    assert list(record["left"]) == ["sequence_norm"]
    assert "not 2 or 3 known spatial axes" in record["left"]["sequence_norm"]
    assert [n.op_type for n in rewritten.graph.node].count("InstanceNormalization") == 1
    x = np.random.default_rng(1).standard_normal(small).astype(np.float32)
    seq = np.random.default_rng(2).standard_normal((1, channels, 50)).astype(np.float32)
    for runtime, y in _run_both(rewritten, x, seq=seq).items():  # the same function: the fused op's own result
        expected = _run_both(model, x, seq=seq)[runtime]
        assert np.abs(y - expected).max() < 1e-5, runtime


class _GroupNormNet(torch.nn.Module):
    """torch.nn.GroupNorm as MONAI's SegResNet uses it (affine, 2 channels per group), which the
    exporter writes as Reshape to (N, G, -1), a 1-D InstanceNormalization (scale 1, bias 0),
    Reshape back to Shape(x), Mul, Add."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.norm = torch.nn.GroupNorm(groups, channels)
        with torch.no_grad():
            self.norm.weight.copy_(torch.linspace(0.5, 2.0, channels))
            self.norm.bias.copy_(torch.linspace(-1.0, 1.0, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)


@pytest.mark.parametrize("opset,shape,groups", [(17, (1, 16, 96, 96, 96), 8), (18, (1, 8, 768, 768), 4)],
                         ids=["3d-opset17", "2d-opset18"])
def test_group_norm_exports_get_the_two_pass_form_too(tmp_path, opset, shape, groups):
    net = _GroupNormNet(shape[1], groups).eval()
    model = write_onnx(net, torch.zeros(1, shape[1], *([8] * (len(shape) - 2))), tmp_path / "gn.onnx", opset, {})
    flat = next(n.output[0] for n in model.graph.node if n.op_type == "Reshape")  # to (N, G, -1)
    rewritten, record = two_pass_instance_norms(model, shape)
    per_group = shape[1] // groups * int(np.prod(shape[2:]))
    assert (record["rewritten"], record["group_norms"], record["largest_voxels"]) == (1, 1, per_group), record
    assert record["why"].startswith(f"largest normalization {per_group} values per group >= ")
    assert "InstanceNormalization" not in _ops(rewritten)
    # GroupNorm's own reshape to (N, G, -1) is no longer read: gone, not left to run
    assert all(flat not in n.output for n in rewritten.graph.node)
    onnx.checker.check_model(rewritten, full_check=True)
    x = _background_case(shape)
    with torch.no_grad():
        exact = net.double()(torch.from_numpy(x).double()).numpy()
    fused = {k: float(np.abs(v - exact).max()) for k, v in _run_both(model, x).items()}
    for runtime, y in _run_both(rewritten, x).items():
        # 2e-7 to 6e-7 on both runtimes; the fused kernels 1.2e-4 to 2.4e-3 on such inputs (AMD Zen 4,
        # 2026-12-05; in the message), and a MONAI SegResNet's logits 6e-4 / 4e-4 of their range at 128^3
        assert np.abs(y - exact).max() < 2e-5, (runtime, float(np.abs(y - exact).max()), fused)
    # dynamic axes kept: another batch and patch size give torch's result
    other = np.random.default_rng(3).standard_normal((2, shape[1], *([24] * (len(shape) - 2)))).astype(np.float32)
    with torch.no_grad():
        expected = net.float()(torch.from_numpy(other)).numpy()
    onnx.save(rewritten, str(tmp_path / "two_pass.onnx"))
    assert np.abs(run_onnx(tmp_path / "two_pass.onnx", other) - expected).max() < 1e-5


def test_simplify_rewrites_a_monai_segresnet_s_group_norms_behind_its_computed_reshapes(tmp_path):
    # SegResNet reshapes every GroupNorm's result back to Shape(x): the shapes after the first
    # one are known only when shape inference propagates computed shapes (core.onnxgraph)
    from monai.networks.nets import SegResNet

    torch.manual_seed(0)
    net = SegResNet(spatial_dims=3, init_filters=4, in_channels=1, out_channels=2, blocks_down=[1, 1, 1],
                    blocks_up=[1, 1], norm=["GROUP", {"num_groups": 2}]).eval()
    raw = tmp_path / "raw.onnx"
    model = write_onnx(net, torch.zeros(1, 1, 16, 16, 16), raw, 17, {"nnbridge.stride_multiple": "[4, 4, 4]"})
    n_norms = [n.op_type for n in model.graph.node].count("InstanceNormalization")
    patches = _background_case((2, 1, 32, 32, 32))
    record = simplify_onnx(raw, tmp_path / "model.onnx", patches, quantizable=tmp_path / "quantizable.onnx",
                           two_pass_norm_voxels=1000)
    norms = record["norms"]
    assert n_norms >= 5 and (norms["rewritten"], norms["group_norms"]) == (n_norms, n_norms), norms
    assert norms["weights"]["ok"] and norms["check_shape"] == [1, 1, 8, 8, 8], norms
    deployed = onnx.load(str(tmp_path / "model.onnx"))
    assert "InstanceNormalization" not in _ops(deployed)
    with torch.no_grad():
        expected = net(torch.from_numpy(patches)).numpy()
    assert np.abs(run_onnx(tmp_path / "model.onnx", patches) - expected).max() < 1e-4


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
    assert refused["norms"]["rewritten"] == 0 and refused["norms"]["error"].startswith("two-pass ")
    assert " differ " in refused["norms"]["error"] and "> -1" in refused["norms"]["error"]
    assert "InstanceNormalization" in _ops(onnx.load(str(tmp_path / "r.onnx")))
    assert refused["sha256"] == refused["quantizable"]["sha256"] and not list(tmp_path.glob(".*two_pass"))
    # at the default threshold the tiny patches keep the fused graph: one file, two names
    kept = simplify_onnx(out / "model.onnx", tmp_path / "kept.onnx", heldout[:2], quantizable=tmp_path / "q2.onnx")
    assert kept["norms"]["rewritten"] == 0 and kept["sha256"] == kept["quantizable"]["sha256"]
    assert (tmp_path / "kept.onnx").read_bytes() == (tmp_path / "plain.onnx").read_bytes()


class _FixedSizeNet(torch.nn.Module):
    """A convolution, InstanceNorm3d and GroupNorm, exported at a fixed spatial size (as a
    network whose trace holds its patch, e.g. MONAI's UNETR, is)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv3d(1, 4, 3, padding=1)
        self.instance = torch.nn.InstanceNorm3d(4, affine=True)
        self.group = torch.nn.GroupNorm(2, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.group(self.instance(self.conv(x)))


def test_each_normalization_is_proven_on_its_own_where_the_graph_takes_only_its_patch(tmp_path, monkeypatch):
    torch.manual_seed(0)
    net = _FixedSizeNet().eval()
    patch = (1, 1, 24, 24, 24)
    raw = tmp_path / "raw.onnx"
    # as export_onnx writes a fixed graph: its stride multiple, and only the batch axis dynamic
    model = write_onnx(net, torch.zeros(patch), raw, 17, {"nnbridge.stride_multiple": "[8, 8, 8]",
                                                          "nnbridge.dynamic_axes": '["batch"]'},
                       dynamic_axes=("batch",))
    patches = _background_case((2, 1, 24, 24, 24))
    record = simplify_onnx(raw, tmp_path / "model.onnx", patches, quantizable=tmp_path / "q.onnx",
                           two_pass_norm_voxels=1000)
    norms = record["norms"]
    # the only size it takes is the patch: its normalizations count as inexact there (the
    # threshold), so each is proven alone and the whole graph within a share of its logits
    assert (norms["rewritten"], norms["group_norms"], norms["check_shape"]) == (2, 1, list(patch)), norms
    assert norms["each"]["normalizations"] == 2 and norms["each"]["max_abs_err"] < 1e-5, norms
    assert "the fused kernels are inexact at this size, the only size it takes" in norms["check_note"]
    assert norms["check_tolerance"] > 1e-4 >= norms["check_max_abs_err"], norms
    with torch.no_grad():
        expected = net(torch.from_numpy(patches)).numpy()
    assert np.abs(run_onnx(tmp_path / "model.onnx", patches) - expected).max() < 1e-4
    assert prove_each(model, patch)["max_abs_err"] < 1e-5
    # a rewrite that normalizes over the wrong axes (here: the last two only) is caught alone
    monkeypatch.setattr(norms_module, "_reduction_steps", lambda rank: [(rank - 1, 0), (rank - 2, 1)])
    assert prove_each(model, patch)["max_abs_err"] > 0.1


@pytest.mark.parametrize("min_voxels, relaxed", [(1000, True), (10000, False)])
def test_a_dynamic_graph_is_checked_at_twice_its_stride_multiple_and_says_when_that_is_inexact(
        tmp_path, min_voxels, relaxed):
    # the check size is 16^3 (twice the stride multiple 8): 4096 voxels per channel. Over the
    # threshold (1000) the fused kernels count as inexact there too, and the record says it is that
    # size, not the only one the graph takes; under it (10000: the GroupNorm sums 2 channels, 8192
    # voxels there) the whole graph is checked exactly
    # (a 128^3 nnU-Net, stride multiple 32, is the first case at its 64^3)
    torch.manual_seed(0)
    net = _FixedSizeNet().eval()
    raw = tmp_path / "raw.onnx"
    write_onnx(net, torch.zeros((1, 1, 24, 24, 24)), raw, 17,
               {"nnbridge.stride_multiple": "[8, 8, 8]", "nnbridge.dynamic_axes": '["batch", "spatial"]'})
    patches = _background_case((2, 1, 24, 24, 24))
    norms = simplify_onnx(raw, tmp_path / "model.onnx", patches, quantizable=tmp_path / "q.onnx",
                          two_pass_norm_voxels=min_voxels)["norms"]
    assert (norms["rewritten"], norms["check_shape"]) == (2, [1, 1, 16, 16, 16]), norms
    if relaxed:
        assert norms["check_note"].endswith("inexact at this size, twice its stride multiple (smaller sizes "
                                            "leave its deepest normalizations one voxel)"), norms
        assert "only size" not in norms["check_note"]
    else:
        assert "check_note" not in norms and "check_tolerance" not in norms, norms
