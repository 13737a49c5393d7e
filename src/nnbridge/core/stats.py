"""The one median every stage and the report use (speed-ups over folds, latencies per runtime)."""

from __future__ import annotations

from collections.abc import Iterable


def median(values: Iterable[float | None]) -> float | None:
    """The median of the values that are not None; None when there are none."""
    ordered = sorted(float(v) for v in values if v is not None)
    if not ordered:
        return None
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
