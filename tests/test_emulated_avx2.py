"""ONNX Runtime's and OpenVINO's INT8 kernels on an AVX2-only CPU, whatever CPU runs the suite (issue 19).

QEMU's user mode (``qemu-x86_64 -cpu Haswell``: AVX2, no AVX-512, no VNNI) runs this venv's own
interpreter and onnxruntime wheel, whose kernels choose their code path from the emulated CPUID:
the instructions an AVX2 machine runs, with their integer semantics, at a fraction of the speed
(seconds for these tiny models). On x86 without VNNI, ONNX Runtime's u8×s8 kernels sum pairs of
products in saturating int16 (``vpmaddubsw``): 8-bit weights can saturate, 7-bit ones
(``reduce_range``, what the quantize stage chooses without VNNI) cannot, so a 7-bit file gives
the same logits there as on a VNNI CPU. These tests show both on the real kernels; where the suite
runs on an AVX2-only CPU itself, the emulated run is that CPU's own path.

``make test`` installs qemu-user where apt-get runs as root; elsewhere these tests skip.
"""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from nnbridge.core.cpu import NO_VNNI_ENV, int8_dot
from nnbridge.quantize import quantize_variant

QEMU = shutil.which("qemu-x86_64")
pytestmark = pytest.mark.skipif(QEMU is None or platform.machine() != "x86_64",
                                reason="qemu-user is not installed (apt-get install qemu-user; make test "
                                       "installs it where apt-get runs as root)")

EMULATED_CPU = "Haswell"  # AVX2 and FMA; no AVX-512, no VNNI

RUNNER = """
import json, sys
import numpy as np
import onnxruntime as ort
from numpy._core._multiarray_umath import __cpu_features__ as cpu
x = np.load(sys.argv[1])
for i, path in enumerate(sys.argv[3:]):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    y = np.concatenate([session.run(None, {name: x[j : j + 1]})[0] for j in range(len(x))])
    np.save(f"{sys.argv[2]}_{i}.npy", y)
print(json.dumps({k: bool(cpu.get(k)) for k in ("AVX2", "AVX512F", "AVX512_VNNI", "AVX512VNNI")}))
"""


