"""Send a stage's output to its log file (used by the workflow's thin scripts)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import NNBridgeError

_CONSOLE: list[Any] = []
"""The console streams of the :func:`logged` blocks in progress (innermost last)."""


@contextlib.contextmanager
def logged(log_path: str | Path) -> Iterator[None]:
    """Redirect stdout and stderr to ``log_path``; a failure's traceback ends up there too, and
    an :class:`NNBridgeError`'s one-line cause also on the original stderr (the console)."""
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    open(log_path, "w").close()  # start empty; append mode lets subprocesses share the file
    with open(log_path, "a", buffering=1) as handle:
        old = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = handle
        _CONSOLE.append(old[1])
        try:
            yield
        except BaseException as exc:
            traceback.print_exc(file=handle)
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


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())
