"""Eager PyTorch and TorchScript on batches of patches; torch is imported only when one runs
(``nnbridge predict`` and ONNX Runtime benchmark processes never load it)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np


def set_torch_threads(threads: int) -> None:
    """``threads`` intra-op threads and one inter-op thread (0: leave torch's defaults)."""
    import torch  # noqa: PLC0415 - torch only where a torch runner is made

    if threads:
        torch.set_num_threads(threads)
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:  # only settable before the first parallel work of the process
            pass


def module_runner(module, threads: int = 0) -> Callable[[np.ndarray], np.ndarray]:
    """A batch → logits callable on an eager or TorchScript module (eval mode, no autograd)."""
    import torch  # noqa: PLC0415 - torch only where a torch runner is made

    set_torch_threads(threads)
    module.eval()

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(batch)).numpy()

    return run


def torchscript_runner(path: Path, threads: int = 0) -> Callable[[np.ndarray], np.ndarray]:
    """:func:`module_runner` on a TorchScript archive."""
    import torch  # noqa: PLC0415 - torch only where a torch runner is made

    set_torch_threads(threads)
    return module_runner(torch.jit.load(str(path), map_location="cpu"), threads)


def run_torch(network, patches: np.ndarray, progress: str | None = None) -> np.ndarray:
    """Logits of an eager PyTorch network for each patch; with ``progress`` (a label) one line per
    patch, ``nnbridge: <label>: patch i/n`` (a 128³ patch is ~7-14 s on the 2-core machines)."""
    run = module_runner(network)
    out = []
    for i in range(len(patches)):
        if progress:
            print(f"nnbridge: {progress}: patch {i + 1}/{len(patches)}", flush=True)
        out.append(run(patches[i : i + 1]))
    return np.concatenate(out).astype(np.float32)
