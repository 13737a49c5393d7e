"""The stages that failed, for the report: one row each with its cause and its log.

Two kinds: what the workflow left out before running anything (a model folder without
``plans.json``, a listed fold without its checkpoint: ``dag_failures``, passed in as rows), and
stages that ran and failed. A stage that fails inside :func:`nnbridge.core.runlog.logged` leaves a
:func:`~nnbridge.core.runlog.failure_record` beside its log with the one-line cause; a stage
whose record is missing without one did not finish (killed, or the run stopped first).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..core.runlog import failure_record

COLUMNS = ("dataset", "model", "fold", "stage", "cause", "log")


def _cause(log: str | None, since: float | None = None) -> str | None:
    """The one-line cause a failed stage recorded beside ``log``, if it did (at or after ``since``:
    an older record is from an earlier run, when the stage failed before; it did not run now)."""
    if not log:
        return None
    record = failure_record(log)
    try:
        if since is not None and record.stat().st_mtime < since:
            return None
        return str(json.loads(record.read_text())["cause"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def present(record: str | None, unfinished: frozenset[str] | set[str] = frozenset()) -> bool:
    """A stage record that exists and is current: not the output of a job that had to run again and
    did not finish (its file, if any, is from an earlier run)."""
    return bool(record) and Path(record).is_file() and str(record) not in unfinished


def failed_stages(entries: list[dict[str, Any]],
                  dag_failures: list[dict[str, Any]] | tuple[dict[str, Any], ...] = (),
                  run_stages: list[dict[str, Any]] | tuple[dict[str, Any], ...] = (),
                  unfinished: frozenset[str] | set[str] = frozenset(), since: float | None = None) -> list[dict[str, Any]]:
    """Rows (dataset, model, fold, stage, cause, log) of what failed: ``dag_failures`` first, then the
    ``run_stages`` every fold depends on (the machine's peak, the realistic-size benchmark), then per
    fold entry its ``stages`` (``[{"stage", "record", "log"}]`` in pipeline order) whose record is not
    :func:`present` (``unfinished``: the outputs of jobs the run had to run and did not finish). A
    stage with a failure record (written at or after ``since``, the run's start) is FAILED with its
    cause; without one, it is listed only when no earlier stage (of the fold, or of the run) failed:
    it did not finish (killed, or the run stopped before it). A stage shared by folds (the bundle) is
    listed once."""
    rows = [{k: row.get(k) for k in COLUMNS} for row in dag_failures]
    seen: set[tuple[str, str]] = set()
    run_failed = False
    for entry in [{"dataset": "(run)", "model": "(every model)", "stages": list(run_stages), "run": True},
                  *entries]:
        earlier_failed = run_failed
        for stage in entry.get("stages") or []:
            key = (stage["stage"], str(stage.get("record")))
            if key in seen or not stage.get("record") or present(stage["record"], unfinished):
                continue
            seen.add(key)
            cause = _cause(stage.get("log"), since)
            if cause is None and earlier_failed:
                continue  # not run because an earlier stage of this fold failed
            earlier_failed = True
            run_failed = run_failed or bool(entry.get("run"))
            rows.append({
                "dataset": entry.get("dataset"), "model": entry.get("model"),
                "fold": None if stage.get("per_model") or entry.get("run") else str(entry.get("fold")),
                "stage": stage["stage"],
                "cause": cause or "did not finish (no failure recorded: killed, or the run stopped before it); rerun",
                "log": stage.get("log"),
            })
    return rows


def incomplete_path(path: str | Path) -> Path:
    """Where the report of a failed run goes instead of ``path``: ``report.md`` → ``report_incomplete.md``."""
    path = Path(path)
    return path.with_name(f"{path.stem}_incomplete{path.suffix}")


def complete(entry: dict[str, Any], unfinished: frozenset[str] | set[str] = frozenset()) -> bool:
    """Whether the records of a fold entry's stages are :func:`present` (those marked ``optional``,
    which the tables show when present, aside): only complete folds go into the report's tables."""
    return all(present(s["record"], unfinished) for s in entry.get("stages") or []
               if s.get("record") and not s.get("optional"))
