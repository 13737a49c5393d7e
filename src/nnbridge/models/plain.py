"""Plain PyTorch segmentation networks (U-Net, UNet++, …) with provably correct weights.

The user names the model class (dotted path, or ``path/to/file.py:ClassName``) and its init
kwargs; the checkpoint is a state dict (bare or wrapped under ``state_dict`` /
``model_state_dict`` / ``network_weights`` / ``model``, with DataParallel's ``module.`` and
``torch.compile``'s ``_orig_mod.`` prefixes removed), a TorchScript archive, or — only when the
config marks it trusted — a fully pickled model. State dicts are read with
``torch.load(weights_only=True)``, loaded strictly and compared tensor by tensor afterwards."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

import torch

from ..core.errors import NNBridgeError
from ..core.runlog import sha256_file
from .checkpoint import load_strictly, read_torch_file, unwrap_state_dict, verified
from .loaded import LoadedFold


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

    load_strictly(network, weights, path, source["class"], f"check `class:` and `init_kwargs:` of {config_key}")
    return network, weights, f"state dict ({where})"


def _per_axis(value: int | list[int], dims: int, what: str, where: str) -> tuple[int, ...]:
    values = [int(value)] * dims if isinstance(value, int) else [int(v) for v in value]
    if len(values) != dims or min(values) < 1:
        raise NNBridgeError(f"{where}: `{what}` must be a positive integer or {dims} of them")
    return tuple(values)


def load_plain_model(source: dict[str, Any]) -> LoadedFold:
    """A plain PyTorch model from its config entry: network, weights proven, shapes checked."""

    where = f"model {source.get('name', source['checkpoint'])!r}"
    network, weights, found = build_plain_network(source, where)
    check = verified(network, weights, Path(source["checkpoint"]))
    example = tuple(int(s) for s in source["example_size"])
    multiple = _per_axis(source.get("spatial_multiple", 1), len(example), "spatial_multiple", where)
    channels = int(source["input_channels"])
    with torch.no_grad():
        out = network(torch.zeros((1, channels, *example)))
    if isinstance(out, (list, tuple)):
        raise NNBridgeError(
            f"{where}: forward returns {len(out)} outputs (deep supervision on?); build the model "
            "with one output in `init_kwargs:`"
        )
    if tuple(out.shape[2:]) != example:
        raise NNBridgeError(f"{where}: output spatial size {tuple(out.shape[2:])} differs from the input's {example}")
    num_outputs = int(out.shape[1])
    region_based = source.get("output", "softmax") == "sigmoid"
    labels = source.get("labels") or (
        {f"channel_{i}": [i] for i in range(num_outputs)} if region_based
        else {"background": 0, **{f"class_{i}": i for i in range(1, num_outputs)}}
    )
    checkpoint = Path(source["checkpoint"])
    return LoadedFold(
        model_folder=checkpoint.parent,
        fold=str(source.get("fold", "all")),
        checkpoint_path=checkpoint,
        checkpoint_sha256=sha256_file(checkpoint),
        network=network,
        plans=None,
        dataset_json=None,
        configuration=None,
        trainer_name=str(source.get("class") or found),
        patch_size=example,
        num_input_channels=channels,
        num_outputs=num_outputs,
        mirror_axes=tuple(int(a) for a in source.get("mirror_axes") or ()),
        stride_multiple=multiple,
        region_based=region_based,
        weights=weights,
        weight_check=check,
        kind="pytorch",
        dynamic_axes=tuple(source.get("dynamic_axes", ("batch", "spatial"))),
        labels=labels,
        source={k: v for k, v in source.items() if k not in ("fold",)},
        weights_origin=found,
    )
