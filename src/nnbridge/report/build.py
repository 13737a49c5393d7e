"""One report across all models and folds: Markdown, self-contained HTML, a plot, a JSON summary.

The report only reads the JSON files the stages wrote; every number in it comes from there.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
import os
import platform
from pathlib import Path
from typing import Any

from .. import __version__
from ..bench.targets import speed_ceilings, speed_targets

Table = tuple[list[str], list[list[str]]]


def _load(path: str | None) -> Any:
    if not path or not Path(path).is_file():
        return None
    return json.loads(Path(path).read_text())


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e-3 or abs(value) >= 1e4 else f"{value:.{digits}f}"
    return str(value)


def load_entries(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each fold's stage records, read from the paths the workflow passes.

    Each gets a ``label`` for the tables: ``fold k`` when the report holds one model, else
    ``dataset / model / fold k``.
    """
    single = len({(e["dataset"], e["model"]) for e in entries}) <= 1
    loaded = []
    for entry in entries:
        loaded.append({
            "dataset": entry["dataset"],
            "model": entry["model"],
            "fold": str(entry["fold"]),
            "export": _load(entry.get("export")),
            "torchscript": _load(entry.get("torchscript")),
            "simplify": _load(entry.get("simplify")),
            "quantize": {k: _load(v) for k, v in (entry.get("quantize") or {}).items()},
            "parity": _load(entry.get("parity")),
            "benchmark": _load(entry.get("benchmark")),
            "validation": _load(entry.get("validation_summary")),
            "case_parity": _load(entry.get("case_parity")),
            "bundle": _load(entry.get("bundle")),
            "patches": _load(entry.get("patches")),
            "intake": entry.get("intake") or {},
            "label": (f"fold {entry['fold']}" if single else
                      f"{entry['dataset']} / {entry['model']} / fold {entry['fold']}"),
        })
    return loaded


def _fold_label(e: dict[str, Any]) -> str:
    return e.get("label") or f"{e['dataset']} / {e['model']} / fold {e['fold']}"


def _median(values: list[float]) -> float | None:
    values = sorted(values)
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def overview_table(folds: list[dict[str, Any]]) -> Table | None:
    """Per model and variant across its folds: gates passed, worst Dice vs torch, median
    latency and speed-ups (a model column when the report holds several models).

    Speed-ups are the median over folds of the per-fold ratios (each ratio from one run).
    """
    models = by_model(folds)
    rows = []
    for model, group in models.items():
        prefix = [model] if len(models) > 1 else []
        rows += [prefix + row for row in _overview_rows(group)]
    if not rows:
        return None
    header = ["variant", "gate (folds)", "worst class Dice vs torch", "median p50 ms",
              "speed-up vs torch eager", "speed-up vs ONNX fp32", "% of peak"]
    return (["model"] if len(models) > 1 else []) + header, rows


def _overview_rows(folds: list[dict[str, Any]]) -> list[list[str]]:
    names: list[str] = []
    for e in folds:
        for n in [*((e["benchmark"] or {}).get("results", {})), *((e["parity"] or {}).get("variants", {}))]:
            if n not in names:
                names.append(n)
    rows = []
    for name in names:
        gates = [(e["parity"] or {}).get("variants", {}).get(name) for e in folds]
        gates = [g for g in gates if g]
        passed = sum(1 for g in gates if g["passed"])
        skipped = sum(1 for g in gates if g.get("skipped"))
        worst = min((g.get("min_dice", 1.0) for g in gates if not g.get("skipped")), default=None)
        bench = [((e["benchmark"] or {}).get("results", {}) or {}) for e in folds]
        p50 = [b[name]["p50_ms"] for b in bench if "p50_ms" in b.get(name, {})]
        vs_eager = [b["torch_eager"]["p50_ms"] / b[name]["p50_ms"] for b in bench
                    if "p50_ms" in b.get(name, {}) and "p50_ms" in b.get("torch_eager", {})]
        vs_fp32 = [b["onnx_fp32"]["p50_ms"] / b[name]["p50_ms"] for b in bench
                   if "p50_ms" in b.get(name, {}) and "p50_ms" in b.get("onnx_fp32", {})]
        pct = [b[name]["pct_of_peak"] for b in bench if "pct_of_peak" in b.get(name, {})]
        gate = ("reference" if not gates else f"{passed}/{len(gates)} PASS" if passed == len(gates)
                else f"SKIPPED in {skipped}/{len(gates)} (not runnable here)" if skipped == len(gates) - passed
                else f"FAIL in {len(gates) - passed - skipped}/{len(gates)}")
        rows.append([name, gate, _fmt(worst) if gates else "–", _fmt(_median(p50), 3),
                     _fmt(_median(vs_eager), 3), _fmt(_median(vs_fp32), 3), _fmt(_median(pct), 1)])
    return rows


EXACT_VARIANTS = ("torchscript", "onnx_fp32", "onnx_simplified")  # the checkpoint's math, fp32


def variant_precision(fold: dict[str, Any], name: str) -> str:
    """``fp32`` (exact export, or its OpenVINO IR), ``int8``, ``fp16`` or ``bf16`` (from the
    variant's quantize record), or ``other``; ``name`` may carry a runtime (``int8_accurate@openvino``)."""
    base = name.partition("@")[0]
    record = (fold.get("quantize") or {}).get(base)
    if record:
        if record.get("precision"):  # the OpenVINO IR methods say it
            return record["precision"]
        return record["method"] if record.get("method") in ("fp16", "bf16") else "int8"
    return "fp32" if base in EXACT_VARIANTS else "other"


