"""Accuracy-aware static INT8: the blocks whose fp32 version helps the label maps most (measured by
keeping one block at a time in fp32) stay in fp32, round by round, until the label maps agree
with the fp32 model's on the calibration patches or the step budget is spent (the validate
stage then gates the result on held-out patches it never saw)."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ..core.errors import NNBridgeError
from ..core.metadata import output_labels, read_metadata
from ..core.onnxgraph import COMPUTE_OPS, module_name
from ..runtime import make_runner, run_variant_timed
from ..runtime.ort import onnx_session
from ..runtime.timing import quick_latency_ms
from ..validate.metrics import compare_logits
from .common import ranking_patches
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
    metrics, with each backend's worst per-class Dice under ``min_dice_by_backend`` and its
    median milliseconds per patch under ``latency_ms_by_backend``."""

    worst: dict[str, Any] | None = None
    by_backend, latency = {}, {}
    for backend in backends:
        logits, latency[backend] = run_variant_timed("onnx", Path(path), check, threads, backend)
        metrics = compare_logits(reference, logits, labels, region_based)
        by_backend[backend] = metrics["min_dice"]
        if worst is None or metrics["min_dice"] < worst["min_dice"]:
            worst = metrics
    return {**worst, "min_dice_by_backend": by_backend, "latency_ms_by_backend": latency}


def _outputs_of(path: Path, names: list[str], x: np.ndarray, threads: int) -> dict[str, np.ndarray]:
    """The tensors ``names`` of an ONNX model on input ``x`` (made graph outputs; ONNX Runtime)."""
    model = onnx.load(str(path))
    present = {o for n in model.graph.node for o in n.output}
    wanted = [n for n in names if n in present]
    known = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None)
                              for n in wanted if n not in known)
    with tempfile.TemporaryDirectory(prefix="nnbridge-act-") as tmp:
        probe = Path(tmp) / "probe.onnx"
        onnx.save(model, str(probe))
        session = onnx_session(probe, threads)
        values = session.run(wanted, {session.get_inputs()[0].name: x})
    return dict(zip(wanted, values))


def error_growth(src: Path, quantized: Path, blocks: list[dict[str, Any]], patch: np.ndarray,
                 threads: int) -> dict[str, float]:
    """Block (its first node) → how much the INT8 model's relative error grows across it: the
    error of its output against fp32's, minus the error of the block before it, on one patch
    (ONNX Runtime). A cheap proxy of which blocks cost accuracy: one run of each model."""
    names = [b["output"] for b in blocks]
    fp32, int8 = _outputs_of(src, names, patch, threads), _outputs_of(quantized, names, patch, threads)
    growth, previous = {}, 0.0
    for block in blocks:
        name = block["output"]
        if name not in fp32 or name not in int8:
            continue
        f, q = fp32[name].astype(np.float64), int8[name].astype(np.float64)
        error = float(np.linalg.norm(q - f) / max(np.linalg.norm(f), 1e-12))
        growth[block["node"]] = error - previous
        previous = error
    return growth


