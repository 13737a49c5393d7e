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


@contextlib.contextmanager
def logged(log_path: str | Path) -> Iterator[None]:
    """Redirect stdout and stderr to ``log_path``; a failure's traceback ends up there too, and
    an :class:`NNBridgeError`'s one-line cause also on the original stderr (the console)."""
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    open(log_path, "w").close()  # start empty; append mode lets subprocesses share the file
    with open(log_path, "a", buffering=1) as handle:
        old = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = handle
        try:
            yield
        except BaseException as exc:
            traceback.print_exc(file=handle)
            if isinstance(exc, NNBridgeError):  # the one-line cause, also where the user looks
                for stream in (handle, old[1]):
                    print(f"nnbridge error: {exc}", file=stream, flush=True)
            raise
        finally:
            sys.stdout, sys.stderr = old


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


def read_json(path: str | Path, missing: str = "") -> Any:
    """A JSON file that is not a stage record (plans, dataset.json, splits; records are read through
    :mod:`nnbridge.core.records`). A missing or broken file is one line naming it; ``missing`` says
    what should be there."""
    path = Path(path)
    if not path.is_file():
        raise NNBridgeError(f"{path}: missing" + (f"; {missing}" if missing else ""))
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise NNBridgeError(f"{path}: not valid JSON ({exc})") from None
