"""The realistic-size benchmark, run at a tiny size: structure and invariants of its record."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from nnbridge.core.onnxgraph import compute_node_flops
from nnbridge.core.errors import NNBridgeError
from nnbridge.bench.networks import analytic_flops, build_network, plain_unet_arch
from nnbridge.bench.realistic import FP32_RESULTS, INT8_RESULTS, compute_targets, realistic_benchmark

PATCH = (32, 32, 32)
FEATURES = (8, 16, 32)
NAMES = ("torch_eager", "onnx_fp32", "onnx_fp32@openvino", "int8", "int8@openvino", "fp32_ir@openvino",
         "int8_ir@openvino")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, machine_peak) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("realistic")
    # adjacent_min_ms 0: every runtime times its peak kernel after its timing, as at 128^3 (at this
    # size a patch takes milliseconds: the default measures it against the run's peak)
    # two_pass_norm_voxels under the 32^3 patch: the exact fp32 graph (a raw export: its norms' bias
    # can be an Identity of an equal tensor) is timed as simplify deploys it at real sizes
    # (two-pass normalization), INT8 and bf16 from the fused one
    record = realistic_benchmark(out, patch_size=PATCH, features=FEATURES, threads=2, warmup=0, repeats=1,
                                 peak=machine_peak, adjacent_min_ms=0.0, two_pass_norm_voxels=4096)
    return out, record


def test_every_result_is_timed_and_consistent(tiny_run):
    out, record = tiny_run
    json.dumps(record)  # JSON-serializable as returned
    results = record["results"]
    assert set(NAMES) <= set(results), results
    assert record["shape"] == [1, 1, *PATCH] and record["architecture"]["n_stages"] == 3
    base = results["torch_eager"]["p50_ms"]
    for name in NAMES:
        r = results[name]
        assert r["p50_ms"] > 0, (name, r)
        assert r["p99_ms"] >= r["p90_ms"] >= r["p50_ms"]
        assert r["peak_rss_mb"] > 0
        assert r["speedup_vs_torch_eager"] == pytest.approx(base / r["p50_ms"], abs=1e-3)
        assert r["gflops_per_s"] == pytest.approx(record["flops_per_patch"] / r["p50_ms"] / 1e6, rel=0.01)
        # each runtime timed its own peak kernel (of its kind) right after its timing
        kind = "int8" if name in INT8_RESULTS else "fp32"
        assert r["peak_kind"] == kind and r["peak_source"] == "adjacent", (name, r)
        assert r["adjacent_peak"]["kind"] == kind and "same process" in r["adjacent_peak"]["method"]
        assert ("INT8" in r["adjacent_peak"]["method"]) == (kind == "int8")
        assert r["pct_of_peak"] == pytest.approx(100 * r["gflops_per_s"] / r["adjacent_peak"]["gflops"], abs=0.1)
    assert results["torch_eager"]["backend"] == "torch_arch"
    assert results["onnx_fp32"]["ort_settings"] == record["tuning"]["chosen"]
    assert results["int8@openvino"]["backend"] == "openvino" and results["int8"]["op_profile"]
    # the OpenVINO IR path: INT8 by NNCF's OpenVINO backend, and the fp32 graph whose load time is compared
    assert (out / "model_int8.xml").is_file() and (out / "model_int8.bin").is_file()
    ir = record["ir_variants"]
    assert ir["int8"]["method"] == "openvino_int8" and ir["int8"]["coverage_openvino"]["n_int8_compute_nodes"] > 0
    assert ir["fp32"]["method"] == "openvino_fp32"
    assert set(record["load_ms"]) == {"onnx_fp32@openvino", "fp32_ir@openvino"} and all(record["load_ms"].values())
    # the exact fp32 results ran the two-pass graph, the others the fused one
    assert record["norms"]["rewritten"] == record["norms"]["instance_norms"] > 0, record["norms"]
    fp32_ops = {n.op_type for n in onnx.load(str(out / "model_two_pass.onnx")).graph.node}
    assert "InstanceNormalization" not in fp32_ops and "ReduceMean" in fp32_ops
    files = record["files"]
    assert files["onnx_fp32"] == files["onnx_fp32@openvino"] == str(out / "model_two_pass.onnx"), files
    assert files["bf16@openvino"] == str(out / "model.onnx") and files["int8"] == str(out / "model_int8.onnx")


def test_flops_match_an_independent_count(tiny_run):
    _, record = tiny_run
    assert record["flops_per_patch"] > 0
    counted = analytic_flops(record["architecture"], PATCH)
    assert record["flops_per_patch"] == record["flops_analytic"] == counted


def test_flops_of_one_conv():
    """compute_node_flops on a single Conv equals 2·C_out·∏out·C_in·∏k."""
    c_in, c_out, k, size = 2, 5, 3, (6, 7, 8)
    weight = numpy_helper.from_array(np.zeros((c_out, c_in, k, k, k), np.float32), "w")
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1] * 6)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [weight])
    graph.input[0].type.tensor_type.shape.dim.extend([onnx.TensorShapeProto.Dimension()] * 5)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    flops = compute_node_flops(model, (1, c_in, *size))["conv"]["flops"]
    assert flops == 2 * c_out * int(np.prod(size)) * c_in * k**3


def test_onnx_matches_the_torch_network(tiny_run):
    import torch

    from nnbridge.runtime.ort import onnx_session

    out, record = tiny_run
    network = build_network(record["architecture"], record["seed"])
    again = build_network(record["architecture"], record["seed"])  # the benchmark child rebuilds it
    assert all(torch.equal(a, b) for a, b in zip(network.state_dict().values(), again.state_dict().values()))
    x = np.random.default_rng(5).standard_normal((1, 1, *PATCH)).astype(np.float32)
    with torch.no_grad():
        ref = network(torch.from_numpy(x)).numpy()
    got = onnx_session(out / "model.onnx").run(None, {"input": x})[0]
    assert got.shape == (1, 3, *PATCH)
    np.testing.assert_allclose(got, ref, atol=1e-4)
    assert record["export"]["check"]["max_abs_err"] < 1e-4


def test_int8_file_is_quantized(tiny_run):
    out, record = tiny_run
    ops = {node.op_type for node in onnx.load(str(out / "model_int8.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    variant = record["int8_variant"]
    assert variant["symmetric_activations"] and variant["per_channel"]
    assert variant["calibration"]["n_patches"] == 4 and "speed only" in record["int8_note"]
    assert variant["coverage"]["int8_flop_share"] > 0


def test_targets_follow_the_results(tiny_run):
    _, record = tiny_run
    results, targets = record["results"], record["targets"]
    assert targets == compute_targets(results, record["peak"])
    eager = results["torch_eager"]["gflops_per_s"]
    assert targets["fp32_ceiling"] == round(record["peak"]["gflops"] / eager, 2)
    assert targets["int8_ceiling"] == round(record["peak"]["int8_gops"] / eager, 2)
    for key, names, target in (("best_fp32_exact", FP32_RESULTS, 2.0), ("best_int8", INT8_RESULTS, 3.0)):
        best = max(names, key=lambda n: results[n]["speedup_vs_torch_eager"])
        assert targets[key]["name"] == best
        assert targets[key]["speedup"] == results[best]["speedup_vs_torch_eager"]
        met = targets["fp32_target_met" if key == "best_fp32_exact" else "int8_target_met"]
        assert met == (targets[key]["speedup"] >= target)
        if not met:
            assert targets["dominant_ops"][best] == results[best]["op_profile"][:5]


def test_compute_targets_met_and_missed():
    profile = [{"op": f"op{i}", "ms_per_run": 1.0, "share": 0.1} for i in range(8)]
    results = {"torch_eager": {"p50_ms": 10.0, "speedup_vs_torch_eager": 1.0},
               "onnx_fp32": {"p50_ms": 4.0, "speedup_vs_torch_eager": 2.5, "op_profile": profile},
               "onnx_fp32@openvino": {"p50_ms": 6.0, "speedup_vs_torch_eager": 1.667, "op_profile": profile},
               "int8": {"error": "exit 1: boom"},
               "int8@openvino": {"p50_ms": 5.0, "speedup_vs_torch_eager": 2.0, "op_profile": profile}}
    targets = compute_targets(results)
    assert targets["best_fp32_exact"]["name"] == "onnx_fp32" and targets["fp32_target_met"]
    assert targets["best_int8"]["name"] == "int8@openvino" and not targets["int8_target_met"]
    assert list(targets["dominant_ops"]) == ["int8@openvino"]
    assert targets["dominant_ops"]["int8@openvino"] == profile[:5]
    assert compute_targets({"torch_eager": results["torch_eager"]})["best_int8"] is None


def test_peak_share_targets_at_the_realistic_size():
    """The fastest exact fp32 runtime should reach 90 % of the fp32 peak and the fastest INT8 80 %
    of the INT8 peak: a missed share lists the dominant operators even when the speed-up is met;
    an unknown share is not met."""
    profile = [{"op": "MVN", "ms_per_run": 1.0, "share": 0.3}]
    results = {"torch_eager": {"p50_ms": 10.0, "speedup_vs_torch_eager": 1.0, "pct_of_peak": 40.0},
               "onnx_fp32": {"p50_ms": 4.0, "speedup_vs_torch_eager": 2.5, "pct_of_peak": 95.0,
                             "op_profile": profile},
               "onnx_fp32@openvino": {"p50_ms": 4.5, "speedup_vs_torch_eager": 2.2, "pct_of_peak": 99.0},
               "int8@openvino": {"p50_ms": 2.0, "speedup_vs_torch_eager": 5.0, "pct_of_peak": 62.5,
                                 "op_profile": profile},
               "int8_ir@openvino": {"p50_ms": 2.5, "speedup_vs_torch_eager": 4.0, "pct_of_peak": 85.0}}
    targets = compute_targets(results)
    assert targets["fp32_peak_target"] == 90.0 and targets["int8_peak_target"] == 80.0
    # the fastest counts, not the one nearest its peak
    assert targets["best_fp32_exact"] == {"name": "onnx_fp32", "speedup": 2.5, "p50_ms": 4.0, "pct_of_peak": 95.0}
    assert targets["fp32_target_met"] and targets["fp32_peak_target_met"]
    assert targets["best_int8"]["name"] == "int8@openvino" and targets["int8_target_met"]
    assert not targets["int8_peak_target_met"]
    assert targets["dominant_ops"] == {"int8@openvino": profile}
    del results["int8@openvino"]["pct_of_peak"]  # no peak measured: neither met nor missed
    unknown = compute_targets(results)
    assert unknown["int8_peak_target_met"] is None and "dominant_ops" not in unknown
    results["int8@openvino"]["pct_of_peak"] = 80.0
    again = compute_targets(results)
    assert again["int8_peak_target_met"] and "dominant_ops" not in again


def test_the_peak_a_result_is_measured_against():
    """A result's own adjacent peak of its kind wins over the run-wide one; a failed or other-kind
    adjacent peak falls back to the run's."""
    from nnbridge.bench.peak import add_throughput

    record = {"results": {
        "a": {"p50_ms": 1000.0, "adjacent_peak": {"kind": "fp32", "gflops": 50.0}},
        "b": {"p50_ms": 1000.0, "adjacent_peak": {"kind": "fp32", "method": "m", "error": "RuntimeError: x"}},
        "c": {"p50_ms": 500.0, "adjacent_peak": {"kind": "fp32", "gflops": 50.0}},
        "d": {"error": "exit 1"}}}
    add_throughput(record, 10 * 10**9, {"gflops": 100.0, "int8_gops": 400.0}, {"c": "int8"})
    a, b, c = (record["results"][k] for k in "abc")
    assert (a["gflops_per_s"], a["pct_of_peak"], a["peak_source"]) == (10.0, 20.0, "adjacent")
    assert (b["pct_of_peak"], b["peak_source"]) == (10.0, "run")
    assert (c["gflops_per_s"], c["pct_of_peak"], c["peak_kind"], c["peak_source"]) == (20.0, 5.0, "int8", "run")
    assert "gflops_per_s" not in record["results"]["d"]


