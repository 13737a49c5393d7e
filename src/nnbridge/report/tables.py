"""Tables: every detail table of the report, as text cells computed from the records (the
templates only lay them out). A verdict cell is a :class:`Mark`, which carries its status, so the
HTML colours it without reading the text."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..core.cpu import describe_cpu
from ..core.keys import Variant
from ..core.records import BenchResult, Coverage, Peak, RealisticRecord
from ..core.stats import median
from .cards import TORCH_EAGER, model_points, model_targets
from ..predict.components import describe
from .collect import RunResults


class Mark(str):
    """A cell whose text is a verdict; ``status`` is ``pass``, ``fail`` or ``skip``."""

    status: str

    def __new__(cls, text: str, status: str) -> Mark:
        cell = super().__new__(cls, text)
        cell.status = status
        return cell


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]


@dataclass
class Section:
    """One titled part of the report: an explanation and a table (``None``: the run has no data)."""

    anchor: str
    title: str
    text: str
    table: Table | None


def fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e-3 or abs(value) >= 1e4 else f"{value:.{digits}f}"
    return str(value)


def settings_text(settings: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in settings.items()) or "ORT defaults"


SEVEN_BIT_REMEDY = ("weight_type: u8 keeps 8 bits without saturation on ONNX Runtime, OpenVINO then runs those "
                    "convolutions in fp32; accuracy_aware tries it when it misses")


def _gate_mark(passed: bool, skipped: str | None, failures: list[str]) -> Mark:
    if passed:
        return Mark("PASS", "pass")
    if skipped:
        return Mark(f"SKIPPED: {skipped}", "skip")
    return Mark("FAIL: " + "; ".join(failures), "fail")


# ---- across folds -----------------------------------------------------------------------------


def overview_table(run: RunResults) -> Table | None:
    """Per model and variant across its folds: gates passed, worst Dice vs torch, median latency and
    speed-ups (a model column when the report holds several models). Speed-ups are the median over
    folds of the per-fold ratios (each ratio from one run)."""
    models = run.models()
    rows = []
    for model, folds in models.items():
        prefix = [model] if len(models) > 1 else []
        fp32 = {f.fold: f.benchmark.results.get(Variant("onnx_fp32")) for f in folds if f.benchmark}
        for p in model_points(folds):
            vs_fp32 = median(base.p50_ms / r.p50_ms for f in folds if f.benchmark
                             and (r := f.benchmark.results.get(p.variant)) and r.timed
                             and (base := fp32.get(f.fold)) and base.timed)
            n_gates, skipped = p.folds_total, p.folds_total - p.folds_gated
            if p.reference or not n_gates:
                gate: str = "reference" if p.reference else "–"
            elif p.folds_passed == n_gates:
                gate = Mark(f"{p.folds_passed}/{n_gates} PASS", "pass")
            elif skipped and skipped == n_gates - p.folds_passed:
                gate = Mark(f"SKIPPED in {skipped}/{n_gates} (not runnable here)", "skip")
            else:
                gate = Mark(f"FAIL in {n_gates - p.folds_passed - skipped}/{n_gates}", "fail")
            pct = median(r.pct_of_peak for r in p.results if r.pct_of_peak is not None)
            rows.append(prefix + [p.label, gate, fmt(p.worst_dice) if n_gates and not p.reference else "–",
                                  fmt(p.p50_ms, 3), fmt(p.speedup, 3), fmt(vs_fp32, 3), fmt(pct, 1)])
    if not rows:
        return None
    header = ["variant", "gate (folds)", "worst class Dice vs torch", "median p50 ms", "speed-up vs torch eager",
              "speed-up vs ONNX fp32", "% of peak"]
    return Table((["model"] if len(models) > 1 else []) + header, rows)


def _ops_text(ops: list[dict[str, Any]]) -> str:
    return ", ".join(f"{o['op']} {100 * o['share']:.0f} %" for o in ops)


def _target_cells(t: dict[str, Any]) -> list[str]:
    cells: list[str] = []
    for key, met, goal in (("best_fp32_exact", "fp32_target_met", t["fp32_target"]),
                           ("best_int8", "int8_target_met", t["int8_target"])):
        best = t.get(key)
        ceiling = t.get(key.replace("best_", "").replace("fp32_exact", "fp32") + "_ceiling")
        verdict = f"met (≥ {goal:g}×)" if t[met] else f"missed (< {goal:g}×)"
        if ceiling and not t[met]:
            verdict += (f"; beyond this machine: the measured peak allows at most {ceiling:.2f}×" if ceiling < goal
                        else f"; the measured peak allows up to {ceiling:.2f}×")
        passed = t[met]
        kind = "fp32" if key == "best_fp32_exact" else "int8"
        if f"{kind}_peak_target" in t:  # the realistic size: the share of the measured peak too
            share, goal_pct = (best or {}).get("pct_of_peak"), t[f"{kind}_peak_target"]
            ok = t[f"{kind}_peak_target_met"]
            label = {"fp32": "fp32", "int8": "INT8"}[kind]
            verdict += (f"; share of the {label} peak unknown (no peak measured)" if ok is None else
                        f"; {share:.0f} % of the {label} peak: " + (f"met (≥ {goal_pct:g} %)" if ok
                                                                    else f"missed (< {goal_pct:g} %)"))
            passed = passed and ok is not False
        verdict_cell = Mark(verdict, "pass" if passed else "fail")
        cells += [f"{best['name']} {best['speedup']:.2f}×", verdict_cell] if best else ["none passed its gate",
                                                                                        verdict_cell]
    dominant = t.get("dominant_ops") or {}
    cells.append("; ".join(f"{name}: {_ops_text(ops)}" for name, ops in dominant.items()) or "–")
    return cells


def targets_table(run: RunResults) -> Table | None:
    """Per model: the best exact fp32 runtime and the best gated INT8 variant against torch eager,
    whether each meets its target, and where the time goes when not; then the realistic-size
    network (speed only)."""
    rows = []
    for model, folds in run.models().items():
        t = model_targets(folds)
        if t["torch_eager_p50_ms"] is None:
            continue
        rows.append([model, "x".join(map(str, t["patch"])), fmt(t["torch_eager_p50_ms"], 3), *_target_cells(t)])
    realistic = run.realistic
    if realistic and realistic.targets:
        eager = realistic.results.get(TORCH_EAGER)
        rows.append(["realistic nnU-Net, random weights (INT8: speed only, no gate)",
                     "x".join(map(str, realistic.patch_size)), fmt(eager.p50_ms if eager else None, 3),
                     *_target_cells(realistic.targets)])
    if not rows:
        return None
    return Table(["model", "patch", "torch eager p50 ms", "best exact fp32 (gate passed)", "fp32 target",
                  "best INT8 (gate passed)", "INT8 target", "where the time goes (targets missed)"], rows)


# ---- per fold ---------------------------------------------------------------------------------


def validation_table(run: RunResults) -> Table | None:
    """nnU-Net's own validation Dice of each fold (from ``validation/summary.json``)."""
    rows, classes = [], []
    for f in run.folds:
        if not f.validation:
            continue
        labels = f.parity.labels if f.parity else {}
        for cls in f.validation.mean:
            name = labels.get(str(cls), str(cls))
            if name not in classes:
                classes.append(name)
        dice = {labels.get(str(c), str(c)): v.get("Dice") for c, v in f.validation.mean.items()}
        rows.append((f.label, dice, f.validation.foreground_mean.get("Dice")))
    if not rows:
        return None
    header = ["fold", *[f"Dice {c}" for c in classes], "foreground mean"]
    return Table(header, [[label, *[fmt(d.get(c)) for c in classes], fmt(fg)] for label, d, fg in rows])


