"""Precision that holds on the CPU it runs on (issue 19, items 1, 2 and 4): quantization defaults
decided by the CPU's INT8 features, gates decided on the worst case and recorded with the CPU
kind, and ``nnbridge verify`` re-checking a bundle's variants on this machine.

``NNBRIDGE_NO_VNNI=1`` makes any CPU one without INT8 dot products, so the paths of such CPUs run
everywhere; where the CPU really lacks them, the same assertions hold without the override.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from nnbridge.core.cpu import INT8_DOT_FLAGS, NO_VNNI_ENV, cpu_identity, cpu_kind, int8_dot
from nnbridge.quantize import quantize_variant
from nnbridge.quantize.cpudefaults import decision_features, quantize_cpu_params, resolve

X86_NO_DOT = {"arch": "x86", "avx2": True, "int8_dot": []}
X86_VNNI = {"arch": "x86", "avx2": True, "int8_dot": True}  # as the pipeline passes it
ARM = {"arch": "aarch64", "avx2": False, "int8_dot": []}


def _choices(choices: list[dict]) -> dict[str, dict]:
    return {c["setting"]: c for c in choices}


def test_no_vnni_override_reaches_every_consumer(monkeypatch):
    monkeypatch.delenv(NO_VNNI_ENV, raising=False)
    real = cpu_identity()
    monkeypatch.setenv(NO_VNNI_ENV, "1")
    forced = cpu_identity()
    assert not set(forced["isa"]) & set(INT8_DOT_FLAGS) and int8_dot() == []
    assert set(forced["isa"]) == set(real["isa"]) - set(INT8_DOT_FLAGS)  # nothing else changes
    assert forced["forced"] == [f"{NO_VNNI_ENV}=1"] and "host" not in cpu_kind()
    assert decision_features()["int8_dot"] == [] and decision_features()["forced"] == [f"{NO_VNNI_ENV}=1"]
    monkeypatch.setenv(NO_VNNI_ENV, "0")
    assert cpu_identity()["isa"] == real["isa"] and "forced" not in cpu_identity()


def test_defaults_follow_the_cpu_and_given_settings_win():
    static = {"method": "static", "reduce_range": None, "symmetric_activations": None}
    _, choices = resolve(static, X86_NO_DOT)
    got = _choices(choices)
    assert got["reduce_range"]["value"] is True and not got["reduce_range"]["given"]
    assert "saturating int16" in got["reduce_range"]["why"]
    assert got["symmetric_activations"]["value"] is False and got["weight_type"]["value"] == "QInt8"
    assert _choices(resolve(static, X86_VNNI)[1])["reduce_range"]["value"] is False
    arm = _choices(resolve(static, ARM)[1])
    assert arm["reduce_range"]["value"] is False and arm["symmetric_activations"]["value"] is True
    # the user's settings win, recorded as given
    settings, choices = resolve({**static, "reduce_range": False, "symmetric_activations": True}, X86_NO_DOT)
    assert settings["reduce_range"] is False and settings["symmetric_activations"] is True
    assert _choices(choices)["reduce_range"] == {"setting": "reduce_range", "value": False, "given": True,
                                                 "why": "given in the quantize entry"}
    assert _choices(resolve({"method": "dynamic"}, X86_NO_DOT)[1])["reduce_range"]["value"] is True
    no_avx2 = _choices(resolve(static, {**X86_NO_DOT, "avx2": False})[1])
    assert no_avx2["onnxruntime_int8"]["value"] == "not worth building"
    assert _choices(resolve({"method": "nncf"}, X86_NO_DOT)[1])["overflow_fix"]["value"] == "first_layer_only"
    assert _choices(resolve({"method": "nncf"}, X86_VNNI)[1])["overflow_fix"]["value"] == "disable"
    assert _choices(resolve({"method": "nncf", "overflow_fix": "enable"}, X86_VNNI)[1])["overflow_fix"]["given"]


def test_the_rule_params_hold_the_features_only_when_a_default_depends_on_them(monkeypatch):
    """The quantize rule's ``cpu`` param: the decision features when the entry leaves a CPU-decided
    setting out (so Snakemake reruns it on a CPU that differs in them), else {} (reused anywhere)."""
    given = {"method": "static", "reduce_range": True, "symmetric_activations": False}
    assert quantize_cpu_params(given) == {}
    assert quantize_cpu_params({"method": "fp16"}) == {} and quantize_cpu_params({"method": "bf16"}) == {}
    vnni_host = {"cpu": "x", "isa": ["avx2", "avx512f", "avx512_vnni"], "cpus": 2, "arch": "x86_64"}
    avx2_host = {**vnni_host, "isa": ["avx2"]}
    amx_host = {**vnni_host, "cpu": "y", "isa": ["avx2", "avx512f", "avx512_vnni", "amx_int8"], "cpus": 4}
    auto = {"method": "static", "reduce_range": None, "symmetric_activations": False}
    assert quantize_cpu_params(auto, vnni_host) == {"arch": "x86", "avx2": True, "int8_dot": True}
    assert quantize_cpu_params(auto, avx2_host) == {"arch": "x86", "avx2": True, "int8_dot": False}
    # another CPU model with INT8 dot products too: the same params, the file is reused
    assert quantize_cpu_params(auto, vnni_host) == quantize_cpu_params(auto, amx_host)
    assert quantize_cpu_params(auto, avx2_host) == quantize_cpu_params(auto, {**avx2_host, "cpu": "z", "cpus": 8})


def _int8_weight_range(path) -> int:
    """The largest |value| of the INT8 weights (conv weights quantized per channel) in a QDQ file."""
    model = onnx.load(str(path))
    values = [numpy_helper.to_array(i) for i in model.graph.initializer
              if i.data_type == onnx.TensorProto.INT8 and len(i.dims) >= 4]
    assert values
    return int(max(np.abs(v.astype(np.int16)).max() for v in values))


def test_static_int8_uses_7_bit_weights_without_vnni_unless_told(exported, patch_sets, tmp_path, monkeypatch):
    out, _, _ = exported
    calibration = patch_sets[1][:3]
    settings = {"method": "static", "format": "QDQ", "per_channel": True, "calibrate_method": "MinMax",
                "symmetric_activations": None, "reduce_range": None, "nodes_to_exclude": []}
    monkeypatch.setenv(NO_VNNI_ENV, "1")
    record = quantize_variant(out / "model.onnx", tmp_path / "auto.onnx", calibration, settings)
    choice = _choices(record["cpu"]["choices"])["reduce_range"]
    assert record["reduce_range"] is True and choice["value"] is True and not choice["given"]
    assert record["cpu"]["decided_for"]["int8_dot"] == [] and record["cpu"]["decided_by"] == "this machine"
    assert _int8_weight_range(tmp_path / "auto.onnx") <= 64  # ONNX Runtime's reduced INT8 range
    told = quantize_variant(out / "model.onnx", tmp_path / "told.onnx", calibration,
                            {**settings, "reduce_range": False})
    assert told["reduce_range"] is False and _choices(told["cpu"]["choices"])["reduce_range"]["given"]
    assert _int8_weight_range(tmp_path / "told.onnx") > 64
    # decided for the features the pipeline passes (the DAG host's), noted when this CPU differs
    monkeypatch.delenv(NO_VNNI_ENV)
    passed = quantize_variant(out / "model.onnx", tmp_path / "pipe.onnx", calibration, settings,
                              cpu=X86_VNNI)
    assert passed["reduce_range"] is False and passed["cpu"]["decided_by"].startswith("the pipeline")
    assert ("note" in passed["cpu"]) == (not int8_dot())