def test_a_peak_kernel_that_cannot_run_here_is_an_error_not_a_crash(monkeypatch):
    """bf16 on a CPU without native bf16 (forced): the peak kernel reports why; fp32 runs."""
    from nnbridge.bench.kernels import time_peak_kernel

    monkeypatch.setenv("NNBRIDGE_NO_BF16", "1")
    bf16 = time_peak_kernel("bf16", 1, warmup=0, repeats=1)
    assert "gflops" not in bf16 and "bf16" in bf16["error"] and bf16["kind"] == "bf16"
    fp32 = time_peak_kernel("fp32", 1, warmup=0, repeats=1)
    assert fp32["gflops"] > 0 and fp32["method"].startswith("fp32 3x3x3 convolution 128->128")


def test_patch_not_a_multiple_is_refused(tmp_path):
    with pytest.raises(NNBridgeError, match=r"divisible by \(4, 4, 4\)"):
        realistic_benchmark(tmp_path, patch_size=(30, 32, 32), features=FEATURES)
    assert not (tmp_path / "model.onnx").exists()
    assert plain_unet_arch()["features_per_stage"] == [32, 64, 128, 256, 320, 320]


def _resenc_plans(path: Path) -> Path:
    """A plans file whose 3d_fullres is a tiny ResidualEncoderUNet (as nnU-Net writes it)."""
    arch = {
        "network_class_name": "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet",
        "arch_kwargs": {
            "n_stages": 3, "features_per_stage": [8, 16, 32], "conv_op": "torch.nn.modules.conv.Conv3d",
            "kernel_sizes": [[3, 3, 3]] * 3, "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]],
            "n_blocks_per_stage": [1, 2, 2], "n_conv_per_stage_decoder": [1, 1], "conv_bias": True,
            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
            "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}},
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}
    plans = {"plans_name": "nnUNetResEncUNetMPlans", "configurations": {
        "3d_fullres": {"patch_size": [24, 32, 32], "architecture": arch},
        "3d_big": {"inherits_from": "3d_fullres", "patch_size": [32, 32, 32]}}}
    (path / "plans.json").write_text(json.dumps(plans))
    (path / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT", "1": "PET"},
                                                   "labels": {"background": 0, "a": 1}}))
    return path / "plans.json"