def weights_table(run: RunResults) -> Table | None:
    rows = []
    for f in run.folds:
        for name, rec in (("ONNX fp32", f.export), ("TorchScript", f.torchscript)):
            if not rec:
                continue
            worst = max((c.max_abs_err for c in rec.shape_checks if c.max_abs_err is not None), default=None)
            shapes = "; ".join("x".join(str(s) for s in c.shape[2:]) for c in rec.shape_checks)
            source = getattr(rec, "source", None)
            origin = f" ({source.kind}: {source.weights_origin})" if source else ""
            ok = rec.weights.ok is not False and rec.weights.summary.startswith("weights verified")
            rows.append([f.label, name, Mark(rec.weights.summary + origin, "pass" if ok else "fail"), shapes,
                         fmt(worst)])
        simp = f.simplify
        if simp:
            state = (f"simplified by {simp.tool or 'onnxsim'}, outputs verified" if simp.kept_simplified
                     else f"not simplified ({simp.error or 'unknown'}); exact copy kept")
            rows.append([f.label, "ONNX simplified", f"{state}; nodes {simp.nodes_before} → {simp.nodes_after}",
                         "", fmt(simp.check_max_abs_err)])
            norms = simp.norms or {}
            if norms.get("rewritten") or norms.get("error"):
                groups = f", {norms['group_norms']} of them GroupNorm's" if norms.get("group_norms") else ""
                state = (f"{norms['rewritten']} of {norms['instance_norms']} InstanceNormalization{groups} as "
                         f"two-pass reductions ({norms['largest_voxels']} values per channel or group ≥ "
                         f"{norms['min_voxels']}); "
                         f"{(norms.get('weights') or {}).get('summary', '')}"
                         + (f"; each alone within {norms['each']['max_abs_err']:.2g}" if norms.get("each") else "")
                         + (f"; {norms['check_note']}" if norms.get("check_note") else "")
                         if norms.get("rewritten")
                         else f"InstanceNormalization left fused: {norms['error']}")
                shape = "x".join(str(s) for s in norms.get("check_shape", [])[2:])
                rows.append([f.label, "ONNX simplified: normalization", state, shape and f"{shape} (Gaussian)",
                             fmt(norms.get("check_max_abs_err"))])
    if not rows:
        return None
    return Table(["fold", "artifact", "weights / check", "eager-vs-export shapes", "max abs err"], rows)


