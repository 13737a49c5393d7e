"""Config validation and model discovery: defaults filled, bad input named in one line."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from nnbridge.core.config import validate_config
from nnbridge.core.errors import NNBridgeError
from nnbridge.pipeline.plan import FoldKey, discover_models, fold_artifacts, fold_variants, variant_tolerance

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow/schemas/config.schema.yaml"


def shipped_config() -> dict:
    return yaml.safe_load((ROOT / "config/config.yaml").read_text())


def test_shipped_config_is_valid_and_defaults_fill_in():
    config = validate_config(shipped_config(), SCHEMA)
    assert config["results"] == "results"
    assert config["demo"]["n_cases"] >= 6
    assert config["quantize"]["int8_static"]["nodes_to_exclude"] == []


def test_minimal_config_gets_every_default():
    config = validate_config({"models": [{"folder": "a/T__P__2d", "preprocessed": "p"}]}, SCHEMA)
    assert config["export"]["opset"] == 17
    assert config["benchmark"]["repeats"] == 20
    assert config["validate"]["default_tolerance"] == {"min_dice": 0.99, "min_case_dice": 0.98}
    assert config["validate"]["selfcheck"] == {"patches": 4, "max_kb": 256}
    assert config["quantize"] == {}
    assert config["models"][0]["trusted"] is False


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda c: c["export"].update(opsett=17), r"export: .*'opsett'.*allowed keys: fold_batchnorm, opset, torchscript"),
        (lambda c: c["benchmark"].update(repeats=0), r"benchmark\.repeats: 0 is less than"),
        (lambda c: c["models"][0].update(folds=["x"]), r"models\[0\]\.folds\[0\]"),
        (lambda c: c["quantize"]["int8_static"].update(format="QINT"), r"quantize\.int8_static\.format"),
        (lambda c: c.pop("models"), r"'models' is a required property"),
    ],
)
def test_bad_config_gives_one_line_cause(mutate, expected):
    config = copy.deepcopy(shipped_config())
    mutate(config)
    with pytest.raises(NNBridgeError, match=expected) as info:
        validate_config(config, SCHEMA)
    assert "\n" not in str(info.value)
    assert "config/README.md" in str(info.value)


def test_discover_models_finds_folds(tmp_path):
    folder = tmp_path / "Dataset001_X" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    for fold in ("0", "2", "all"):
        (folder / f"fold_{fold}").mkdir(parents=True)
        (folder / f"fold_{fold}" / "checkpoint_final.pth").write_bytes(b"x")
    (folder / "fold_1").mkdir()  # no checkpoint: not a fold to process
    (folder / "plans.json").write_text('{"configurations": {"3d_fullres": {}}}')
    (folder / "dataset.json").write_text("{}")
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "splits_final.json").write_text(json.dumps([{"train": [], "val": []}] * 5))
    models = discover_models([{"folder": str(folder), "preprocessed": str(tmp_path / "p")}])
    (model,) = models.values()
    assert model.folds == ("0", "2", "all")
    assert [k.label for k in model.fold_keys()][0] == "Dataset001_X/nnUNetTrainer__nnUNetPlans__3d_fullres/fold_0"


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({"folder": "x/notamodel", "preprocessed": "p"}, "<Trainer>__<Plans>__<configuration>"),
        ({"folder": "x/T__P__2d", "preprocessed": "p"}, "folder does not exist"),
        ({"folder": "x/T__P__2d", "folds": [0]}, "`images:` or `preprocessed:` missing"),
    ],
)
def test_discover_models_errors(entry, expected):
    with pytest.raises(NNBridgeError, match=expected):
        discover_models([entry])


def test_other_folds_get_the_shipped_variants_unless_comparison_asks_all():
    """A bundled model's reference fold gets every variant, its other folds the shipped ones
    (bundle.variants; their runtimes as on the reference fold); comparison.folds: all, or a model
    without a bundle, gives every fold every variant."""
    config = validate_config(shipped_config(), SCHEMA)
    assert config["comparison"]["folds"] == "reference"
    key = FoldKey("D", "T__P__3d_fullres", "1")
    everything = fold_variants("results", key, config)
    only = fold_artifacts(config, bundled=True, reference=False)
    assert set(only) == set(config["bundle"]["variants"]) == {"onnx_simplified", "int8_accurate", "bf16", "int8_ir"}
    other = fold_variants("results", key, config, only=only)
    assert set(other) == {"onnx_simplified", "int8_accurate", *(f"{n}@openvino" for n in only)}
    assert all(other[k] == everything[k] for k in other)
    assert fold_artifacts(config, bundled=True, reference=True) is None
    assert fold_artifacts(config, bundled=False, reference=False) is None
    config["comparison"]["folds"] = "all"
    assert fold_artifacts(config, bundled=True, reference=False) is None
    with pytest.raises(NNBridgeError, match=r"comparison\.folds"):
        validate_config({**shipped_config(), "comparison": {"folds": "every"}}, SCHEMA)


def test_fold_variants_follow_config():
    config = validate_config(shipped_config(), SCHEMA)
    key = FoldKey("D", "T__P__3d_fullres", "0")
    variants = fold_variants("results", key, config)
    onnx_names = ["onnx_fp32", "onnx_simplified", *config["quantize"]]
    ort_names = [n for n in onnx_names if n not in ("bf16", "int8_ir")]  # bf16 and the IR: OpenVINO only
    assert list(variants) == ["torchscript", *ort_names, *(f"{n}@openvino" for n in onnx_names)]
    assert variants["int8_ir@openvino"] == {"kind": "ir", "backend": "openvino",
                                            "path": "results/D/T__P__3d_fullres/fold_0/quantize/int8_ir.xml",
                                            "record": "results/D/T__P__3d_fullres/fold_0/quantize/int8_ir.json"}
    assert variants["int8_static"]["path"] == "results/D/T__P__3d_fullres/fold_0/quantize/int8_static.onnx"
    assert variants["int8_static"]["backend"] == "onnxruntime"
    assert variants["int8_static@openvino"] == {**variants["int8_static"], "backend": "openvino"}
    assert variants["bf16@openvino"]["path"] == "results/D/T__P__3d_fullres/fold_0/quantize/bf16.onnx"
    assert variants["torchscript"]["backend"] == "torchscript"
    config["export"]["torchscript"] = False
    config["backends"] = ["onnxruntime"]
    with pytest.raises(NNBridgeError, match=r"quantize.bf16: method bf16 runs on OpenVINO; add openvino to backends"):
        fold_variants("results", key, config)
    del config["quantize"]["bf16"]
    with pytest.raises(NNBridgeError, match=r"quantize.int8_ir: method openvino_int8 runs on OpenVINO; add openvino"):
        fold_variants("results", key, config)
    del config["quantize"]["int8_ir"]
    assert list(fold_variants("results", key, config)) == ort_names


def test_openvino_runs_are_gated_like_their_artifact():
    validate = {"tolerances": {"onnx_fp32": {"max_rel_err": 1e-4}, "fp16@openvino": {"min_dice": 0.9}},
                "default_tolerance": {"min_dice": 0.99}}
    assert variant_tolerance("onnx_fp32@openvino", validate) == {"max_rel_err": 1e-4}
    assert variant_tolerance("fp16@openvino", validate) == {"min_dice": 0.9}
    assert variant_tolerance("int8_x@openvino", validate) == {"min_dice": 0.99}


def test_backends_must_include_onnxruntime():
    config = copy.deepcopy(shipped_config())
    config["backends"] = ["openvino"]
    with pytest.raises(NNBridgeError, match=r"at backends: .*onnxruntime"):
        validate_config(config, SCHEMA)


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda c: c["bundle"].update(variants=["torchscript"]), r"bundle.variants: 'torchscript' is not an ONNX"),
        (lambda c: c["bundle"].update(default_variant="fp16"), r"bundle.default_variant: 'fp16' is not in"),
        (lambda c: c["case_parity"].update(variants=["fp16"]), r"case_parity.variants: 'fp16' is not in bundle"),
    ],
)
def test_bundle_and_case_parity_variants_are_checked(mutate, expected):
    from nnbridge.pipeline.plan import bundle_plan

    config = validate_config(shipped_config(), SCHEMA)
    assert bundle_plan(config) == (["onnx_simplified", "int8_accurate", "bf16", "int8_ir"], "onnx_simplified",
                                   ["onnx_simplified", "int8_accurate", "bf16", "int8_ir"])
    mutate(config)
    with pytest.raises(NNBridgeError, match=expected):
        bundle_plan(config)


def _conv_chain(path: Path, patch: list[int] | None, convs: int = 1, channels: int = 32) -> Path:
    """A graph of ``convs`` 3x3x3 convolutions to ``channels`` at full resolution (``patch``, else
    8^3 without nnbridge metadata): ``convs * channels`` activation elements per voxel."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, "d", "h", "w"])
    y = helper.make_tensor_value_info(f"y{convs - 1}", TensorProto.FLOAT, None)
    nodes, inits = [], []
    for k in range(convs):
        w = np.zeros((channels, 1 if k == 0 else channels, 3, 3, 3), np.float32)
        inits.append(numpy_helper.from_array(w, f"w{k}"))
        nodes.append(helper.make_node("Conv", ["x" if k == 0 else f"y{k - 1}", f"w{k}"], [f"y{k}"], pads=[1] * 6))
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits))
    if patch:
        model.metadata_props.add(key="nnbridge.patch_size", value=json.dumps(patch))
    onnx.save(model, str(path))
    return path


