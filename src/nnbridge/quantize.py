"""Quantized variants of exported ONNX models: INT8 static/dynamic and fp16 with onnxruntime,
INT8 by NNCF's post-training quantization (OpenVINO's quantizer, ONNX backend: still a QDQ file),
and bf16 (the fp32 graph, marked to run on OpenVINO in bf16 on CPUs that have it).

Static INT8 is calibrated on real patches of the fold's training cases. When a static variant
asks for it (``accuracy_aware``), the blocks whose fp32 version helps the label maps most
(measured by keeping one block at a time in fp32) are kept in fp32, round by round, until the
label maps agree with the fp32 model's on the calibration patches or the step budget is spent
(the validate stage then gates the result on held-out patches it never saw). Every INT8 variant gets an INT8 coverage
record (:mod:`nnbridge.coverage`).
"""

from __future__ import annotations

import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from .errors import NNBridgeError
from .models import sha256_file
from .onnxmeta import output_labels

FORMATS = ("QDQ", "QOperator")
CALIBRATION_METHODS = ("MinMax", "Entropy", "Percentile")
METHODS = ("static", "dynamic", "fp16", "nncf", "bf16")
NNCF_PRESETS = ("performance", "mixed")
NNCF_MODEL_TYPES = (None, "transformer")
NNCF_KEYS = ("preset", "subset_size", "fast_bias_correction", "model_type", "ignored_types",
             "accuracy_control")
# the static quantizer's settings at their schema defaults: other values mean nothing to NNCF
STATIC_DEFAULTS = {"format": "QDQ", "per_channel": True, "calibrate_method": "MinMax",
                   "symmetric_activations": False}


class PatchReader:
    """``onnxruntime.quantization.CalibrationDataReader`` over an array of patches (batch 1)."""

    def __init__(self, input_name: str, patches: np.ndarray) -> None:
        self.input_name = input_name
        self.patches = patches.astype(np.float32)
        self.index = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.index >= len(self.patches):
            return None
        item = {self.input_name: self.patches[self.index : self.index + 1]}
        self.index += 1
        return item

    def rewind(self) -> None:
        self.index = 0


def op_histogram(path: Path) -> dict[str, int]:
    """Operator counts of an ONNX graph."""
    model = onnx.load(str(path), load_external_data=False)
    return dict(sorted(Counter(node.op_type for node in model.graph.node).items()))


def _copy_metadata(src: Path, dst: Path) -> None:
    """The quantizers drop model metadata: carry the provenance of ``src`` over to ``dst``."""
    original = onnx.load(str(src), load_external_data=False)
    converted = onnx.load(str(dst))
    del converted.metadata_props[:]
    converted.metadata_props.extend(original.metadata_props)
    onnx.save(converted, str(dst))


def _file_record(dst: Path) -> dict[str, Any]:
    return {"ops": op_histogram(dst), "path": str(dst), "sha256": sha256_file(dst),
            "size_bytes": dst.stat().st_size}


def _choice(what: str, value: Any, allowed: tuple[Any, ...]) -> None:
    """Refuse a setting outside ``allowed`` in one line that names the choices."""
    if value not in allowed:
        raise NNBridgeError(f"{what} {value!r} unknown; use one of {allowed}")


def _paths(src: Path, dst: Path, calibration: np.ndarray | None = None) -> tuple[Path, Path]:
    """``src`` and ``dst`` as paths, ``dst``'s folder made; a calibrated method refuses an empty
    ``calibration``."""
    if calibration is not None and len(calibration) == 0:
        raise NNBridgeError("no calibration patches; raise quantize n_calibration_patches")
    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    return src, dst