def parity_table(run: RunResults) -> Table | None:
    rows = []
    for f in run.folds:
        if not f.parity:
            continue
        for v, g in f.parity.variants.items():
            dice = ", ".join(f"{k} {fmt(x)}" for k, x in g.dice.items())
            if worst := (g.extra.get("case_dice") or {}).get("worst"):
                dice += f"; worst case {fmt(worst['dice'])} ({worst['class']}, {worst['case']})"
            if g.extra.get("decided_early"):
                dice += f" (decided on {g.extra.get('n_patches')} patches)"
            q = f.quantize.get(v.name)
            failures = list(g.failures)
            if failures and q is not None and q.seven_bit_by_cpu:  # what the miss may come from, and the remedy
                failures.append(f"7-bit weights, chosen for a CPU without INT8 dot products ({SEVEN_BIT_REMEDY})")
            rows.append([f.label, v.key, fmt(g.max_abs_err), fmt(g.max_rel_err), fmt(g.mean_abs_err), dice or "–",
                         fmt(g.voxel_agreement, 6), _gate_mark(g.passed, g.skipped, failures)])
    if not rows:
        return None
    return Table(["fold", "variant", "max abs err", "max rel err", "mean abs err", "Dice vs torch",
                  "voxel agreement", "gate"], rows)


def intake_table(run: RunResults) -> Table | None:
    """Where each fold came from when that is not a trained model folder with nnU-Net's
    preprocessed data: a model zip, an image folder (how its cases were split, where the patches'
    foreground came from), a trainer class that is not installed."""
    rows = []
    for f in run.folds:
        intake, patches = f.intake or {}, f.patches or {}
        fallback = f.export.extra.get("trainer_fallback") if f.export else None
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
        rows.append([f.label, intake.get("zip") or intake.get("folder", ""), fallback or "as trained",
                     intake.get("images") or intake.get("preprocessed") or "", how, held or "–", foreground])
    if not rows:
        return None
    return Table(["fold", "model", "trainer", "data", "calibration / held-out split", "held-out cases",
                  "patch foreground"], rows)


def run_time_table(run: RunResults) -> Table | None:
    """The pipeline's own cost per stage (rule): jobs, their summed and longest wall time."""
    stages = (run.stage_times or {}).get("stages") or []
    if not stages:
        return None
    return Table(["stage", "jobs", "wall time (s, summed over jobs)", "longest job (s)"],
                 [[s["rule"], str(s["jobs"]), fmt(float(s["total_s"]), 1), fmt(float(s["max_s"]), 1)]
                  for s in stages])


def run_time_text(run: RunResults) -> str:
    times = run.stage_times or {}
    if not times.get("jobs"):
        return ""
    slowest = ", ".join(times.get("slowest") or [])
    return (f"Wall time of the jobs behind these results, from Snakemake's records: {times['jobs']} jobs, "
            f"{times['job_seconds']:.0f} s of job time, {times['span_s']:.0f} s from the first job's start to "
            f"the last one's end (jobs run side by side where cores and the bench resource allow; a stage "
            f"not rerun keeps the time of the run that made it). Slowest stages: {slowest}.")


def _pct(result: BenchResult) -> str:
    """``% of peak`` with the peak it refers to (fp32, INT8 or bf16)."""
    if result.pct_of_peak is None:
        return "–"
    return f"{fmt(result.pct_of_peak, 1)} ({result.peak_kind or 'fp32'})"


def runtime_settings(result: BenchResult) -> str:
    """How a benchmark result ran: threads and the runtime's options (the tuned ones for ONNX Runtime)."""
    threads = f"{result.threads} thread(s)" if result.threads else "runtime's threads"
    backend = result.backend
    if backend == "onnxruntime":
        return f"{threads}, {settings_text(result.ort_settings or {})}"
    if backend == "openvino":
        if result.inference_precision == "bf16":
            return f"{threads}, bf16 precision hint (the bf16 variant), latency mode"
        return f"{threads}, f32 precision hint (INT8 kernels where quantized), latency mode"
    if backend in ("torch", "torch_arch"):
        return f"{threads}, eager, no_grad"
    return f"{threads}, {backend}" if backend else threads


def benchmark_table(run: RunResults) -> Table | None:
    rows = []
    for f in run.folds:
        if not f.benchmark:
            continue
        shape = "x".join(str(s) for s in f.benchmark.shape)
        for v, r in f.benchmark.results.items():
            if not r.timed:
                why = f"error: {r.error}" if r.error else f"skipped: {r.skipped}"
                rows.append([f.label, v.key, shape, Mark(why, "fail" if r.error else "skip"),
                             "", "", "", "", "", "", "", "", ""])
                continue
            size = r.file_size_bytes
            rows.append([f.label, v.key, shape, fmt(r.p50_ms, 3), fmt(r.p90_ms, 3), fmt(r.p99_ms, 3),
                         fmt(r.load_ms, 1), fmt(r.peak_rss_mb, 1), fmt(size / 1e6 if size else None, 3), fmt(r.gflops_per_s, 1),
                         _pct(r), fmt(r.speedup_vs_torch_eager, 3), runtime_settings(r)])
    if not rows:
        return None
    return Table(["fold", "backend / variant", "input", "p50 ms", "p90 ms", "p99 ms", "load ms", "peak RSS MB",
                  "file MB", "GFLOP/s", "% of peak", "speed-up vs torch eager", "runtime settings"], rows)


