"""OpenVINO on the CPU: models read from an ONNX file or an OpenVINO IR (``.xml`` with its ``.bin``
beside it), compiled exact (fp32) unless a file asks for bf16, and whether this CPU runs bf16
natively.

Imports openvino (an optional extra) only when it is used."""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ..core.cpu import NO_BF16_ENV  # set to 1: treat this CPU as one without native bf16
from ..core.errors import NNBridgeError
from ..core.metadata import META_PREFIX, PRECISION_KEY


PRECISIONS = ("f32", "bf16")


def openvino_installed() -> bool:
    """Whether OpenVINO can be imported here (an optional dependency: ``nnbridge[openvino]``)."""
    return importlib.util.find_spec("openvino") is not None


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
    """The inference precision an OpenVINO model read from an nnbridge ONNX file or IR asks for
    (its ``nnbridge.inference_precision`` metadata, which OpenVINO keeps under rt_info
    ``framework``, where nnbridge writes an IR's); ``f32`` when it asks for none."""
    key = ["framework", META_PREFIX + PRECISION_KEY]
    precision = model.get_rt_info(key).astype(str) if model.has_rt_info(key) else "f32"
    if precision not in PRECISIONS:
        raise NNBridgeError(f"inference precision {precision!r} in the file's metadata is not one of {PRECISIONS}; "
                            "re-export the variant with this nnbridge version")
    return precision


def read_openvino(path: Path, *, precision: str | None = None,
                  fallback: bool = False) -> tuple[Any, Any, dict[str, object]]:
    """The OpenVINO core, the model read from the ONNX file or IR ``.xml`` (its weights in the
    ``.bin`` beside it) and the CPU configuration :func:`openvino_model` compiles it with:
    latency mode, kept exact — fp32 inference precision, which OpenVINO would otherwise lower to
    bf16 on CPUs that have it — unless ``precision`` (default: the file's own,
    :func:`file_precision`) asks for bf16. bf16 on a CPU without native bf16 raises
    :class:`PrecisionUnavailable`, or with ``fallback`` runs in fp32 (exact, so at least as
    accurate) and says so on stderr."""
    import openvino as ov  # noqa: PLC0415

    core = ov.Core()
    path = Path(path)
    if path.suffix.lower() == ".xml" and not path.with_suffix(".bin").is_file():
        raise NNBridgeError(f"{path}: its weights {path.with_suffix('.bin').name} are missing beside it; "
                            "copy the .xml and .bin of the IR together")
    model = core.read_model(str(path))
    precision = precision or file_precision(model)
    why = precision_unavailable(precision)
    if why and not fallback:
        raise PrecisionUnavailable(f"{path}: a bf16 variant, but {why}")
    if why:
        print(f"nnbridge: {Path(path).name} is a bf16 variant, but {why}; running it in fp32 (exact)",
              file=sys.stderr)
        precision = "f32"
    return core, model, {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}


def fix_input_shape(model: Any, shape: tuple[int, ...], path: Path) -> None:
    """Give ``model``'s input the static ``shape`` (batch included) before it is compiled.

    OpenVINO's CPU plugin then folds the graph's shape computations into constants instead of
    inferring every layer's shape at each request: measured, a MONAI SwinUNETR exported at 512²
    with dynamic spatial axes could not run at any size compiled dynamically (its shifted-window
    attention mask's Add failed OpenVINO's shape inference, ``Eltwise shape infer input shapes dim
    index: 3 mismatch``, OpenVINO 2025/26 CPU plugin), while the same file fixed to its size ran
    and matched ONNX Runtime. A graph that cannot take ``shape`` is refused naming it."""
    current = model.input(0).get_partial_shape()
    if current.is_static and tuple(current.to_shape()) == tuple(shape):
        return
    try:
        model.reshape({model.input(0): list(int(n) for n in shape)})
    except RuntimeError as exc:
        raise NNBridgeError(f"{path}: OpenVINO cannot give its input {current} the shape {list(shape)} "
                            f"({str(exc).strip().splitlines()[-1][:200]}); run it at the shape it was exported "
                            "for") from exc


