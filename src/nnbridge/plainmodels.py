"""Plain PyTorch segmentation networks (U-Net, UNet++, …) with provably correct weights.

The user names the model class (dotted path, or ``path/to/file.py:ClassName``) and its init
kwargs; the checkpoint is a state dict (bare or wrapped under ``state_dict`` /
``model_state_dict`` / ``network_weights`` / ``model``, with DataParallel's ``module.`` and
``torch.compile``'s ``_orig_mod.`` prefixes removed), a TorchScript archive, or — only when the
config marks it trusted — a fully pickled model. State dicts are read with
``torch.load(weights_only=True)``, loaded strictly and compared tensor by tensor afterwards.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import zipfile
from pathlib import Path
from typing import Any

import torch

from .errors import NNBridgeError

WRAPPER_KEYS = ("state_dict", "model_state_dict", "network_weights", "model")
PREFIXES = ("module.", "_orig_mod.")


def import_class(spec: str, where: str) -> type:
    """``package.module.Class`` or ``path/to/file.py:Class``."""
    if ":" in spec:
        file, _, name = spec.rpartition(":")
        path = Path(file)
        if not path.is_file():
            raise NNBridgeError(f"{where}: class file {path} not found; fix `class:` (path/to/file.py:ClassName)")
        module_name = f"nnbridge_user_{abs(hash(str(path.resolve())))}"
        module_spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_name] = module
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:  # noqa: BLE001 - the user's file; say which
            raise NNBridgeError(f"{where}: importing {path} failed ({type(exc).__name__}: {exc})") from exc
    else:
        module_path, _, name = spec.rpartition(".")
        if not module_path:
            raise NNBridgeError(f"{where}: `class: {spec}` must be a dotted path (package.module.Class) or file.py:Class")
        try:
            module = importlib.import_module(module_path)
        except ImportError as exc:
            raise NNBridgeError(
                f"{where}: cannot import {module_path!r} ({exc}); put its folder on PYTHONPATH or use "
                "`class: path/to/file.py:ClassName`"
            ) from exc
    cls = getattr(module, name, None)
    if not isinstance(cls, type) or not issubclass(cls, torch.nn.Module):
        raise NNBridgeError(f"{where}: {spec!r} is not a torch.nn.Module class")
    return cls


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
    from .models import strip_prefixes  # noqa: PLC0415 (models imports this module)

    stripped = strip_prefixes(obj, PREFIXES)
    if len(stripped) != len(obj):
        raise NNBridgeError(f"{path}: keys collide once 'module.'/'_orig_mod.' prefixes are removed")
    removed = sorted({p for k in obj for p in PREFIXES if k.startswith(p)})
    if removed:
        where += f", {' and '.join(removed)} prefixes removed"
    return stripped, where


def read_torch_file(path: Path, *, trusted: bool, config_key: str) -> Any:
    """``torch.load(weights_only=True)``; a file that needs arbitrary unpickling is refused
    unless ``trusted`` (then loaded in full)."""
    path = Path(path)
    if not path.is_file():
        raise NNBridgeError(f"{path}: checkpoint not found; fix `checkpoint:` of {config_key}")
    if not zipfile.is_zipfile(path):
        raise NNBridgeError(f"{path}: not a torch checkpoint (corrupt or truncated file); re-copy it")
    from .models import checkpoint_safe_globals  # noqa: PLC0415 (models imports this module)

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


def build_plain_network(source: dict[str, Any], config_key: str) -> tuple[torch.nn.Module, dict[str, torch.Tensor], str]:
    """(network in eval mode, the checkpoint's tensors, how they were found) for a plain model."""
    path = Path(source["checkpoint"])
    fmt = source.get("format", "state_dict")
    trusted = bool(source.get("trusted", False))
    if fmt == "torchscript":
        if not path.is_file():
            raise NNBridgeError(f"{path}: checkpoint not found; fix `checkpoint:` of {config_key}")
        try:
            network = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:  # noqa: BLE001
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise NNBridgeError(f"{path}: not a TorchScript archive ({first[:200]}); set `format:` of {config_key}") from exc
        network.eval()
        return network, {k: v.detach().clone() for k, v in network.state_dict().items()}, "TorchScript archive"
    if fmt == "pickle":
        if not trusted:
            raise NNBridgeError(
                f"{path}: a fully pickled model runs arbitrary code when loaded; set `trusted: true` "
                f"for {config_key} only if you trust its source (or save a state dict instead)"
            )
        network = read_torch_file(path, trusted=True, config_key=config_key)
        if not isinstance(network, torch.nn.Module):
            raise NNBridgeError(f"{path}: holds a {type(network).__name__}, not a torch.nn.Module; set `format: state_dict`")
        network.eval()
        return network, {k: v.detach().clone() for k, v in network.state_dict().items()}, "pickled module"
    if not source.get("class"):
        raise NNBridgeError(f"{config_key}: `class:` is required to load a state dict (package.module.Class or file.py:Class)")
    obj = read_torch_file(path, trusted=trusted, config_key=config_key)
    weights, where = unwrap_state_dict(obj, path)
    cls = import_class(source["class"], config_key)
    try:
        network = cls(**(source.get("init_kwargs") or {}))
    except TypeError as exc:
        raise NNBridgeError(f"{config_key}: {source['class']}(**init_kwargs) failed ({exc}); fix `init_kwargs:`") from exc
    from .models import load_strictly  # noqa: PLC0415

    load_strictly(network, weights, path, source["class"], f"check `class:` and `init_kwargs:` of {config_key}")
    return network, weights, f"state dict ({where})"