def test_architecture_from_a_plans_file(tmp_path, machine_peak):
    """Any network class nnU-Net builds: a ResEnc plan at its own patch size, channels and
    classes from the dataset.json beside it; the ONNX equals the network the child rebuilds."""
    from nnbridge.runtime.ort import onnx_session

    plans = _resenc_plans(tmp_path)
    record = realistic_benchmark(tmp_path / "out", plans=plans, configuration="3d_big", threads=2, warmup=0,
                                 repeats=1, int8=False, backends=("torch", "onnxruntime"), peak=machine_peak)
    arch = record["architecture"]
    assert arch["arch_class_name"].endswith("ResidualEncoderUNet") and record["patch_size"] == [32, 32, 32]
    assert record["shape"] == [1, 2, 32, 32, 32] and arch["num_classes"] == 2
    assert record["flops_analytic"] is None and record["flops_per_patch"] > 0
    assert set(record["results"]) == {"torch_eager", "onnx_fp32"} and record["results"]["onnx_fp32"]["p50_ms"] > 0
    network = build_network(arch, record["seed"])
    assert type(network).__name__ == "ResidualEncoderUNet"
    x = np.random.default_rng(1).standard_normal((1, 2, 32, 32, 32)).astype(np.float32)
    import torch

    with torch.no_grad():
        ref = network(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(onnx_session(tmp_path / "out/model.onnx").run(None, {"input": x})[0], ref, atol=1e-4)


def test_plans_file_errors_name_the_file(tmp_path):
    plans = _resenc_plans(tmp_path)
    with pytest.raises(NNBridgeError, match=r"plans.json: configuration '2d' is not in the plans"):
        realistic_benchmark(tmp_path / "out", plans=plans, configuration="2d")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(NNBridgeError, match=r"bad.json: cannot read the plans file"):
        realistic_benchmark(tmp_path / "out", plans=tmp_path / "bad.json")


def test_a_slow_patch_times_its_peak_kernel_right_after_and_a_fast_one_does_not(tmp_path):
    """Benchmarks of a model whose patch takes at least ``adjacent_min_ms`` (the real-size folds)
    time the peak kernel of their kind in the same process; the demo's millisecond patches keep
    the run-wide peak (a peak kernel would cost more than their timing)."""
    from nnbridge.bench.kernels import peak_conv_onnx
    from nnbridge.bench.measure import measure
    from nnbridge.bench.peak import with_adjacent_peaks

    peak_conv_onnx(tmp_path / "fp32.onnx", 8, 8, int8=False)
    peak_conv_onnx(tmp_path / "int8.onnx", 8, 8, int8=True)
    specs = {"a": {"backend": "onnxruntime", "path": str(tmp_path / "fp32.onnx"), "profile": False},
             "b@openvino": {"backend": "openvino", "path": str(tmp_path / "int8.onnx"), "profile": False}}
    slow = with_adjacent_peaks(specs, min_ms=0.0)
    assert {k: s["adjacent_peak"] for k, s in slow.items()} == {"a": "fp32", "b@openvino": "int8"}
    assert "adjacent_peak" not in specs["a"]  # the plain specs stay as they were (search, sweeps)
    timed = measure(slow["b@openvino"], (1, 8, 8, 8, 8), 1, 0, 2)
    assert timed["adjacent_peak"]["kind"] == "int8" and timed["adjacent_peak"]["gflops"] > 0
    fast = measure(with_adjacent_peaks(specs, min_ms=1e9)["a"], (1, 8, 8, 8, 8), 1, 0, 2)
    assert "p50_ms" in fast and "adjacent_peak" not in fast