def quantize_static_int8(
    src: Path,
    dst: Path,
    calibration: np.ndarray,
    *,
    quant_format: str = "QDQ",
    per_channel: bool = True,
    calibrate_method: str = "MinMax",
    symmetric_activations: bool = False,
    nodes_to_exclude: list[str] | None = None,
    calibration_cache: Path | None = None,
) -> dict[str, Any]:
    """Static INT8 quantization of ``src`` into ``dst``; returns what was done.

    ``calibration_cache``: a JSON file of tensor ranges; when it exists calibration is skipped
    (the accuracy-aware loop calibrates once and only rewrites the graph afterwards).
    """
    from onnxruntime.quantization import (  # noqa: PLC0415
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    _choice("quantize format", quant_format, FORMATS)
    _choice("calibrate_method", calibrate_method, CALIBRATION_METHODS)
    src, dst = _paths(src, dst, calibration)
    input_name = onnx.load(str(src), load_external_data=False).graph.input[0].name
    started = time.perf_counter()
    quantize_static(
        str(src),
        str(dst),
        PatchReader(input_name, calibration),
        quant_format=getattr(QuantFormat, quant_format),
        per_channel=per_channel,
        activation_type=QuantType.QInt8 if symmetric_activations else QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=getattr(CalibrationMethod, calibrate_method),
        nodes_to_exclude=list(nodes_to_exclude or []),
        extra_options={"ActivationSymmetric": symmetric_activations},
        **({"calibration_cache_path": str(calibration_cache)} if calibration_cache else {}),
    )
    _copy_metadata(src, dst)
    return {
        "method": "static",
        "format": quant_format,
        "per_channel": per_channel,
        "calibrate_method": calibrate_method,
        "symmetric_activations": symmetric_activations,
        "nodes_to_exclude": list(nodes_to_exclude or []),
        "n_calibration_patches": int(len(calibration)),
        "seconds": round(time.perf_counter() - started, 3),
        **_file_record(dst),
    }


def quantize_dynamic_int8(src: Path, dst: Path, *, per_channel: bool = True,
                          nodes_to_exclude: list[str] | None = None) -> dict[str, Any]:
    """Dynamic INT8: weights quantized ahead of time, activations at run time (no calibration)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic  # noqa: PLC0415

    src, dst = _paths(src, dst)
    started = time.perf_counter()
    quantize_dynamic(str(src), str(dst), per_channel=per_channel, weight_type=QuantType.QInt8,
                     nodes_to_exclude=list(nodes_to_exclude or []))
    _copy_metadata(src, dst)
    return {"method": "dynamic", "per_channel": per_channel,
            "nodes_to_exclude": list(nodes_to_exclude or []), "n_calibration_patches": 0,
            "seconds": round(time.perf_counter() - started, 3), **_file_record(dst)}


def convert_fp16(src: Path, dst: Path, *, nodes_to_exclude: list[str] | None = None) -> dict[str, Any]:
    """fp16 weights and compute with fp32 inputs and outputs (the deployed interface stays fp32)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16  # noqa: PLC0415

    src, dst = _paths(src, dst)
    started = time.perf_counter()
    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True,
                                     node_block_list=list(nodes_to_exclude or []) or None)
    onnx.save(model, str(dst))
    _copy_metadata(src, dst)
    return {"method": "fp16", "nodes_to_exclude": list(nodes_to_exclude or []),
            "n_calibration_patches": 0, "seconds": round(time.perf_counter() - started, 3),
            **_file_record(dst)}


def make_bf16(src: Path, dst: Path, input_shape: tuple[int, ...] | None = None) -> dict[str, Any]:
    """The bf16 variant: ``src`` unchanged (fp32 weights, same graph), marked by its metadata
    (``nnbridge.inference_precision = bf16``) to run on OpenVINO with bf16 inference precision,
    which CPUs with AVX512_BF16 or AMX execute natively (OpenVINO keeps what is not worth bf16 in
    fp32). No calibration; the validate stage gates it like every variant. With ``input_shape``,
    the record's ``coverage_openvino`` says which compute layers really run in bf16 here (None,
    with the reason, on a CPU without native bf16)."""
    from .coverage import openvino_coverage  # noqa: PLC0415
    from .onnxmeta import META_PREFIX, PRECISION_KEY  # noqa: PLC0415
    from .onnxrun import precision_unavailable  # noqa: PLC0415

    src, dst = _paths(src, dst)
    started = time.perf_counter()
    model = onnx.load(str(src))
    for prop in [p for p in model.metadata_props if p.key == META_PREFIX + PRECISION_KEY]:
        model.metadata_props.remove(prop)
    model.metadata_props.add(key=META_PREFIX + PRECISION_KEY, value="bf16")
    onnx.save(model, str(dst))
    unavailable = precision_unavailable("bf16")
    record: dict[str, Any] = {
        "method": "bf16", "inference_precision": "bf16", "runtime": "openvino", "n_calibration_patches": 0,
        "native_bf16_here": unavailable is None, **({"bf16_unavailable": unavailable} if unavailable else {}),
        "seconds": round(time.perf_counter() - started, 3), **_file_record(dst)}
    if input_shape is not None:
        record["coverage_openvino"] = (openvino_coverage(dst, src, input_shape, low="bf16")
                                       if unavailable is None else None)
    return record


