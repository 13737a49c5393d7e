"""Reading checkpoints safely and proving a network carries their weights.

``torch.load(weights_only=True)`` with nnU-Net's numpy allow-list (a file that needs arbitrary
unpickling is refused unless the config marks it ``trusted``); state dicts found under the usual
wrappers with DataParallel's and ``torch.compile``'s prefixes removed; strict loading and an exact
tensor-by-tensor comparison afterwards."""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.errors import NNBridgeError


COMPILED_PREFIX = "_orig_mod."


# Lightning / generic, plain training loops, nnU-Net, generic, MONAI CheckpointSaver ({"net": ..., "opt": ...})
WRAPPER_KEYS = ("state_dict", "model_state_dict", "network_weights", "model", "net", "network")


PREFIXES = ("module.", "_orig_mod.")


def checkpoint_safe_globals() -> list[Any]:
    """Types found in nnU-Net v2 checkpoints besides tensors and builtins.

    nnU-Net stores numpy scalars and dtypes in ``logging`` / ``_best_ema``; nothing else is
    allowed, so an arbitrary pickle is still refused.
    """
    import numpy.core.multiarray as multiarray  # noqa: PLC0415 (numpy 2 keeps this alias)

    allowed: list[Any] = [multiarray.scalar, np.dtype, np.ndarray, multiarray._reconstruct]
    for name in ("Float64DType", "Float32DType", "Int64DType", "Int32DType", "BoolDType"):
        dtype_cls = getattr(np.dtypes, name, None)
        if dtype_cls is not None:
            allowed.append(dtype_cls)
    return allowed


def read_torch_file(path: Path, *, trusted: bool, config_key: str) -> Any:
    """``torch.load(weights_only=True)``; a file that needs arbitrary unpickling is refused
    unless ``trusted`` (then loaded in full)."""
    path = Path(path)
    if not path.is_file():
        raise NNBridgeError(f"{path}: checkpoint not found; fix `checkpoint:` of {config_key}")
    if not zipfile.is_zipfile(path):
        raise NNBridgeError(f"{path}: not a torch checkpoint (corrupt or truncated file); re-copy it")

    try:
        if trusted:
            return torch.load(path, map_location="cpu", weights_only=False)
        with torch.serialization.safe_globals(checkpoint_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch's messages are long; keep the first line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if trusted:
            raise NNBridgeError(f"{path}: could not be loaded ({first[:200]})") from exc
        raise NNBridgeError(
            f"{path}: refused by safe loading (it holds more than tensors: {first[:160]}); if you "
            f"trust this file, set `trusted: true` for {config_key}"
        ) from exc


def unwrap_state_dict(obj: Any, path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """(state dict with prefixes removed, where it was found) from a loaded checkpoint."""
    where = "top level"
    if isinstance(obj, dict) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in WRAPPER_KEYS:
            if isinstance(obj.get(key), dict):
                obj, where = obj[key], f"key {key!r}"
                break
        else:
            raise NNBridgeError(
                f"{path}: no state dict found (top-level keys {sorted(map(str, obj))[:8]}); nnbridge "
                f"looks under {', '.join(WRAPPER_KEYS)} or takes a bare state dict"
            )
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise NNBridgeError(f"{path}: the {where} is not a state dict of tensors; set `format:` of this model")

    stripped = strip_prefixes(obj, PREFIXES)
    if len(stripped) != len(obj):
        raise NNBridgeError(f"{path}: keys collide once 'module.'/'_orig_mod.' prefixes are removed")
    removed = sorted({p for k in obj for p in PREFIXES if k.startswith(p)})
    if removed:
        where += f", {' and '.join(removed)} prefixes removed"
    return stripped, where


def strip_prefixes(state_dict: dict[str, torch.Tensor],
                   prefixes: tuple[str, ...] = (COMPILED_PREFIX,)) -> dict[str, torch.Tensor]:
    """Remove key prefixes (default: the ``_orig_mod.`` a ``torch.compile``-d network saves its
    weights under), repeatedly, so ``_orig_mod.module.`` goes too when both are given."""
    def strip(key: str) -> str:
        while prefix := next((p for p in prefixes if key.startswith(p)), None):
            key = key[len(prefix):]
        return key

    return {strip(key): value for key, value in state_dict.items()}


def tensor_digest(tensor: torch.Tensor | np.ndarray) -> str:
    """Content hash of a tensor (dtype, shape and bytes)."""
    array = tensor.detach().cpu().numpy() if isinstance(tensor, torch.Tensor) else np.asarray(tensor)
    array = np.ascontiguousarray(array)
    digest = hashlib.sha256()
    digest.update(str(array.dtype).encode())
    digest.update(str(array.shape).encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


@dataclass
class WeightCheck:
    """Outcome of comparing a network's tensors with its checkpoint."""

    n_tensors: int
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self) -> str:
        if self.ok:
            return f"weights verified: {self.n_tensors} tensors"
        first = (self.missing or self.unexpected or self.mismatched)[0]
        kind = "missing" if self.missing else "unexpected" if self.unexpected else "mismatching"
        return f"weights NOT verified: first {kind} tensor {first}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "n_tensors": self.n_tensors,
            "missing": self.missing,
            "unexpected": self.unexpected,
            "mismatched": self.mismatched,
            "summary": self.summary(),
        }


def verify_state(network: torch.nn.Module, reference: dict[str, torch.Tensor]) -> WeightCheck:
    """Compare every parameter and buffer of ``network`` with ``reference`` exactly."""
    actual = network.state_dict()
    check = WeightCheck(n_tensors=len(reference))
    check.missing = sorted(set(reference) - set(actual))
    check.unexpected = sorted(set(actual) - set(reference))
    for key in sorted(set(actual) & set(reference)):
        a, b = actual[key], reference[key]
        if a.shape != b.shape or a.dtype != b.dtype or not torch.equal(a.cpu(), b.cpu()):
            check.mismatched.append(key)
    return check


def load_strictly(network: torch.nn.Module, weights: dict[str, torch.Tensor], path: Path,
                  built_from: str, fix: str) -> None:
    """``load_state_dict(strict=True)`` (no missing or unexpected key), then eval mode; a
    mismatch names the checkpoint, the first keys and ``fix``."""
    try:
        network.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise NNBridgeError(
            f"{path}: weights do not fit {built_from} ({' '.join(first[:2])[:300]}); {fix}"
        ) from exc
    network.eval()


def verified(network: torch.nn.Module, weights: dict[str, torch.Tensor], path: Path) -> WeightCheck:
    """:func:`verify_state`, raising with the first mismatching tensor unless all match."""
    check = verify_state(network, weights)
    if not check.ok:
        raise NNBridgeError(f"{path}: {check.summary()}")
    return check
