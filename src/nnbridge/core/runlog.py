"""Send a stage's output to its log file (used by the workflow's thin scripts)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import NNBridgeError

_CONSOLE: list[Any] = []
"""The console streams of the :func:`logged` blocks in progress (innermost last)."""


def failure_record(log_path: str | Path) -> Path:
    """Where a stage that failed records why: beside its log, ``<log name>.failed.json``
    (``{"cause": one line, "error": exception type, "log": log path}``); present only while the
    stage's last run failed."""
    return Path(log_path).with_suffix(".failed.json")


def one_line_cause(exc: BaseException) -> str:
    """An exception as one line: an :class:`NNBridgeError`'s message, else ``Type: first line``."""
    if isinstance(exc, NNBridgeError):
        return str(exc)
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip().rstrip(":")[:400]


@contextlib.contextmanager
def logged(log_path: str | Path) -> Iterator[None]:
    """Redirect stdout and stderr to ``log_path``; a failure's traceback ends up there too, and
    an :class:`NNBridgeError`'s one-line cause also on the original stderr (the console). A
    failure also writes :func:`failure_record` (the report lists it); a new run removes it."""
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    failure_record(log_path).unlink(missing_ok=True)
    open(log_path, "w").close()  # start empty; append mode lets subprocesses share the file
    with open(log_path, "a", buffering=1) as handle:
        old = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = handle
        _CONSOLE.append(old[1])
        try:
            yield
        except BaseException as exc:
            traceback.print_exc(file=handle)
            record = {"cause": one_line_cause(exc), "error": type(exc).__name__, "log": str(log_path)}
            failure_record(log_path).write_text(json.dumps(record, indent=1) + "\n")
            if isinstance(exc, NNBridgeError):  # the one-line cause, also where the user looks
                for stream in (handle, old[1]):
                    print(f"nnbridge error: {exc}", file=stream, flush=True)
            raise
        finally:
            _CONSOLE.pop()
            sys.stdout, sys.stderr = old


def note(message: str) -> None:
    """One line the user should see: to the log and, inside :func:`logged`, also the console."""
    line = f"nnbridge note: {message}"
    print(line, flush=True)
    if _CONSOLE:
        print(line, file=_CONSOLE[-1], flush=True)


def write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as indented JSON, creating the folder."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def load_cache(path: str | Path, fmt: str, field: str) -> dict[str, Any]:
    """The ``field`` mapping of a cache file :func:`store_cache` wrote with ``{"format": fmt}``;
    empty when the file is missing, unreadable, not JSON or of another format."""
    try:
        data = json.loads(Path(path).read_text())
        entries = data[field] if isinstance(data, dict) and data.get("format") == fmt else {}
    except (OSError, ValueError, KeyError):
        return {}
    return entries if isinstance(entries, dict) else {}


def store_cache(path: str | Path, data: Any) -> None:
    """Write a cache file (JSON) atomically: processes that parse the workflow at once (Slurm
    jobs) may race, and a reader sees the old file or the new one. One that cannot be written
    is left alone: a cache only saves work."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)
    except OSError:
        pass


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def json_digest(parts: Any) -> str:
    """A short hash of a JSON-able description (a cache key: everything a result depends on)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def read_json(path: str | Path, fix: str = "fix it, or copy it again from where it was written") -> Any:
    """A JSON file, or a one-line :class:`NNBridgeError` naming the file (and the line of a syntax
    error) and ``fix``."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise NNBridgeError(f"{path}: missing; {fix}") from None
    except IsADirectoryError:
        raise NNBridgeError(f"{path}: is a folder, not a JSON file; {fix}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise NNBridgeError(f"{path}: cannot be read ({getattr(exc, 'strerror', None) or exc}); {fix}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        where = "it is empty" if not text.strip() else f"line {exc.lineno}, column {exc.colno}: {exc.msg}"
        raise NNBridgeError(f"{path}: not valid JSON ({where}); {fix}") from None