def _import_nncf():
    """NNCF, imported only by the variants that use it (it imports torch when torch is there)."""
    try:
        import nncf  # noqa: PLC0415
    except ImportError as exc:
        raise NNBridgeError("quantize method 'nncf' needs NNCF: pip install 'nnbridge[openvino]' "
                            f"(or nncf; import failed: {exc})") from exc
    return nncf


def quantize_nncf_int8(src: Path, dst: Path, calibration: np.ndarray, *, preset: str = "performance",
                       subset_size: int | None = None, fast_bias_correction: bool = True,
                       model_type: str | None = None, nodes_to_exclude: list[str] | None = None,
                       ignored_types: list[str] | None = None,
                       accuracy_control: dict[str, Any] | None = None, threads: int = 1) -> dict[str, Any]:
    """INT8 of ``src`` by NNCF's post-training quantization (``nncf.quantize``, ONNX backend),
    calibrated on the same patches as the static variants; ``dst`` is a QDQ ONNX file.

    NNCF places quantizers as OpenVINO runs INT8: on the inputs of convolutions (and of the ops
    its hardware config lists), not on their outputs, so OpenVINO runs the convolutions in INT8
    while ONNX Runtime, which fuses only DequantizeLinear → Conv → QuantizeLinear, runs them in
    fp32 between the conversions (the coverage record shows both). ``preset``: ``performance``
    (symmetric activations) or ``mixed`` (asymmetric activations); ``subset_size``: patches used
    for the statistics (default all); ``fast_bias_correction``: NNCF's fast bias correction, or
    the slower full one; ``model_type``: ``transformer`` adds NNCF's transformer patterns;
    ``nodes_to_exclude`` (ONNX node names) and ``ignored_types`` (operator types, e.g.
    ``Concat``) form NNCF's ignored scope (a name or type not in the graph is an error).

    ``accuracy_control`` (``max_drop``, ``patches``, ``runtime``, ``max_iterations``): NNCF's
    ``quantize_with_accuracy_control``, whose metric here is the worst per-class Dice of the label
    maps against the fp32 model's on the first ``patches`` calibration patches, run on ``runtime``
    (OpenVINO by default: where NNCF's INT8 runs): NNCF ranks the quantized operations and puts
    the costliest back in fp32 until the Dice drop is at most ``max_drop``.
    """
    nncf = _import_nncf()
    _choice("nncf preset", preset, NNCF_PRESETS)
    _choice("nncf model_type", model_type, NNCF_MODEL_TYPES)
    src, dst = _paths(src, dst, calibration)
    model = onnx.load(str(src))
    input_name = model.graph.input[0].name
    patches = calibration.astype(np.float32)
    subset = min(int(subset_size or len(patches)), len(patches))
    names, types = list(nodes_to_exclude or []), list(ignored_types or [])
    options = {"preset": nncf.QuantizationPreset(preset), "subset_size": subset,
               "fast_bias_correction": fast_bias_correction,
               "model_type": nncf.ModelType(model_type) if model_type else None,
               "ignored_scope": nncf.IgnoredScope(names=names, types=types) if names or types else None}
    dataset = nncf.Dataset(list(patches), lambda patch: {input_name: patch[None]})
    control = _DiceControl(src, patches, accuracy_control, threads) if accuracy_control else None
    started = time.perf_counter()
    try:
        if control is None:
            quantized = nncf.quantize(model, dataset, **options)
        else:
            quantized = nncf.quantize_with_accuracy_control(
                model, dataset, nncf.Dataset(list(range(len(control.check)))), control.metric,
                max_drop=control.max_drop, **options,
                advanced_accuracy_restorer_parameters=nncf.AdvancedAccuracyRestorerParameters(
                    max_num_iterations=control.max_iterations))
    except nncf.ValidationError as exc:  # e.g. an ignored name or type the graph does not have
        raise NNBridgeError(f"nncf quantization of {src} refused: {exc}") from exc
    onnx.save(quantized, str(dst))
    _copy_metadata(src, dst)
    record = {"method": "nncf", "backend": "onnx", "nncf_version": nncf.__version__, "preset": preset,
              "fast_bias_correction": fast_bias_correction, "model_type": model_type,
              "nodes_to_exclude": names, "ignored_types": types, "subset_size": subset,
              "n_calibration_patches": int(len(patches)),
              "seconds": round(time.perf_counter() - started, 3), **_file_record(dst)}
    if control is not None:
        record["accuracy_control"] = control.summary(dst)
    return record


