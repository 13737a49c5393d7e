"""ONNX Runtime on the CPU: sessions with the settings the benchmark searches, and runners.

Imports onnxruntime only when a session is made."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


# ONNX Runtime settings the benchmark's search may choose (recorded, reused by predict): session
# options, and ``io_binding``, a way of running a session (see :func:`ort_runner`)
ORT_SETTINGS = ("optimization", "allow_spinning", "mem_pattern", "cpu_arena", "execution_mode", "io_binding")
# ``NNBRIDGE_ORT_SPINNING=0`` (or ``1``): whether the intra-op threads spin-wait for work in every
# session whose settings do not say (ONNX Runtime's default: they spin). Spinning threads take CPU
# time from whatever else runs on the cores: tests/conftest.py turns it off for its two workers
# on two cores (with OMP_WAIT_POLICY=PASSIVE for torch's OpenMP threads, ~15-30 % less CPU time).
SPINNING_ENV = "NNBRIDGE_ORT_SPINNING"


def onnx_session(path: Path | bytes, threads: int = 0, *, optimization: str | None = None,
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
    spinning = settings.get("allow_spinning")
    if spinning is None and os.environ.get(SPINNING_ENV, "") in ("0", "1"):
        spinning = os.environ[SPINNING_ENV] == "1"
    if spinning is not None:
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    if "mem_pattern" in settings:
        options.enable_mem_pattern = bool(settings["mem_pattern"])
    if "cpu_arena" in settings:
        options.enable_cpu_mem_arena = bool(settings["cpu_arena"])
    if optimized_model_path:
        options.optimized_model_filepath = str(optimized_model_path)
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = str(profile_prefix)
    # a path, or a serialized model (bytes)
    return ort.InferenceSession(path if isinstance(path, bytes) else str(path), options,
                                providers=["CPUExecutionProvider"])


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
