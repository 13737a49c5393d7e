"""Collect: every fold's stage records, read through :mod:`nnbridge.core.records` from the paths the
workflow passes; a record a partial run did not produce is None, and every table says so by
leaving it out."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from ..core.keys import fold_order
from ..core.records import (
    BenchmarkRecord,
    BundleManifest,
    CaseParityRecord,
    EmulatedVerifyRecord,
    ExportRecord,
    NnunetValidation,
    ParityRecord,
    PatchesRecord,
    QuantizeRecord,
    RealisticRecord,
    SimplifyRecord,
    TorchscriptRecord,
)


class StageFailure(NamedTuple):
    """A stage that failed in a partial run (``snakemake --keep-going``): one row of the report's
    "Stages that failed" table. ``fold`` is None for a model-wide stage (bundle) or a run-wide one."""

    model: str
    fold: str | None
    stage: str
    cause: str
    log: str | None


@dataclass
class FoldResults:
    """One fold's records (None: the run has none)."""

    dataset: str
    model: str
    fold: str
    kind: str = "nnunet"
    export: ExportRecord | None = None
    torchscript: TorchscriptRecord | None = None
    simplify: SimplifyRecord | None = None
    quantize: dict[str, QuantizeRecord] = field(default_factory=dict)
    parity: ParityRecord | None = None
    benchmark: BenchmarkRecord | None = None
    validation: NnunetValidation | None = None
    case_parity: CaseParityRecord | None = None
    bundle: BundleManifest | None = None
    bundle_dir: str | None = None
    patches: dict[str, Any] | None = None
    """The patches stage's record as read (how the calibration and held-out cases were split)."""
    intake: dict[str, Any] = field(default_factory=dict)
    """Where the model came from when not a trained model folder with nnU-Net's data (zip, images)."""
    emulated: dict[str, EmulatedVerifyRecord] = field(default_factory=dict)
    """The model's bundle verified on emulated CPUs, by CPU model (the same on each of its folds)."""
    label: str = ""

    @property
    def model_name(self) -> str:
        """``dataset / model``: how the report names a model."""
        return f"{self.dataset} / {self.model}"


@dataclass
class RunResults:
    """Everything the report shows: the folds, the realistic-size benchmark, failed stages."""

    folds: list[FoldResults]
    realistic: RealisticRecord | None = None
    failures: list[StageFailure] = field(default_factory=list)
    stage_times: dict[str, Any] = field(default_factory=dict)
    """The pipeline's own cost: :func:`nnbridge.pipeline.runtimes.stage_times` of the run's folder."""

    def emulated(self) -> dict[str, dict[str, EmulatedVerifyRecord]]:
        """Per model (``dataset / model``) with any: its bundle's checks on emulated CPUs, by CPU model."""
        out = {}
        for model, folds in self.models().items():
            if records := next((f.emulated for f in folds if f.emulated), None):
                out[model] = records
        return out

    def models(self) -> dict[str, list[FoldResults]]:
        """Folds grouped by model (``dataset / model``), in the order the workflow lists them."""
        grouped: dict[str, list[FoldResults]] = {}
        for fold in self.folds:
            grouped.setdefault(fold.model_name, []).append(fold)
        return {name: sorted(folds, key=lambda f: fold_order(f.fold)) for name, folds in grouped.items()}


def collect(entries: list[dict[str, Any]], realistic_path: str | Path | None = None,
            failures: list[StageFailure] | tuple[StageFailure, ...] = (),
            stage_times: dict[str, Any] | None = None) -> RunResults:
    """Read every fold's records. ``entries``: per fold, dataset, model, fold and the path of each
    stage's JSON (``None`` or a missing file: not part of this run, or not produced). A record
    written by an older nnbridge, or not the kind its path says, stops the report with one line
    naming the file and the stage to rerun."""
    single = len({(e["dataset"], e["model"]) for e in entries}) <= 1
    folds = []
    for entry in entries:
        bundle = entry.get("bundle")
        folds.append(FoldResults(
            dataset=entry["dataset"], model=entry["model"], fold=str(entry["fold"]),
            kind=entry.get("kind", "nnunet"),
            export=ExportRecord.read_optional(entry.get("export")),
            torchscript=TorchscriptRecord.read_optional(entry.get("torchscript")),
            simplify=SimplifyRecord.read_optional(entry.get("simplify")),
            quantize={name: record for name, path in (entry.get("quantize") or {}).items()
                      if (record := QuantizeRecord.read_optional(path)) is not None},
            parity=ParityRecord.read_optional(entry.get("parity")),
            benchmark=BenchmarkRecord.read_optional(entry.get("benchmark")),
            validation=NnunetValidation.read_optional(entry.get("validation_summary")),
            case_parity=CaseParityRecord.read_optional(entry.get("case_parity")),
            bundle=BundleManifest.read_optional(bundle),
            bundle_dir=str(Path(bundle).parent) if bundle else None,
            patches=PatchesRecord.read_optional(entry.get("patches")).to_dict() if entry.get("patches")
            and Path(entry["patches"]).is_file() else None,
            intake=entry.get("intake") or {},
            emulated={cpu: record for cpu, path in (entry.get("emulated") or {}).items()
                      if (record := EmulatedVerifyRecord.read_optional(path)) is not None},
            label=(f"fold {entry['fold']}" if single else
                   f"{entry['dataset']} / {entry['model']} / fold {entry['fold']}"),
        ))
    return RunResults(folds, RealisticRecord.read_optional(realistic_path), list(failures), dict(stage_times or {}))
