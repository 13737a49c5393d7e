"""Render: the report as a person reads it — verdict, one card per model (what to deploy, how
fast and how accurate), per-model charts, then the detail tables, collapsible in HTML, with a table
of contents — as Markdown and as one self-contained HTML file (charts inlined as base64 PNG), from
Jinja2 templates. Everything is computed before rendering: the templates only lay out text."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import platform
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2

from .. import __version__
from ..core.cpu import cpu_identity
from ..core.records import Machine
from .cards import TORCH_EAGER, Card, model_card, model_points, model_targets, pareto_front
from ..pipeline.runtimes import stage_times
from .collect import RunResults, StageFailure, collect
from .failures import complete, failed_stages, incomplete_path
from .plots import dice_bars, save, speed_accuracy_chart
from .tables import detail_sections

TEMPLATES = Path(__file__).parent / "templates"
CODE_FILES = ("templates/*",)  # run by this module without being imported: part of the report's code hash


@dataclass
class Chart:
    anchor: str
    title: str
    alt: str
    png_base64: str
    md_path: str
    caption: str = ""


@dataclass
class ModelView:
    name: str
    anchor: str
    card: Card
    charts: list[Chart] = field(default_factory=list)


@dataclass
class Verdict:
    """Failures one per line; skipped checks grouped by reason; stages that failed to run."""

    headline: str
    failed: list[str]
    skipped: list[tuple[str, list[str]]]
    n_skipped: int
    stage_failures: list[StageFailure]

    @property
    def status(self) -> str:
        return "fail" if self.failed or self.stage_failures else "pass"


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def machine_info() -> dict[str, Any]:
    """Where the report was written (the benchmarks may have run elsewhere: :func:`benchmark_machines`)."""
    here = cpu_identity()
    return {"cpu": here["cpu"], "cores": here["cpus"], "python": platform.python_version(), "nnbridge": __version__}


def benchmark_machines(run: RunResults) -> list[Machine]:
    """The distinct machines (CPU model, features, CPUs, host) the benchmarks ran on, as they recorded
    them (on a cluster, not where the report is written)."""
    seen: list[Machine] = []
    records = [f.benchmark for f in run.folds if f.benchmark] + ([run.realistic] if run.realistic else [])
    for record in records:
        if record.machine and record.machine not in seen:
            seen.append(record.machine)
    return seen


def machine_text(machines: list[Machine]) -> str:
    """One sentence naming the benchmark machine(s) and the features that decide their kernels."""
    if not machines:
        return ""
    parts = [f"{m.cpu} ({m.cpus} CPUs; {', '.join(m.isa) or 'no AVX2'}; host {m.host})" for m in machines]
    text = "Benchmarks ran on " + "; ".join(parts) + "."
    if len({(m.cpu, tuple(m.isa), m.cpus) for m in machines}) > 1:
        text += " These are different machines: compare ratios within one fold's benchmark only."
    return text


def verdict(run: RunResults) -> Verdict:
    """The variants that failed a patch or whole-case gate (one line each, with the cause), those
    not run because this machine cannot (a bf16 variant on a CPU without bf16) grouped by why, and
    the stages a partial run could not finish."""
    failed: list[str] = []
    skipped: dict[str, list[str]] = {}
    n_skipped = 0
    for f in run.folds:
        checks: list[tuple[str, bool, str | None, str]] = []
        if f.parity:
            checks += [(v.key, g.passed, g.skipped, "; ".join(g.failures)) for v, g in f.parity.variants.items()]
        if f.case_parity:
            checks += [(f"{name} on whole cases", c.passed, c.skipped,
                        f"first divergence: {c.first_divergence or 'none'}; min voxel agreement "
                        + (f"{100 * c.min_voxel_agreement:.4f} %" if c.min_voxel_agreement is not None else "–"))
                       for name, c in f.case_parity.variants.items()]
        for name, passed, skip, cause in checks:
            if skip:
                why = skip.rsplit(", but ", 1)[-1]  # the cause, without the file it names
                skipped.setdefault(why, []).append(f"{f.label}: {name}")
                n_skipped += 1
            elif not passed:
                failed.append(f"{f.label}: {name}" + (f" — {cause}" if cause else ""))
    for model, checks in run.emulated().items():  # the bundle re-checked on emulated deployment CPUs
        failed += [f"{model}: on emulated {cpu}: {line}" for cpu, e in checks.items() for line in e.failed]
    headline = (f"{len(failed)} variant(s) FAILED their gate:" if failed else
                "All variants that ran passed their gates." if run.failures else "All variants passed their gates.")
    return Verdict(headline, failed, list(skipped.items()), n_skipped, list(run.failures))


def summarize(run: RunResults, cards: dict[str, Card]) -> dict[str, Any]:
    """Machine-readable digest: per fold, the gate verdict and p50 of every variant; per model its
    speed targets and recommended deployment."""
    out = []
    for f in run.folds:
        variants = f.parity.variants if f.parity else {}
        bench = f.benchmark.results if f.benchmark else {}
        eager = bench.get(TORCH_EAGER)
        out.append({
            "dataset": f.dataset, "model": f.model, "fold": f.fold,
            "variants": {v.key: {"passed": g.passed, "dice": g.dice or None,
                                 "p50_ms": bench[v].p50_ms if v in bench else None} for v, g in variants.items()},
            "torch_eager_p50_ms": eager.p50_ms if eager else None,
            "validation_dice": {k: v.get("Dice") for k, v in (f.validation.mean if f.validation else {}).items()},
            "case_parity": {name: {"passed": c.passed, "min_voxel_agreement": c.min_voxel_agreement,
                                   "speedup_vs_nnunet": c.speedup_vs_nnunet,
                                   **({"skipped": c.skipped} if c.skipped else {})}
                            for name, c in (f.case_parity.variants if f.case_parity else {}).items()},
        })
    summary: dict[str, Any] = {
        "machine": machine_info(),
        "benchmark_machines": [m.to_dict() for m in benchmark_machines(run)],
        "folds": out,
        "targets": {model: model_targets(folds) for model, folds in run.models().items()},
        "deploy": {model: _card_digest(card) for model, card in cards.items()},
        "failed_stages": [f._asdict() for f in run.failures],
    }
    if run.realistic:
        summary["realistic"] = {"targets": run.realistic.targets,
                                "p50_ms": {v.key: r.p50_ms for v, r in run.realistic.results.items()}}
    return summary


def _card_digest(card: Card) -> dict[str, Any] | None:
    p = card.deploy
    if p is None:
        return None
    return {"variant": p.variant.name, "runtime": p.runtime, "threads": p.threads, "speedup_vs_torch_eager": p.speedup,
            "p50_ms": p.p50_ms, "worst_dice_vs_torch": p.worst_dice, "file_size_bytes": p.file_size_bytes,
            "status": card.status}


def _chart(fig, path: Path, md_base: Path, anchor: str, title: str, alt: str, caption: str = "") -> Chart:
    data = save(fig, path)
    return Chart(anchor, title, alt, base64.b64encode(data).decode(), os.path.relpath(path, md_base), caption)


def model_views(run: RunResults, charts_dir: Path, md_base: Path) -> list[ModelView]:
    """Per model: its card and its charts (written to ``charts_dir``)."""
    views = []
    for model, folds in run.models().items():
        anchor = "model-" + slug(model)
        points = model_points(folds)
        front = pareto_front(points)
        card = model_card(model, anchor, folds, points)
        view = ModelView(model, anchor, card)
        timed = [p for p in points if p.p50_ms is not None and p.dice_for_chart is not None]
        if timed:
            not_shown = [f"{p.label} ({'skipped: ' + p.skipped if p.skipped else 'not timed or not gated'})"
                         for p in points if p not in timed]
            view.charts.append(_chart(
                speed_accuracy_chart(model, points, front, card.deploy), charts_dir / f"{slug(model)}-speed-accuracy.png",
                md_base, f"{anchor}-speed", "Speed against accuracy",
                f"speed against accuracy of every variant and runtime of {model}",
                "Each point is one variant on one runtime: its median batch-1 latency against the worst per-class "
                "Dice of its label maps against PyTorch on held-out patches. Dashed lines: the Dice each gate asks "
                "for; dotted: the Pareto front (nothing else is both faster and more accurate); hollow red: failed "
                "its gate; star: the recommended deployment."
                + (" Not shown: " + "; ".join(not_shown) + "." if not_shown else "")))
        bars = dice_bars(model, points)
        if bars is not None:
            view.charts.append(_chart(
                bars, charts_dir / f"{slug(model)}-dice.png", md_base, f"{anchor}-dice", "Per-class Dice",
                f"per-class Dice against PyTorch of every variant of {model}",
                "The Dice of each class's label map against eager PyTorch (the lowest over folds), fastest variant "
                "first; the black tick is the Dice its gate asks for."))
        views.append(view)
    return views


def _md_cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _environment(autoescape: bool) -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=autoescape,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                             keep_trailing_newline=True)
    env.filters["md_cell"] = _md_cell
    env.tests["marked"] = lambda cell: hasattr(cell, "status")
    return env


def render(context: dict[str, Any]) -> tuple[str, str]:
    """The Markdown and HTML texts of the report."""
    md = _environment(False).get_template("report.md.j2").render(**context)
    html = _environment(True).get_template("report.html.j2").render(**context)
    return md, html


def build_report(entries: list[dict[str, Any]], *, md_path: str | Path, html_path: str | Path,
                 charts_dir: str | Path, summary_path: str | Path, realistic_path: str | Path | None = None,
                 failures: list[StageFailure] | tuple[StageFailure, ...] = (),
                 dag_failures: list[dict[str, Any]] | tuple[dict[str, Any], ...] = (),
                 run_stages: list[dict[str, Any]] | tuple[dict[str, Any], ...] = (),
                 unfinished: frozenset[str] | set[str] = frozenset(), since: float | None = None,
                 workdir: str | Path | None = None) -> list[dict[str, Any]]:
    """Write the Markdown and HTML reports, the charts and the JSON digest; also when stages failed.
    ``failures``: stages a partial run could not finish; with ``dag_failures`` (models and folds the
    workflow left out), ``run_stages`` (stages every fold depends on), ``unfinished`` and ``since``
    the failed stages are found from the records and logs (:func:`nnbridge.report.failures.failed_stages`),
    shown in the verdict, and only the folds that finished go into the tables. ``workdir``: where
    Snakemake's records give the pipeline's own run time per stage. Returns the failed stages."""
    rows = failed_stages(entries, dag_failures, run_stages, unfinished, since)
    given = list(failures)
    failures = [*given, *(StageFailure(f"{r['dataset']} / {r['model']}", r["fold"], r["stage"], r["cause"],
                                          r["log"]) for r in rows)]
    finished = [e for e in entries if complete(e, unfinished)]
    run = collect(finished, realistic_path, failures, stage_times(workdir) if workdir is not None else None)
    md_path, html_path, charts_dir = Path(md_path), Path(html_path), Path(charts_dir)
    models = model_views(run, charts_dir, md_path.parent)
    sections = [s for s in detail_sections(run) if s.table is not None]
    summary = summarize(run, {m.name: m.card for m in models})
    summary["failed_stages"] = [*(f._asdict() for f in given), *rows]
    if run.stage_times:
        summary["run_time"] = {k: v for k, v in run.stage_times.items() if k != "stages"}
    Path(summary_path).parent.mkdir(parents=True, exist_ok=True)
    Path(summary_path).write_text(json.dumps(summary, indent=2) + "\n")
    machine = summary["machine"]
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    intro = (f"nnbridge {__version__}, generated {now} on {machine['cpu']} ({machine['cores']} cores). "
             f"{len(run.folds)} fold(s) of {len(models)} model(s): " + "; ".join(m.name for m in models) + ". "
             + machine_text(benchmark_machines(run))).strip()
    if realistic_path and run.realistic is None:
        intro += " The realistic-size benchmark has not run: `make bench` measures it (minutes)."
    toc = [("verdict", "Verdict", [])]
    toc.append(("deployment", "What to deploy", [(m.card.anchor + "-card", m.name) for m in models]))
    toc += [(m.anchor, f"Speed and accuracy: {m.name}", [(c.anchor, c.title) for c in m.charts])
            for m in models if m.charts]
    toc.append(("details", "Details", [(s.anchor, s.title) for s in sections]))
    context = {"intro": intro, "verdict": verdict(run), "models": models, "sections": sections, "toc": toc}
    md, html = render(context)
    md_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.write_text(md)
    Path(html_path).parent.mkdir(parents=True, exist_ok=True)
    Path(html_path).write_text(html)
    for path in (md_path, html_path, summary_path):  # a failed run's report is outdated now
        if not Path(path).stem.endswith("_incomplete"):
            incomplete_path(path).unlink(missing_ok=True)
    return rows