def profile_table(run: RunResults) -> Table | None:
    """The operators that take the time of each ONNX variant and runtime, on the first fold with a profile."""
    for f in run.folds:
        if not f.benchmark:
            continue
        rows = [[f.label, v.key, r.backend or "?", _ops_text(r.op_profile[:4])]
                for v, r in f.benchmark.results.items() if r.op_profile]
        if rows:
            return Table(["fold", "variant", "runtime", "share of kernel time (top operators)"], rows)
    return None


def sweep_table(run: RunResults) -> Table | None:
    """p50 per thread count and per patch at a larger batch, on the first fold that has them."""
    for f in run.folds:
        sw = f.benchmark.sweep if f.benchmark else None
        if not sw or not sw.results:
            continue
        threads = [str(t) for t in sw.threads]
        rows = []
        for v, r in sw.results.items():
            by = r["p50_ms_by_threads"]
            first, last = by.get(threads[0]), by.get(threads[-1])
            scaling = f"{first / last:.2f}×" if first and last else "–"
            rows.append([f.label, v.key, *[fmt(by.get(t), 3) for t in threads], scaling,
                         fmt(r.get("p50_ms_per_patch_at_batch"), 3)])
        return Table(["fold", "variant", *[f"p50 ms, {t} thread(s)" for t in threads],
                      f"speed-up 1 → {threads[-1]} threads",
                      f"ms per patch at batch {sw.batch} ({threads[-1]} threads)"], rows)
    return None


def peak_text(peak: Peak | None) -> str:
    """What the "% of peak" columns refer to: the measured fp32 (and INT8, bf16) peaks and how."""
    if not peak or not peak.gflops:
        return ""
    threads = f" with {peak.threads} thread(s)" if peak.threads else ""
    text = (f"This machine's fp32 peak{threads} is {peak.gflops:.0f} GFLOP/s, the best "
            f"micro-benchmark ({peak.method or 'method not recorded'}")
    others = [f"{v['method'].split(',')[0]}: {v['gflops']:.0f}" for v in (peak.candidates or {}).values()
              if v.get("gflops") and v["method"] != peak.method]
    text += (f"; also measured {'; '.join(others)})" if others else ")")
    if peak.int8_gops:
        text += f"; INT8 variants are measured against the INT8 peak, {peak.int8_gops:.0f} GOP/s ({peak.int8_method})"
    if peak.bf16_gflops:
        text += f"; bf16 runs against the bf16 peak, {peak.bf16_gflops:.0f} GFLOP/s ({peak.bf16_method})"
    source = peak.source or ""
    where = f" ({source})" if source.startswith("measured here") else ""
    return text + (f"{where}. A measured peak, not a clock × vector-unit figure: above 100 % a runtime beat the "
                   "micro-benchmarks.")


def peak_note(run: RunResults) -> str:
    """One sentence on the FLOPs per patch and the measured peaks the percentages refer to."""
    for f in run.folds:
        b = f.benchmark
        if b and b.peak and b.peak.gflops and b.flops_per_patch:
            return (f" A patch costs {b.flops_per_patch / 1e9:.2f} GFLOP (convolutions, multiply-add = 2). "
                    + peak_text(b.peak)
                    + _adjacent_text(r for g in run.folds if g.benchmark for r in g.benchmark.results.values()))
    return ""


def accelerator_note(run: RunResults) -> str:
    """One sentence per GPU backend: benchmarked, or skipped and why."""
    for f in run.folds:
        status = f.benchmark.accelerators if f.benchmark else None
        if status:
            return " GPU backends: " + "; ".join(f"{k}: {v}" for k, v in status.items()) + "."
    return ""


def quantize_table(run: RunResults) -> Table | None:
    rows = []
    for f in run.folds:
        for name, q in f.quantize.items():
            if q.method == "static":
                how = (f"static {q.format}, {'per channel' if q.per_channel else 'per tensor'}, "
                       f"{q.calibrate_method}")
            elif q.method in ("nncf", "openvino_int8"):
                how = (f"NNCF post-training, preset {q.preset}" if q.method == "nncf" else
                       f"NNCF post-training on the OpenVINO model, preset {q.preset}, OpenVINO IR")
                if q.ignored_types:
                    how += f", {', '.join(q.ignored_types)} unquantized"
            elif q.method == "openvino_fp32":
                how = "fp32 graph as OpenVINO IR (.xml + .bin)"
            elif q.method == "bf16":
                how = ("fp32 graph, OpenVINO bf16 inference" if q.native_bf16_here is not False
                       else f"fp32 graph, OpenVINO bf16 inference; not runnable here: {q.bf16_unavailable}")
            else:
                how = q.method
            cov = q.coverage  # ONNX Runtime's INT8 coverage (bf16 runs on OpenVINO only)
            nodes = f"{cov.n_low_precision_nodes}/{cov.n_compute_nodes}" if cov else "–"
            share = f"{100 * cov.flop_share:.1f} %" if cov and cov.flop_share is not None else "–"
            patches = str(q.n_calibration_patches) + (" (ranges reused)" if (q.calibration or {}).get("reused") else "")
            rows.append([f.label, name, how, patches,
                         fmt(q.size_bytes / 1e6 if q.size_bytes else None, 3), nodes, share,
                         q.accuracy_verdict or "–"])
    if not rows:
        return None
    return Table(["fold", "variant", "method", "calibration patches", "file MB", "compute nodes in INT8 (ORT)",
                  "FLOPs in INT8 (ORT)", "accuracy-aware / accuracy control"], rows)


