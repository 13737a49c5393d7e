"""The report after a failed run: written from whatever stage records exist, each failed stage a
row with its cause and log (called by the workflow's ``onerror`` handler, outside any job)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from ..core.runlog import one_line_cause
from .build import build_report


def write_partial_report(entries: list[dict[str, Any]], **paths_and_failures: Any) -> list[dict[str, Any]] | None:
    """:func:`~nnbridge.report.build.build_report` on what exists; prints one line saying where the
    report is and how many stages failed. It never raises (the run's own error is what the
    caller reports): a report that cannot be written is said in one line, and no half-written
    report file is left behind. Returns the failed stages, or None."""
    outputs = [Path(paths_and_failures[k]) for k in ("md_path", "html_path", "plot_path", "summary_path")]
    try:
        failed = build_report(entries, **paths_and_failures)
    except Exception as exc:  # noqa: BLE001 - a partial report must never hide the run's failure
        for path in outputs:
            path.unlink(missing_ok=True)
        print(f"nnbridge: could not write the report of the failed run ({one_line_cause(exc)})", file=sys.stderr)
        return None
    print(f"nnbridge: report of what finished written to {outputs[0]} ({len(failed)} failed stage(s) listed "
          "with cause and log); the run failed", file=sys.stderr)
    return failed
