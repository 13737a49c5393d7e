"""What a person reads first, computed before anything is rendered: per model, every variant on
every runtime as one point (latency, worst-class Dice against PyTorch, gate), the Pareto front of
speed against accuracy, the speed targets, and the recommended deployment (the card)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

from ..bench.targets import speed_ceilings, speed_targets
from ..core.keys import Variant
from ..core.records import BenchResult, BundleManifest, CaseVariant
from ..core.stats import median
from .collect import FoldResults

TORCH_EAGER = Variant("torch_eager")
EXACT_VARIANTS = ("torchscript", "onnx_fp32", "onnx_simplified")  # the checkpoint's math, fp32
RUNTIME_NAMES = {"torch": "PyTorch eager", "torchscript": "TorchScript", "onnxruntime": "ONNX Runtime",
                 "openvino": "OpenVINO"}


def default_runtime(variant: Variant) -> str:
    """The runtime of a variant whose records do not name one (torch eager, TorchScript, else its key's)."""
    return "torch" if variant == TORCH_EAGER else "torchscript" if variant.name == "torchscript" else variant.backend


def runtime_name(backend: str | None) -> str:
    return RUNTIME_NAMES.get(backend or "", backend or "?")


def variant_precision(fold: FoldResults, variant: Variant) -> str:
    """``fp32`` (torch eager or an exact export), ``int8``, ``fp16`` or ``bf16`` (from the
    variant's quantize record), or ``other``."""
    record = fold.quantize.get(variant.name)
    if record:
        return record.precision
    return "fp32" if variant == TORCH_EAGER or variant.name in EXACT_VARIANTS else "other"


@dataclass
class Point:
    """One variant on one runtime of one model, over its folds."""

    variant: Variant
    runtime: str
    precision: str
    p50_ms: float | None = None
    """Median over folds of the batch-1 p50 latency."""
    p50_range: tuple[float, float] | None = None
    speedup: float | None = None
    """Median over folds of torch eager's p50 over this one's (each ratio from one run)."""
    worst_dice: float | None = None
    """The lowest per-class Dice of its label maps against PyTorch over all folds."""
    class_dice: dict[str, float] = field(default_factory=dict)
    gate_dice: float | None = None
    """The Dice its parity gate asks for."""
    folds_total: int = 0
    """Folds that gated it (skipped ones included)."""
    folds_gated: int = 0
    """Folds that measured it (not skipped)."""
    folds_passed: int = 0
    skipped: str | None = None
    failures: list[str] = field(default_factory=list)
    file_size_bytes: int | None = None
    threads: int | None = None
    results: list[BenchResult] = field(default_factory=list, repr=False)

    @property
    def folds_timed(self) -> int:
        return sum(1 for r in self.results if r.timed)

    @property
    def reference(self) -> bool:
        return self.variant == TORCH_EAGER

    @property
    def passed(self) -> bool:
        """Passed its gate on every fold (torch eager is the reference)."""
        return self.reference or (self.folds_total > 0 and self.folds_passed == self.folds_total)

    @property
    def dice_for_chart(self) -> float | None:
        return 1.0 if self.reference else self.worst_dice

    @property
    def label(self) -> str:
        return self.variant.key


def model_points(folds: list[FoldResults]) -> list[Point]:
    """Every variant×runtime of one model that was benchmarked or gated, in the benchmark's order."""
    order: list[Variant] = []
    for fold in folds:
        for v in [*(fold.benchmark.results if fold.benchmark else {}), *(fold.parity.variants if fold.parity else {})]:
            if v not in order:
                order.append(v)
    points = []
    for v in order:
        results = [r for f in folds if f.benchmark and (r := f.benchmark.results.get(v)) is not None]
        gates = [g for f in folds if f.parity and (g := f.parity.variants.get(v)) is not None]
        timed = [r for r in results if r.timed]
        ratios = []
        for f in folds:
            if f.benchmark is None:
                continue
            mine, eager = f.benchmark.results.get(v), f.benchmark.results.get(TORCH_EAGER)
            if mine and eager and mine.timed and eager.timed:
                ratios.append(eager.p50_ms / mine.p50_ms)
        measured = [g for g in gates if not g.skipped]
        class_dice: dict[str, float] = {}
        for g in measured:
            for cls, value in g.dice.items():
                class_dice[cls] = min(value, class_dice.get(cls, value))
        skipped = next((g.skipped for g in gates if g.skipped), None) or next(
            (r.skipped for r in results if r.skipped), None)
        tolerance = next((g.tolerance for g in gates if g.tolerance), None) or {}
        runtime = next((r.backend for r in results if r.backend), None) or next(
            (g.backend for g in gates if g.backend), None) or default_runtime(v)
        points.append(Point(
            variant=v, runtime=runtime, precision=variant_precision(folds[0], v),
            p50_ms=median(r.p50_ms for r in timed),
            p50_range=(min(r.p50_ms for r in timed), max(r.p50_ms for r in timed)) if timed else None,
            speedup=median(ratios),
            worst_dice=min((g.worst_dice for g in measured if g.worst_dice is not None), default=None),
            class_dice=class_dice, gate_dice=tolerance.get("min_dice"),
            folds_total=len(gates), folds_gated=len(measured), folds_passed=sum(1 for g in measured if g.passed),
            skipped=skipped,
            failures=[f"{f.label}: " + "; ".join(g.failures) for f in folds if f.parity
                      and (g := f.parity.variants.get(v)) and not g.passed and not g.skipped],
            file_size_bytes=next((r.file_size_bytes for r in results if r.file_size_bytes), None),
            threads=next((r.threads for r in timed if r.threads), None),
            results=results,
        ))
    return points


def pareto_front(points: list[Point]) -> list[Point]:
    """The points no other beats on both latency and worst-class Dice, among those that passed their
    gate on every fold, fastest first."""
    usable = sorted((p for p in points if p.passed and p.p50_ms is not None and p.dice_for_chart is not None),
                    key=lambda p: (p.p50_ms, -p.dice_for_chart))
    front: list[Point] = []
    for p in usable:
        if not front or p.dice_for_chart > front[-1].dice_for_chart:
            front.append(p)
    return front


def gate_lines(points: list[Point]) -> list[tuple[float, str]]:
    """Each distinct Dice gate with the precisions it applies to, e.g. ``(0.99, "int8")``."""
    gates: dict[float, list[str]] = {}
    for p in points:
        if p.gate_dice is not None and p.precision not in gates.setdefault(p.gate_dice, []):
            gates[p.gate_dice].append(p.precision)
    return sorted((value, ", ".join(precisions)) for value, precisions in gates.items())


def model_targets(folds: list[FoldResults]) -> dict[str, Any]:
    """The speed targets of one model (:func:`nnbridge.bench.targets.speed_targets`) over its folds:
    per variant and runtime the median over folds of its speed-up against torch eager (each ratio
    from one run); exact fp32 and INT8 candidates must have passed their parity gate on every fold;
    the operator profile is the first fold's."""
    candidates: dict[str, dict[str, Any]] = {}
    points = {p.variant: p for p in model_points(folds)}
    for v, p in points.items():
        if v == TORCH_EAGER or p.speedup is None:
            continue
        profile = next((r.op_profile for r in p.results if r.op_profile), None)
        candidates[v.key] = {"speedup": p.speedup, "p50_ms": p.p50_ms, "op_profile": profile}

    def passed(key: str) -> bool:
        v = Variant.parse(key)
        return all(f.parity and (g := f.parity.variants.get(v)) and g.passed for f in folds)

    exact = [k for k in candidates if points[Variant.parse(k)].precision == "fp32" and passed(k)]
    int8 = [k for k in candidates if points[Variant.parse(k)].precision == "int8" and passed(k)]
    eager = [(f.benchmark.results.get(TORCH_EAGER), f.benchmark) for f in folds if f.benchmark]
    per_fold = [speed_ceilings(r.gflops_per_s if r else None, b.peak.to_dict() if b.peak else {}) for r, b in eager]
    ceilings = {key: median(c.get(key) for c in per_fold) for key in ("fp32_ceiling", "int8_ceiling")}
    shape = next((f.benchmark.shape for f in folds if f.benchmark), [])[2:]
    return {**speed_targets(candidates, exact, int8, ceilings={k: v for k, v in ceilings.items() if v}),
            "torch_eager_p50_ms": median(r.p50_ms for r, _ in eager if r and r.timed),
            "patch": list(shape), "folds": len(folds)}


# ---- the card ---------------------------------------------------------------------------------


class Fact(NamedTuple):
    """One line of a card: what, the value a reader looks for (shown bold), how it was measured."""

    what: str
    value: str
    detail: str = ""


@dataclass
class Card:
    """The first thing the report shows of a model: what to deploy and how fast and accurate it is."""

    model: str
    anchor: str
    folds: list[str]
    kind: str
    deploy: Point | None
    status: str  # "pass": something passed its gates everywhere; "fail": nothing did
    headline: str
    facts: list[Fact]
    """Runtime and threads, speed-up, Dice, whole cases, file size."""
    command: str | None = None
    notes: list[str] = field(default_factory=list)


def _whole_case(folds: list[FoldResults], point: Point) -> tuple[list[CaseVariant], int]:
    """The whole-case comparisons of this variant on this runtime, and the folds that ran any."""
    found, compared = [], 0
    for f in folds:
        if f.case_parity is None:
            continue
        compared += 1
        match = f.case_parity.on_runtime().get(Variant(point.variant.name, point.runtime))
        if match is not None:
            found.append(match)
    return found, compared


def _case_fact(folds: list[FoldResults], point: Point) -> tuple[Fact, bool | None]:
    """Whole-case agreement with nnU-Net's predictor, and whether it passed (None: not compared)."""
    found, compared = _whole_case(folds, point)
    if not compared:
        why = ("a plain PyTorch model: nnbridge predict and whole-case parity are for nnU-Net models"
               if folds[0].kind == "pytorch" else "whole-case parity is not configured for this model")
        return Fact("whole cases", "not compared", why), None
    if not found:
        others = ", ".join(folds[0].case_parity.variants) if folds[0].case_parity else "none"
        return Fact("whole cases", "not compared", f"whole-case parity ran other variants: {others}"), None
    runs = [c for c in found if not c.skipped]
    if not runs:
        return Fact("whole cases", "SKIPPED", found[0].skipped or ""), None
    cases = sum(len(c.cases) for c in runs)
    agreement = min((c.min_voxel_agreement for c in runs if c.min_voxel_agreement is not None), default=None)
    dice = min((c.min_dice_vs_nnunet for c in runs if c.min_dice_vs_nnunet is not None), default=None)
    speed = median(c.speedup_vs_nnunet for c in runs)
    ok = all(c.passed for c in runs)
    value = f"{100 * agreement:.3f} % of voxels agree" if agreement is not None else "agreement not recorded"
    detail = (f"with nnU-Net's predictor, {cases} case(s) in {len(runs)} fold(s)"
              + (f"; worst-class Dice {dice:.4f}" if dice is not None else "")
              + (f"; {speed:.1f}× faster end to end" if speed else ""))
    return Fact("whole cases", value if ok else f"FAILED: {value}", detail), ok


def fmt_dice(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def _size_fact(point: Point, points: list[Point]) -> Fact:
    if not point.file_size_bytes:
        return Fact("file size", "–", "not recorded")
    fp32 = next((p.file_size_bytes for p in points if p.variant == Variant("onnx_fp32") and p.file_size_bytes), None)
    detail = f"ONNX fp32: {fp32 / 1e6:.2f} MB" if fp32 and abs(point.file_size_bytes - fp32) > 0.05 * fp32 else ""
    return Fact("file size", f"{point.file_size_bytes / 1e6:.2f} MB", detail)


def _bundle_choice(folds: list[FoldResults], points: list[Point]) -> list[Point]:
    """For a bundled model: the points nnbridge predict can run (a bundled variant on the runtime the
    bundle chose for it, gate passed on every fold, whole cases not failed)."""
    bundle = next(f.bundle for f in folds if f.bundle)
    by_key = {p.variant: p for p in points}
    usable = []
    for name, entry in bundle.variants.items():
        if not entry.passed or not entry.backend:
            continue
        point = by_key.get(Variant(name, entry.backend))
        if point is None or not point.passed or point.p50_ms is None:
            continue
        if _case_fact(folds, point)[1] is False:
            continue
        usable.append(point)
    return usable


def model_card(model: str, anchor: str, folds: list[FoldResults], points: list[Point]) -> Card:
    """The recommended deployment: the fastest variant×runtime that passed its parity gate on every
    fold (for a bundled nnU-Net model: among what the bundle ships, on the runtime it chose, with
    whole cases not failed), with its speed-up, worst-class Dice, whole-case agreement, file size."""
    eager = next((p for p in points if p.reference), None)
    bundle, bundle_dir = next(((f.bundle, f.bundle_dir) for f in folds if f.bundle), (None, None))
    candidates = (_bundle_choice(folds, points) if bundle else
                  [p for p in points if not p.reference and p.passed and p.p50_ms is not None])
    deploy = min(candidates, key=lambda p: p.p50_ms, default=None)
    fold_names = [f.fold for f in folds]
    notes: list[str] = []
    if deploy is None:
        why = ("no bundled variant passed its gates on every fold" if bundle
               else "no variant passed its parity gate on every fold")
        return Card(model, anchor, fold_names, folds[0].kind, None, "fail", f"Nothing to deploy: {why}.",
                    [], notes=_why_not(folds, points, bundle))
    shape = next((f.benchmark.shape for f in folds if f.benchmark), [])
    patch = "×".join(map(str, shape[2:])) or "?"
    if deploy.speedup and eager and eager.p50_ms:
        speed = Fact("speed-up", f"{deploy.speedup:.1f}× faster than PyTorch eager",
                     f"{deploy.p50_ms:.1f} ms vs {eager.p50_ms:.1f} ms per {patch} patch, batch 1, median of "
                     f"{deploy.folds_timed} fold(s)")
    else:
        speed = Fact("speed-up", "–", "torch eager was not timed")
    gate = f"gate ≥ {deploy.gate_dice:g}; " if deploy.gate_dice is not None else ""
    dice = Fact("worst-class Dice vs PyTorch", fmt_dice(deploy.worst_dice),
                f"label maps on held-out patches; {gate}passed on {deploy.folds_passed}/{deploy.folds_total} fold(s)")
    runtime = runtime_name(deploy.runtime)
    threads = Fact("runtime", f"{runtime}, {deploy.threads} thread(s)" if deploy.threads else runtime,
                   "as benchmarked" if deploy.threads else "the runtime's default threads")
    command = None
    if bundle:
        run = bundle.variants[deploy.variant.name].run_settings.get(deploy.runtime) or {}
        if run.get("threads"):
            threads = Fact("runtime", f"{runtime}, {run['threads']} thread(s), batch {run.get('batch_size', 1)}",
                           "nnbridge predict's settings, from the benchmark's thread and batch sweep")
        elif deploy.threads:
            threads = threads._replace(detail=f"as benchmarked; nnbridge predict uses the runtime's default threads "
                                              f"unless --threads {deploy.threads} (no thread sweep ran)")
        default = bundle.default_variant
        command = (f"nnbridge predict -m {bundle_dir} -i <images> -o <labels>"
                   + ("" if deploy.variant.name == default else f" --variant {deploy.variant.name}"))
        if deploy.variant.name != default:
            notes.append(f"The bundle's default variant is {default}; --variant {deploy.variant.name} picks this one.")
        best = next(iter(pareto_front(points)), None)
        if best and best.variant.name not in bundle.variants and best.p50_ms < deploy.p50_ms:
            notes.append(f"Faster and gated but not bundled: {best.variant.name} on {runtime_name(best.runtime)} "
                         f"({best.speedup:.1f}×, Dice {fmt_dice(best.worst_dice)}); add {best.variant.name} to the "
                         "config's bundle.variants to ship it.")
    exact = min((p for p in points if not p.reference and p.passed and p.precision == "fp32" and p.p50_ms),
                key=lambda p: p.p50_ms, default=None)
    if exact and exact is not deploy and exact.speedup:
        notes.append(f"Most exact choice: {exact.variant.name} on {runtime_name(exact.runtime)}, "
                     f"{exact.speedup:.1f}× faster, Dice {fmt_dice(exact.worst_dice)} (fp32, the checkpoint's math).")
    case, case_ok = _case_fact(folds, deploy)
    facts = [threads, speed, dice, case, _size_fact(deploy, points)]
    if not bundle:
        paths = [path for f in folds if (path := _artifact_path(f, deploy.variant))]
        if paths:
            facts.append(Fact("file" if len(paths) == 1 else "files", "; ".join(paths),
                              "one per fold" if len(paths) > 1 else ""))
    headline = f"Deploy {deploy.variant.name} on {runtime_name(deploy.runtime)}"
    return Card(model, anchor, fold_names, folds[0].kind, deploy, "fail" if case_ok is False else "pass",
                headline, facts, command, notes)


def _why_not(folds: list[FoldResults], points: list[Point], bundle: BundleManifest | None) -> list[str]:
    """Why each candidate cannot be recommended (for a card with nothing to deploy)."""
    if bundle is not None:
        notes = []
        for name, entry in bundle.variants.items():
            mine = [p for p in points if p.variant.name == name]
            if not entry.passed or not entry.backend:
                notes.append(f"{name}: no runtime passed its patch gate on every fold"
                             + (f" ({'; '.join(f for p in mine for f in p.failures)})" if mine else ""))
                continue
            point = next((p for p in mine if p.runtime == entry.backend), None)
            if point is None or point.p50_ms is None:
                notes.append(f"{name}: not benchmarked on {runtime_name(entry.backend)}")
            elif _case_fact(folds, point)[1] is False:
                notes.append(f"{name}: failed the whole-case comparison with nnU-Net's predictor")
        return notes
    return [f"{p.label}: {f}" for p in points for f in p.failures] or ["no variant was gated and timed"]


def _artifact_path(fold: FoldResults, variant: Variant) -> str | None:
    """The ONNX (or TorchScript) file behind a variant, as its stage recorded it."""
    if variant.name in fold.quantize:
        return fold.quantize[variant.name].path
    record = {"onnx_fp32": fold.export, "torchscript": fold.torchscript, "onnx_simplified": fold.simplify}.get(variant.name)
    return record.path if record else None
