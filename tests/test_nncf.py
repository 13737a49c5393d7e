"""INT8 by NNCF post-training quantization (``method: nncf``), on the real tiny nnU-Net fold:
real NNCF, ONNX Runtime and OpenVINO."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import onnx
import pytest
import yaml

from nnbridge.core.config import validate_config
from nnbridge.core.errors import NNBridgeError
from nnbridge.core.metadata import read_metadata
from nnbridge.runtime import run_variant
from nnbridge.validate.metrics import compare_logits
from nnbridge.quantize import quantize_variant

pytest.importorskip("nncf")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def nncf_variant(exported, patch_sets, tmp_path_factory):
    out, _, _ = exported
    _, calibration, _ = patch_sets
    dst = tmp_path_factory.mktemp("nncf") / "int8_nncf.onnx"
    record = quantize_variant(out / "model.onnx", dst, calibration,
                              {"method": "nncf", "ignored_types": ["Concat"]},
                              backends=("onnxruntime", "openvino"))
    return dst, record


def test_nncf_variant_is_qdq_int8_with_provenance(nncf_variant, patch_sets, loaded_fold):
    dst, record = nncf_variant
    assert (record["method"], record["preset"], record["ignored_types"]) == ("nncf", "performance", ["Concat"])
    assert record["n_calibration_patches"] == record["subset_size"] == len(patch_sets[1])
    assert record["ops"]["QuantizeLinear"] > 0 and record["ops"]["DequantizeLinear"] > 0
    assert read_metadata(dst)["source_sha256"] == loaded_fold.checkpoint_sha256
    # NNCF quantizes convolution inputs, as OpenVINO runs INT8: every convolution runs in INT8 there
    ov = record["coverage_openvino"]
    assert ov["n_int8_compute_nodes"] == ov["n_compute_nodes"] > 0
    # ONNX Runtime fuses only DequantizeLinear -> Conv -> QuantizeLinear: it runs them in fp32
    assert record["coverage"]["n_int8_compute_nodes"] == 0


def test_nncf_variant_runs_on_both_runtimes_within_a_dice_gate(nncf_variant, exported, patch_sets,
                                                               loaded_fold):
    dst, _ = nncf_variant
    out, _, _ = exported
    _, _, heldout = patch_sets
    for backend in ("onnxruntime", "openvino"):
        ref = run_variant("onnx", out / "model.onnx", heldout, backend=backend)
        metrics = compare_logits(ref, run_variant("onnx", dst, heldout, backend=backend),
                                 loaded_fold.label_names)
        assert metrics["max_abs_err"] > 0, backend  # really quantized
        # the tiny model is barely trained (flat logits): a loose gate, as for the static variant
        assert metrics["voxel_agreement"] > 0.9 and metrics["min_dice"] > 0.5, (backend, metrics)


def test_nncf_options_and_refusals(exported, patch_sets, tmp_path):
    out, _, _ = exported
    _, calibration, _ = patch_sets
    last_conv = [n.name for n in onnx.load(str(out / "model.onnx")).graph.node if n.op_type == "Conv"][-1]
    record = quantize_variant(out / "model.onnx", tmp_path / "mixed.onnx", calibration,
                              {"method": "nncf", "preset": "mixed", "subset_size": 2,
                               "fast_bias_correction": False, "nodes_to_exclude": [last_conv]},
                              backends=("onnxruntime", "openvino"))
    assert (record["preset"], record["subset_size"], record["fast_bias_correction"]) == ("mixed", 2, False)
    convs = {n["node"]: n["int8"] for n in record["coverage_openvino"]["compute_nodes"] if n["op"] == "Conv"}
    assert convs.pop(last_conv) is False and all(convs.values())  # only the excluded one in fp32
    with pytest.raises(NNBridgeError, match="nncf quantization of .* refused"):
        quantize_variant(out / "model.onnx", tmp_path / "x.onnx", calibration,
                         {"method": "nncf", "ignored_types": ["NoSuchOp"]})
    with pytest.raises(NNBridgeError, match="preset work.* with methods 'nncf' and 'openvino_int8' only, not 'static'"):
        quantize_variant(out / "model.onnx", tmp_path / "x.onnx", calibration,
                         {"method": "static", "preset": "mixed"})
    with pytest.raises(NNBridgeError, match="symmetric_activations work.* other than 'nncf' and 'openvino_int8', not 'nncf'"):
        quantize_variant(out / "model.onnx", tmp_path / "x.onnx", calibration,
                         {"method": "nncf", "symmetric_activations": True, "format": "QDQ"})


def test_missing_nncf_is_one_clear_line(tmp_path):
    script = textwrap.dedent("""
        import sys
        import numpy as np

        class Blocker:
            def find_spec(self, name, path=None, target=None):
                if name == "nncf" or name.startswith("nncf."):
                    raise ImportError("No module named 'nncf'")

        sys.meta_path.insert(0, Blocker())
        from nnbridge.core.errors import NNBridgeError
        from nnbridge.quantize import quantize_variant
        try:
            quantize_variant("in.onnx", "out.onnx", np.zeros((1, 1, 4, 4, 4), np.float32), {"method": "nncf"})
        except NNBridgeError as exc:
            print(exc)
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    message = proc.stdout.strip()
    assert "\n" not in message and "pip install 'nnbridge[openvino]'" in message, message