def model_targets(folds: list[dict[str, Any]]) -> dict[str, Any]:
    """The speed targets of one model (:func:`nnbridge.bench.speed_targets`) over its folds:
    per variant and runtime the median over folds of its speed-up against torch eager (each
    ratio from one run); exact fp32 and INT8 candidates must have passed their parity gate on
    every fold; the operator profile is the first fold's."""

    candidates: dict[str, dict[str, Any]] = {}
    names = {n for e in folds for n in ((e["benchmark"] or {}).get("results") or {}) if n != "torch_eager"}
    for name in sorted(names):
        ratios, p50, profile = [], [], None
        for e in folds:
            results = (e["benchmark"] or {}).get("results") or {}
            mine, base = results.get(name, {}), results.get("torch_eager", {})
            if "p50_ms" in mine and "p50_ms" in base:
                ratios.append(base["p50_ms"] / mine["p50_ms"])
                p50.append(mine["p50_ms"])
                profile = profile or mine.get("op_profile")
        if ratios:
            candidates[name] = {"speedup": _median(ratios), "p50_ms": _median(p50), "op_profile": profile}

    def passed(name: str) -> bool:
        gates = [((e["parity"] or {}).get("variants") or {}).get(name) for e in folds]
        return all(g and g["passed"] for g in gates)

    exact = [n for n in candidates if variant_precision(folds[0], n) == "fp32" and passed(n)]
    int8 = [n for n in candidates if variant_precision(folds[0], n) == "int8" and passed(n)]
    eager = [((e["benchmark"] or {}).get("results") or {}).get("torch_eager", {}) for e in folds]
    per_fold = [speed_ceilings(t.get("gflops_per_s"), (e["benchmark"] or {}).get("peak") or {})
                for t, e in zip(eager, folds)]
    ceilings = {key: _median([c[key] for c in per_fold if key in c]) for key in ("fp32_ceiling", "int8_ceiling")}
    shape = ((folds[0]["benchmark"] or {}).get("shape") or [])[2:]
    return {**speed_targets(candidates, exact, int8, ceilings={k: v for k, v in ceilings.items() if v}),
            "torch_eager_p50_ms": _median([t["p50_ms"] for t in eager if t.get("p50_ms")]),
            "patch": list(shape), "folds": len(folds)}