def test_activation_footprint_counts_what_a_forward_produces(tmp_path: Path) -> None:
    from nnbridge.core.onnxgraph import activation_footprint

    graph = _conv_chain(tmp_path / "g.onnx", [16, 16, 16], convs=3, channels=8)
    # 3 outputs of 8 x 16^3; weights 8*1*27 + 2 * 8*8*27 (the large ones read by shape only)
    assert activation_footprint(graph, (16, 16, 16)) == {"activations": 3 * 8 * 4096, "parameters": 216 + 3456}
    assert activation_footprint(graph, (32, 16, 8))["activations"] == 3 * 8 * 4096


def test_quantize_jobs_declare_memory_by_what_the_graph_holds(tmp_path: Path) -> None:
    """A quantize job's mem_mb (Slurm's --mem) follows its graph's activations at its patch: the
    demo's 40^3 keeps the 6 GB minimum; a graph of nnU-Net's default 3d_fullres footprint at 128^3
    (20 x 32 = 640 activation elements per voxel; the PlainConvUNet has 642) asks for more than its
    calibration was measured to take (on OpenVINO or ONNX Runtime), and one of the ResEnc-M preset's
    at the same patch (28 x 32: 896; measured 9.0 GB with 854) more still: by the patch alone both
    got 7.2 GB. A graph without nnbridge metadata gets the minimum."""
    import onnx

    from nnbridge.pipeline.plan import quantize_mem_mb
    from nnbridge.runtime.ov import openvino_installed

    assert quantize_mem_mb(_conv_chain(tmp_path / "demo.onnx", [40, 40, 40], convs=20)) == 6000
    plain = _conv_chain(tmp_path / "plain.onnx", [128, 128, 128], convs=20)
    resenc = _conv_chain(tmp_path / "resenc.onnx", [128, 128, 128], convs=28)
    # ONNX Runtime's own calibration (Entropy, or MinMax without OpenVINO) peaked at 11.5 GB at
    # 128^3, MinMax ranges collected on OpenVINO at 6.0 GB, on the ResEnc-M at 9.0 GB
    assert quantize_mem_mb(plain, calibration="Entropy") > 11_500
    assert (6_000 < quantize_mem_mb(plain) < 9_000) if openvino_installed() else quantize_mem_mb(plain) > 11_500
    if openvino_installed():
        assert quantize_mem_mb(resenc) > 9_000
    assert quantize_mem_mb(resenc, calibration="Entropy") > quantize_mem_mb(plain, calibration="Entropy")
    # a job that only runs the graph (static INT8 from the calibrate stage's ranges) needs the
    # minimum; NNCF's OpenVINO backend peaked at 5.1 GB at 128^3: more than that, far below calibration
    assert quantize_mem_mb(plain, "static") == quantize_mem_mb(plain, "bf16") == 6000
    assert 5_100 < quantize_mem_mb(plain, "openvino_int8") < 8_000
    # a graph whose tensors shape inference cannot size still gets what its patch alone asks
    unshaped = onnx.load(str(plain))
    unshaped.graph.node[0].op_type = "NotAnOnnxOp"
    onnx.save(unshaped, str(tmp_path / "unshaped.onnx"))
    assert quantize_mem_mb(tmp_path / "unshaped.onnx") > (7_000 if openvino_installed() else 11_500)
    assert quantize_mem_mb(_conv_chain(tmp_path / "bare.onnx", None)) == 6000
    assert quantize_mem_mb(tmp_path / "missing.onnx") == 6000