class _DiceControl:
    """The metric of NNCF's accuracy control: worst per-class Dice of a candidate's label maps
    against the fp32 model's (ONNX Runtime) on the first ``patches`` calibration patches, with the
    candidate run on ``runtime``."""

    def __init__(self, src: Path, calibration: np.ndarray, settings: dict[str, Any], threads: int) -> None:
        from .onnxrun import ONNX_BACKENDS, run_onnx  # noqa: PLC0415

        self.max_drop = float(settings.get("max_drop", 0.005))
        self.max_iterations = int(settings.get("max_iterations", 5))
        self.runtime = settings.get("runtime", "openvino")
        _choice("nncf accuracy_control runtime", self.runtime, ONNX_BACKENDS)
        self.check = calibration[: int(settings.get("patches", 8))]
        self.labels, self.region_based = output_labels(src)
        self.reference = run_onnx(src, self.check, threads)
        self.threads = threads
        self.evaluations = 0

    def compare(self, path: Path, items: list[int]) -> dict[str, Any]:
        from .onnxrun import run_variant  # noqa: PLC0415
        from .parity import compare_logits  # noqa: PLC0415

        logits = run_variant("onnx", path, self.check[items], self.threads, self.runtime)
        return compare_logits(self.reference[items], logits, self.labels, self.region_based)

    def metric(self, model: onnx.ModelProto, items) -> tuple[float, None]:
        """``validation_fn`` of ``nncf.quantize_with_accuracy_control`` (items: patch indices)."""
        self.evaluations += 1
        with tempfile.TemporaryDirectory(prefix="nnbridge-nncf-") as tmp:
            path = Path(tmp) / "candidate.onnx"
            onnx.save(model, str(path))
            return self.compare(path, list(items))["min_dice"], None

    def summary(self, quantized: Path) -> dict[str, Any]:
        """What the control did: the Dice of the file written and its compute nodes left in fp32."""
        from .coverage import COMPUTE_OPS, module_name  # noqa: PLC0415

        metrics = self.compare(quantized, list(range(len(self.check))))
        graph = onnx.load(str(quantized), load_external_data=False).graph
        dequantized = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
        # a quantized compute node takes dequantized weights (its input may come through a Concat)
        fp32 = [module_name(n.name, n.input[1]) for n in graph.node
                if n.op_type in COMPUTE_OPS and len(n.input) > 1 and n.input[1] not in dequantized]
        target = 1.0 - self.max_drop
        passed = metrics["min_dice"] >= target
        return {"max_drop": self.max_drop, "patches": int(len(self.check)), "runtime": self.runtime,
                "max_iterations": self.max_iterations, "evaluations": self.evaluations,
                "reference": "fp32 ONNX (ONNX Runtime) on the calibration patches",
                "dice": metrics["dice"], "min_dice": metrics["min_dice"], "fp32_modules": fp32,
                "passed": passed,
                "verdict": (f"Dice {metrics['min_dice']:.4f} {'>=' if passed else '<'} {target:g} on "
                            f"{self.runtime} with {len(fp32)} compute node(s) in fp32")}


