"""The peak kernels: one large 3×3×3 convolution per precision, written as an ONNX file and run
by OpenVINO (oneDNN's best kernels on this CPU). :mod:`nnbridge.bench.peak` times them each in
a process of its own once per run (``machine_peak``); :func:`time_peak_kernel` times one in the
process that has just timed a network, so that a "% of peak" compares numbers from the same
minute (this VM's speed moves by up to 2× within an hour)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..core.errors import NNBridgeError
from ..runtime import make_runner
from ..runtime.timing import time_runner


# the convolutions that measure OpenVINO's practical peak: 3x3x3, channels in = out, cube side
PEAK_CONV_FP32 = (128, 32)  # 7.2 GFLOP


PEAK_CONV_INT8 = (256, 24)  # 49 GOP


# peak kind -> (convolution, OpenVINO inference precision, INT8 QDQ)
PEAK_KERNELS: dict[str, tuple[tuple[int, int], str, bool]] = {
    "fp32": (PEAK_CONV_FP32, "f32", False),
    "int8": (PEAK_CONV_INT8, "f32", True),
    "bf16": (PEAK_CONV_INT8, "bf16", False),
}


def peak_conv_onnx(path: Path, channels: int, side: int, *, int8: bool) -> int:
    """Write a one-convolution ONNX model (3×3×3, ``channels`` in and out, ``side``³ input, padded;
    as QDQ with INT8 weights and activations when ``int8``) and return its FLOPs per run."""

    rng = np.random.default_rng(0)
    shape = [1, channels, side, side, side]
    if int8:
        inits = [numpy_helper.from_array(rng.integers(-100, 100, (channels, channels, 3, 3, 3)).astype(np.int8), "wq"),
                 numpy_helper.from_array(np.full(channels, 0.01, np.float32), "ws"),
                 numpy_helper.from_array(np.zeros(channels, np.int8), "wz"),
                 numpy_helper.from_array(np.array(0.05, np.float32), "xs"),
                 numpy_helper.from_array(np.array(0, np.int8), "xz")]
        nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
                 helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
                 helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], axis=0),
                 helper.make_node("Conv", ["xd", "w"], ["y"], pads=[1] * 6)]
    else:
        inits = [numpy_helper.from_array((0.05 * rng.standard_normal((channels, channels, 3, 3, 3))).astype(np.float32), "w")]
        nodes = [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1] * 6)]
    graph = helper.make_graph(nodes, "peak", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return 2 * channels * channels * 27 * side**3


def kernel_method(kind: str, repeats: int, where: str = "") -> str:
    """How the peak of ``kind`` is measured, in words."""
    (channels, side), precision, int8 = PEAK_KERNELS[kind]
    what = "INT8 (QDQ)" if int8 else {"f32": "fp32"}.get(precision, precision)
    return (f"{what} 3x3x3 convolution {channels}->{channels} channels at {side}^3 on OpenVINO, "
            f"p50 of {repeats}{where}")


def time_peak_kernel(kind: str, threads: int, warmup: int = 2, repeats: int = 5) -> dict[str, Any]:
    """The peak kernel of ``kind`` (``fp32``, ``int8`` or ``bf16``) timed in this process with
    ``threads``: ``{kind, gflops, method}`` (GOP/s for INT8, multiply-add = 2), or ``{kind, method,
    error}`` when OpenVINO cannot run it here (not installed, no native bf16)."""
    (channels, side), precision, int8 = PEAK_KERNELS[kind]
    method = kernel_method(kind, repeats, ", in the same process right after the timing")
    try:
        with tempfile.TemporaryDirectory(prefix="nnbridge-peak-") as tmp:
            path = Path(tmp) / "conv.onnx"
            flops = peak_conv_onnx(path, channels, side, int8=int8)
            x = np.random.default_rng(0).standard_normal((1, channels, side, side, side)).astype(np.float32)
            run = make_runner({"backend": "openvino", "path": str(path), "precision": precision, "shape": x.shape},
                              threads)
            times = time_runner(run, x, warmup, repeats)
    except (ImportError, RuntimeError, NNBridgeError) as exc:  # the timing it accompanies stands without it
        return {"kind": kind, "method": method, "error": f"{type(exc).__name__}: {exc}".splitlines()[0]}
    return {"kind": kind, "method": method, "gflops": round(flops / (float(np.median(times)) / 1000) / 1e9, 1)}
