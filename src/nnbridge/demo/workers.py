"""nnU-Net's worker pools forked from a fork server that has torch imported, instead of spawned.

nnU-Net runs each per-case step of its tools in ``multiprocessing.get_context("spawn").Pool(n)``:
the dataset fingerprint, its integrity check, preprocessing, the export and evaluation of the
validation predictions after training, ensembling, postprocessing. A spawned worker is a fresh
interpreter that imports torch and the step's nnU-Net module before its first case, ~3 s of CPU
time here (AMD EPYC Zen 4, 2026-12-04; torch ~2.6 s of it), for a few cases of a few ms each. With
``nnUNet_def_n_proc=1`` every pool has one worker, and one command starts two to eight pools:
in the test suite, 70 workers spent 13 % of its CPU time importing.

:func:`spawn_from_forkserver` makes this process's ``multiprocessing.get_context("spawn")``
return the ``forkserver`` context, whose server imports :data:`PRELOAD` once and forks each worker
from there. A worker still receives its task pickled, as a spawned one does, and imports the
step's own nnU-Net module itself (which starts blosc2's thread pool, so that is never done in the
server, whose forks must not inherit running threads; numpy's OpenBLAS pool, started by torch's
import, handles fork itself). The server starts with the first pool, from this process's
environment and working directory then: use it where those no longer change (a command of its
own, :func:`nnbridge.demo.nnunet._nnunet_command`; a test fixture's block).

Stdlib only: it runs first in every nnU-Net command nnbridge starts.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
from collections.abc import Callable, Iterator

PRELOAD = ("torch",)

ENABLE_ENV = "NNBRIDGE_NNUNET_FORKSERVER"
"""``0``: nnU-Net's commands that nnbridge starts keep nnU-Net's spawned workers."""


def spawn_from_forkserver() -> Callable[[], None]:
    """Make ``multiprocessing.get_context("spawn")`` (how nnU-Net asks for its pools) return the
    ``forkserver`` context, preloading :data:`PRELOAD`; returns the function that undoes it. A
    no-op where there is no fork server (not Linux or macOS)."""
    original = multiprocessing.get_context
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return lambda: None
    server = original("forkserver")
    server.set_forkserver_preload(list(PRELOAD))

    def get_context(method: str | None = None):
        return server if method == "spawn" else original(method)

    multiprocessing.get_context = get_context

    def restore() -> None:
        multiprocessing.get_context = original

    return restore


def command_setup() -> str:
    """Python run first in an nnU-Net command nnbridge starts: :func:`spawn_from_forkserver`,
    unless :data:`ENABLE_ENV` is ``0`` (then nothing)."""
    if os.environ.get(ENABLE_ENV, "1") == "0":
        return ""
    return "from nnbridge.demo.workers import spawn_from_forkserver; spawn_from_forkserver(); "


@contextlib.contextmanager
def nnunet_workers_forked() -> Iterator[None]:
    """:func:`spawn_from_forkserver` within the block."""
    restore = spawn_from_forkserver()
    try:
        yield
    finally:
        restore()