def layer_blocks(model: onnx.ModelProto) -> list[dict[str, Any]]:
    """The graph cut into blocks: each compute node (Conv, ConvTranspose, MatMul, Gemm) with the
    nodes that follow it up to the next compute node (its norm, nonlinearity, concat...).

    A block is what accuracy-aware quantization keeps in fp32 as a unit: excluding a conv alone
    leaves its quantized activations, which is where most of the INT8 error arises.
    """
    from .coverage import COMPUTE_OPS, module_name  # noqa: PLC0415

    blocks: list[dict[str, Any]] = []
    for index, node in enumerate(model.graph.node):
        name = node.name or f"{node.op_type}_{index}"
        if node.op_type in COMPUTE_OPS:
            weight = node.input[1] if len(node.input) > 1 else ""
            blocks.append({"node": name, "module": module_name(name, weight), "op": node.op_type,
                           "input": node.input[0], "output": node.output[0], "nodes": [name]})
        elif blocks:
            blocks[-1]["nodes"].append(name)
            blocks[-1]["output"] = node.output[0]
    return blocks


def worst_agreement(path: Path, check: np.ndarray, reference: np.ndarray, labels: dict[int, str],
                    region_based: bool, threads: int, backends: tuple[str, ...]) -> dict[str, Any]:
    """The label maps of ``path`` against ``reference`` on every backend; the worst backend's
    metrics, with each backend's worst per-class Dice under ``min_dice_by_backend``."""
    from .onnxrun import run_variant  # noqa: PLC0415
    from .parity import compare_logits  # noqa: PLC0415

    worst: dict[str, Any] | None = None
    by_backend = {}
    for backend in backends:
        metrics = compare_logits(reference, run_variant("onnx", Path(path), check, threads, backend),
                                 labels, region_based)
        by_backend[backend] = metrics["min_dice"]
        if worst is None or metrics["min_dice"] < worst["min_dice"]:
            worst = metrics
    return {**worst, "min_dice_by_backend": by_backend}


def block_sensitivity(src: Path, calibration: np.ndarray, check: np.ndarray, reference: np.ndarray,
                      labels: dict[int, str], region_based: bool, settings: dict[str, Any],
                      excluded: list[str], cache: Path, threads: int,
                      backends: tuple[str, ...] = ("onnxruntime",)) -> list[dict[str, Any]]:
    """Quantize one block at a time the other way round: for every block (:func:`layer_blocks`)
    not yet excluded, keep it in fp32 on top of ``excluded`` and measure the label maps against
    fp32 on ``check`` (on every backend; the worst counts). Calibration runs once (``cache``);
    each trial only rewrites the graph.

    Sorted best first: highest per-class Dice, then lowest mean logit error.
    """
    trials = []
    with tempfile.TemporaryDirectory(prefix="nnbridge-trial-") as tmp:
        trial = Path(tmp) / "trial.onnx"
        for block in layer_blocks(onnx.load(str(src), load_external_data=False)):
            if block["node"] in excluded:
                continue
            _quantize_static(src, trial, calibration, settings, [*excluded, *block["nodes"]], cache)
            metrics = worst_agreement(trial, check, reference, labels, region_based, threads, backends)
            trials.append({**{k: block[k] for k in ("node", "module", "op", "nodes")},
                           "min_dice": metrics["min_dice"],
                           "mean_abs_err": round(metrics["mean_abs_err"], 6)})
    return sorted(trials, key=lambda t: (-t["min_dice"], t["mean_abs_err"]))


def _quick_latency_ms(path: Path, patch: np.ndarray, threads: int) -> float:
    """Median of 5 runs of one patch on ONNX Runtime after one warm-up: a rough number per step."""
    from .bench import measure  # noqa: PLC0415

    spec = {"backend": "onnxruntime", "path": str(path), "profile": False}
    return round(measure(spec, tuple(patch.shape), threads, warmup=1, repeats=5)["p50_ms"], 3)


