"""OpenVINO IR variants (``method: openvino_int8`` — NNCF's OpenVINO backend — and ``openvino_fp32``):
written as .xml + .bin with nnbridge's provenance, run on OpenVINO only, validated (with their
self-check Dice), benchmarked (load time, size of both files, a signature that ignores weight
values), INT8 coverage, bundled (both files, sha256 each) and predicted by ``nnbridge predict``
and re-checked by ``nnbridge verify``; on the real tiny nnU-Net fold with real NNCF and OpenVINO."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from nnbridge.core.artifacts import artifact_files, method_kind
from nnbridge.core.errors import NNBridgeError
from nnbridge.core.graphs import graph_signature, is_int8
from nnbridge.core.metadata import inference_precision, output_labels, read_metadata
from nnbridge.pipeline.plan import FoldKey, artifact_paths, bundle_plan, fold_variants
from nnbridge.quantize import quantize_variant
from nnbridge.runtime import make_runner, run_variant
from nnbridge.validate.metrics import compare_logits

pytest.importorskip("nncf")
ov = pytest.importorskip("openvino")

BACKENDS = ("onnxruntime", "openvino")


@pytest.fixture(scope="module")
def ir_files(exported, patch_sets, tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    """The IR variants of the tiny fold: INT8 plain, INT8 calibrated on fewer patches (same graph,
    other values), INT8 with NNCF's Dice-driven accuracy control, and the fp32 graph."""
    out, _, _ = exported
    calibration = patch_sets[1]
    root = tmp_path_factory.mktemp("ir")
    entries = {"int8": {"method": "openvino_int8"},
               "int8_fewer": {"method": "openvino_int8", "subset_size": 2},
               "int8_ac": {"method": "openvino_int8",
                           "accuracy_control": {"max_drop": 0.0, "patches": 2, "max_iterations": 1}},
               "fp32": {"method": "openvino_fp32"}}
    return {name: (root / f"{name}.xml", quantize_variant(out / "model.onnx", root / f"{name}.xml", calibration,
                                                          settings, threads=2, backends=BACKENDS))
            for name, settings in entries.items()}


def test_openvino_int8_is_an_ir_pair_with_provenance_that_quantizes_mvn_inputs(ir_files, exported, loaded_fold):
    path, record = ir_files["int8"]
    assert [f.name for f in artifact_files(path)] == ["int8.xml", "int8.bin"] and path.with_suffix(".bin").is_file()
    assert not path.with_suffix(".onnx").exists()
    meta = read_metadata(path)  # rt_info, read off the .xml without OpenVINO
    assert meta["source_sha256"] == loaded_fold.checkpoint_sha256 and meta["fold"] == "0"
    assert output_labels(path) == output_labels(exported[0] / "model.onnx") and inference_precision(path) == "f32"
    assert (record["method"], record["precision"], record["runtime"]) == ("openvino_int8", "int8", "openvino")
    assert record["size_bytes"] == sum(f.stat().st_size for f in artifact_files(path))
    assert record["ops"]["FakeQuantize"] > 0 and is_int8(path) and not is_int8(ir_files["fp32"][0])
    assert "coverage" not in record  # ONNX Runtime does not run an IR
    ov_cov = record["coverage_openvino"]  # from the model OpenVINO compiles from the IR
    assert ov_cov["n_int8_compute_nodes"] == ov_cov["n_compute_nodes"] > 0
    # NNCF's OpenVINO backend quantizes the inputs of MVN (InstanceNormalization): the QDQ file cannot
    model = ov.Core().read_model(str(path))
    fed = {target.get_node().get_type_name() for op in model.get_ordered_ops() if op.get_type_name() == "FakeQuantize"
           for target in op.output(0).get_target_inputs()}
    assert "MVN" in fed, fed
    assert record["cpu"]["choices"][0]["setting"] == "overflow_fix"  # decided by the CPU, as for nncf


