"""Rule params that Snakemake's params trigger tells apart.

Snakemake records a job's params by value alone, not by name, and reruns the job when the *set*
of those values changed (snakemake 9.27, ``persistence.params_changed``). A setting whose new
value another param of the rule already has, while its old value stays in a third, changes
without a rerun: flipping ``case_parity.compare_failed`` beside ``mirroring: true`` and a model's
``trusted: false``, or ``benchmark.threads`` 2 -> 3 beside ``warmup: 3`` and another 2. The job's
earlier result would then be reused as if it had been made with the new setting.

:func:`named` gives a rule one more param, ``by_name``: the same settings in one dict, which
Snakemake records with its keys, so a change of any one of them reruns the job.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import inspect
from pathlib import PurePath
from typing import Any

# a params function taking one of these is "derived" (snakemake's Rule._is_deriving_function):
# snakemake does not record it, its changes come with the input/output files
DERIVED_ARGUMENTS = frozenset({"input", "output", "threads", "resources"})

BY_NAME = "by_name"


def derived(value: Any) -> bool:
    """Whether Snakemake leaves this params entry out of its record (a function of the job's
    input, output, threads or resources)."""
    if not callable(value):
        return False
    try:
        arguments = inspect.signature(value).parameters
    except (TypeError, ValueError):
        return False
    return bool(DERIVED_ARGUMENTS & set(arguments))


def recordable(value: Any, name: str) -> Any:
    """``value`` as plain data whose ``repr`` is the same in every run (paths and dates as text,
    dataclasses and enums by their fields and values).

    Anything else (an object whose repr holds its address) would rerun the job every time, so it
    is refused, naming the param."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, (datetime.date, datetime.time)):  # YAML reads an unquoted date as one
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return recordable(value.value, name)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return recordable({f.name: getattr(value, f.name) for f in dataclasses.fields(value)}, name)
    if isinstance(value, dict):
        return {str(key): recordable(item, f"{name}.{key}") for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset, range)):
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        return [recordable(item, f"{name}[]") for item in items]
    raise TypeError(f"param {name!r}: a {type(value).__name__} has no stable record; "
                    "give the rule plain data (str, number, list, dict) or a path")


def named(**params: Any) -> dict[str, Any]:
    """A rule's params, plus :data:`BY_NAME`: every entry Snakemake records (not derived from
    input or output), resolved for the job's wildcards, by name in one dict.

    In a rule: ``params: **named(step=lookup(dpath="case_parity/step", within=config), ...)``;
    the script reads ``snakemake.params.step`` as before."""
    if BY_NAME in params:
        raise ValueError(f"{BY_NAME!r} is the name named() records the params under; rename that param")
    recorded = {name: value for name, value in params.items() if not derived(value)}

    def by_name(wildcards) -> dict[str, Any]:
        return {name: recordable(value(wildcards) if callable(value) else value, name)
                for name, value in recorded.items()}

    return {**params, BY_NAME: by_name}

