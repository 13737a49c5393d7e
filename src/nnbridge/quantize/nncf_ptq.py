"""INT8 by NNCF's post-training quantization (OpenVINO's quantizer, ONNX backend: a QDQ file), with
optional Dice-driven accuracy control."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ..core.artifacts import artifact_kind
from ..core.errors import NNBridgeError
from ..core.metadata import output_labels
from ..core.onnxgraph import COMPUTE_OPS, module_name
from ..runtime import ONNX_BACKENDS, compiled_runner, run_patches, run_variant
from ..runtime.ort import run_onnx
from ..validate.metrics import compare_logits
from .common import _choice, _copy_metadata, _file_record, _paths, ranking_patches


NNCF_PRESETS = ("performance", "mixed")


NNCF_MODEL_TYPES = (None, "transformer")


NNCF_KEYS = ("preset", "subset_size", "fast_bias_correction", "model_type", "ignored_types",
             "accuracy_control", "overflow_fix")


OVERFLOW_FIXES = ("enable", "first_layer_only", "disable")


def _import_nncf():
    """NNCF, imported only by the variants that use it (it imports torch when torch is there)."""
    try:
        import nncf  # noqa: PLC0415
    except ImportError as exc:
        raise NNBridgeError("quantize methods 'nncf' and 'openvino_int8' need NNCF: pip install 'nnbridge[openvino]' "
                            f"(or nncf; import failed: {exc})") from exc
    return nncf


def quantize_nncf_int8(src: Path, dst: Path, calibration: np.ndarray, *, preset: str = "performance",
                       subset_size: int | None = None, fast_bias_correction: bool = True,
                       model_type: str | None = None, nodes_to_exclude: list[str] | None = None,
                       ignored_types: list[str] | None = None,
                       accuracy_control: dict[str, Any] | None = None, threads: int = 1,
                       overflow_fix: str | None = None, decided: dict[str, Any] | None = None) -> dict[str, Any]:
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
    ``overflow_fix``: NNCF's half weight range against the int16 saturation of x86 CPUs without
    VNNI (``enable``, ``first_layer_only``, ``disable``; None: NNCF's default, first layer only).

    ``accuracy_control`` (``max_drop``, ``patches``, ``runtime``, ``max_iterations``): NNCF's
    ``quantize_with_accuracy_control``, whose metric here is the worst per-class Dice of the label
    maps against the fp32 model's on the first ``patches`` calibration patches, run on ``runtime``
    (OpenVINO by default: where NNCF's INT8 runs): NNCF ranks the quantized operations and puts
    the costliest back in fp32 until the Dice drop is at most ``max_drop``; it ranks them on
    ``ranking_patches`` of those patches (default: as many as hold two 128³ patches,
    :func:`.common.ranking_patches`), each candidate it keeps is checked on all. ``decided``
    (``{"fold", "record"}``: another fold's quantize record with accuracy control): the compute
    nodes that control left in fp32 there join the ignored scope and NNCF quantizes once, without
    a search of its own (:func:`decided_nodes`); the Dice check is still this fold's.
    """
    nncf = _import_nncf()
    src, dst = _paths(src, dst, calibration)
    model = onnx.load(str(src))
    input_name = model.graph.input[0].name
    patches = calibration.astype(np.float32)
    names, types = list(nodes_to_exclude or []), list(ignored_types or [])
    if decided is not None and accuracy_control:
        names += [n for n in decided_nodes(decided) if n not in names]
    options, advanced = nncf_parameters(nncf, len(patches), preset=preset, subset_size=subset_size,
                                        fast_bias_correction=fast_bias_correction, model_type=model_type,
                                        ignored_scope=nncf.IgnoredScope(names=names, types=types)
                                        if names or types else None, overflow_fix=overflow_fix)
    dataset = nncf.Dataset(list(patches), lambda patch: {input_name: patch[None]})
    control = DiceControl(src, patches, accuracy_control, threads) if accuracy_control else None
    started = time.perf_counter()
    quantized = run_nncf(nncf, src, model, dataset, options, advanced, None if decided else control)
    onnx.save(quantized, str(dst))
    _copy_metadata(src, dst)
    record = {"method": "nncf", "backend": "onnx", "nncf_version": nncf.__version__, "preset": preset,
              "fast_bias_correction": fast_bias_correction, "model_type": model_type,
              "nodes_to_exclude": names, "ignored_types": types, "subset_size": options["subset_size"],
              "overflow_fix": overflow_fix or "first_layer_only",
              "n_calibration_patches": int(len(patches)),
              "seconds": round(time.perf_counter() - started, 3), **_file_record(dst)}
    if control is not None:
        record["accuracy_control"] = control.summary(dst, decided_on=decided and str(decided["fold"]))
    return record