def _quantize_static(src: Path, dst: Path, calibration: np.ndarray, settings: dict[str, Any],
                     excluded: list[str], cache: Path | None = None) -> dict[str, Any]:
    return quantize_static_int8(
        src, dst, calibration, quant_format=settings.get("format", "QDQ"),
        per_channel=settings.get("per_channel", True),
        calibrate_method=settings.get("calibrate_method", "MinMax"),
        symmetric_activations=settings.get("symmetric_activations", False),
        nodes_to_exclude=excluded, calibration_cache=cache)


def accuracy_aware_int8(src: Path, dst: Path, calibration: np.ndarray, settings: dict[str, Any],
                        *, threads: int = 1,
                        backends: tuple[str, ...] | list[str] = ("onnxruntime",)) -> dict[str, Any]:
    """Static INT8, then keep the costliest blocks in fp32 until the label maps match fp32's.

    ``settings["accuracy_aware"]``: ``min_dice`` (per class, INT8 vs the fp32 ONNX model on the
    calibration patches), ``max_steps`` (exclusion rounds), ``exclude_per_step`` (blocks kept in
    fp32 per round, chosen by :func:`block_sensitivity`), ``patches`` (how many calibration
    patches the checks use). The Dice counted is the worst over ``backends`` (the same QDQ graph
    gives different label maps on ONNX Runtime and OpenVINO); each round ranks the blocks on the
    runtime that disagrees most. Every step is recorded with the
    blocks it keeps in fp32 (ONNX nodes and PyTorch modules), its Dice and its latency.
    """
    from .onnxrun import run_onnx  # noqa: PLC0415

    aa = settings["accuracy_aware"]
    target = float(aa.get("min_dice", 0.99))
    max_steps = int(aa.get("max_steps", 3))
    per_step = int(aa.get("exclude_per_step", 1))
    check = calibration[: int(aa.get("patches", 8))].astype(np.float32)
    labels, region_based = output_labels(Path(src))
    reference = run_onnx(Path(src), check, threads)
    fp32_ms = _quick_latency_ms(Path(src), check[:1], threads)
    excluded = list(settings.get("nodes_to_exclude") or [])
    modules: list[str] = []
    steps: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="nnbridge-calib-") as tmp:
        cache = Path(tmp) / "calibration.json"
        for step in range(max_steps + 1):
            started = time.perf_counter()
            record = _quantize_static(src, dst, calibration, settings, excluded, cache)
            metrics = worst_agreement(Path(dst), check, reference, labels, region_based, threads, backends)
            steps.append({"step": step, "fp32_modules": list(modules), "n_fp32_nodes": len(excluded),
                          "dice": metrics["dice"], "min_dice": metrics["min_dice"],
                          "min_dice_by_backend": metrics["min_dice_by_backend"],
                          "mean_abs_err": metrics["mean_abs_err"],
                          "latency_ms": _quick_latency_ms(Path(dst), check[:1], threads)})
            if metrics["min_dice"] >= target or step == max_steps:
                break
            # rank the blocks on the runtime that disagrees most (one runtime per round keeps
            # the trials' cost that of a single-runtime loop)
            worst_backend = min(metrics["min_dice_by_backend"], key=metrics["min_dice_by_backend"].get)
            ranking = block_sensitivity(Path(src), calibration, check, reference, labels, region_based,
                                        settings, excluded, cache, threads, (worst_backend,))
            steps[-1]["ranked_on"] = worst_backend
            if not ranking:
                break
            for block in ranking[:per_step]:
                excluded.extend(n for n in block["nodes"] if n not in excluded)
                modules.append(block["module"])
            steps[-1]["trials"] = [{k: t[k] for k in ("module", "op", "min_dice", "mean_abs_err")}
                                   for t in ranking]
            steps[-1]["seconds"] = round(time.perf_counter() - started, 2)
    # the file on disk is the last step's; its record names every node kept in fp32
    passed = steps[-1]["min_dice"] >= target
    record["accuracy_aware"] = {
        "min_dice": target, "max_steps": max_steps, "exclude_per_step": per_step,
        "check_patches": int(len(check)), "reference": "fp32 ONNX on the calibration patches",
        "backends": list(backends),
        "fp32_latency_ms": fp32_ms, "steps": steps, "passed": passed,
        "fp32_modules": list(modules),
        "verdict": (f"Dice {steps[-1]['min_dice']:.4f} >= {target:g} with {len(modules)} block(s) "
                    f"in fp32" if passed else
                    f"budget of {max_steps} step(s) spent at Dice {steps[-1]['min_dice']:.4f} < {target:g}"),
    }
    return record


