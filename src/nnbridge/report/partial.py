"""The report after a failed run: written from whatever stage records exist, each failed stage a
row with its cause and log (called by the workflow's ``onerror`` handler, outside any job).

It goes beside the report, never over it (``report.md`` → ``report_incomplete.md``, and so on): a
file written outside its rule's job would count for snakemake as that job's finished output, and a
later run would keep it instead of rebuilding the report once the failed stages succeed. The next
report the report rule writes removes it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from ..core.runlog import one_line_cause
from .render import build_report
from .failures import incomplete_path

PATH_KEYS = ("md_path", "html_path", "charts_dir", "summary_path")


def write_partial_report(entries: list[dict[str, Any]], **paths_and_failures: Any) -> list[dict[str, Any]] | None:
    """:func:`~nnbridge.report.render.build_report` on what exists, to the report's paths with
    ``_incomplete`` added (:func:`~nnbridge.report.failures.incomplete_path`); prints one line
    saying where it is and how many stages failed. It never raises (the run's own error is what
    the caller reports): a report that cannot be written is said in one line, and no half-written
    file is left. Returns the failed stages, or None."""
    kwargs = {k: (incomplete_path(v) if k in PATH_KEYS else v) for k, v in paths_and_failures.items()}
    try:
        failed = build_report(entries, **kwargs)
    except Exception as exc:  # noqa: BLE001 - a partial report must never hide the run's failure
        for key in PATH_KEYS:
            if Path(kwargs[key]).is_file():
                Path(kwargs[key]).unlink()
        print(f"nnbridge: could not write the report of the failed run ({one_line_cause(exc)})", file=sys.stderr)
        return None
    print(f"nnbridge: report of what finished written to {kwargs['html_path']} and {kwargs['md_path']} "
          f"({len(failed)} failed stage(s) listed with cause and log); the run failed", file=sys.stderr)
    return failed