def _op_list(cov: Coverage, precision: str) -> str:
    return ", ".join(f"{o['op']}×{o['count']}" for o in cov.ops if o["precision"] == precision) or "–"


def coverage_table(run: RunResults) -> Table | None:
    """What runs in INT8 (bf16 for a bf16 variant) and what falls back to fp32, from the model each
    runtime builds."""
    rows = []
    for f in run.folds:
        for name, q in f.quantize.items():
            for backend, cov in (("onnxruntime", q.coverage), ("openvino", q.coverage_openvino)):
                if not cov:
                    continue
                low = cov.precision
                share = f"{100 * (cov.flop_share or 0.0):.1f} % {low.upper() if low == 'int8' else low}"
                rows.append([f.label, name, backend, share, _op_list(cov, low), _op_list(cov, "float"),
                             str(cov.n_conversions), ", ".join(cov.float_compute_nodes) or "none"])
    if not rows:
        return None
    return Table(["fold", "variant", "backend", "FLOPs in low precision", "low-precision operators", "fp32 operators",
                  "conversions", "compute layers in fp32 (PyTorch modules)"], rows)


def accuracy_aware_table(run: RunResults) -> Table | None:
    """Each step of the accuracy-aware INT8 loops: blocks kept in fp32, Dice, latency."""
    rows = []
    for f in run.folds:
        for name, q in f.quantize.items():
            aa = q.accuracy_aware
            if not aa:
                continue
            if aa.get("fp32_latency_ms") is not None:  # not on a fold that applied another's decision unchecked
                rows.append([f.label, name, "fp32 reference", "–", "–", fmt(aa["fp32_latency_ms"], 3)])
            for step in aa["steps"]:
                dice = (", ".join(f"{k} {fmt(v)}" for k, v in step["dice"].items())
                        or f"not checked here (as decided on fold {aa.get('decided_on_fold')}; validate gates it)")
                notes = []
                if step.get("symmetric_activations") is False and (aa.get("asymmetric_fallback")
                                                                   or aa.get("decided_on_fold")):
                    notes.append("asymmetric activations")
                if step.get("weight_type") == "u8":
                    notes.append("8-bit u8 weights")
                elif step.get("reduce_range") and aa.get("u8_weights_fallback"):
                    notes.append("7-bit weights")
                label = f"step {step['step']}" + (f" ({', '.join(notes)})" if notes else "")
                if len(aa["steps"]) > 1 and step["step"] == aa.get("kept_step"):
                    label += ", kept"
                rows.append([f.label, name, label, ", ".join(step["fp32_modules"]) or "none (all INT8)",
                             dice, fmt(step["latency_ms"], 3)])
    if not rows:
        return None
    return Table(["fold", "variant", "step", "blocks kept in fp32 (PyTorch modules)",
                  "Dice vs fp32 (calibration patches)", "latency ms"], rows)


def case_parity_table(run: RunResults) -> Table | None:
    """Per fold and variant: agreement with nnU-Net's predictor on whole cases, Dice against the
    ground truth of both, the first diverging stage, and the end-to-end speed ratio."""
    rows = []
    for f in run.folds:
        cp = f.case_parity
        if not cp:
            continue
        for name, v in cp.variants.items():
            if v.skipped:
                rows.append([f.label, f"{name} ({v.backend})", *["–"] * 9, Mark(f"SKIPPED: {v.skipped}", "skip")])
                continue
            cases = list(v.cases.values())
            truth_ours = [min(c["dice_nnbridge_vs_truth"].values()) for c in cases if c.get("dice_nnbridge_vs_truth")]
            truth_ref = [min(c["dice_nnunet_vs_truth"].values()) for c in cases if c.get("dice_nnunet_vs_truth")]
            rows.append([
                f.label, f"{name} ({v.backend})", str(len(cases)),
                f"{100 * v.min_voxel_agreement:.4f} %", fmt(v.min_dice_vs_nnunet),
                fmt(max((c.get("prob_max_abs_diff", 0.0) for c in cases), default=None)),
                fmt(median(truth_ref)), fmt(median(truth_ours)), v.first_divergence or "none",
                f"{cp.nnunet.total_s:.2f} / {v.total_s:.2f}" if cp.nnunet else "–",
                f"{v.speedup_vs_nnunet:.2f}×", Mark("PASS", "pass") if v.passed else Mark("FAIL", "fail"),
            ])
    if not rows:
        return None
    return Table(["fold", "variant (runtime)", "cases", "min voxel agreement", "min Dice vs nnU-Net",
                  "max prob. diff", "median worst-class Dice vs truth: nnU-Net", "nnbridge",
                  "first divergence", "nnU-Net / nnbridge s", "speed-up", "gate"], rows)


def case_stage_table(run: RunResults) -> Table | None:
    """Seconds per stage, summed over the validation cases of each fold (a cascade also has its
    previous stage)."""
    parities = [(f, f.case_parity) for f in run.folds if f.case_parity and f.case_parity.nnunet]
    stages = list(dict.fromkeys(k for _, cp in parities for k in cp.nnunet.timings_s))

    def cells(timings: dict[str, float]) -> list[str]:
        return [f"{timings[k]:.3f}" if k in timings else "–" for k in stages]

    rows = []
    for f, cp in parities:
        rows.append([f.label, "nnU-Net (torch)", *cells(cp.nnunet.timings_s)])
        for name, v in cp.variants.items():
            if not v.skipped:
                rows.append([f.label, f"nnbridge {name} ({v.backend})", *cells(v.timings_s)])
    if not rows:
        return None
    return Table(["fold", "predictor", *stages], rows)