def test_ir_runs_on_openvino_only_within_a_dice_gate(ir_files, exported, patch_sets, loaded_fold, tmp_path):
    out, _, _ = exported
    heldout = patch_sets[2]
    int8, fp32 = ir_files["int8"][0], ir_files["fp32"][0]
    with pytest.raises(NNBridgeError, match=r"int8\.xml: an OpenVINO IR runs on openvino, not onnxruntime"):
        make_runner({"backend": "onnxruntime", "path": int8})
    reference = run_variant("onnx", out / "model.onnx", heldout, 2, "openvino")
    np.testing.assert_allclose(run_variant("ir", fp32, heldout, 2, "openvino"), reference, rtol=0, atol=1e-5)
    metrics = compare_logits(reference, run_variant("ir", int8, heldout, 2, "openvino"), loaded_fold.label_names)
    assert metrics["max_abs_err"] > 0  # really quantized
    assert metrics["voxel_agreement"] > 0.9 and metrics["min_dice"] > 0.5, metrics  # barely trained: loose
    lone = tmp_path / "lone.xml"
    shutil.copyfile(int8, lone)
    with pytest.raises(NNBridgeError, match=r"lone\.xml: its weights lone\.bin are missing beside it"):
        make_runner({"backend": "openvino", "path": lone})


def test_signature_follows_the_graph_not_the_weights(ir_files):
    plain, fewer, controlled, fp32 = (ir_files[k][0] for k in ("int8", "int8_fewer", "int8_ac", "fp32"))
    assert ir_files["int8"][1]["sha256"] != ir_files["int8_fewer"][1]["sha256"]  # other calibration, other values
    assert graph_signature(plain) == graph_signature(fewer)  # so a benchmark is reused across folds
    assert len({graph_signature(plain), graph_signature(controlled), graph_signature(fp32)}) == 3


def test_recorded_sha256_of_an_ir_covers_its_xml_and_bin(ir_files, tmp_path):
    """A later stage checks an IR against its quantize record: the .xml and the .bin (a swapped or
    truncated weights file is refused, naming it), as it checks an ONNX file."""
    from nnbridge.core.artifacts import verify_recorded
    from nnbridge.core.records import QuantizeRecord
    from nnbridge.core.runlog import sha256_file

    path, record = ir_files["int8"]
    for f in artifact_files(path):
        shutil.copyfile(f, tmp_path / f.name)
    copy = tmp_path / path.name
    QuantizeRecord.of({**record, "path": str(copy)}).write(tmp_path / "int8.json")
    typed = QuantizeRecord.read(tmp_path / "int8.json")
    assert (typed.kind, typed.precision, typed.size_bytes) == ("ir", "int8", record["size_bytes"])
    assert QuantizeRecord.of(ir_files["fp32"][1]).precision == "fp32"
    assert typed.sha256 == f"{sha256_file(copy)}+{sha256_file(copy.with_suffix('.bin'))}"
    assert verify_recorded(copy, tmp_path / "int8.json") == typed.sha256
    weights = copy.with_suffix(".bin")
    weights.write_bytes(weights.read_bytes()[:-4])
    with pytest.raises(NNBridgeError, match=r"int8\.bin: sha256 .* differs from .* that .*int8\.json states"):
        verify_recorded(copy, tmp_path / "int8.json")
    weights.unlink()
    with pytest.raises(NNBridgeError, match=r"int8\.bin: missing, but .*int8\.json records it"):
        verify_recorded(copy, tmp_path / "int8.json")