def quantize_variant(src: Path, dst: Path, calibration: np.ndarray, settings: dict[str, Any],
                     *, threads: int = 1, backends: tuple[str, ...] | list[str] = ("onnxruntime",)) -> dict[str, Any]:
    """Build one configured variant (the config's ``quantize.<name>`` entry) and its INT8 coverage.

    ``settings["method"]``: ``static`` (calibrated INT8; with ``accuracy_aware`` the layer
    exclusion loop), ``dynamic`` (INT8 weights, run-time activation ranges), ``fp16``, or
    ``nncf`` (calibrated INT8 by NNCF, :func:`quantize_nncf_int8`), or ``bf16`` (the fp32 graph,
    run by OpenVINO in bf16, :func:`make_bf16`).
    INT8 coverage is recorded for ONNX Runtime (``coverage``) and, when ``backends`` names it,
    OpenVINO (``coverage_openvino``).
    """
    from .coverage import int8_coverage, openvino_int8_coverage  # noqa: PLC0415

    method = settings.get("method", "static")
    _choice("quantize method", method, METHODS)
    excluded = settings.get("nodes_to_exclude") or []
    if settings.get("accuracy_aware") and method != "static":
        raise NNBridgeError(f"accuracy_aware works with method 'static' only, not {method!r}; "
                            "remove it from this quantize entry")
    if method == "nncf":
        misplaced = [k for k, v in STATIC_DEFAULTS.items() if settings.get(k, v) != v]
        where, hint = "with methods other than 'nncf'", " (nncf's preset chooses the activations' symmetry)"
    elif method == "bf16":
        misplaced = ([k for k, v in STATIC_DEFAULTS.items() if settings.get(k, v) != v]
                     + [key for key in NNCF_KEYS if key in settings])
        where, hint = "with the INT8 methods only", " (bf16 has no settings)"
    else:
        misplaced = [key for key in NNCF_KEYS if key in settings]
        where, hint = "with method 'nncf' only", ""
    if misplaced:
        raise NNBridgeError(f"{', '.join(misplaced)} work(s) {where}, not {method!r}; remove them "
                            f"from this quantize entry{hint}")
    if method == "fp16":
        return convert_fp16(src, dst, nodes_to_exclude=excluded)
    if method == "bf16":
        if excluded:
            raise NNBridgeError("nodes_to_exclude does not work with method 'bf16' (OpenVINO chooses per layer "
                                "what runs in bf16); remove it from this quantize entry")
        if "openvino" not in backends:
            raise NNBridgeError("method 'bf16' runs on OpenVINO; add openvino to the config's backends")
        return make_bf16(src, dst, tuple(calibration[:1].shape) if len(calibration) else None)
    if method == "dynamic":
        record = quantize_dynamic_int8(src, dst, per_channel=settings.get("per_channel", True),
                                       nodes_to_exclude=excluded)
    elif method == "nncf":
        record = quantize_nncf_int8(
            src, dst, calibration, preset=settings.get("preset", "performance"),
            subset_size=settings.get("subset_size"),
            fast_bias_correction=settings.get("fast_bias_correction", True),
            model_type=settings.get("model_type"), nodes_to_exclude=list(excluded),
            ignored_types=settings.get("ignored_types"), accuracy_control=settings.get("accuracy_control"),
            threads=threads)
    elif settings.get("accuracy_aware"):
        record = accuracy_aware_int8(src, dst, calibration, settings, threads=threads,
                                     backends=tuple(backends))
    else:
        record = _quantize_static(src, dst, calibration, settings, list(excluded))
    if len(calibration):
        shape = tuple(calibration[:1].shape)
        record["coverage"] = int8_coverage(Path(dst), Path(src), shape)
        if "openvino" in backends:
            record["coverage_openvino"] = openvino_int8_coverage(Path(dst), Path(src), shape)
    return record