def deployment_table(run: RunResults) -> Table | None:
    """Per bundled model: its previous stage (a cascade), the postprocessing nnU-Net chose for it
    and for its ensembles, as the bundle records them."""
    rows, seen = [], set()
    for f in run.folds:
        if not f.bundle or f.model_name in seen:
            continue
        seen.add(f.model_name)
        b = f.bundle.extra
        stage, own, ensembles = b.get("previous_stage"), b.get("postprocessing"), b.get("ensembles") or []
        if not (stage or own or ensembles):
            continue
        rows.append([
            f.model_name,
            f"{stage['configuration']} ({stage['model']}), in the bundle" if stage else "–",
            f"{describe(own['steps'])} ({own['source']})" if own else "none recorded",
            "; ".join(f"with {' + '.join(m for m in r['members'] if m != f.model)}: {describe(r['steps'])}"
                      for r in ensembles) or "–",
        ])
    if not rows:
        return None
    return Table(["model", "previous stage", "postprocessing (nnU-Net's choice)", "ensembles (-m A B)"], rows)


def bundle_table(run: RunResults) -> Table | None:
    """Per model: the shipped variants, the runtime chosen for each and why."""
    rows = []
    for model, folds in run.models().items():
        b = next((f.bundle for f in folds if f.bundle), None)
        if not b:
            continue
        for name, v in b.variants.items():
            lat = ", ".join(f"{k} {ms:.1f} ms" for k, ms in sorted(v.latency_ms.items()))
            run_settings = v.run_settings.get(v.backend or "")
            run_text = (f"{run_settings.get('threads') or 'runtime default'} / {run_settings.get('batch_size', 1)}"
                        if run_settings else "not recorded")
            bf16 = v.inference_precision == "bf16"
            backend = (Mark(v.backend + (" (bf16)" if bf16 else ""), "pass") if v.backend
                       else Mark("none passed", "fail"))
            shipped = name + (" (OpenVINO IR)" if v.kind == "ir" else "") + (" (default)" if name == b.default_variant else "")
            rows.append([model, shipped, ", ".join(b.folds),
                         backend, lat, "–" if bf16 else settings_text(v.ort_settings), run_text])
    if not rows:
        return None
    return Table(["model", "variant", "folds", "runtime used by nnbridge predict", "median p50 per runtime",
                  "ONNX Runtime settings", "threads / batch (from the sweep)"], rows)


def emulated_table(run: RunResults) -> Table | None:
    """Per model and emulated CPU: each variant's re-check of its gate there (``nnbridge verify``
    under QEMU), per runtime and fold."""
    rows = []
    for model, checks in run.emulated().items():
        for cpu, e in checks.items():
            if e.skipped:
                rows.append([model, cpu, "–", "–", "–", "–", Mark(f"SKIPPED: {e.skipped}", "skip")])
                continue
            for stage, record in e.records.items():
                for name, per in record.get("variants", {}).items():
                    for backend, results in per.items():
                        for fold, r in results.items():
                            label = f"{stage} stage: {name}" if stage else name
                            if r.get("not_rechecked"):
                                rows.append([model, cpu, label, backend, fold, "–",
                                             Mark(f"not re-checked: {r['not_rechecked']}", "skip")])
                                continue
                            bound = r.get("bounds", {}).get("min_dice")
                            dice = f"{fmt(r.get('min_dice'))} (bound {fmt(bound)})"
                            if r.get("bounds", {}).get("min_case_dice") is not None:
                                dice += (f"; worst case {fmt(r.get('min_case_dice'))} "
                                         f"(bound {fmt(r['bounds']['min_case_dice'])})")
                            rows.append([model, cpu, label, backend, fold, dice,
                                         _gate_mark(bool(r.get("passed")), None, r.get("failures") or [])])
    if not rows:
        return None
    return Table(["model", "emulated CPU", "variant", "runtime", "fold",
                  "worst-class Dice on the self-check set", "re-check"], rows)


def emulated_text(run: RunResults) -> str:
    done = [(cpu, e) for checks in run.emulated().values() for cpu, e in checks.items() if not e.skipped]
    took = "; ".join(f"{cpu} ({describe_cpu(e.cpu)}): {e.seconds:.0f} s" for cpu, e in done
                     if e.seconds is not None)
    return ("`nnbridge verify` of each bundle on the CPUs listed in `verify.emulated_cpus`, emulated by QEMU's "
            "user mode: the real ONNX Runtime and OpenVINO take the emulated CPU's code paths (an AVX2 CPU "
            "without VNNI: the INT8 kernels that saturate), with the threads the gates ran with. A variant "
            "that fails there would be refused by `nnbridge predict` on such a CPU; for CPUs without VNNI, build "
            "with the no-VNNI defaults (config/README.md, \"Building on one kind of CPU for another\")."
            + (f" The emulated CPUs as nnbridge read them, and the time each check took: {took}." if took else ""))