def test_inspect_reads_an_ir_and_refuses_a_bad_one_in_one_line(ir_files, tmp_path, capsys):
    from nnbridge.cli import main

    good = ir_files["int8"][0]
    (tmp_path / "empty.xml").write_bytes(b"")
    (tmp_path / "cut.xml").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (tmp_path / "other.xml").write_text("<config><a/></config>\n")
    cases = {"missing.xml": "no such file; give the path of an OpenVINO IR .xml file",
             "empty.xml": "empty file (0 bytes), not an OpenVINO IR; copy or write it again",
             "cut.xml": "not a readable OpenVINO IR .xml",
             "other.xml": "not an OpenVINO IR (no <net><layers>); write it again"}
    for name, message in cases.items():
        assert main(["inspect", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and err.startswith(f"nnbridge: error: {tmp_path / name}") and message in err, err
    assert main(["inspect", "--json", str(good)]) == 0
    assert json.loads(capsys.readouterr().out)["fold"] == "0"  # the provenance from the IR's rt_info


def test_accuracy_control_on_openvino_puts_layers_back_in_fp32(ir_files, exported):
    _, record = ir_files["int8_ac"]
    control = record["accuracy_control"]
    assert (control["runtime"], control["patches"], control["max_drop"]) == ("openvino", 2, 0.0)
    assert control["evaluations"] > 2 and 0 < control["min_dice"] <= 1
    # NNCF's first model, the fp32 one, is the reference: not run
    assert control["initial_model"].startswith("the fp32 model"), control
    # nothing INT8 is exact: the control put operations back in fp32, convolutions or MVN inputs
    assert control["fp32_modules"] or control["fp32_inputs"], control
    assert set(control["fp32_modules"]) <= set(record["coverage_openvino"]["float_compute_nodes"])
    norms = {m.rsplit(".", 1)[0] + ".norm" for m in record["coverage_openvino"]["float_compute_nodes"]
             + [n["module"] for n in record["coverage_openvino"]["compute_nodes"]]}
    assert set(control["fp32_inputs"]) <= norms  # PyTorch InstanceNorm modules beside the convolutions
    assert control["passed"] == (control["min_dice"] >= 1.0)
    with pytest.raises(NNBridgeError, match=r"accuracy_control runtime 'onnxruntime': an OpenVINO IR runs on openvino"):
        quantize_variant(exported[0] / "model.onnx", Path("x.xml"), np.zeros((1, 1, 8, 8, 8), np.float32),
                         {"method": "openvino_int8", "accuracy_control": {"runtime": "onnxruntime"}}, backends=BACKENDS)


def test_accuracy_control_decided_on_another_fold_runs_no_search(exported, patch_sets, ir_files, tmp_path):
    """The compute nodes another fold's control left in fp32 join the ignored scope: NNCF quantizes
    once (no candidate evaluated), the IR keeps them in fp32, and the record says whose choice it was."""
    out, _, _ = exported
    conv = [n for n in onnx.load(str(out / "model.onnx")).graph.node if n.op_type == "Conv"][1]
    settings = {"method": "openvino_int8", "accuracy_control": {"max_drop": 0.0, "patches": 2}}
    decided = {"fold": "0", "record": {"accuracy_control": {"fp32_nodes": [conv.name]}}}
    record = quantize_variant(out / "model.onnx", tmp_path / "d.xml", patch_sets[1], settings,
                              backends=BACKENDS, decided=decided)
    control = record["accuracy_control"]
    assert control["evaluations"] == 0 and control["decided_on_fold"] == "0", control
    assert conv.name in record["nodes_to_exclude"] and conv.name in control["fp32_nodes"]
    # nothing is left to decide on this fold: not checked here (validate gates the file)
    assert control["passed"] is None and control["min_dice"] is None and control["patches"] == 0, control
    assert "as decided on fold 0; not checked" in control["verdict"]
    # the deciding fold's own record, on the same graph and patches: the same IR graph (its
    # convolutions and the MVN it left on fp32 inputs), so one benchmark times both
    searched_path, searched = ir_files["int8_ac"]
    again = quantize_variant(out / "model.onnx", tmp_path / "again.xml", patch_sets[1], settings,
                             backends=BACKENDS, decided={"fold": "0", "record": searched})["accuracy_control"]
    assert graph_signature(tmp_path / "again.xml") == graph_signature(searched_path), (searched, again)
    assert (again["fp32_nodes"], again["fp32_input_nodes"]) == (searched["accuracy_control"]["fp32_nodes"],
                                                                searched["accuracy_control"]["fp32_input_nodes"])
    with pytest.raises(NNBridgeError, match=r"fold 1 quantize record names no nodes .* accuracy_control\.per_fold: true"):
        quantize_variant(out / "model.onnx", tmp_path / "e.xml", patch_sets[1], settings, backends=BACKENDS,
                         decided={"fold": "1", "record": {"accuracy_control": {}}})


def test_ir_methods_refuse_what_does_not_apply(exported, patch_sets, tmp_path):
    src, calibration = exported[0] / "model.onnx", patch_sets[1]
    with pytest.raises(NNBridgeError, match=r"x\.onnx: method 'openvino_int8' writes an OpenVINO IR .*name the output x\.xml"):
        quantize_variant(src, tmp_path / "x.onnx", calibration, {"method": "openvino_int8"}, backends=BACKENDS)
    with pytest.raises(NNBridgeError, match=r"method 'openvino_fp32' runs on OpenVINO; add openvino"):
        quantize_variant(src, tmp_path / "x.xml", calibration, {"method": "openvino_fp32"}, backends=("onnxruntime",))
    with pytest.raises(NNBridgeError, match=r"symmetric_activations work\(s\) with methods other than 'nncf' and"):
        quantize_variant(src, tmp_path / "x.xml", calibration, {"method": "openvino_int8", "symmetric_activations": True},
                         backends=BACKENDS)
    with pytest.raises(NNBridgeError, match=r"preset work\(s\) with the INT8 methods only.*openvino_fp32 has no settings"):
        quantize_variant(src, tmp_path / "x.xml", calibration, {"method": "openvino_fp32", "preset": "mixed"},
                         backends=BACKENDS)
    with pytest.raises(NNBridgeError, match=r"nodes_to_exclude: 'no_such_node' is no node of .*model\.onnx"):
        quantize_variant(src, tmp_path / "x.xml", calibration,
                         {"method": "openvino_int8", "nodes_to_exclude": ["no_such_node"]}, backends=BACKENDS)
    with pytest.raises(NNBridgeError, match=r"nncf quantization of .* refused"):
        quantize_variant(src, tmp_path / "x.xml", calibration,
                         {"method": "openvino_int8", "ignored_types": ["NoSuchOp"]}, backends=BACKENDS)
    assert not list(tmp_path.glob("x.*"))
    # an excluded ONNX node keeps every OpenVINO operation made of it in fp32, nothing else
    last_conv = [n.name for n in onnx.load(str(src)).graph.node if n.op_type == "Conv"][-1]
    record = quantize_variant(src, tmp_path / "ex.xml", calibration,
                              {"method": "openvino_int8", "nodes_to_exclude": [last_conv]}, backends=BACKENDS)
    convs = {n["node"]: n["int8"] for n in record["coverage_openvino"]["compute_nodes"] if n["op"] == "Conv"}
    assert convs.pop(last_conv) is False and all(convs.values())


def test_pipeline_plans_ir_files_on_openvino_only():
    config = {"export": {"torchscript": False}, "backends": ["onnxruntime", "openvino"],
              "quantize": {"ov8": {"method": "openvino_int8"}, "ov32": {"method": "openvino_fp32"},
                           "int8": {"method": "static"}},
              "bundle": {"variants": ["onnx_simplified", "ov8"], "default_variant": "ov8"},
              "case_parity": {"variants": ["ov8"]}}
    variants = fold_variants("results", FoldKey("D", "M", "0"), config)
    assert method_kind("openvino_int8") == method_kind("openvino_fp32") == "ir" and method_kind(None) == "onnx"
    assert variants["ov8@openvino"] == {"kind": "ir", "path": "results/D/M/fold_0/quantize/ov8.xml", "backend": "openvino",
                                        "record": "results/D/M/fold_0/quantize/ov8.json"}
    assert "ov8" not in variants and "ov32" not in variants and variants["ov32@openvino"]["kind"] == "ir"
    assert variants["int8"]["path"].endswith("int8.onnx") and "int8@openvino" in variants
    assert artifact_paths(variants)["ov32"] == "results/D/M/fold_0/quantize/ov32.xml"
    assert bundle_plan(config) == (["onnx_simplified", "ov8"], "ov8", ["ov8"])
    with pytest.raises(NNBridgeError, match=r"config quantize.ov8: method openvino_int8 runs on OpenVINO; add openvino"):
        fold_variants("results", FoldKey("D", "M", "0"), {**config, "backends": ["onnxruntime"]})


def test_benchmark_times_the_ir_pair_with_its_load_time(ir_files, exported, patch_sets):
    from nnbridge.bench.measure import benchmark_variants
    from nnbridge.bench.peak import peak_kinds

    out, _, _ = exported
    specs = {"onnx_simplified@openvino": {"backend": "openvino", "path": str(out / "model.onnx")},
             "fp32_ir@openvino": {"backend": "openvino", "path": str(ir_files["fp32"][0])},
             "int8_ir@openvino": {"backend": "openvino", "path": str(ir_files["int8"][0])}}
    results = benchmark_variants(specs, (1, 1, *patch_sets[2].shape[2:]), 1, 0, 2,
                                 baseline="onnx_simplified@openvino")["results"]
    for name, result in results.items():
        assert result["p50_ms"] > 0 and result["load_ms"] > 0 and result["inference_precision"] == "f32", name
        assert result["op_profile"], name
    assert results["int8_ir@openvino"]["file_size_bytes"] == ir_files["int8"][1]["size_bytes"]
    assert peak_kinds(specs) == {"int8_ir@openvino": "int8"}  # measured against the INT8 peak


@pytest.fixture(scope="module")
def ir_bundle(tiny_model, exported, patch_sets, ir_files, tmp_path_factory) -> Path:
    """validate → bundle as the pipeline does it: the IR variants gated on OpenVINO (with their
    Dice on the self-check set), shipped with ONNX beside them."""
    from nnbridge.bundle.build import build_from_pipeline
    from nnbridge.core.records import BenchmarkRecord, ParityRecord
    from nnbridge.models.nnunet import nnunet_source
    from nnbridge.validate.reference import validate_source

    out, _, _ = exported
    root = tmp_path_factory.mktemp("ir_bundle")
    model = str(out / "model.onnx")
    int8, fp32 = str(ir_files["int8"][0]), str(ir_files["fp32"][0])
    variants = {"onnx_fp32": {"kind": "onnx", "path": model},
                "int8_ir@openvino": {"kind": "ir", "path": int8, "backend": "openvino"},
                "fp32_ir@openvino": {"kind": "ir", "path": fp32, "backend": "openvino"}}
    tolerances = {"onnx_fp32": {"min_dice": 0.999}, "fp32_ir@openvino": {"max_rel_err": 1e-4, "min_dice": 0.999},
                  "int8_ir@openvino": {"min_dice": 0.5}}  # barely trained: flat logits
    parity = validate_source(nnunet_source(tiny_model.model_folder, "0"), patch_sets[2], variants, tolerances,
                             threads=2, selfcheck_out=root / "selfcheck.npz", selfcheck={"patches": 2, "max_kb": 64})
    ParityRecord.of(parity).write(root / "parity.json")
    BenchmarkRecord.of({"results": {"onnx_fp32": {"p50_ms": 10.0}, "int8_ir@openvino": {"p50_ms": 5.0},
                                    "fp32_ir@openvino": {"p50_ms": 9.0}}}).write(root / "benchmark.json")
    build_from_pipeline(root / "bundle", plans_file=tiny_model.model_folder / "plans.json",
                        dataset_file=tiny_model.model_folder / "dataset.json",
                        folds={"0": {"files": {"onnx_fp32": model, "int8_ir": int8, "fp32_ir": fp32},
                                     "parity": root / "parity.json", "benchmark": root / "benchmark.json",
                                     "selfcheck": root / "selfcheck.npz"}},
                        variant_names=["onnx_fp32", "int8_ir", "fp32_ir"], default_variant="int8_ir",
                        model="m", dataset="d")
    return root


def test_validate_gates_ir_variants_on_openvino_with_their_selfcheck(ir_bundle):
    parity = json.loads((ir_bundle / "parity.json").read_text())
    for name in ("int8_ir@openvino", "fp32_ir@openvino"):
        result = parity["variants"][name]
        assert result["passed"] and (result["kind"], result["backend"]) == ("ir", "openvino"), result
        assert name in parity["selfcheck"]["variants"]  # nnbridge verify's bounds
    assert parity["variants"]["fp32_ir@openvino"]["max_rel_err"] < 1e-4


def test_bundle_ships_both_files_and_predict_runs_the_ir(tiny_model, ir_bundle, tmp_path):
    from nnbridge.cli import main
    from nnbridge.predict.bundle import Bundle
    from nnbridge.predict.predictor import Predictor

    root = ir_bundle / "bundle"
    bundle = Bundle.load(root)
    entry = bundle.manifest["variants"]["int8_ir"]
    assert (entry["kind"], entry["files"], entry["weights"]) == ("ir", {"0": "int8_ir/fold_0.xml"},
                                                                {"0": "int8_ir/fold_0.bin"})
    assert entry["backend"] == "openvino" and entry["gates"] == {"0": {"openvino": True}}
    assert bundle.manifest["variants"]["onnx_fp32"]["kind"] == "onnx" and "weights" not in bundle.manifest["variants"]["onnx_fp32"]
    with pytest.raises(NNBridgeError, match=r"variant 'int8_ir' is an OpenVINO IR, it runs on OpenVINO only"):
        Predictor(bundle, variant="int8_ir", backend="onnxruntime", selfcheck=False)
    raw = next((tiny_model.model_folder.parents[2] / "raw").glob("Dataset*"))
    case = min((raw / "imagesTr").glob("*_0000.nii.gz"))
    name = case.name[: -len("_0000.nii.gz")]
    segs = {}
    for variant in ("onnx_fp32", "fp32_ir", "int8_ir"):
        predictor = Predictor(bundle, variant=variant, mirroring=False, selfcheck=False)
        assert predictor.backend == ("onnxruntime" if variant == "onnx_fp32" else "openvino")
        segs[variant] = predictor.predict_case(name, [case]).segmentation
    assert (segs["fp32_ir"] == segs["onnx_fp32"]).mean() > 0.9999  # the same fp32 graph
    assert (segs["int8_ir"] == segs["onnx_fp32"]).mean() > 0.9
    # nnbridge verify re-checks the IR variants on OpenVINO from the shipped self-check set
    assert main(["verify", "-m", str(root), "--variant", "int8_ir", "fp32_ir", "--threads", "2"]) == 0
    # a swapped weights file is refused before anything runs
    weights = root / "int8_ir" / "fold_0.bin"
    weights.write_bytes(b"\0" * 16)  # a copy of the quantize output (bundle files are never links)
    with pytest.raises(NNBridgeError, match=r"fold_0\.bin: sha256 differs from bundle\.json"):
        Bundle.load(root)


def test_nncf_compiles_get_the_jobs_threads():
    """NNCF compiles with OpenVINO's defaults (every core): inside ``openvino_threads`` a compile
    without a thread count gets the job's, one that gives its own keeps it, both compile entry
    points are covered, and outside the block OpenVINO's default is back."""
    import numpy as np
    import openvino as ov
    from openvino import opset13 as ops

    from nnbridge.runtime.ov import openvino_threads

    param = ops.parameter([1, 2, 8, 8, 8], np.float32)
    model = ov.Model([ops.relu(param)], [param])

    def threads(compiled):
        return int(compiled.get_property("INFERENCE_NUM_THREADS"))

    default = threads(ov.compile_model(model, "CPU"))
    with openvino_threads(1):
        assert threads(ov.compile_model(model, "CPU")) == 1
        assert threads(ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})) == 1
        assert threads(ov.Core().compile_model(model, "CPU", config={"INFERENCE_NUM_THREADS": 2})) == 2
    assert threads(ov.compile_model(model, "CPU")) == default
    with openvino_threads(0):  # no thread count asked: OpenVINO's own
        assert threads(ov.Core().compile_model(model, "CPU")) == default
