"""Running ONNX and TorchScript artifacts on batches of patches (shared by every stage).

Imports neither torch nor the export module at import time: ONNX Runtime runs (benchmarks,
deployment) stay torch-free.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .errors import NNBridgeError
from .onnxmeta import META_PREFIX, PRECISION_KEY


# ONNX Runtime settings the benchmark's search may choose (recorded, reused by predict): session
# options, and ``io_binding``, a way of running a session (see :func:`ort_runner`)
ORT_SETTINGS = ("optimization", "allow_spinning", "mem_pattern", "cpu_arena", "execution_mode", "io_binding")


def onnx_session(path: Path, threads: int = 0, *, optimization: str | None = None,
                 optimized_model_path: Path | None = None, profile_prefix: Path | None = None,
                 settings: dict | None = None):
    """A CPU ONNX Runtime session; ``threads=0`` lets ORT choose.

    ``optimization``: a ``GraphOptimizationLevel`` name (default: ORT's, ``ORT_ENABLE_ALL``);
    ``optimized_model_path``: where ORT writes the graph it runs; ``profile_prefix``: turn on
    ORT's profiler (``session.end_profiling()`` returns the JSON file). ``settings``: tuned
    options (keys of :data:`ORT_SETTINGS`: ``optimization``, ``allow_spinning`` of the intra-op
    threads, ``mem_pattern``, ``cpu_arena``, ``execution_mode`` (an ``ExecutionMode`` name;
    ``ORT_PARALLEL`` also gets ``threads`` inter-op threads), ``io_binding`` (used by
    :func:`ort_runner`, not by the session)).
    """
    import onnxruntime as ort  # noqa: PLC0415

    settings = dict(settings or {})
    unknown = set(settings) - set(ORT_SETTINGS)
    if unknown:
        raise ValueError(f"unknown ONNX Runtime settings {sorted(unknown)}; known: {ORT_SETTINGS}")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.log_severity_level = 3  # also hides the "hardware specific optimizations" warning
    optimization = optimization or settings.get("optimization")
    if optimization:
        options.graph_optimization_level = _ort_enum(ort.GraphOptimizationLevel, optimization, "optimization")
    if settings.get("execution_mode"):
        options.execution_mode = _ort_enum(ort.ExecutionMode, settings["execution_mode"], "execution_mode")
        if threads and options.execution_mode == ort.ExecutionMode.ORT_PARALLEL:
            options.inter_op_num_threads = threads  # independent nodes run side by side
    if "allow_spinning" in settings:
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if settings["allow_spinning"] else "0")
    if "mem_pattern" in settings:
        options.enable_mem_pattern = bool(settings["mem_pattern"])
    if "cpu_arena" in settings:
        options.enable_cpu_mem_arena = bool(settings["cpu_arena"])
    if optimized_model_path:
        options.optimized_model_filepath = str(optimized_model_path)
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = str(profile_prefix)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _ort_enum(enum: Any, name: str, key: str) -> Any:
    """The member ``name`` of an ONNX Runtime enum, or a one-line error naming the setting."""
    if not isinstance(name, str) or not hasattr(enum, name):
        known = [m for m in dir(enum) if m.startswith("ORT_")]
        raise ValueError(f"ONNX Runtime setting {key}={name!r} is not one of {known}")
    return getattr(enum, name)


def ort_runner(session: Any, settings: dict | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """A batch → first output callable on ``session``: with IO binding when ``settings`` say
    ``io_binding`` (the input bound from the array, the output bound to the CPU and copied out;
    a fresh binding per call, since the batch, and so the output's shape, may change), else
    ``session.run``. Both give the same numbers."""
    name = session.get_inputs()[0].name
    output = session.get_outputs()[0].name
    if not (settings or {}).get("io_binding"):
        return lambda batch: session.run([output], {name: batch})[0]

    def run_bound(batch: np.ndarray) -> np.ndarray:
        binding = session.io_binding()
        binding.bind_cpu_input(name, batch)
        binding.bind_output(output, "cpu")
        session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    return run_bound


def run_onnx(path: Path, patches: np.ndarray, threads: int = 0) -> np.ndarray:
    """Logits of an ONNX model for each patch (batch 1 at a time, as deployed)."""
    run = ort_runner(onnx_session(path, threads))
    outs = [run(patches[i : i + 1].astype(np.float32)) for i in range(len(patches))]
    return np.concatenate(outs).astype(np.float32)


ONNX_BACKENDS = ("onnxruntime", "openvino")
PRECISIONS = ("f32", "bf16")
NO_BF16_ENV = "NNBRIDGE_NO_BF16"  # set to 1: treat this CPU as one without native bf16


class PrecisionUnavailable(NNBridgeError):
    """The file asks for an inference precision this CPU does not run natively."""


def bf16_unavailable() -> str | None:
    """Why OpenVINO cannot run bf16 natively here (None when it can): the CPU plugin lists BF16
    among its optimization capabilities only on CPUs with AVX512_BF16 or AMX; elsewhere bf16 would
    be emulated, slower than fp32. ``NNBRIDGE_NO_BF16=1`` treats any CPU as one without it."""
    if os.environ.get(NO_BF16_ENV, "") not in ("", "0"):
        return f"bf16 turned off on this machine ({NO_BF16_ENV}={os.environ[NO_BF16_ENV]})"
    import openvino as ov  # noqa: PLC0415

    capabilities = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    if "BF16" not in capabilities:
        return ("this CPU has no native bf16 (AVX512_BF16 or AMX): OpenVINO lists only "
                f"{', '.join(capabilities)}")
    return None


def precision_unavailable(precision: str | None) -> str | None:
    """Why this machine cannot run ``precision`` natively (bf16 without native bf16), or None."""
    return bf16_unavailable() if precision == "bf16" else None


def file_precision(model: Any) -> str:
    """The inference precision an OpenVINO model read from an nnbridge ONNX file asks for (its
    ``nnbridge.inference_precision`` metadata, which OpenVINO keeps under rt_info
    ``framework``); ``f32`` when it asks for none."""
    key = ["framework", META_PREFIX + PRECISION_KEY]
    precision = model.get_rt_info(key).astype(str) if model.has_rt_info(key) else "f32"
    if precision not in PRECISIONS:
        raise NNBridgeError(f"inference precision {precision!r} in the file's metadata is not one of {PRECISIONS}; "
                            "re-export the variant with this nnbridge version")
    return precision


def openvino_model(path: Path, threads: int = 0, *, perf_count: bool = False, precision: str | None = None,
                   fallback: bool = False):
    """An OpenVINO CPU model compiled from the ONNX file, in latency mode with ``threads``. Kept
    exact — fp32 inference precision, which OpenVINO would otherwise lower to bf16 on CPUs that
    have it — unless ``precision`` (default: the file's own, :func:`file_precision`) asks for
    bf16. bf16 on a CPU without native bf16 raises :class:`PrecisionUnavailable`, or with
    ``fallback`` runs in fp32 (exact, so at least as accurate) and says so on stderr.
    ``perf_count`` turns on its per-layer performance counters; :func:`compiled_precision` says
    what the compiled model runs in."""
    import openvino as ov  # noqa: PLC0415

    core = ov.Core()
    model = core.read_model(str(path))
    precision = precision or file_precision(model)
    why = precision_unavailable(precision)
    if why and not fallback:
        raise PrecisionUnavailable(f"{path}: a bf16 variant, but {why}")
    if why:
        print(f"nnbridge: {Path(path).name} is a bf16 variant, but {why}; running it in fp32 (exact)",
              file=sys.stderr)
        precision = "f32"
    config: dict[str, object] = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}
    if perf_count:
        config["PERF_COUNT"] = True
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    return core.compile_model(model, "CPU", config)


def compiled_precision(compiled: Any) -> str:
    """The inference precision an OpenVINO compiled model really runs its floating-point layers
    in, as OpenVINO reports it: ``bf16`` or ``f32``."""
    hint = str(compiled.get_property("INFERENCE_PRECISION_HINT"))
    return "bf16" if "bf16" in hint or "bfloat16" in hint else "f32"


def run_openvino(path: Path, patches: np.ndarray, threads: int = 0) -> np.ndarray:
    """Logits of an ONNX model run by OpenVINO for each patch (batch 1 at a time)."""
    request = openvino_model(path, threads).create_infer_request()
    outs = [np.array(request.infer({0: patches[i : i + 1].astype(np.float32)})[0]) for i in range(len(patches))]
    return np.concatenate(outs).astype(np.float32)


def run_torchscript(path: Path, patches: np.ndarray) -> np.ndarray:
    """Logits of a TorchScript archive for each patch."""
    import torch  # noqa: PLC0415

    module = torch.jit.load(str(path), map_location="cpu").eval()
    with torch.no_grad():
        outs = [module(torch.from_numpy(patches[i : i + 1])).numpy() for i in range(len(patches))]
    return np.concatenate(outs).astype(np.float32)


def run_torch(network, patches: np.ndarray) -> np.ndarray:
    """Logits of an eager PyTorch network for each patch."""
    import torch  # noqa: PLC0415

    network.eval()
    with torch.no_grad():
        outs = [network(torch.from_numpy(patches[i : i + 1])).numpy() for i in range(len(patches))]
    return np.concatenate(outs).astype(np.float32)


def run_variant(kind: str, path: Path, patches: np.ndarray, threads: int = 0,
                backend: str = "onnxruntime") -> np.ndarray:
    """Dispatch on the artifact kind (``onnx`` or ``torchscript``) and, for ONNX, the backend."""
    if kind == "onnx":
        if backend == "openvino":
            return run_openvino(path, patches, threads)
        if backend != "onnxruntime":
            raise ValueError(f"unknown ONNX backend {backend!r}; use one of {ONNX_BACKENDS}")
        return run_onnx(path, patches, threads)
    if kind == "torchscript":
        return run_torchscript(path, patches)
    raise ValueError(f"unknown artifact kind {kind!r}")