def run_onnx(paths: list[Path], x: np.ndarray, tmp_path: Path, *, emulated: bool,
             runner: str = RUNNER) -> tuple[list[np.ndarray], dict]:
    """Logits of each file on ``x`` (batch 1 at a time, one thread) from a fresh interpreter,
    under QEMU's AVX2-only CPU when ``emulated``; and the CPU features that interpreter saw.
    ``runner``: ONNX Runtime's (ONNX files) or :data:`OV_RUNNER` (OpenVINO IRs)."""
    tag = "emulated" if emulated else "native"
    script, inputs = tmp_path / "run_onnx.py", tmp_path / "x.npy"
    script.write_text(runner)
    np.save(inputs, x)
    cmd = ([QEMU, "-cpu", EMULATED_CPU] if emulated else []) + [sys.executable, str(script), str(inputs),
                                                                str(tmp_path / tag), *map(str, paths)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    features = json.loads(proc.stdout.strip().splitlines()[-1])
    return [np.load(tmp_path / f"{tag}_{i}.npy") for i in range(len(paths))], features


def saturating_conv(path: Path, weight: int) -> None:
    """A QDQ 3×3×3 convolution (4 → 2 channels, no padding, u8 output at scale 0.5) whose u8
    activations are all 255 and s8 weights all ``weight``: a pair of products is 2·255·weight, above int16's 32767 for
    ``weight`` 127 (8 bits), below it for 63 (ONNX Runtime's 7-bit reduce_range)."""
    inits = [numpy_helper.from_array(np.full((2, 4, 3, 3, 3), weight, np.int8), "wq"),
             numpy_helper.from_array(np.full(2, 1.0 / weight, np.float32), "ws"),
             numpy_helper.from_array(np.zeros(2, np.int8), "wz"),
             numpy_helper.from_array(np.array(1.0 / 255, np.float32), "xs"),
             numpy_helper.from_array(np.array(0, np.uint8), "xz"),
             numpy_helper.from_array(np.array(0.5, np.float32), "ys")]
    # quantized output too: ONNX Runtime fuses DQ-Conv-Q into one INT8 convolution (QLinearConv)
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
             helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], axis=0),
             helper.make_node("Conv", ["xd", "w"], ["c"]),
             helper.make_node("QuantizeLinear", ["c", "ys", "xz"], ["cq"]),
             helper.make_node("DequantizeLinear", ["cq", "ys", "xz"], ["y"])]
    graph = helper.make_graph(nodes, "saturate", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 3, 3, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 1, 1, 1])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_8_bit_weights_saturate_on_avx2_and_7_bit_ones_do_not(tmp_path):
    """The emulated CPU really lacks AVX-512 and VNNI, and its kernels really saturate: the 8-bit
    convolution loses about half its sum there (the exact sum, 108, everywhere with VNNI or
    when the weights have 7 bits)."""
    saturating_conv(tmp_path / "w8.onnx", 127)
    saturating_conv(tmp_path / "w7.onnx", 63)
    x = np.ones((1, 4, 3, 3, 3), np.float32)
    (w8, w7), features = run_onnx([tmp_path / "w8.onnx", tmp_path / "w7.onnx"], x, tmp_path, emulated=True)
    assert features["AVX2"] and not features["AVX512F"]
    assert not (features["AVX512_VNNI"] or features["AVX512VNNI"])
    np.testing.assert_allclose(w7, 108.0, rtol=1e-5)  # 4 channels x 27 taps x 1.0 x 1.0
    assert float(w8.max()) < 0.6 * 108, w8  # each pair clipped to 32767 of 64770
    (native8,), _ = run_onnx([tmp_path / "w8.onnx"], x, tmp_path, emulated=False)
    if int8_dot():  # this CPU sums exactly itself
        np.testing.assert_allclose(native8, 108.0, rtol=1e-5)


def test_the_quantize_stage_default_without_vnni_gives_the_same_logits_on_avx2(exported, patch_sets, tmp_path,
                                                                               monkeypatch):
    """The tiny nnU-Net quantized as the quantize stage does for a CPU without VNNI (7-bit
    weights, chosen by the CPU) computes bit for bit the same logits on the emulated AVX2 CPU as on
    this one: a gate decided here holds there. The same file with 8-bit s8 weights does not; with
    8-bit u8 weights (accuracy-aware INT8's last fallback there: ONNX Runtime's U8U8 kernels sum
    in int32) it does again."""
    out, _, _ = exported
    calibration, held = patch_sets[1][:3], patch_sets[2][:2]
    exact_here = bool(int8_dot())  # read before the override below hides this CPU's dot products
    settings = {"method": "static", "format": "QDQ", "per_channel": True, "calibrate_method": "MinMax",
                "symmetric_activations": None, "reduce_range": None, "nodes_to_exclude": []}
    monkeypatch.setenv(NO_VNNI_ENV, "1")
    record = quantize_variant(out / "model.onnx", tmp_path / "auto.onnx", calibration, settings)
    assert record["reduce_range"] is True
    quantize_variant(out / "model.onnx", tmp_path / "w8.onnx", calibration, {**settings, "reduce_range": False})
    u8 = quantize_variant(out / "model.onnx", tmp_path / "u8.onnx", calibration,
                          {**settings, "reduce_range": False, "weight_type": "u8"})
    assert u8["weight_type"] == "u8" and u8["symmetric_activations"] is False
    files = [tmp_path / "auto.onnx", tmp_path / "w8.onnx", tmp_path / "u8.onnx"]
    (auto_here, w8_here, u8_here), _ = run_onnx(files, held, tmp_path, emulated=False)
    (auto_avx2, w8_avx2, u8_avx2), _ = run_onnx(files, held, tmp_path, emulated=True)
    np.testing.assert_array_equal(auto_avx2, auto_here)
    np.testing.assert_array_equal(u8_avx2, u8_here)
    if exact_here:  # on a VNNI CPU the 8-bit file's sums are exact here only
        assert float(np.abs(w8_avx2 - w8_here).max()) > 0