def test_schema_takes_nncf_entries():
    config = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    config["quantize"]["q"] = {"method": "nncf", "preset": "mixed", "subset_size": 8, "model_type": None,
                               "fast_bias_correction": False, "ignored_types": ["Concat"],
                               "accuracy_control": {"max_drop": 0.01, "runtime": "onnxruntime"}}
    validate_config(config, ROOT / "workflow/schemas/config.schema.yaml")
    assert config["quantize"]["q"]["accuracy_control"] == {"max_drop": 0.01, "runtime": "onnxruntime",
                                                           "patches": 8, "ranking_patches": None, "max_iterations": 5,
                                                           "per_fold": False}
    config["quantize"]["q"]["preset"] = "fast"
    with pytest.raises(NNBridgeError, match=r"quantize\.q\.preset"):
        validate_config(config, ROOT / "workflow/schemas/config.schema.yaml")


def test_accuracy_control_puts_operations_back_in_fp32_by_dice(exported, patch_sets, tmp_path):
    out, _, _ = exported
    _, calibration, _ = patch_sets
    settings = {"method": "nncf", "accuracy_control": {"max_drop": 0.0, "patches": 2, "max_iterations": 1,
                                                       "ranking_patches": 1}}
    record = quantize_variant(out / "model.onnx", tmp_path / "ac.onnx", calibration, settings,
                              backends=("onnxruntime", "openvino"))
    control = record["accuracy_control"]
    assert (control["runtime"], control["patches"], control["max_drop"]) == ("openvino", 2, 0.0)
    assert control["evaluations"] > 2 and set(control["dice"]) and 0 < control["min_dice"] <= 1
    # NNCF's first model, the fp32 one, is the reference: not run
    assert control["initial_model"].startswith("the fp32 model"), control
    # the operations were ranked on one patch: the evaluations on both patches are only NNCF's
    # checks (INT8 model, the one iteration's candidate; the fp32 model is not run), every ranking
    # one took one
    assert control["ranking_patches"] == 1
    assert control["evaluations_by_patches"].get("2", 0) <= 2 and 3 < control["evaluations_by_patches"]["1"]
    # no INT8 model matches fp32 exactly: the control reverted operations, OpenVINO runs them in fp32
    assert control["fp32_modules"]
    assert set(control["fp32_modules"]) <= set(record["coverage_openvino"]["float_compute_nodes"])
    assert control["passed"] == (control["min_dice"] >= 1.0) and "on openvino with" in control["verdict"]


def test_dice_control_gives_each_patch_its_own_value(exported, patch_sets):
    """The accuracy control's metric returns, beside the pooled worst-class Dice, each patch's
    value alone: exactly what NNCF gets by calling it once per patch (it then skips that second
    pass over every validation at a real-size patch)."""
    import numpy as np
    import openvino as ov

    from nnbridge.quantize.nncf_ptq import DiceControl
    from nnbridge.quantize.static import quantize_static_int8

    out, _, _ = exported
    _, calibration, _ = patch_sets
    int8 = out.parent / "control_int8.onnx"
    quantize_static_int8(out / "model.onnx", int8, calibration, symmetric_activations=True)
    control = DiceControl(out / "model.onnx", calibration, {"patches": 4}, threads=1, runtimes=("openvino",))
    compiled = ov.Core().compile_model(str(int8), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    pooled, each = control.metric(compiled, [0, 1, 2, 3])
    assert control.evaluations == 1 and control.initial.startswith("quantized")  # an INT8 model runs
    alone = [control.metric(compiled, [i]) for i in range(4)]
    assert each == [value for value, _ in alone] and all(v == [value] for value, v in alone)
    assert 0 < pooled <= 1 and min(each) <= 1
    # the reference is the fp32 model (ONNX Runtime): OpenVINO's fp32 agrees on every patch
    fp32 = ov.Core().compile_model(str(out / "model.onnx"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    assert min(control.metric(fp32, [0, 1])[1]) >= 0.99


def test_dice_control_does_not_run_the_fp32_model_nncf_starts_from(exported, patch_sets):
    """NNCF validates the fp32 model first: it is the reference, so its metric is 1 without a run
    (NNCF's drop is then 1 - Dice, the verdict's target); an INT8 candidate still runs."""
    import openvino as ov

    from nnbridge.quantize.nncf_ptq import DiceControl, unquantized
    from nnbridge.quantize.static import quantize_static_int8

    out, _, _ = exported
    _, calibration, _ = patch_sets
    fp32 = ov.Core().compile_model(str(out / "model.onnx"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    int8_file = out.parent / "initial_int8.onnx"
    quantize_static_int8(out / "model.onnx", int8_file, calibration)
    int8 = ov.Core().compile_model(str(int8_file), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    assert unquantized(fp32) and not unquantized(int8)
    assert unquantized(onnx.load(str(out / "model.onnx"))) and not unquantized(onnx.load(str(int8_file)))
    control = DiceControl(out / "model.onnx", calibration, {"patches": 2}, threads=1, runtimes=("openvino",))
    # NNCF's probe of the metric's form (one patch), then its validation of the initial model
    assert control.metric(fp32, [0]) == (1.0, [1.0]) and control.metric(fp32, [0, 1]) == (1.0, [1.0, 1.0])
    assert control.evaluations == 0 and control.initial.startswith("the fp32 model")
    pooled, each = control.metric(int8, [0, 1])
    assert control.evaluations == 1 and len(each) == 2 and 0 < pooled <= 1
    # once a quantized model came, an unquantized one (every operation reverted) is measured
    assert control.metric(fp32, [0, 1])[0] >= 0.99 and control.evaluations == 2