def decided_nodes(decided: dict[str, Any]) -> list[str]:
    """The ONNX nodes another fold's accuracy control left in fp32 (``decided``: ``{"fold": ...,
    "record": its quantize record}``). The folds of a model share their graph, so the search —
    the costly part at real size — runs once per model (``accuracy_control.per_fold: false``)."""
    control = decided["record"].get("accuracy_control") or {}
    if "fp32_nodes" not in control:
        raise NNBridgeError(f"the fold {decided['fold']} quantize record names no nodes its accuracy control left "
                            "in fp32 (another method, or an older nnbridge); rerun it (snakemake --forcerun "
                            "quantize quantize_ir), or set accuracy_control.per_fold: true")
    return list(control["fp32_nodes"])


def nncf_parameters(nncf, n_patches: int, *, preset: str, subset_size: int | None, fast_bias_correction: bool,
                    model_type: str | None, ignored_scope: Any, overflow_fix: str | None) -> tuple[dict[str, Any], Any]:
    """The keyword arguments of ``nncf.quantize`` (and of its accuracy-controlled form) for these
    settings, checked in one line each, and NNCF's advanced quantization parameters (None when
    its defaults apply)."""
    _choice("nncf preset", preset, NNCF_PRESETS)
    _choice("nncf model_type", model_type, NNCF_MODEL_TYPES)
    _choice("nncf overflow_fix", overflow_fix, (None, *OVERFLOW_FIXES))
    options = {"preset": nncf.QuantizationPreset(preset), "subset_size": min(int(subset_size or n_patches), n_patches),
               "fast_bias_correction": fast_bias_correction,
               "model_type": nncf.ModelType(model_type) if model_type else None, "ignored_scope": ignored_scope}
    advanced = (nncf.AdvancedQuantizationParameters(overflow_fix=nncf.OverflowFix(overflow_fix))
                if overflow_fix is not None else None)
    return options, advanced


def run_nncf(nncf, src: Path, model: Any, dataset: Any, options: dict[str, Any], advanced: Any,
             control: DiceControl | None) -> Any:
    """``nncf.quantize`` of ``model`` (an ONNX model or an OpenVINO one: NNCF picks its backend by
    the model's type), or with ``control`` ``nncf.quantize_with_accuracy_control`` driven by it."""
    try:
        if control is None:
            return nncf.quantize(model, dataset, **options, advanced_parameters=advanced)
        return nncf.quantize_with_accuracy_control(
            model, dataset, nncf.Dataset(list(range(len(control.check)))), control.metric,
            max_drop=control.max_drop, **options, advanced_quantization_parameters=advanced,
            advanced_accuracy_restorer_parameters=nncf.AdvancedAccuracyRestorerParameters(
                max_num_iterations=control.max_iterations, ranking_subset_size=control.ranking))
    except nncf.ValidationError as exc:  # e.g. an ignored name or type the graph does not have
        raise NNBridgeError(f"nncf quantization of {src} refused: {exc}") from exc


QUANTIZED_PRECISIONS = {"u8", "i8", "u4", "i4"}