OV_RUNNER = """
import json, sys
import numpy as np
import openvino as ov
from numpy._core._multiarray_umath import __cpu_features__ as cpu
x = np.load(sys.argv[1])
core = ov.Core()
for i, path in enumerate(sys.argv[3:]):
    model = core.compile_model(path, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": "1"})
    np.save(f"{sys.argv[2]}_{i}.npy", np.concatenate([model(x[j : j + 1])[0] for j in range(len(x))]))
print(json.dumps({k: bool(cpu.get(k)) for k in ("AVX2", "AVX512F", "AVX512_VNNI", "AVX512VNNI")}))
"""


def test_the_openvino_int8_default_without_vnni_gives_the_same_logits_on_avx2(exported, patch_sets, tmp_path,
                                                                              monkeypatch):
    """NNCF's OpenVINO INT8 as the quantize stage builds it for a CPU without VNNI (overflow fix
    on every layer: 7-bit weights, chosen by the CPU) computes bit for bit the same logits on the
    emulated AVX2 CPU as on this one. NNCF's own default (first layer only) does not where this
    CPU has VNNI: OpenVINO halves the other layers' 8-bit weights on AVX2 when they run."""
    out, _, _ = exported
    calibration, held = patch_sets[1][:3], patch_sets[2][:2]
    exact_here = bool(int8_dot())
    monkeypatch.setenv(NO_VNNI_ENV, "1")
    settings = {"method": "openvino_int8"}
    record = quantize_variant(out / "model.onnx", tmp_path / "auto.xml", calibration, settings,
                              backends=("openvino",))
    assert record["overflow_fix"] == "enable", record["cpu"]
    quantize_variant(out / "model.onnx", tmp_path / "first.xml", calibration,
                     {**settings, "overflow_fix": "first_layer_only"}, backends=("openvino",))
    files = [tmp_path / "auto.xml", tmp_path / "first.xml"]
    (auto_here, first_here), _ = run_onnx(files, held, tmp_path, emulated=False, runner=OV_RUNNER)
    (auto_avx2, first_avx2), _ = run_onnx(files, held, tmp_path, emulated=True, runner=OV_RUNNER)
    np.testing.assert_array_equal(auto_avx2, auto_here)
    if exact_here:  # 8-bit weights run as they are here only
        assert float(np.abs(first_avx2 - first_here).max()) > 0


def test_nnbridge_takes_the_emulated_cpu_for_what_cpuid_says(tmp_path, monkeypatch):
    """Under the emulator /proc/cpuinfo still lists the host's features; nnbridge goes by CPUID,
    as the runtimes' kernels do: an AVX2-only kind without INT8 dot products (so its verify
    results and gates are never taken for the host's kind), the hidden features named."""
    from nnbridge.core.cpu import cpu_identity, cpu_kind_key, describe_cpu

    monkeypatch.delenv(NO_VNNI_ENV, raising=False)  # this CPU's and the emulated one's own features
    script = tmp_path / "identity.py"
    script.write_text("import json\nfrom nnbridge.core.cpu import cpu_identity, int8_dot\n"
                      "print(json.dumps([cpu_identity(), int8_dot()]))\n")
    proc = subprocess.run([QEMU, "-cpu", EMULATED_CPU, sys.executable, str(script)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    emulated, dot = json.loads(proc.stdout.strip().splitlines()[-1])
    here = cpu_identity()
    assert emulated["isa"] == ["avx2"] and dot == []
    hidden = [f for f in here["isa"] if f != "avx2"]
    assert sorted(emulated.get("masked", [])) == sorted(hidden)
    assert "masked" not in here  # natively CPUID and /proc/cpuinfo agree
    if hidden:  # a host with more than AVX2: another kind, named as such
        assert cpu_kind_key(emulated) != cpu_kind_key(here)
        assert f"without {', '.join(sorted(hidden))} by CPUID" in describe_cpu(emulated)