def openvino_model(path: Path, threads: int = 0, *, perf_count: bool = False, precision: str | None = None,
                   fallback: bool = False, shape: tuple[int, ...] | None = None):
    """An OpenVINO CPU model compiled from the ONNX file or IR ``.xml`` as :func:`read_openvino`
    reads and configures it, with ``threads``; with ``shape``, for that input shape only
    (:func:`fix_input_shape`: what every caller that knows its shape asks for). ``perf_count``
    turns on its per-layer performance counters; :func:`compiled_precision` says what the
    compiled model runs in."""
    core, model, config = read_openvino(path, precision=precision, fallback=fallback)
    if shape is not None:
        fix_input_shape(model, shape, Path(path))
    if perf_count:
        config["PERF_COUNT"] = True
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    return core.compile_model(model, "CPU", config)


class OpenVINORunner:
    """A batch → logits callable over an OpenVINO model read once and compiled for each input
    shape it meets (:func:`fix_input_shape`; a sliding window meets one, and a smaller last
    batch): ``shape``, when given, is compiled at once, so that loading pays the compilation.
    ``precision`` says what the compiled model computes in (``bf16`` or ``f32``)."""

    def __init__(self, path: Path, threads: int = 0, *, precision: str | None = None, fallback: bool = False,
                 shape: tuple[int, ...] | None = None) -> None:
        self.path = Path(path)
        self._core, self._model, self._config = read_openvino(self.path, precision=precision, fallback=fallback)
        if threads:
            self._config["INFERENCE_NUM_THREADS"] = int(threads)
        self._requests: dict[tuple[int, ...], Any] = {}
        self._precision: str | None = None
        if shape is not None:
            self._request(tuple(shape))

    def _request(self, shape: tuple[int, ...]) -> Any:
        if shape not in self._requests:
            fix_input_shape(self._model, shape, self.path)
            compiled = self._core.compile_model(self._model, "CPU", dict(self._config))
            self._precision = compiled_precision(compiled)
            self._requests[shape] = compiled.create_infer_request()
        return self._requests[shape]

    @property
    def precision(self) -> str:
        if self._precision is None:  # nothing compiled yet: OpenVINO's answer for the file's own shape
            self._precision = compiled_precision(self._core.compile_model(self._model, "CPU", dict(self._config)))
        return self._precision

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return np.array(self._request(tuple(batch.shape)).infer({0: batch})[0])


def compiled_precision(compiled: Any) -> str:
    """The inference precision an OpenVINO compiled model really runs its floating-point layers
    in, as OpenVINO reports it: ``bf16`` or ``f32``."""
    hint = str(compiled.get_property("INFERENCE_PRECISION_HINT"))
    return "bf16" if "bf16" in hint or "bfloat16" in hint else "f32"


def run_openvino(path: Path, patches: np.ndarray, threads: int = 0) -> np.ndarray:
    """Logits of an ONNX model or IR run by OpenVINO for each patch (batch 1 at a time)."""
    run = OpenVINORunner(path, threads, shape=(1, *patches.shape[1:]))
    outs = [run(patches[i : i + 1].astype(np.float32)) for i in range(len(patches))]
    return np.concatenate(outs).astype(np.float32)


@contextmanager
def openvino_threads(threads: int) -> Iterator[None]:
    """Within this block, every OpenVINO model compiled without a thread count gets ``threads``
    (0: no change). NNCF compiles its own models (statistics collection, the accuracy control's
    candidates) with OpenVINO's defaults, every core, and has no setting for it: inside a
    one-thread pipeline job that took the core of the job beside it (at a 128³ patch the
    accuracy-aware search beside an NNCF one got 58 % of a core, AMD EPYC Zen 4, 2026-12-03).
    Patches ``openvino.compile_model`` and ``openvino.Core.compile_model`` for the block only."""
    if not threads:
        yield
        return
    import openvino as ov  # noqa: PLC0415 - openvino only where a model is compiled

    module_compile, core_compile = ov.compile_model, ov.Core.compile_model

    def with_threads(config: dict[str, Any] | None) -> dict[str, Any]:
        return {"INFERENCE_NUM_THREADS": int(threads), **(config or {})}

    def compile_model(model: Any, device_name: str | None = "AUTO", config: dict[str, Any] | None = None) -> Any:
        return module_compile(model, device_name, with_threads(config))

    def compile_on_core(self: Any, model: Any, device_name: str | None = None,
                        config: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        return core_compile(self, model, device_name, with_threads(config), **kwargs)

    ov.compile_model, ov.Core.compile_model = compile_model, compile_on_core
    try:
        yield
    finally:
        ov.compile_model, ov.Core.compile_model = module_compile, core_compile