def tuning_table(run: RunResults) -> Table | None:
    """The ONNX Runtime session search of each tuned variant: p50 per candidate, the choice."""
    rows = []
    for f in run.folds:
        for v, t in (f.benchmark.tuning if f.benchmark else {}).items():
            cands = "; ".join(f"{settings_text(c['settings'])}: "
                              + ("not timed (a per-call setting, the runs are long)" if c.get("skipped")
                                 else f"{fmt(c['p50_ms'], 3)} ms") for c in t.candidates)
            rows.append([f.label, v.key, cands, settings_text(t.chosen), fmt(t.gain_vs_default, 3)])
    if not rows:
        return None
    return Table(["fold", "variant", "p50 per candidate", "chosen", "speed-up vs ORT defaults"], rows)


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f}"


def realistic_table(record: RealisticRecord | None) -> Table | None:
    """The realistic-size benchmark: every runtime at the large patch, ratios to torch eager."""
    if not record:
        return None
    rows = []
    for v, r in record.results.items():
        if not r.timed:
            why = Mark(f"skipped: {r.skipped}", "skip") if r.skipped else Mark(f"error: {r.error}", "fail")
            rows.append([v.key, why, *[""] * 8])
            continue
        pct = f"{r.pct_of_peak:.0f} % of {r.peak_kind or 'fp32'}" if r.pct_of_peak is not None else "–"
        rows.append([v.key, f"{r.p50_ms:.0f}", _ms(r.p90_ms), _ms(r.p99_ms), _ms(r.load_ms),
                     f"{r.speedup_vs_torch_eager or 0:.2f}×", f"{r.gflops_per_s or 0:.0f}", pct,
                     f"{r.peak_rss_mb or 0:.0f}", settings_text(r.ort_settings) if r.ort_settings is not None else "–"])
    return Table(["runtime", "p50 ms", "p90 ms", "p99 ms", "load ms", "speed-up vs torch eager", "GFLOP/s",
                  "% of peak", "peak RSS MB", "ONNX Runtime settings"], rows)


def realistic_text(record: RealisticRecord | None) -> str:
    if not record:
        return ""
    tuned = record.tuning.chosen if record.tuning else None
    return (f"Speed at a typical nnU-Net 3d_fullres size: a random-weight PlainConvUNet, patch "
            f"{'x'.join(map(str, record.patch_size))}, features {record.architecture.get('features_per_stage')}; "
            f"{(record.flops_per_patch or 0) / 1e9:.0f} GFLOP per patch. INT8 (the QDQ file on each runtime; "
            f"int8_ir@openvino: the OpenVINO IR by NNCF's OpenVINO backend) is calibrated on random patches and "
            f"bf16@openvino is the fp32 file run in bf16: their speed is real, their accuracy cannot be judged "
            f"with random weights (the demo's bf16 variant is gated). ONNX Runtime settings chosen by the search: "
            f"{settings_text(tuned) if tuned is not None else 'not searched'}. " + _load_text(record)
            + peak_text(record.peak) + _adjacent_text(record.results.values()))


def _adjacent_text(results: Iterable[BenchResult]) -> str:
    """How many results are measured against the peak kernel they timed in their own process
    right after their timing, and those peaks by kind."""
    seen: dict[str, list[float]] = {}
    timed = 0
    for r in results:
        timed += r.pct_of_peak is not None
        if r.peak_source == "adjacent" and r.adjacent_peak and r.peak_kind:
            seen.setdefault(r.peak_kind, []).append(float(r.adjacent_peak["gflops"]))
    n = sum(len(v) for v in seen.values())
    if not n:
        return ""
    spans = [f"{kind} {min(v):.0f}" + (f"–{max(v):.0f}" if max(v) > min(v) else "") for kind, v in seen.items()]
    others = ("" if n == timed else
              "; the others, whose patch is too short to need it, against the run-wide peak above")
    return (f" {n} of {timed} results are measured against the peak kernel timed in their own process right after "
            f"their timing, so that both numbers come from the same minute ({', '.join(spans)} GFLOP/s or GOP/s; "
            f"the run-wide peak above was measured earlier){others}.")


def _load_text(record: RealisticRecord) -> str:
    """What OpenVINO pays to read and compile the fp32 graph from the ONNX file and from its IR."""
    loads = {v.key: ms for v, ms in (record.load_ms or {}).items() if ms is not None}
    if len(loads) < 2:
        return ""
    return "OpenVINO reads and compiles the fp32 graph in " + " and ".join(
        f"{ms:.0f} ms ({key})" for key, ms in loads.items()) + ". "


