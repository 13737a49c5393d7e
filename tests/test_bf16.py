"""The bf16 variant: the fp32 graph run by OpenVINO in bf16 on CPUs that have it natively, and
reported as skipped (predicted in fp32) on CPUs that do not; on the real tiny nnU-Net fold.

``NNBRIDGE_NO_BF16=1`` makes any CPU one without native bf16, so the skip path runs everywhere;
the bf16 path itself needs a CPU with AMX or AVX512_BF16 and is skipped elsewhere, with the reason.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from nnbridge.bench.measure import benchmark_variants, skip_reason
from nnbridge.core.errors import NNBridgeError
from nnbridge.models.nnunet import nnunet_source
from nnbridge.core.metadata import read_metadata
from nnbridge.runtime.ov import NO_BF16_ENV, PrecisionUnavailable, bf16_unavailable, compiled_precision, openvino_model, run_openvino
from nnbridge.validate.metrics import compare_logits
from nnbridge.validate.reference import validate_source
from nnbridge.quantize import quantize_variant
from nnbridge.pipeline.plan import FoldKey, artifact_paths, bundle_plan, fold_variants

NO_NATIVE_BF16 = bf16_unavailable()
needs_bf16 = pytest.mark.skipif(NO_NATIVE_BF16 is not None, reason=f"needs native bf16: {NO_NATIVE_BF16}")
BF16 = {"method": "bf16", "format": "QDQ", "per_channel": True, "calibrate_method": "MinMax",
        "symmetric_activations": False, "nodes_to_exclude": []}  # as the schema fills the defaults in
BACKENDS = ("onnxruntime", "openvino")


@pytest.fixture(scope="module")
def bf16_file(exported, patch_sets, tmp_path_factory) -> tuple[Path, dict]:
    out, _, _ = exported
    path = tmp_path_factory.mktemp("bf16") / "bf16.onnx"
    record = quantize_variant(out / "model.onnx", path, patch_sets[1], BF16, backends=BACKENDS)
    return path, record


def test_bf16_variant_is_the_fp32_graph_marked_for_openvino(exported, loaded_fold, bf16_file):
    out, _, _ = exported
    path, record = bf16_file
    fp32, bf16 = onnx.load(str(out / "model.onnx")), onnx.load(str(path))
    # the same graph and the same fp32 weights: only the metadata asks for bf16
    assert [n.op_type for n in bf16.graph.node] == [n.op_type for n in fp32.graph.node]
    weights = {i.name: onnx.numpy_helper.to_array(i) for i in fp32.graph.initializer}
    for init in bf16.graph.initializer:
        assert init.data_type == onnx.TensorProto.FLOAT
        np.testing.assert_array_equal(onnx.numpy_helper.to_array(init), weights[init.name])
    meta = read_metadata(path)
    assert meta["inference_precision"] == "bf16"
    assert meta["source_sha256"] == loaded_fold.checkpoint_sha256  # provenance kept
    assert record["method"] == "bf16" and record["runtime"] == "openvino" and record["n_calibration_patches"] == 0
    assert record["native_bf16_here"] is (NO_NATIVE_BF16 is None)
    assert "coverage" not in record  # ONNX Runtime does not run it


@needs_bf16
def test_openvino_runs_the_bf16_variant_in_bf16(exported, patch_sets, bf16_file, loaded_fold):
    out, _, _ = exported
    path, record = bf16_file
    heldout = patch_sets[2]
    assert compiled_precision(openvino_model(out / "model.onnx", 1)) == "f32"
    assert compiled_precision(openvino_model(path, 1)) == "bf16"  # as OpenVINO reports it
    # what the compiled model really runs: every convolution in bf16 (AMX / AVX512_BF16 kernels)
    coverage = record["coverage_openvino"]
    assert coverage["precision"] == "bf16" and coverage["backend"] == "openvino-cpu"
    assert coverage["n_bf16_compute_nodes"] == coverage["n_compute_nodes"] > 0
    assert coverage["bf16_flop_share"] == 1.0 and coverage["float_compute_nodes"] == []
    assert {n["runs_as"] for n in coverage["compute_nodes"] if n["op"] == "Conv"} == {"Convolution (bf16)"}
    # bf16 changes the numbers a little, not the label maps
    exact, low = run_openvino(out / "model.onnx", heldout), run_openvino(path, heldout)
    metrics = compare_logits(exact, low, loaded_fold.label_names)
    assert 0 < metrics["max_rel_err"] < 0.05 and metrics["voxel_agreement"] > 0.99, metrics


def test_without_native_bf16_the_variant_is_refused_or_run_exactly(exported, patch_sets, bf16_file, monkeypatch,
                                                                   capsys):
    out, _, _ = exported
    path, _ = bf16_file
    monkeypatch.setenv(NO_BF16_ENV, "1")
    assert bf16_unavailable() == f"bf16 turned off on this machine ({NO_BF16_ENV}=1)"
    with pytest.raises(PrecisionUnavailable, match=r"bf16\.onnx: a bf16 variant, but bf16 turned off"):
        openvino_model(path, 1)
    compiled = openvino_model(path, 1, fallback=True)  # what nnbridge predict does: fp32, said on stderr
    assert compiled_precision(compiled) == "f32"
    assert "running it in fp32 (exact)" in capsys.readouterr().err
    heldout = patch_sets[2][:1]
    fallback = np.array(compiled.create_infer_request().infer({0: heldout})[0])
    np.testing.assert_array_equal(fallback, run_openvino(out / "model.onnx", heldout, threads=1))  # fp32, exactly
    # the quantize record says it could not look at the bf16 kernels here
    record = quantize_variant(out / "model.onnx", path.parent / "again.onnx", patch_sets[1], BF16, backends=BACKENDS)
    assert record["native_bf16_here"] is False and record["coverage_openvino"] is None
    assert record["bf16_unavailable"].startswith("bf16 turned off")


def test_validate_and_benchmark_skip_it_without_native_bf16(tiny_model, exported, patch_sets, bf16_file,
                                                            monkeypatch):
    out, _, _ = exported
    path, _ = bf16_file
    variants = {"onnx_fp32@openvino": {"kind": "onnx", "path": str(out / "model.onnx"), "backend": "openvino"},
                "bf16@openvino": {"kind": "onnx", "path": str(path), "backend": "openvino"}}
    source = nnunet_source(tiny_model.model_folder, "0", tiny_model.checkpoint)
    specs = {name: {"backend": "openvino", "path": v["path"], "profile": False} for name, v in variants.items()}
    monkeypatch.setenv(NO_BF16_ENV, "1")
    parity = validate_source(source, patch_sets[2], variants, {}, threads=1)["variants"]
    assert parity["onnx_fp32@openvino"]["passed"] and "skipped" not in parity["onnx_fp32@openvino"]
    skipped = parity["bf16@openvino"]
    assert skipped["passed"] is False and "bf16 turned off" in skipped["skipped"]
    assert skipped["failures"] == [f"skipped: {skipped['skipped']}"]
    assert skip_reason(specs["bf16@openvino"]).startswith("bf16 turned off") and skip_reason(specs["onnx_fp32@openvino"]) is None
    timed = benchmark_variants(specs, (1, 1, *patch_sets[2].shape[2:]), 1, 0, 2, baseline="onnx_fp32@openvino")
    assert timed["results"]["bf16@openvino"] == {"backend": "openvino", "skipped": skipped["skipped"].split(": a bf16 variant, but ")[1]}
    assert timed["results"]["onnx_fp32@openvino"]["inference_precision"] == "f32"


@needs_bf16
def test_validate_and_benchmark_run_it_in_bf16(tiny_model, exported, patch_sets, bf16_file):
    out, _, _ = exported
    path, _ = bf16_file
    source = nnunet_source(tiny_model.model_folder, "0", tiny_model.checkpoint)
    variant = {"bf16@openvino": {"kind": "onnx", "path": str(path), "backend": "openvino"}}
    result = validate_source(source, patch_sets[2], variant, {"bf16@openvino": {"max_rel_err": 0.05}})["variants"]
    assert "skipped" not in result["bf16@openvino"] and 0 < result["bf16@openvino"]["max_rel_err"] < 0.05
    spec = {"backend": "openvino", "path": str(path)}
    timed = benchmark_variants({"bf16@openvino": spec}, (1, 1, *patch_sets[2].shape[2:]), 1, 0, 2,
                               baseline="bf16@openvino")["results"]["bf16@openvino"]
    assert timed["inference_precision"] == "bf16" and timed["p50_ms"] > 0
    assert "amx_bf16" in timed["op_profile"][0]["op"] or "bf16" in json.dumps(timed["op_profile"])


def test_workflow_plan_runs_bf16_on_openvino_only():
    config = {"export": {"torchscript": False}, "backends": ["onnxruntime", "openvino"],
              "quantize": {"bf16": {"method": "bf16"}, "int8": {"method": "static"}},
              "bundle": {"variants": ["onnx_simplified", "bf16"], "default_variant": "onnx_simplified"},
              "case_parity": {"variants": ["bf16"]}}
    variants = fold_variants("results", FoldKey("D", "M", "0"), config)
    assert "bf16" not in variants and variants["bf16@openvino"]["backend"] == "openvino"
    assert {"int8", "int8@openvino", "onnx_simplified", "onnx_simplified@openvino"} <= set(variants)
    assert artifact_paths(variants)["bf16"] == "results/D/M/fold_0/quantize/bf16.onnx"
    assert bundle_plan(config) == (["onnx_simplified", "bf16"], "onnx_simplified", ["bf16"])
    with pytest.raises(NNBridgeError, match=r"config quantize.bf16: method bf16 runs on OpenVINO; add openvino"):
        bundle_plan({**config, "backends": ["onnxruntime"]})


def test_bf16_settings_are_refused_in_one_line(exported, patch_sets, tmp_path):
    out, _, _ = exported
    src, dst, calibration = out / "model.onnx", tmp_path / "x.onnx", patch_sets[1]
    with pytest.raises(NNBridgeError, match=r"nodes_to_exclude does not work with method 'bf16'"):
        quantize_variant(src, dst, calibration, {**BF16, "nodes_to_exclude": ["a"]}, backends=BACKENDS)
    with pytest.raises(NNBridgeError, match=r"symmetric_activations work\(s\) with the INT8 methods only"):
        quantize_variant(src, dst, calibration, {**BF16, "symmetric_activations": True}, backends=BACKENDS)
    with pytest.raises(NNBridgeError, match=r"preset work\(s\) with the INT8 methods only"):
        quantize_variant(src, dst, calibration, {**BF16, "preset": "mixed"}, backends=BACKENDS)
    with pytest.raises(NNBridgeError, match=r"method 'bf16' runs on OpenVINO; add openvino"):
        quantize_variant(src, dst, calibration, BF16, backends=("onnxruntime",))
    assert not dst.exists()


@pytest.fixture(scope="module")
def bf16_bundle(tiny_model, exported, bf16_file, tmp_path_factory) -> Path:
    from nnbridge.bundle.build import write_bundle

    out, _, _ = exported
    model = tiny_model.model_folder
    axes = json.loads(read_metadata(out / "model.onnx")["mirror_axes"])
    root = tmp_path_factory.mktemp("bf16_bundle")
    write_bundle(root, plans_file=model / "plans.json", dataset_file=model / "dataset.json",
                 info={"configuration": "3d_fullres", "mirror_axes": axes},
                 variants={"onnx_fp32": {"files": {"0": out / "model.onnx"}, "gates": {"0": {"openvino": True}},
                                         "latency_ms": {"openvino": 5.0}},
                           "bf16": {"files": {"0": bf16_file[0]}, "gates": {"0": {"openvino": True}},
                                    "latency_ms": {"openvino": 2.0}}},
                 default_variant="onnx_fp32")
    return root


def test_predict_runs_a_bundled_bf16_variant_on_openvino(tiny_model, bf16_bundle, tmp_path, monkeypatch):
    from nnbridge.validate.caseparity import run_case_parity
    from nnbridge.predict.bundle import Bundle
    from nnbridge.predict.predictor import Predictor

    bundle = Bundle.load(bf16_bundle)
    assert bundle.manifest["variants"]["bf16"]["inference_precision"] == "bf16"
    assert bundle.manifest["variants"]["onnx_fp32"]["inference_precision"] == "f32"
    with pytest.raises(NNBridgeError, match=r"variant 'bf16' runs in bf16, on OpenVINO only; use --backend openvino"):
        Predictor(bundle, variant="bf16", backend="onnxruntime")
    predictor = Predictor(bundle, variant="bf16")
    assert predictor.backend == "openvino"
    predictor.load()
    assert predictor.precision == ("bf16" if NO_NATIVE_BF16 is None else "f32")
    assert f"bf16 on openvino with the runtime's threads, batch 1, {predictor.precision} inference precision" \
        in predictor.describe_run()
    # whole-case parity: without native bf16 it is skipped (predict would run fp32, not the variant)
    raw = next((tiny_model.model_folder.parents[2] / "raw").glob("Dataset*"))
    case = sorted((raw / "imagesTr").glob("*_0000.nii.gz"))[0]
    name = case.name[: -len("_0000.nii.gz")]
    cases = {name: {"images": [case], "label": raw / "labelsTr" / f"{name}.nii.gz"}}
    monkeypatch.setenv(NO_BF16_ENV, "1")
    record = run_case_parity(model_folder=tiny_model.model_folder, fold="0", checkpoint=tiny_model.checkpoint,
                             bundle_dir=bf16_bundle, cases=cases, variants={"bf16": {}, "onnx_fp32": {}},
                             out_dir=tmp_path / "cp", step=0.5, mirroring=False, threads=1)
    assert record["variants"]["bf16"]["skipped"].startswith("bf16 turned off")
    assert record["variants"]["onnx_fp32"]["inference_precision"] == "f32"
    assert record["all_passed"] == record["variants"]["onnx_fp32"]["passed"]
    shutil.rmtree(tmp_path / "cp")