def unquantized(model: Any) -> bool:
    """Whether a model NNCF hands the metric has no quantization at all: an ONNX model without
    Quantize/DequantizeLinear nodes, or a compiled OpenVINO model that runs no operation in an
    integer precision (its runtime graph's ``runtimePrecision``)."""
    if isinstance(model, onnx.ModelProto):
        return not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)
    for op in model.get_runtime_model().get_ops():
        info = op.get_rt_info()
        if "runtimePrecision" in info and info["runtimePrecision"].astype(str) in QUANTIZED_PRECISIONS:
            return False
    return True


class DiceControl:
    """The metric of NNCF's accuracy control: worst per-class Dice of a candidate's label maps
    against the fp32 model's (ONNX Runtime) on the first ``patches`` calibration patches, with the
    candidate run on ``runtime`` (``runtimes``: those the candidates can run on)."""

    def __init__(self, src: Path, calibration: np.ndarray, settings: dict[str, Any], threads: int,
                 runtimes: tuple[str, ...] = ONNX_BACKENDS) -> None:

        self.max_drop = float(settings.get("max_drop", 0.005))
        self.max_iterations = int(settings.get("max_iterations", 5))
        self.runtime = settings.get("runtime", "openvino")
        _choice("nncf accuracy_control runtime", self.runtime, runtimes)
        self.check = calibration[: int(settings.get("patches", 8))]
        # NNCF ranks the quantized operations on this many (those whose Dice dropped most)
        self.ranking = ranking_patches(self.check, settings.get("ranking_patches"))
        self.labels, self.region_based = output_labels(src)
        self.src = src
        self._reference: np.ndarray | None = None
        self.threads = threads
        self.evaluations = 0
        self.evaluated_patches: dict[int, int] = {}  # patches per evaluation -> evaluations
        self.initial: str | None = None  # how the model NNCF started from was measured
        self.quantized_seen = False  # until then an unquantized model is the one NNCF started from

    @property
    def reference(self) -> np.ndarray:
        """The fp32 model's logits on the check patches (ONNX Runtime), run when first needed: a
        fold that applies another fold's decision never needs them."""
        if self._reference is None:
            self._reference = run_onnx(self.src, self.check, self.threads)
        return self._reference

    def compare(self, path: Path, items: list[int]) -> dict[str, Any]:
        return self._compare(self._run(path, items), items)

    def _run(self, path: Path, items: list[int]) -> np.ndarray:
        return run_variant(artifact_kind(path), path, self.check[items], self.threads, self.runtime)

    def _compare(self, logits: np.ndarray, items: list[int]) -> dict[str, Any]:
        return compare_logits(self.reference[items], logits, self.labels, self.region_based)

    def metric(self, model: Any, items) -> tuple[float, list[float]]:
        """``validation_fn`` of ``nncf.quantize_with_accuracy_control`` (items: patch indices):
        ``model`` is an ONNX model (NNCF's ONNX backend), or the OpenVINO backend's candidate
        compiled by NNCF (fp32 inference precision, as nnbridge compiles), run as it is.

        Returns the worst-class Dice over ``items`` and, per item, the worst-class Dice of that
        patch alone: what NNCF would get by calling this once per patch (to choose the patches
        it ranks on), which at a 128³ patch cost a second run of every patch of each full
        validation (~40 s per fp32 validation on one thread, AMD EPYC Zen 4).

        NNCF first validates the model it was given (``quantize_with_accuracy_control`` in NNCF
        3.4, both backends: a one-patch probe of the metric's form, then every patch), the fp32
        one: until a quantized model comes, an unquantized one is that model, the reference, so
        its metric is 1 by definition and it is not run (at a 128³ patch ~50 s of OpenVINO fp32 on one thread). NNCF's drop is
        then ``1 - Dice`` of each candidate, the same target the verdict checks (``1 -
        max_drop``); measured, OpenVINO's fp32 against ONNX Runtime's would have moved it (0.998
        on the real-size random-weight model: NNCF would stop at Dice 0.993 where the verdict
        asks 0.995)."""
        items = list(items)
        if not self.quantized_seen:
            if unquantized(model):  # NNCF's mode probe (one patch), then its initial validation
                self.initial = "the fp32 model: the reference, metric 1 (not run)"
                return 1.0, [1.0] * len(items)
            self.quantized_seen = True
            self.initial = self.initial or "quantized (NNCF's first model was not the fp32 one)"
        self.evaluations += 1
        self.evaluated_patches[len(items)] = self.evaluated_patches.get(len(items), 0) + 1
        if not isinstance(model, onnx.ModelProto):
            logits = run_patches(compiled_runner(model), self.check[items])
        else:
            with tempfile.TemporaryDirectory(prefix="nnbridge-nncf-") as tmp:
                path = Path(tmp) / "candidate.onnx"
                onnx.save(model, str(path))
                logits = self._run(path, items)
        pooled = self._compare(logits, items)["min_dice"]
        if len(items) == 1:
            return pooled, [pooled]
        return pooled, [self._compare(logits[k : k + 1], [item])["min_dice"] for k, item in enumerate(items)]

    def summary(self, quantized: Path, fp32: list[str] | None = None,
                fp32_inputs: list[str] | None = None, fp32_nodes: list[str] | None = None,
                decided_on: str | None = None) -> dict[str, Any]:
        """What the control did: the Dice of the file written and its compute nodes left in fp32
        (``fp32``: the PyTorch modules of those, ``fp32_nodes`` their ONNX nodes, when the caller
        read them; else read off the QDQ file: compute nodes whose weights are not dequantized);
        ``fp32_inputs``: other modules whose inputs it left unquantized (an IR's MVN), when the
        caller read them; ``decided_on``: the fold whose control chose them (none ran here, and the
        file is not checked on the calibration patches: with nothing left to decide on this fold,
        ``validate`` gates it on the held-out ones; at a real-size 128³ network the check cost
        ~100 s per fold)."""

        metrics = ({"dice": {}, "min_dice": None} if decided_on else
                   self.compare(quantized, list(range(len(self.check)))))
        if fp32 is None:
            graph = onnx.load(str(quantized), load_external_data=False).graph
            dequantized = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
            # a quantized compute node takes dequantized weights (its input may come through a Concat)
            nodes = [n for n in graph.node
                     if n.op_type in COMPUTE_OPS and len(n.input) > 1 and n.input[1] not in dequantized]
            fp32, fp32_nodes = [module_name(n.name, n.input[1]) for n in nodes], [n.name for n in nodes]
        target = 1.0 - self.max_drop
        passed = None if decided_on else metrics["min_dice"] >= target
        nodes = (f"{len(fp32)} compute node(s) in fp32"
                 + (f", {len(fp32_inputs)} other operation(s) on fp32 inputs" if fp32_inputs else ""))
        return {"max_drop": self.max_drop, "patches": 0 if decided_on else int(len(self.check)),
                "ranking_patches": self.ranking,
                "runtime": self.runtime,
                "max_iterations": self.max_iterations, "evaluations": self.evaluations,
                **({"initial_model": self.initial} if self.initial else {}),
                "evaluations_by_patches": {str(k): v for k, v in sorted(self.evaluated_patches.items())},
                "reference": None if decided_on else "fp32 ONNX (ONNX Runtime) on the calibration patches",
                "dice": metrics["dice"], "min_dice": metrics["min_dice"], "fp32_modules": fp32,
                "fp32_nodes": list(fp32_nodes or []),
                **({"fp32_inputs": fp32_inputs} if fp32_inputs is not None else {}),
                **({"decided_on_fold": decided_on} if decided_on else {}),
                "passed": passed,
                "verdict": (f"{nodes} as decided on fold {decided_on}; not checked on this fold's calibration "
                            "patches: validate gates it on the held-out ones (a search on each fold's own "
                            "patches: accuracy_control.per_fold: true)" if decided_on else
                            f"Dice {metrics['min_dice']:.4f} {'>=' if passed else '<'} {target:g} on "
                            f"{self.runtime} with {nodes}")}