def by_model(folds: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Folds grouped by ``dataset / model``, in report order."""
    models: dict[str, list[dict[str, Any]]] = {}
    for e in folds:
        models.setdefault(f"{e['dataset']} / {e['model']}", []).append(e)
    return models


def _ops_text(ops: list[dict[str, Any]]) -> str:
    return ", ".join(f"{o['op']} {100 * o['share']:.0f} %" for o in ops)


def _target_cells(t: dict[str, Any]) -> list[str]:
    cells = []
    for key, met, goal in (("best_fp32_exact", "fp32_target_met", t["fp32_target"]),
                           ("best_int8", "int8_target_met", t["int8_target"])):
        best = t.get(key)
        ceiling = t.get(key.replace("best_", "").replace("fp32_exact", "fp32") + "_ceiling")
        verdict = f"met (≥ {goal:g}×)" if t[met] else f"missed (< {goal:g}×)"
        if ceiling and not t[met]:
            verdict += (f"; beyond this machine: the measured peak allows at most {ceiling:.2f}×" if ceiling < goal
                        else f"; the measured peak allows up to {ceiling:.2f}×")
        cells += [f"{best['name']} {best['speedup']:.2f}×", verdict] if best else ["none passed its gate", verdict]
    dominant = t.get("dominant_ops") or {}
    cells.append("; ".join(f"{name}: {_ops_text(ops)}" for name, ops in dominant.items()) or "–")
    return cells


def targets_table(folds: list[dict[str, Any]], realistic: dict[str, Any] | None = None) -> Table | None:
    """Per model: the best exact fp32 runtime and the best gated INT8 variant against torch eager,
    whether each meets its target, and where the time goes when not; then the realistic-size
    network (speed only)."""
    rows = []
    for model, group in by_model(folds).items():
        t = model_targets(group)
        if t["torch_eager_p50_ms"] is None:
            continue
        rows.append([model, "x".join(map(str, t["patch"])), _fmt(t["torch_eager_p50_ms"], 3), *_target_cells(t)])
    if realistic and realistic.get("targets"):
        eager = realistic["results"].get("torch_eager", {}).get("p50_ms")
        rows.append(["realistic nnU-Net, random weights (INT8: speed only, no gate)",
                     "x".join(map(str, realistic["patch_size"])), _fmt(eager, 3), *_target_cells(realistic["targets"])])
    if not rows:
        return None
    return (["model", "patch", "torch eager p50 ms", "best exact fp32 (gate passed)", "fp32 target",
             "best INT8 (gate passed)", "INT8 target", "where the time goes (targets missed)"], rows)


def validation_table(folds: list[dict[str, Any]]) -> Table | None:
    """nnU-Net's own validation Dice of each fold (from ``validation/summary.json``)."""
    rows, classes = [], []
    for e in folds:
        summary = e["validation"]
        if not summary:
            continue
        labels = (e["parity"] or {}).get("labels", {})
        means = summary.get("mean", {})
        for cls in means:
            name = labels.get(str(cls), str(cls))
            if name not in classes:
                classes.append(name)
        dice = {labels.get(str(c), str(c)): v.get("Dice") for c, v in means.items()}
        fg = summary.get("foreground_mean", {}).get("Dice")
        rows.append((_fold_label(e), dice, fg))
    if not rows:
        return None
    header = ["fold", *[f"Dice {c}" for c in classes], "foreground mean"]
    return header, [[label, *[_fmt(d.get(c)) for c in classes], _fmt(fg)] for label, d, fg in rows]


def intake_table(folds: list[dict[str, Any]]) -> Table | None:
    """Where each fold came from when that is not a trained model folder with nnU-Net's
    preprocessed data: a model zip, an image folder (how its cases were split, where the patches'
    foreground came from), a trainer class that is not installed."""
    rows = []
    for e in folds:
        intake, patches = e.get("intake") or {}, e.get("patches") or {}
        fallback = (e.get("export") or {}).get("trainer_fallback")
        if not (intake.get("zip") or intake.get("images") or fallback):
            continue
        split = patches.get("split") or {}
        if split.get("source") == "seeded":
            how = f"seeded (seed {split['seed']}): {split.get('note', '')}"
        elif split:
            how = f"fold {split['fold']} of {split['splits']}"
        else:
            how = "the fold's nnU-Net split"
        foreground = (patches.get("foreground") or {}).get("note") or "labels (nnU-Net's class_locations)"
        held = ", ".join(split.get("heldout") or (patches.get("heldout") or {}).get("cases") or [])
        rows.append([_fold_label(e), intake.get("zip") or intake.get("folder", ""), fallback or "as trained",
                     intake.get("images") or intake.get("preprocessed") or "", how, held or "–", foreground])
    if not rows:
        return None
    return ["fold", "model", "trainer", "data", "calibration / held-out split", "held-out cases",
            "patch foreground"], rows


def weights_table(folds: list[dict[str, Any]]) -> Table:
    rows = []
    for e in folds:
        for name, rec in (("ONNX fp32", e["export"]), ("TorchScript", e["torchscript"])):
            if not rec:
                continue
            checks = rec.get("shape_checks", [])
            worst = max((c["max_abs_err"] for c in checks), default=None)
            shapes = "; ".join("x".join(str(s) for s in c["shape"][2:]) for c in checks)
            source = rec.get("source", {})
            origin = f" ({source['kind']}: {source['weights_origin']})" if source and name == "ONNX fp32" else ""
            rows.append([_fold_label(e), name, rec["weights"]["summary"] + origin, shapes, _fmt(worst)])
        simp = e["simplify"]
        if simp:
            state = (f"simplified by {simp.get('tool') or 'onnxsim'}, outputs verified"
                     if simp["kept_simplified"] else
                     f"not simplified ({simp.get('error', 'unknown')}); exact copy kept")
            rows.append([_fold_label(e), "ONNX simplified",
                         f"{state}; nodes {simp['nodes_before']} → {simp['nodes_after']}",
                         "", _fmt(simp.get("check_max_abs_err"))])
    return ["fold", "artifact", "weights / check", "eager-vs-export shapes", "max abs err"], rows


def parity_table(folds: list[dict[str, Any]]) -> Table:
    rows = []
    for e in folds:
        parity = e["parity"] or {}
        for name, r in parity.get("variants", {}).items():
            dice = ", ".join(f"{k} {_fmt(v)}" for k, v in r.get("dice", {}).items())
            dice += f"; worst case {_fmt(w['dice'])} ({w['class']}, {w['case']})" if (w := (r.get("case_dice") or {}).get("worst")) else ""
            verdict = ("PASS" if r["passed"] else f"SKIPPED: {r['skipped']}" if r.get("skipped")
                       else "FAIL: " + "; ".join(r.get("failures", [])))
            rows.append([_fold_label(e), name, _fmt(r.get("max_abs_err")), _fmt(r.get("max_rel_err")),
                         _fmt(r.get("mean_abs_err")), dice or "–", _fmt(r.get("voxel_agreement"), 6),
                         verdict])
    return ["fold", "variant", "max abs err", "max rel err", "mean abs err", "Dice vs torch",
            "voxel agreement", "gate"], rows


def _pct(result: dict[str, Any]) -> str:
    """``% of peak`` with the peak it refers to (fp32, INT8 or bf16)."""
    if result.get("pct_of_peak") is None:
        return "–"
    return f"{_fmt(result['pct_of_peak'], 1)} ({result.get('peak_kind', 'fp32')})"


def benchmark_table(folds: list[dict[str, Any]]) -> Table:
    rows = []
    for e in folds:
        bench = e["benchmark"] or {}
        shape = "x".join(str(s) for s in bench.get("shape", []))
        for name, r in bench.get("results", {}).items():
            if "error" in r or "skipped" in r:
                why = f"error: {r['error']}" if "error" in r else f"skipped: {r['skipped']}"
                rows.append([_fold_label(e), name, shape, why, "", "", "", "", "", "", "", "", ""])
                continue
            size = r.get("file_size_bytes")
            rows.append([_fold_label(e), name, shape, _fmt(r["p50_ms"], 3), _fmt(r["p90_ms"], 3),
                         _fmt(r.get("p99_ms"), 3), _fmt(r.get("load_ms"), 1),
                         _fmt(r["peak_rss_mb"], 1), _fmt(size / 1e6 if size else None, 3),
                         _fmt(r.get("gflops_per_s"), 1), _pct(r),
                         _fmt(r.get("speedup_vs_torch_eager"), 3), runtime_settings(r)])
    return ["fold", "backend / variant", "input", "p50 ms", "p90 ms", "p99 ms", "load ms", "peak RSS MB", "file MB",
            "GFLOP/s", "% of peak", "speed-up vs torch eager", "runtime settings"], rows


def runtime_settings(result: dict[str, Any]) -> str:
    """How a benchmark result ran: threads and the runtime's options (the tuned ones for ONNX Runtime)."""
    threads = f"{result['threads']} thread(s)" if result.get("threads") else "runtime's threads"
    backend = result.get("backend")
    if backend == "onnxruntime":
        return f"{threads}, {_settings(result.get('ort_settings') or {})}"
    if backend == "openvino":
        if result.get("inference_precision") == "bf16":
            return f"{threads}, bf16 precision hint (the bf16 variant), latency mode"
        return f"{threads}, f32 precision hint (INT8 kernels where quantized), latency mode"
    if backend in ("torch", "torch_arch"):
        return f"{threads}, eager, no_grad"
    return f"{threads}, {backend}" if backend else threads


def profile_table(folds: list[dict[str, Any]]) -> Table | None:
    """The operators that take the time of each ONNX variant and runtime, on the first fold."""
    for e in folds:
        results = (e["benchmark"] or {}).get("results", {})
        rows = []
        for name, r in results.items():
            ops = r.get("op_profile")
            if not ops:
                continue
            top = ", ".join(f"{o['op']} {100 * o['share']:.0f} %" for o in ops[:4])
            rows.append([_fold_label(e), name, r.get("backend", "?"), top])
        if rows:
            return ["fold", "variant", "runtime", "share of kernel time (top operators)"], rows
    return None


def sweep_table(folds: list[dict[str, Any]]) -> Table | None:
    """p50 per thread count and per patch at a larger batch, on the first fold that has them."""
    for e in folds:
        sw = (e["benchmark"] or {}).get("sweep")
        if not sw or not sw.get("results"):
            continue
        threads = [str(t) for t in sw["threads"]]
        rows = []
        for name, r in sw["results"].items():
            by = r["p50_ms_by_threads"]
            first, last = by.get(threads[0]), by.get(threads[-1])
            scaling = f"{first / last:.2f}×" if first and last else "–"
            rows.append([_fold_label(e), name, *[_fmt(by.get(t), 3) for t in threads], scaling,
                         _fmt(r.get("p50_ms_per_patch_at_batch"), 3)])
        return (["fold", "variant", *[f"p50 ms, {t} thread(s)" for t in threads],
                 f"speed-up 1 → {threads[-1]} threads",
                 f"ms per patch at batch {sw['batch']} ({threads[-1]} threads)"], rows)
    return None


def peak_text(peak: dict[str, Any]) -> str:
    """What the "% of peak" columns refer to: the measured fp32 (and INT8) peaks and how."""
    if not peak.get("gflops"):
        return ""
    threads = f" with {peak['threads']} thread(s)" if peak.get("threads") else ""
    text = (f"This machine's fp32 peak{threads} is {peak['gflops']:.0f} GFLOP/s, the best "
            f"micro-benchmark ({peak.get('method', 'method not recorded')}")
    others = [f"{v['method'].split(',')[0]}: {v['gflops']:.0f}" for v in (peak.get("candidates") or {}).values()
              if v.get("gflops") and v["method"] != peak.get("method")]
    text += (f"; also measured {'; '.join(others)})" if others else ")")
    if peak.get("int8_gops"):
        text += (f"; INT8 variants are measured against the INT8 peak, {peak['int8_gops']:.0f} GOP/s "
                 f"({peak['int8_method']})")
    if peak.get("bf16_gflops"):
        text += f"; bf16 runs against the bf16 peak, {peak['bf16_gflops']:.0f} GFLOP/s ({peak['bf16_method']})"
    source = peak.get("source", "")
    where = f" ({source})" if source.startswith("measured here") else ""
    return text + (f"{where}. A measured peak, not a clock × vector-unit figure: above 100 % a runtime beat the "
                   "micro-benchmarks.")


def peak_note(folds: list[dict[str, Any]]) -> str:
    """One sentence on the FLOPs per patch and the measured peaks the percentages refer to."""
    for e in folds:
        bench = e["benchmark"] or {}
        peak = bench.get("peak") or {}
        if peak.get("gflops") and bench.get("flops_per_patch"):
            return (f" A patch costs {bench['flops_per_patch'] / 1e9:.2f} GFLOP (convolutions, "
                    f"multiply-add = 2). " + peak_text(peak))
    return ""


def accelerator_note(folds: list[dict[str, Any]]) -> str:
    """One sentence per GPU backend: benchmarked, or skipped and why."""
    for e in folds:
        status = (e["benchmark"] or {}).get("accelerators")
        if status:
            return " GPU backends: " + "; ".join(f"{k}: {v}" for k, v in status.items()) + "."
    return ""


def quantize_table(folds: list[dict[str, Any]]) -> Table:
    rows = []
    for e in folds:
        for name, q in e["quantize"].items():
            if not q:
                continue
            method = q.get("method", "static")
            if method == "static":
                how = (f"static {q['format']}, {'per channel' if q['per_channel'] else 'per tensor'}, "
                       f"{q['calibrate_method']}")
            elif method in ("nncf", "openvino_int8"):
                how = (f"NNCF post-training, preset {q['preset']}" if method == "nncf" else
                       f"NNCF post-training on the OpenVINO model, preset {q['preset']}, OpenVINO IR")
                if q.get("ignored_types"):
                    how += f", {', '.join(q['ignored_types'])} unquantized"
            elif method == "openvino_fp32":
                how = "fp32 graph as OpenVINO IR (.xml + .bin)"
            elif method == "bf16":
                how = ("fp32 graph, OpenVINO bf16 inference" if q.get("native_bf16_here", True)
                       else f"fp32 graph, OpenVINO bf16 inference; not runnable here: {q.get('bf16_unavailable')}")
            else:
                how = method
            cov = q.get("coverage") or {}  # ONNX Runtime's INT8 coverage (bf16 runs on OpenVINO only)
            int8 = (f"{cov['n_int8_compute_nodes']}/{cov['n_compute_nodes']}" if cov else "–")
            share = f"{100 * cov['int8_flop_share']:.1f} %" if cov else "–"  # ONNX Runtime's
            aa = (q.get("accuracy_aware") or q.get("accuracy_control") or {}).get("verdict", "–")
            rows.append([_fold_label(e), name, how, str(q.get("n_calibration_patches", 0)),
                         _fmt(q["size_bytes"] / 1e6, 3), int8, share, aa])
    return ["fold", "variant", "method", "calibration patches", "file MB",
            "compute nodes in INT8 (ORT)", "FLOPs in INT8 (ORT)", "accuracy-aware / accuracy control"], rows


def _op_list(ops: list[dict[str, Any]], precision: str) -> str:
    return ", ".join(f"{o['op']}×{o['count']}" for o in ops if o["precision"] == precision) or "–"


def coverage_table(folds: list[dict[str, Any]]) -> Table | None:
    """What runs in INT8 (bf16 for a bf16 variant) and what falls back to fp32, from the model each
    runtime builds."""
    rows = []
    for e in folds:
        for name, q in e["quantize"].items():
            for backend, key in (("onnxruntime", "coverage"), ("openvino", "coverage_openvino")):
                cov = (q or {}).get(key)
                if not cov:
                    continue
                low = cov.get("precision", "int8")
                fallback = ", ".join(cov["float_compute_nodes"]) or "none"
                share = f"{100 * cov[f'{low}_flop_share']:.1f} % {low.upper() if low == 'int8' else low}"
                rows.append([_fold_label(e), name, backend, share, _op_list(cov["ops"], low),
                             _op_list(cov["ops"], "float"), str(cov["n_conversions"]), fallback])
    if not rows:
        return None
    return ["fold", "variant", "backend", "FLOPs in low precision", "low-precision operators", "fp32 operators",
            "conversions", "compute layers in fp32 (PyTorch modules)"], rows


def accuracy_aware_table(folds: list[dict[str, Any]]) -> Table | None:
    """Each step of the accuracy-aware INT8 loops: blocks kept in fp32, Dice, latency."""
    rows = []
    for e in folds:
        for name, q in e["quantize"].items():
            aa = (q or {}).get("accuracy_aware")
            if not aa:
                continue
            rows.append([_fold_label(e), name, "fp32 reference", "–", "–", _fmt(aa["fp32_latency_ms"], 3)])
            for step in aa["steps"]:
                dice = ", ".join(f"{k} {_fmt(v)}" for k, v in step["dice"].items())
                rows.append([_fold_label(e), name, f"step {step['step']}",
                             ", ".join(step["fp32_modules"]) or "none (all INT8)", dice,
                             _fmt(step["latency_ms"], 3)])
    if not rows:
        return None
    return ["fold", "variant", "step", "blocks kept in fp32 (PyTorch modules)",
            "Dice vs fp32 (calibration patches)", "latency ms"], rows


def latency_plot(folds: list[dict[str, Any]], path: Path) -> None:
    """Horizontal bars: median p50 latency of each backend/variant over all folds (whiskers:
    fastest and slowest fold), coloured by runtime, labelled with the speed-up over torch eager."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    values: dict[str, list[float]] = {}
    backends: dict[str, str] = {}
    for e in folds:
        for name, r in (e["benchmark"] or {}).get("results", {}).items():
            if "p50_ms" in r:
                values.setdefault(name, []).append(r["p50_ms"])
                backends[name] = r.get("backend", "?")
    names = list(values)
    colours = {"torch": "#4c72b0", "torchscript": "#64b5cd", "onnxruntime": "#55a868",
               "openvino": "#c44e52"}
    medians = [_median(values[n]) or 0.0 for n in names]
    lows = [m - min(values[n]) for n, m in zip(names, medians)]
    highs = [max(values[n]) - m for n, m in zip(names, medians)]
    eager = _median(values.get("torch_eager", []))
    fig, ax = plt.subplots(figsize=(8, 0.38 * max(4, len(names)) + 1.2))
    ys = list(range(len(names)))[::-1]
    ax.barh(ys, medians, xerr=[lows, highs], capsize=3,
            color=[colours.get(backends[n], "#8c8c8c") for n in names])
    for y, m, high in zip(ys, medians, highs):
        if eager and m:
            ax.text(m + high, y, f"  {eager / m:.2f}×", va="center", fontsize=8)
    ax.set_yticks(ys, names, fontsize=8)
    ax.set_xlabel("p50 latency per patch, ms (median over folds; whiskers: fastest and slowest fold)")
    ax.set_title("Latency per variant and runtime (label: speed-up over torch eager)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for b, c in colours.items() if b in backends.values()]
    ax.legend(handles, [b for b in colours if b in backends.values()], fontsize=8, loc="lower right")
    ax.set_xlim(0, max(medians + [1.0]) * 1.25)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def case_parity_table(folds: list[dict[str, Any]]) -> Table | None:
    """Per fold and variant: agreement with nnU-Net's predictor on whole cases, Dice against the
    ground truth of both, the first diverging stage, and the end-to-end speed ratio."""
    rows = []
    for e in folds:
        cp = e.get("case_parity")
        if not cp:
            continue
        for name, v in cp["variants"].items():
            if v.get("skipped"):
                rows.append([_fold_label(e), f"{name} ({v['backend']})", "–", "–", "–", "–", "–", "–", "–", "–", "–",
                             f"SKIPPED: {v['skipped']}"])
                continue
            cases = v["cases"].values()
            truth_ours = [min(c["dice_nnbridge_vs_truth"].values()) for c in cases if c.get("dice_nnbridge_vs_truth")]
            truth_ref = [min(c["dice_nnunet_vs_truth"].values()) for c in cases if c.get("dice_nnunet_vs_truth")]
            rows.append([
                _fold_label(e), f"{name} ({v['backend']})", str(len(v["cases"])),
                f"{100 * v['min_voxel_agreement']:.4f} %", _fmt(v["min_dice_vs_nnunet"]),
                _fmt(max(c.get("prob_max_abs_diff", 0.0) for c in cases)),
                _fmt(_median(truth_ref)), _fmt(_median(truth_ours)),
                v["first_divergence"] or "none",
                f"{cp['nnunet']['total_s']:.2f} / {v['total_s']:.2f}",
                f"{v['speedup_vs_nnunet']:.2f}×",
                "PASS" if v["passed"] else "FAIL",
            ])
    if not rows:
        return None
    return (["fold", "variant (runtime)", "cases", "min voxel agreement", "min Dice vs nnU-Net",
             "max prob. diff", "median worst-class Dice vs truth: nnU-Net", "nnbridge",
             "first divergence", "nnU-Net / nnbridge s", "speed-up", "gate"], rows)


def case_stage_table(folds: list[dict[str, Any]]) -> Table | None:
    """Seconds per stage, summed over the validation cases of each fold."""
    rows = []
    for e in folds:
        cp = e.get("case_parity")
        if not cp:
            continue
        stages = list(cp["nnunet"]["timings_s"])
        rows.append([_fold_label(e), "nnU-Net (torch)", *[f"{cp['nnunet']['timings_s'][k]:.3f}" for k in stages]])
        for name, v in cp["variants"].items():
            if v.get("skipped"):
                continue
            rows.append([_fold_label(e), f"nnbridge {name} ({v['backend']})",
                         *[f"{v['timings_s'].get(k, 0.0):.3f}" for k in stages]])
    if not rows:
        return None
    first = next(e["case_parity"] for e in folds if e.get("case_parity"))
    return (["fold", "predictor", *list(first["nnunet"]["timings_s"])], rows)


def bundle_table(folds: list[dict[str, Any]]) -> Table | None:
    """Per model: the shipped variants, the runtime chosen for each and why."""
    rows, seen = [], set()
    for e in folds:
        b = e.get("bundle")
        if not b or (e["dataset"], e["model"]) in seen:
            continue
        seen.add((e["dataset"], e["model"]))
        for name, v in b["variants"].items():
            lat = ", ".join(f"{k} {ms:.1f} ms" for k, ms in sorted(v["latency_ms"].items()))
            run = (v.get("run_settings") or {}).get(v["backend"] or "")
            run_text = (f"{run.get('threads') or 'runtime default'} / {run.get('batch_size', 1)}" if run
                        else "not recorded")
            rows.append([f"{e['dataset']} / {e['model']}", name + (" (default)" if name == b["default_variant"] else ""),
                         ", ".join(b["folds"]),
                         (v["backend"] or "none passed") + (" (bf16)" if v.get("inference_precision") == "bf16" else ""),
                         lat,
                         "–" if v.get("inference_precision") == "bf16" else _settings(v.get("ort_settings") or {}),
                         run_text])
    if not rows:
        return None
    return (["model", "variant", "folds", "runtime used by nnbridge predict", "median p50 per runtime",
             "ONNX Runtime settings", "threads / batch (from the sweep)"], rows)


def _settings(settings: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in settings.items()) or "ORT defaults"


def tuning_table(folds: list[dict[str, Any]]) -> Table | None:
    """The ONNX Runtime session search of each tuned variant: p50 per candidate, the choice."""
    rows = []
    for e in folds:
        for name, t in ((e["benchmark"] or {}).get("tuning") or {}).items():
            cands = "; ".join(f"{_settings(c['settings'])}: {_fmt(c['p50_ms'], 3)} ms" for c in t["candidates"])
            rows.append([_fold_label(e), name, cands, _settings(t["chosen"]), _fmt(t.get("gain_vs_default"), 3)])
    if not rows:
        return None
    return (["fold", "variant", "p50 per candidate", "chosen", "speed-up vs ORT defaults"], rows)


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "nnbridge": __version__}


def benchmark_machines(folds: list[dict[str, Any]], realistic: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The distinct machines (CPU model, features, CPUs, host) the benchmarks ran on, as they
    recorded them (on a cluster, not where the report is written)."""
    seen: list[dict[str, Any]] = []
    records = [(e["benchmark"] or {}) for e in folds] + ([realistic] if realistic else [])
    for record in records:
        machine = record.get("machine")
        if machine and machine not in seen:
            seen.append(machine)
    return seen


def machine_text(machines: list[dict[str, Any]]) -> str:
    """One sentence naming the benchmark machine(s) and the features that decide their kernels."""
    if not machines:
        return ""
    parts = [f"{m['cpu']} ({m['cpus']} CPUs; {', '.join(m['isa']) or 'no AVX2'}; host {m['host']})"
             for m in machines]
    text = "Benchmarks ran on " + "; ".join(parts) + "."
    if len({(m["cpu"], tuple(m["isa"]), m["cpus"]) for m in machines}) > 1:
        text += " These are different machines: compare ratios within one fold's benchmark only."
    return text


def _md_table(table: Table) -> str:
    header, rows = table
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _html_table(table: Table) -> str:
    header, rows = table
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = []
        for c in row:
            cls = ' class="fail"' if c.startswith("FAIL") or "NOT verified" in c else \
                ' class="pass"' if c == "PASS" or c.startswith("weights verified") else ""
            cells.append(f"<td{cls}>{html.escape(c)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def sections(folds: list[dict[str, Any]],
             realistic: dict[str, Any] | None = None) -> list[tuple[str, str, Table | None]]:
    """(title, explanation, table) of every report section, in order."""
    return [
        ("Overview", "Each variant across all folds: its parity gate, the worst per-class Dice of "
         "its label maps against eager PyTorch, and its median batch-1 latency and speed-ups "
         "(ratios measured in one run).", overview_table(folds)),
        ("Speed targets", "Against torch eager with the same threads, batch 1, median over folds: the "
         "fastest exact fp32 runtime (TorchScript, ONNX fp32 or simplified, on any runtime) should be "
         "≥ 2× faster, the fastest INT8 variant that passed its Dice gate ≥ 3×. Where a target is "
         "missed, the top operators of that runtime's profile show where the time goes, and the "
         "ceiling says whether any runtime could meet it here: the measured peak over what torch "
         "eager achieves (torch already near the peak leaves no room for a 2× exact speed-up). The "
         "realistic-size row is the same check at a typical 3d_fullres patch. bf16 counts for neither "
         "target (not exact, not INT8): its speed-up is in the overview.",
         targets_table(folds, realistic)),
        ("Model quality (nnU-Net validation)",
         "Dice of each fold on its own validation cases, as computed by nnU-Net after training.",
         validation_table(folds)),
        ("Model intake", "Models from a zip, patches from an image folder preprocessed by the model's own "
         "plans, networks of trainer classes that are not installed (built as nnU-Net's default trainer "
         "builds them, checked by the strict load and the weight proof).", intake_table(folds)),
        ("Weights and export checks",
         "Every artifact must carry exactly the checkpoint's tensors; eager PyTorch and the "
         "exported model are compared at two input shapes.", weights_table(folds)),
        ("Quantization", "Quantized variants: static INT8 is calibrated on real patches from the "
         "fold's training cases; INT8 coverage is read from the graph ONNX Runtime's CPU provider "
         "really runs. A bf16 variant is the fp32 graph that OpenVINO runs in bf16 (no calibration).",
         quantize_table(folds)),
        ("INT8 and bf16 coverage", "Per backend, from the model it really runs (ONNX Runtime's optimized "
         "graph, OpenVINO's compiled runtime model): operators by precision (INT8 for quantized "
         "variants, bf16 for the bf16 variant), conversions between precisions, and the compute "
         "layers that fall back to fp32 (no low-precision kernel, or kept in fp32 on purpose).",
         coverage_table(folds)),
        ("Accuracy-aware INT8", "Each round keeps the block (a layer with its norm and "
         "nonlinearity) whose fp32 version helps the label maps most in fp32, until the Dice "
         "target is met on the calibration patches or the step budget is spent. The parity gate "
         "below is measured on held-out patches.", accuracy_aware_table(folds)),
        ("Patch parity against PyTorch",
         "Held-out patches from each fold's validation cases (never used for calibration); "
         "Dice of the label maps of each variant against eager PyTorch.", parity_table(folds)),
        ("Whole-case parity against nnU-Net's predictor",
         "Each fold's validation cases predicted end to end by nnUNetPredictor (torch, CPU) and by "
         "`nnbridge predict` on the bundle (no torch), with the same fold, step and mirroring. "
         "Stages compared: preprocessed input, aggregated logits, final labels; nnU-Net sums "
         "window logits in float16, so tiny logit differences are expected.", case_parity_table(folds)),
        ("Whole-case time per stage", "Seconds summed over the fold's validation cases, same "
         "thread count for both predictors.", case_stage_table(folds)),
        ("Deployable bundle", "`nnbridge predict -m results/<dataset>/<model>/bundle` runs each "
         "variant on the fastest runtime that passed its parity gate on every fold.", bundle_table(folds)),
        ("Benchmark", "Batch-1 latency on one patch, each backend in its own process, all in one "
         "run; compare the ratios." + peak_note(folds) + accelerator_note(folds), benchmark_table(folds)),
        ("ONNX Runtime session search", "Each candidate in its own process, fewer repetitions than "
         "above; a candidate replaces ORT's defaults only when more than 3 % faster. The benchmark "
         "above, the bundle and nnbridge predict use the choice.", tuning_table(folds)),
        ("Threads and batch", "p50 latency of the main runtimes at each thread count (batch 1) "
         "and per patch when several patches run at once, on the first fold; fewer repetitions "
         "than above.", sweep_table(folds)),
        ("Where the time goes", "Per-operator profile of each ONNX variant on its runtime (ONNX "
         "Runtime's profiler, OpenVINO's performance counters; OpenVINO names the kernel and its "
         "precision in brackets), measured after the timed runs on the first fold.",
         profile_table(folds)),
        ("Realistic-size benchmark", realistic_text(realistic), realistic_table(realistic)),
    ]


def summarize(folds: list[dict[str, Any]]) -> dict[str, Any]:
    """Machine-readable digest: per fold, the gate verdict and p50 of every variant."""
    out = []
    for e in folds:
        variants = (e["parity"] or {}).get("variants", {})
        bench = (e["benchmark"] or {}).get("results", {})
        out.append({
            "dataset": e["dataset"], "model": e["model"], "fold": e["fold"],
            "variants": {n: {"passed": v["passed"], "dice": v.get("dice"),
                             "p50_ms": (bench.get(n) or {}).get("p50_ms")} for n, v in variants.items()},
            "torch_eager_p50_ms": (bench.get("torch_eager") or {}).get("p50_ms"),
            "validation_dice": {k: v.get("Dice") for k, v in
                                ((e["validation"] or {}).get("mean", {})).items()},
            "case_parity": {n: {"passed": v["passed"], "min_voxel_agreement": v.get("min_voxel_agreement"),
                                "speedup_vs_nnunet": v.get("speedup_vs_nnunet"),
                                **({"skipped": v["skipped"]} if v.get("skipped") else {})}
                            for n, v in ((e.get("case_parity") or {}).get("variants", {})).items()},
        })
    return {"machine": machine_info(), "benchmark_machines": benchmark_machines(folds), "folds": out}


def realistic_table(record: dict[str, Any] | None) -> Table | None:
    """The realistic-size benchmark: every runtime at the large patch, ratios to torch eager."""
    if not record:
        return None
    rows = []
    for name, r in record["results"].items():
        if "p50_ms" not in r:
            why = f"skipped: {r['skipped']}" if r.get("skipped") else f"error: {r.get('error')}"
            rows.append([name, why, "", "", "", "", "", "", "", ""])
            continue
        pct = (f"{r['pct_of_peak']:.0f} % of {r.get('peak_kind', 'fp32')}" if r.get("pct_of_peak") is not None else "–")
        rows.append([name, f"{r['p50_ms']:.0f}", f"{r['p90_ms']:.0f}", f"{r['p99_ms']:.0f}", _fmt(r.get("load_ms"), 0),
                     f"{r.get('speedup_vs_torch_eager', 0):.2f}×", f"{r.get('gflops_per_s') or 0:.0f}", pct,
                     f"{r.get('peak_rss_mb') or 0:.0f}", _settings(r["ort_settings"]) if "ort_settings" in r else "–"])
    return (["runtime", "p50 ms", "p90 ms", "p99 ms", "load ms", "speed-up vs torch eager", "GFLOP/s", "% of peak",
             "peak RSS MB", "ONNX Runtime settings"], rows)


def realistic_text(record: dict[str, Any] | None) -> str:
    if not record:
        return ""
    tuned = (record.get("tuning") or {}).get("chosen")
    return (f"Speed at a typical nnU-Net 3d_fullres size: a random-weight PlainConvUNet, patch "
            f"{'x'.join(map(str, record['patch_size']))}, features {record['architecture'].get('features_per_stage')}; "
            f"{record['flops_per_patch'] / 1e9:.0f} GFLOP per patch. INT8 (the QDQ file on each runtime; "
            f"int8_ir@openvino: the OpenVINO IR by NNCF's OpenVINO backend) is calibrated on random patches and "
            f"bf16@openvino is the fp32 file run in bf16: their speed is real, their accuracy cannot be judged "
            f"with random weights (the demo's bf16 variant is gated). ONNX Runtime settings chosen by the search: "
            f"{_settings(tuned) if tuned is not None else 'not searched'}. " + peak_text(record.get("peak") or {}))


def verdict_lists(folds: list[dict[str, Any]]) -> tuple[list[str], list[str], list[str]]:
    """(failed, skipped, reasons): the variants that failed a patch or whole-case gate, those not
    run because this machine cannot (a bf16 variant on a CPU without bf16), and why not."""
    failed, skipped, reasons = [], [], []
    for e in folds:
        checks = [(n, v) for n, v in ((e["parity"] or {}).get("variants", {})).items()]
        checks += [(f"{n} on whole cases", v) for n, v in ((e.get("case_parity") or {}).get("variants", {})).items()]
        for name, v in checks:
            if v.get("skipped"):
                skipped.append(f"{_fold_label(e)}: {name}")
                why = v["skipped"].rsplit(", but ", 1)[-1]  # the cause, without the file it names
                reasons += [why] if why not in reasons else []
            elif not v["passed"]:
                failed.append(f"{_fold_label(e)}: {name}")
    return failed, skipped, reasons


def build_report(entries: list[dict[str, Any]], *, md_path: str | Path, html_path: str | Path,
                 plot_path: str | Path, summary_path: str | Path, realistic_path: str | Path | None = None) -> None:
    """Write the Markdown and HTML reports, the latency plot and the JSON digest."""
    folds = load_entries(entries)
    realistic = _load(str(realistic_path)) if realistic_path else None
    latency_plot(folds, Path(plot_path))
    summary = summarize(folds)
    summary["targets"] = {model: model_targets(group) for model, group in by_model(folds).items()}
    if realistic:
        summary["benchmark_machines"] = benchmark_machines(folds, realistic)
        summary["realistic"] = {"targets": realistic["targets"],
                                "p50_ms": {k: v.get("p50_ms") for k, v in realistic["results"].items()}}
    Path(summary_path).parent.mkdir(parents=True, exist_ok=True)
    Path(summary_path).write_text(json.dumps(summary, indent=2) + "\n")
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    machine = summary["machine"]
    failed, skipped, reasons = verdict_lists(folds)
    verdict = ("All variants passed their gates." if not failed else
               f"{len(failed)} variant(s) FAILED their gate: " + "; ".join(failed))
    if skipped:
        verdict += (f" {len(skipped)} variant(s) SKIPPED, not runnable on this machine "
                    f"({'; '.join(reasons)}): " + "; ".join(skipped))
    models = sorted({f"{e['dataset']} / {e['model']}" for e in folds})
    intro = (f"nnbridge {__version__}, generated {now} on {machine['cpu']} "
             f"({machine['cores']} cores). {len(folds)} fold(s) of {len(models)} model(s): "
             + "; ".join(models) + ". " + machine_text(benchmark_machines(folds, realistic))).strip()

    md = [f"# nnbridge report\n\n{intro}\n\n**{verdict}**\n"]
    body = [f"<h1>nnbridge report</h1><p>{html.escape(intro)}</p>"
            f"<p class=\"{'fail' if failed else 'pass'}\"><b>{html.escape(verdict)}</b></p>"]
    for title, text, table in sections(folds, realistic):
        if table is None:
            continue
        md.append(f"## {title}\n\n{text}\n\n{_md_table(table)}\n")
        body.append(f"<h2>{html.escape(title)}</h2><p>{html.escape(text)}</p>{_html_table(table)}")
        if title == "Benchmark":
            md.append(f"![latency]({os.path.relpath(plot_path, Path(md_path).parent)})\n")
            png = base64.b64encode(Path(plot_path).read_bytes()).decode()
            body.append(f'<p><img alt="latency per variant" src="data:image/png;base64,{png}"></p>')
    Path(md_path).write_text("\n".join(md))
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:1em 0;font-size:13px}"
             "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}th{background:#f2f2f2}"
             ".pass{color:#17692e}.fail{color:#b00020;font-weight:bold}")
    Path(html_path).write_text(
        f"<!doctype html><html><head><meta charset=\"utf-8\"><title>nnbridge report</title>"
        f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n"
    )