def detail_sections(run: RunResults) -> list[Section]:
    """Every detail section, in order (those without data have ``table`` None and are left out)."""
    return [
        Section("overview", "Overview", "Each variant across the folds it was built on: its parity gate, the worst "
                "per-class Dice of its label maps against eager PyTorch, and its median batch-1 latency and speed-ups "
                "(ratios measured in one run). A variant the bundle does not ship is built on a model's reference "
                "fold only, unless the config's comparison.folds is all.", overview_table(run)),
        Section("speed-targets", "Speed targets", "Against torch eager with the same threads, batch 1, median over "
                "folds: the fastest exact fp32 runtime (TorchScript, ONNX fp32 or simplified, on any runtime) should "
                "be ≥ 2× faster, the fastest INT8 variant that passed its Dice gate ≥ 3×. Where a target is missed, "
                "the top operators of that runtime's profile show where the time goes, and the ceiling says whether "
                "any runtime could meet it here: the measured peak over what torch eager achieves (torch already "
                "near the peak leaves no room for a 2× exact speed-up). The realistic-size row is the same check at "
                "a typical 3d_fullres patch, where a network is large enough to use this CPU: there the fastest "
                "exact fp32 runtime should also reach ≥ 90 % of the measured fp32 peak and the fastest INT8 ≥ 80 % "
                "of the INT8 peak, each peak timed in the same process right after the runtime's own timing. bf16 "
                "counts for neither target (not exact, not INT8): its speed-up is in the overview.", targets_table(run)),
        Section("model-quality", "Model quality (nnU-Net validation)",
                "Dice of each fold on its own validation cases, as computed by nnU-Net after training.",
                validation_table(run)),
        Section("intake", "Model intake", "Models from a zip, patches from an image folder preprocessed by the "
                "model's own plans, networks of trainer classes that are not installed (built as nnU-Net's default "
                "trainer builds them, checked by the strict load and the weight proof).", intake_table(run)),
        Section("weights", "Weights and export checks", "Every artifact must carry exactly the checkpoint's "
                "tensors; eager PyTorch and the exported model are compared at two input shapes.", weights_table(run)),
        Section("quantization", "Quantization", "Quantized variants: static INT8 is calibrated on real patches from "
                "the fold's training cases; INT8 coverage is read from the graph ONNX Runtime's CPU provider really "
                "runs. A bf16 variant is the fp32 graph that OpenVINO runs in bf16 (no calibration).",
                quantize_table(run)),
        Section("coverage", "INT8 and bf16 coverage", "Per backend, from the model it really runs (ONNX Runtime's "
                "optimized graph, OpenVINO's compiled runtime model): operators by precision (INT8 for quantized "
                "variants, bf16 for the bf16 variant), conversions between precisions, and the compute layers that "
                "fall back to fp32 (no low-precision kernel, or kept in fp32 on purpose).", coverage_table(run)),
        Section("accuracy-aware", "Accuracy-aware INT8", "Each round keeps the block (a layer with its norm and "
                "nonlinearity) whose fp32 version helps the label maps most in fp32, until the Dice target is met on "
                "the calibration patches or the step budget is spent. The parity gate below is measured on held-out "
                "patches.", accuracy_aware_table(run)),
        Section("patch-parity", "Patch parity against PyTorch", "Held-out patches from each fold's validation cases "
                "(never used for calibration); Dice of the label maps of each variant against eager PyTorch.",
                parity_table(run)),
        Section("case-parity", "Whole-case parity against nnU-Net's predictor", "Each fold's validation cases "
                "predicted end to end by nnUNetPredictor (torch, CPU) and by `nnbridge predict` on the bundle (no "
                "torch), with the same fold, step and mirroring. Stages compared: preprocessed input, aggregated "
                "logits, final labels; nnU-Net sums window logits in float16, so tiny logit differences are "
                "expected.", case_parity_table(run)),
        Section("case-times", "Whole-case time per stage", "Seconds summed over the fold's validation cases, same "
                "thread count for both predictors.", case_stage_table(run)),
        Section("bundle", "Deployable bundle", "`nnbridge predict -m results/<dataset>/<model>/bundle` runs each "
                "variant on the fastest runtime that passed its parity gate on every fold.", bundle_table(run)),
        Section("emulated", "The bundle on emulated deployment CPUs", emulated_text(run), emulated_table(run)),
        Section("cascades-postprocessing", "Cascades and postprocessing in the bundle", "A cascade stage's bundle "
                "holds its previous stage and `nnbridge predict` runs both; the postprocessing "
                "`nnUNetv2_find_best_configuration` chose (for the model, and for ensembles `nnbridge predict -m A B`) "
                "is applied unless `--no-postprocessing`.", deployment_table(run)),
        Section("benchmark", "Benchmark", "Batch-1 latency on one patch, each backend in its own process, all in one "
                "run; compare the ratios." + peak_note(run) + accelerator_note(run), benchmark_table(run)),
        Section("ort-search", "ONNX Runtime session search", "Each candidate in its own process, fewer repetitions "
                "than above; a candidate replaces ORT's defaults only when more than 3 % faster. The benchmark above, "
                "the bundle and nnbridge predict use the choice.", tuning_table(run)),
        Section("threads-batch", "Threads and batch", "p50 latency of the main runtimes at each thread count (batch "
                "1) and per patch when several patches run at once, on the first fold; fewer repetitions than "
                "above.", sweep_table(run)),
        Section("profile", "Where the time goes", "Per-operator profile of each ONNX variant on its runtime (ONNX "
                "Runtime's profiler, OpenVINO's performance counters; OpenVINO names the kernel and its precision in "
                "brackets), measured after the timed runs on the first fold.", profile_table(run)),
        Section("realistic", "Realistic-size benchmark", realistic_text(run.realistic),
                realistic_table(run.realistic)),
        Section("run-time", "Run time of the pipeline", run_time_text(run), run_time_table(run)),
    ]
