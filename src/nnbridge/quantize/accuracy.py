"""Accuracy-aware static INT8: the blocks whose fp32 version helps the label maps most (measured by
keeping one block at a time in fp32) stay in fp32, round by round, until the label maps agree
with the fp32 model's on the calibration patches or the step budget is spent (the validate
stage then gates the result on held-out patches it never saw)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ..core.metadata import output_labels
from ..core.onnxgraph import COMPUTE_OPS, module_name
from ..runtime import make_runner, run_variant
from ..runtime.ort import run_onnx
from ..runtime.timing import quick_latency_ms
from ..validate.metrics import compare_logits
from .static import _quantize_static


def layer_blocks(model: onnx.ModelProto) -> list[dict[str, Any]]:
    """The graph cut into blocks: each compute node (Conv, ConvTranspose, MatMul, Gemm) with the
    nodes that follow it up to the next compute node (its norm, nonlinearity, concat...).

    A block is what accuracy-aware quantization keeps in fp32 as a unit: excluding a conv alone
    leaves its quantized activations, which is where most of the INT8 error arises.
    """

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
                      backends: tuple[str, ...] = ("onnxruntime",),
                      max_trials: int | None = None) -> list[dict[str, Any]]:
    """Quantize one block at a time the other way round: for every block (:func:`layer_blocks`)
    not yet excluded, keep it in fp32 on top of ``excluded`` and measure the label maps against
    fp32 on ``check`` (on every backend; the worst counts). Calibration runs once (``cache``);
    each trial only rewrites the graph.

    ``max_trials``: try only that many blocks, the ones nearest the output (the label maps
    depend on the last layers most directly; a transformer has one block per matrix multiply,
    each trial costs a quantization and a run). Sorted best first: highest per-class Dice, then
    lowest mean logit error.
    """
    trials = []
    blocks = [b for b in layer_blocks(onnx.load(str(src), load_external_data=False)) if b["node"] not in excluded]
    if max_trials:
        blocks = blocks[-int(max_trials):]
    with tempfile.TemporaryDirectory(prefix="nnbridge-trial-") as tmp:
        trial = Path(tmp) / "trial.onnx"
        for block in blocks:
            _quantize_static(src, trial, calibration, settings, [*excluded, *block["nodes"]], cache)
            metrics = worst_agreement(trial, check, reference, labels, region_based, threads, backends)
            trials.append({**{k: block[k] for k in ("node", "module", "op", "nodes")},
                           "min_dice": metrics["min_dice"],
                           "mean_abs_err": round(metrics["mean_abs_err"], 6)})
    return sorted(trials, key=lambda t: (-t["min_dice"], t["mean_abs_err"]))


def accuracy_aware_int8(src: Path, dst: Path, calibration: np.ndarray, settings: dict[str, Any],
                        *, threads: int = 1,
                        backends: tuple[str, ...] | list[str] = ("onnxruntime",)) -> dict[str, Any]:
    """Static INT8, then keep the costliest blocks in fp32 until the label maps match fp32's.

    ``settings["accuracy_aware"]``: ``min_dice`` (per class, INT8 vs the fp32 ONNX model on the
    calibration patches), ``max_steps`` (exclusion rounds), ``exclude_per_step`` (blocks kept in
    fp32 per round, chosen by :func:`block_sensitivity`; ``max_trials``: among that many blocks
    nearest the output, default all), ``patches`` (how many calibration
    patches the checks use). The Dice counted is the worst over ``backends`` (the same QDQ graph
    gives different label maps on ONNX Runtime and OpenVINO); each round ranks the blocks on the
    runtime that disagrees most. Every step is recorded with the
    blocks it keeps in fp32 (ONNX nodes and PyTorch modules), its Dice and its latency.
    """

    aa = settings["accuracy_aware"]
    target = float(aa.get("min_dice", 0.99))
    max_steps = int(aa.get("max_steps", 3))
    per_step = int(aa.get("exclude_per_step", 1))
    check = calibration[: int(aa.get("patches", 8))].astype(np.float32)
    labels, region_based = output_labels(Path(src))
    reference = run_onnx(Path(src), check, threads)
    fp32_ms = quick_latency_ms(make_runner({"backend": "onnxruntime", "path": src}, threads), check[:1].shape)
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
                          "latency_ms": quick_latency_ms(make_runner({"backend": "onnxruntime", "path": dst}, threads), check[:1].shape)})
            if metrics["min_dice"] >= target or step == max_steps:
                break
            # rank the blocks on the runtime that disagrees most (one runtime per round keeps
            # the trials' cost that of a single-runtime loop)
            worst_backend = min(metrics["min_dice_by_backend"], key=metrics["min_dice_by_backend"].get)
            ranking = block_sensitivity(Path(src), calibration, check, reference, labels, region_based,
                                        settings, excluded, cache, threads, (worst_backend,),
                                        aa.get("max_trials"))
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
        "max_trials": aa.get("max_trials"),
        "check_patches": int(len(check)), "reference": "fp32 ONNX on the calibration patches",
        "backends": list(backends),
        "fp32_latency_ms": fp32_ms, "steps": steps, "passed": passed,
        "fp32_modules": list(modules),
        "verdict": (f"Dice {steps[-1]['min_dice']:.4f} >= {target:g} with {len(modules)} block(s) "
                    f"in fp32" if passed else
                    f"budget of {max_steps} step(s) spent at Dice {steps[-1]['min_dice']:.4f} < {target:g}"),
    }
    return record