def proxy_patch(patch: np.ndarray, src: Path, limit: int = 64) -> np.ndarray:
    """``patch`` (batch 1) cropped at its centre to at most ``limit`` voxels per spatial axis, in
    multiples of the network's total stride (the model's metadata): the proxy's cost stays small
    at large patch sizes."""
    stride = json.loads(read_metadata(Path(src)).get("stride_multiple", "null") or "null")
    spatial = patch.shape[2:]
    stride = stride or [1] * len(spatial)
    size = [min(s, max(m, (min(s, limit) // m) * m)) for s, m in zip(spatial, stride)]
    start = [(s - c) // 2 for s, c in zip(spatial, size)]
    return np.ascontiguousarray(patch[(slice(None), slice(None), *(slice(a, a + c) for a, c in zip(start, size)))])


def block_sensitivity(src: Path, calibration: np.ndarray, check: np.ndarray, reference: np.ndarray,
                      labels: dict[int, str], region_based: bool, settings: dict[str, Any],
                      excluded: list[str], cache: Path, threads: int,
                      backends: tuple[str, ...] = ("onnxruntime",),
                      only: set[str] | None = None) -> list[dict[str, Any]]:
    """Quantize one block at a time the other way round: for every block (:func:`layer_blocks`)
    not yet excluded, keep it in fp32 on top of ``excluded`` and measure the label maps against
    fp32 on ``check`` (on every backend; the worst counts). Calibration runs once (``cache``);
    each trial only rewrites the graph.

    ``only``: the blocks to try (default: every block not excluded).
    Sorted best first: highest per-class Dice, then lowest mean logit error.
    """
    trials = []
    with tempfile.TemporaryDirectory(prefix="nnbridge-trial-") as tmp:
        trial = Path(tmp) / "trial.onnx"
        blocks = [b for b in layer_blocks(onnx.load(str(src), load_external_data=False))
                  if b["node"] not in excluded and (only is None or b["node"] in only)]
        for index, block in enumerate(blocks, 1):
            print(f"nnbridge: accuracy-aware INT8: trial {index}/{len(blocks)} ({block['module']} in fp32)", flush=True)
            _quantize_static(src, trial, calibration, settings, [*excluded, *block["nodes"]], cache)
            metrics = worst_agreement(trial, check, reference, labels, region_based, threads, backends)
            trials.append({**{k: block[k] for k in ("node", "module", "op", "nodes")},
                           "min_dice": metrics["min_dice"],
                           "mean_abs_err": round(metrics["mean_abs_err"], 6)})
    return sorted(trials, key=lambda t: (-t["min_dice"], t["mean_abs_err"]))


def accuracy_aware_int8(src: Path, dst: Path, calibration: np.ndarray, settings: dict[str, Any],
                        *, threads: int = 1,
                        backends: tuple[str, ...] | list[str] = ("onnxruntime",),
                        decided: dict[str, Any] | None = None,
                        calibration_cache: Path | None = None,
                        u8_weights_fallback: bool = False) -> dict[str, Any]:
    """Static INT8, then keep the costliest blocks in fp32 until the label maps match fp32's.

    ``settings["accuracy_aware"]``: ``min_dice`` (per class, INT8 vs the fp32 ONNX model on the
    calibration patches), ``max_steps`` (exclusion rounds), ``exclude_per_step`` (blocks kept in
    fp32 per round, chosen by :func:`block_sensitivity`), ``patches`` (how many calibration
    patches the checks use), ``ranking_patches`` (how many of those each round's trials run on;
    default as many as hold two 128³ patches, :func:`.common.ranking_patches`: all of small
    patches, 2 at a real-size nnU-Net's 128³), ``candidates`` (per round, only this many blocks are tried: those
    across which the INT8 model's error against fp32 grows most, :func:`error_growth`; ``null``
    tries every block), ``min_gain`` (a round's best block must raise the worst-class Dice on the
    runtime that disagrees most by at least this much, else the loop stops: what costs the label
    maps is not one block in INT8 — e.g. the activation ranges on this CPU's kernels — and keeping
    blocks in fp32 would only cost speed), ``stop_out_of_reach`` (default true: the loop also stops
    when the rounds left cannot reach ``min_dice`` even if every block they keep in fp32 gained as
    much as this round's best one — greedy gains shrink round by round —, e.g. a drop of 0.15 with
    gains of 0.01 per block; a real-size search spends minutes per round). The Dice counted is the worst over ``backends`` (the
    same QDQ graph gives different label maps on ONNX Runtime and OpenVINO); each round ranks the
    blocks on the runtime that disagrees most. Every step is recorded with the
    blocks it keeps in fp32 (ONNX nodes and PyTorch modules), its Dice and its latency.

    ``asymmetric_fallback`` (default true): when the loop ends short of the target with symmetric
    activations, one more step quantizes the activations asymmetrically (zero points; the same
    calibration ranges and blocks in fp32) and the file keeps whichever of the two agrees better.
    Symmetric activations are faster on OpenVINO, but on some CPUs' INT8 kernels they cost the
    label maps more than any single block does (AMD Zen 4: the demo's nnU-Net fold 0 stalled at
    Dice 0.986 on OpenVINO where asymmetric static INT8 reaches 0.992).

    ``u8_weights_fallback`` (the caller's: 7-bit weights were chosen for a CPU without INT8 dot
    products, neither ``reduce_range`` nor ``weight_type`` given, and ``accuracy_aware.u8_weights_fallback``
    not false): when the file still ends short of the target with 7-bit s8 weights, one more step
    quantizes with full 8-bit u8 weights and asymmetric activations (the same ranges and blocks in
    fp32) and the better file stays. ONNX Runtime's U8U8 kernels sum in int32, so 8-bit weights do
    not saturate on CPUs without VNNI; OpenVINO runs those convolutions in fp32 (its benchmark and
    coverage show it). 7-bit weights' error is spread over every block, where no single block kept
    in fp32 returns it (demo nnU-Net fold 0 on QEMU's AVX2-only Haswell, AMD EPYC Zen 4 host: held-out worst-class Dice
    0.9885 with 7-bit s8 weights, 0.9909 with 8-bit u8 ones, 0.9607 with 8-bit s8 ones).

    ``decided``: what another fold of the same network decided (``{"fold": ..., "record": its
    quantize record}``): this fold starts where that loop ended (its blocks in fp32, its
    activations) and runs no rounds of its own. With symmetric activations it quantizes once and
    checks (and tries asymmetric ones when that check misses); when nothing is left to decide here
    (asymmetric activations, or no fallback) it quantizes once and does not check on the
    calibration patches: ``validate`` gates every fold's file on its held-out patches anyway (at a
    real-size 128³ network the check cost ~150 s per fold, for nothing it decided). The folds of a
    model share their graph (the same node names), so the search, the costly part at real size,
    runs once per model.
    ``calibration_cache``: the calibration ranges' file (ONNX Runtime's cache; calibrated into it
    when it does not exist), else one of this call's own.
    """

    aa = settings["accuracy_aware"]
    target = float(aa.get("min_dice", 0.99))
    max_steps = int(aa.get("max_steps", 3))
    per_step = int(aa.get("exclude_per_step", 1))
    candidates = aa.get("candidates", 6)
    min_gain = float(aa.get("min_gain", 0.001))
    out_of_reach = bool(aa.get("stop_out_of_reach", True))
    fallback = bool(aa.get("asymmetric_fallback", True)) and bool(settings.get("symmetric_activations"))
    stalled = None
    check = calibration[: int(aa.get("patches", 8))].astype(np.float32)
    ranked_on = ranking_patches(check, aa.get("ranking_patches"))  # the trials' patches: check[:ranked_on]
    labels, region_based = output_labels(Path(src))
    excluded = list(settings.get("nodes_to_exclude") or [])
    modules: list[str] = []
    asked_symmetric = bool(settings.get("symmetric_activations"))
    if decided is not None:
        excluded, modules, settings, max_steps = _start_from(decided, excluded, settings, src)
        fallback = bool(aa.get("asymmetric_fallback", True)) and bool(settings.get("symmetric_activations"))
    checked = decided is None or fallback  # a decided fold with nothing left to decide is not checked here
    if checked:
        # the latencies come from the check's own runs (at a 128³ patch a separate timing cost
        # ~15 s per step on one thread)
        reference, fp32_ms = run_variant_timed("onnx", Path(src), check, threads, "onnxruntime")
    else:
        check, ranked_on, fp32_ms = check[:0], 0, None
    steps: list[dict[str, Any]] = []
    worse: list[tuple[str, dict[str, Any]]] = []  # the fallback steps that did not agree better, by what they changed
    with tempfile.TemporaryDirectory(prefix="nnbridge-calib-") as tmp:
        cache = Path(calibration_cache) if calibration_cache else Path(tmp) / "calibration.json"

        def quantize_and_check(step_settings: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
            """``dst`` quantized with ``step_settings`` and the blocks excluded so far, checked
            against fp32 unless this fold checks nothing (``checked``): (quantize record, the
            step's record)."""
            quantized = _quantize_static(src, dst, calibration, step_settings, excluded, cache)
            step = {"step": len(steps), "fp32_modules": list(modules), "n_fp32_nodes": len(excluded),
                    "symmetric_activations": bool(step_settings.get("symmetric_activations")),
                    "weight_type": step_settings.get("weight_type") or "s8",
                    "reduce_range": bool(step_settings.get("reduce_range"))}
            if not checked:
                return quantized, {**step, "dice": {}, "min_dice": None, "min_dice_by_backend": {},
                                   "mean_abs_err": None, "latency_ms": None}
            metrics = worst_agreement(Path(dst), check, reference, labels, region_based, threads, backends)
            return quantized, {
                **step, "dice": metrics["dice"], "min_dice": metrics["min_dice"],
                "min_dice_by_backend": metrics["min_dice_by_backend"], "mean_abs_err": metrics["mean_abs_err"],
                "latency_ms": metrics["latency_ms_by_backend"].get("onnxruntime")
                or quick_latency_ms(make_runner({"backend": "onnxruntime", "path": dst}, threads), check[:1].shape)}

        for step in range(max_steps + 1):
            print(f"nnbridge: accuracy-aware INT8: step {step}/{max_steps}, {len(modules)} block(s) in fp32", flush=True)
            started = time.perf_counter()
            record, metrics = quantize_and_check(settings)
            steps.append(metrics)
            if step == max_steps or metrics["min_dice"] >= target:
                break
            # rank the blocks on the runtime that disagrees most (one runtime per round keeps
            # the trials' cost that of a single-runtime loop)
            worst_backend = min(metrics["min_dice_by_backend"], key=metrics["min_dice_by_backend"].get)
            only = None
            if candidates is not None:
                blocks = [b for b in layer_blocks(onnx.load(str(src), load_external_data=False)) if b["node"] not in excluded]
                growth = error_growth(Path(src), Path(dst), blocks, proxy_patch(check[:1], Path(src)), threads)
                only = set(sorted(growth, key=lambda n: -growth[n])[: int(candidates)]) or None
                steps[-1]["candidates"] = {"by": "error growth across the block (INT8 vs fp32, ONNX Runtime, 1 patch)",
                                           "tried": sorted(only or [b["node"] for b in blocks]), "of": len(blocks)}
            ranking = block_sensitivity(Path(src), calibration, check[:ranked_on], reference[:ranked_on], labels,
                                        region_based, settings, excluded, cache, threads, (worst_backend,), only)
            steps[-1]["ranked_on"] = worst_backend
            steps[-1]["ranking_patches"] = ranked_on
            if not ranking:
                break
            # the gain against this step on the trials' own patches
            base = (metrics["min_dice_by_backend"][worst_backend] if ranked_on == len(check) else
                    worst_agreement(Path(dst), check[:ranked_on], reference[:ranked_on], labels, region_based,
                                    threads, (worst_backend,))["min_dice"])
            gain = ranking[0]["min_dice"] - base
            # the most the rounds left could reach at this round's best gain per block
            reach = metrics["min_dice"] + gain * per_step * (max_steps - step)
            if gain < min_gain or (out_of_reach and reach < target):  # stop here, keep the file as it is
                steps[-1]["trials"] = [{k: t[k] for k in ("module", "op", "min_dice", "mean_abs_err")}
                                       for t in ranking]
                steps[-1]["seconds"] = round(time.perf_counter() - started, 2)
                stalled = (f"no block kept in fp32 raises the worst-class Dice on {worst_backend} by "
                           f">= {min_gain:g} (best {gain:+.4f}, {ranking[0]['module']})" if gain < min_gain else
                           f"out of reach: the best block kept in fp32 raises the worst-class Dice on "
                           f"{worst_backend} by {gain:+.4f} ({ranking[0]['module']}); {max_steps - step} round(s) "
                           f"of {per_step} block(s) at that gain reach at most {reach:.4f} < {target:g}")
                break
            for block in ranking[:per_step]:
                excluded.extend(n for n in block["nodes"] if n not in excluded)
                modules.append(block["module"])
            steps[-1]["trials"] = [{k: t[k] for k in ("module", "op", "min_dice", "mean_abs_err")}
                                   for t in ranking]
            steps[-1]["seconds"] = round(time.perf_counter() - started, 2)
        kept = steps[-1]

        def try_instead(what: str, step_settings: dict[str, Any]) -> None:
            """One more step with ``step_settings`` (same ranges, same blocks in fp32): its file and
            record stay if it agrees better, else the kept step's file is put back."""
            nonlocal record, kept
            print(f"nnbridge: accuracy-aware INT8: {what} (the kept step stopped at Dice {kept['min_dice']:.4f})",
                  flush=True)
            started = time.perf_counter()
            previous = Path(tmp) / "kept.onnx"
            shutil.copyfile(dst, previous)
            tried_record, tried = quantize_and_check(step_settings)
            steps.append({**tried, "seconds": round(time.perf_counter() - started, 2)})
            if tried["min_dice"] > kept["min_dice"]:
                record, kept = tried_record, steps[-1]
            else:
                shutil.copyfile(previous, dst)
                worse.append((what, steps[-1]))

        if fallback and kept["min_dice"] < target:  # asymmetric activations
            try_instead("asymmetric activations", {**settings, "symmetric_activations": False})
        seven_bit = bool(settings.get("reduce_range")) and (settings.get("weight_type") or "s8") == "s8"
        u8_tried = u8_weights_fallback and seven_bit and checked and kept["min_dice"] < target
        if u8_tried:  # full 8-bit u8 weights, which ONNX Runtime's kernels do not saturate
            try_instead("8-bit u8 weights", {**settings, "symmetric_activations": False, "reduce_range": False,
                                             "weight_type": "u8"})
    # the file on disk is the kept step's (the last one, or the best before fallback steps that did
    # worse); its record names every node kept in fp32
    passed = kept["min_dice"] >= target if checked else None
    # named where the entry asked for symmetric ones (the fallback, here or on the deciding fold)
    activations = ("asymmetric activations, " if not record["symmetric_activations"] and asked_symmetric
                   else "") + ("8-bit u8 weights, " if record.get("weight_type") == "u8" else "")
    blocks = f"{activations}{len(modules)} block(s) in fp32"
    if decided is not None:
        on = f"as decided on fold {decided['fold']}"
        verdict = (f"{blocks} {on}; not checked on this fold's calibration patches: validate gates it on the "
                   "held-out ones (a search on each fold's own patches: accuracy_aware.per_fold: true)"
                   if not checked else
                   f"Dice {kept['min_dice']:.4f} {'>=' if passed else '<'} {target:g} with {blocks} {on}"
                   + ("" if passed else " (a search on this fold's own patches: accuracy_aware.per_fold: true)"))
    elif passed:
        verdict = f"Dice {kept['min_dice']:.4f} >= {target:g} with {blocks}"
    elif stalled:
        verdict = f"stopped at Dice {kept['min_dice']:.4f} < {target:g} with {blocks}: {stalled}"
    else:
        verdict = (f"budget of {max_steps} step(s) spent at Dice {kept['min_dice']:.4f} < {target:g}"
                   + (f" ({activations.rstrip(', ')})" if activations else ""))
    record["accuracy_aware"] = {
        "min_dice": target, "max_steps": max_steps, "exclude_per_step": per_step, "candidates": candidates,
        "min_gain": min_gain, "stop_out_of_reach": out_of_reach,
        "check_patches": int(len(check)), "ranking_patches": ranked_on,
        "reference": "fp32 ONNX on the calibration patches" if checked else None,
        "backends": list(backends),
        "fp32_latency_ms": fp32_ms, "steps": steps, "passed": passed,
        "fp32_modules": list(modules), "asymmetric_fallback": fallback,
        "u8_weights_fallback": bool(u8_weights_fallback),
        "kept_step": kept["step"], "verdict": verdict,
        **({"decided_on_fold": str(decided["fold"])} if decided is not None else {}),
    }
    for what, step in worse:
        record["accuracy_aware"]["verdict"] += f"; {what} did worse (Dice {step['min_dice']:.4f}), not kept"
    if passed is False and record.get("reduce_range"):
        # on the demo nnU-Net's fold 0, 7-bit weights cost the Dice no single block returned (0.9878
        # on the calibration check; 0.9917 held out with 8 bits), AMD EPYC Zen 4, 2026-12-04
        record["accuracy_aware"]["verdict"] += ("; every weight had 7 bits (reduce_range, for CPUs without INT8 dot "
                                                "products): their error is spread over every block")
    return record


def _start_from(decided: dict[str, Any], excluded: list[str], settings: dict[str, Any],
                src: Path) -> tuple[list[str], list[str], dict[str, Any], int]:
    """(blocks' nodes in fp32, their modules, settings, rounds left) where another fold's loop
    ended (``decided``, see :func:`accuracy_aware_int8`); a record that is no accuracy-aware
    one, or names nodes ``src`` does not have, is refused in one line."""
    record, fold = decided["record"], decided["fold"]
    loop = record.get("accuracy_aware") or {}
    steps = loop.get("steps") or []
    if not steps or "kept_step" not in loop:
        raise NNBridgeError(f"the fold {fold} quantize record has no accuracy-aware steps to start from; "
                            "rerun it (snakemake --forcerun quantize), or set accuracy_aware.per_fold: true")
    nodes = {n.name for n in onnx.load(str(src), load_external_data=False).graph.node}
    chosen = [n for n in record.get("nodes_to_exclude") or [] if n not in excluded]
    missing = [n for n in chosen if n not in nodes]
    if missing:
        raise NNBridgeError(f"fold {fold} kept node {missing[0]!r} in fp32, which {src} does not have "
                            "(the folds' graphs differ); set accuracy_aware.per_fold: true for this model")
    kept = next(s for s in steps if s["step"] == loop["kept_step"])
    weights = {k: kept[k] for k in ("weight_type", "reduce_range") if k in kept}  # records before u8 weights: none
    return ([*excluded, *chosen], list(loop.get("fp32_modules") or []),
            {**settings, "symmetric_activations": bool(kept["symmetric_activations"]), **weights}, 0)

