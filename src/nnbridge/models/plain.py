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
    if cls is None:
        found = sorted(n for n, v in vars(module).items()
                       if isinstance(v, type) and issubclass(v, torch.nn.Module) and v.__module__ == module.__name__)
        raise NNBridgeError(f"{where}: {spec!r}: its module has no {name!r}; fix `class:`"
                            + (f" (its torch.nn.Module classes: {', '.join(found[:8])})" if found else ""))
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

    weights, owner = strip_owner_prefix(network, weights)
    if owner:
        where += f", prefix {owner!r} removed (every key carried it)"
    load_strictly(network, weights, path, source["class"], f"check `class:` and `init_kwargs:` of {config_key}")
    return network, weights, f"state dict ({where})"


def strip_owner_prefix(network: torch.nn.Module, weights: dict[str, torch.Tensor]
                       ) -> tuple[dict[str, torch.Tensor], str | None]:
    """The weights without the attribute name of the module that owned the network in training
    (a LightningModule's ``model.``), when every key carries the same first component and the
    network's keys are exactly the rest; else unchanged."""
    expected = set(network.state_dict())
    if set(weights) == expected or not all("." in k for k in weights):
        return weights, None
    heads = {k.split(".", 1)[0] for k in weights}
    if len(heads) != 1:
        return weights, None
    head = heads.pop() + "."
    stripped = {k[len(head):]: v for k, v in weights.items()}
    return (stripped, head) if set(stripped) == expected else (weights, None)


def _per_axis(value: int | list[int], dims: int, what: str, where: str) -> tuple[int, ...]:
    values = [int(value)] * dims if isinstance(value, int) else [int(v) for v in value]
    if len(values) != dims or min(values) < 1:
        raise NNBridgeError(f"{where}: `{what}` must be a positive integer or {dims} of them")
    return tuple(values)


class OutputSelector(torch.nn.Module):
    """The network with one logits output: element ``index`` of the list/tuple its forward
    returns, or entry ``key`` of its dict. Its state dict holds the network's under
    :attr:`PREFIX`."""

    PREFIX = "network."

    def __init__(self, network: torch.nn.Module, index: int | None = None, key: str | None = None) -> None:
        super().__init__()
        self.network = network
        self.index = index
        self.key = key

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.network(x)
        return out[self.key] if self.key is not None else out[self.index]


def _shapes(values: Any) -> list[Any]:
    return [list(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__ for v in values]


def choose_output(out: Any, spatial: tuple[int, ...], source: dict[str, Any], where: str
                  ) -> tuple[int | None, str | None, dict[str, Any]]:
    """(list index, dict key, record) of the logits among what ``forward`` returns: a tensor as
    is; a list/tuple at ``output_index`` (default: the output at the input's spatial size, the
    last of several such, as UNet++'s deepest head); a dict at ``output_key`` (default: its only
    entry at the input's spatial size)."""
    index, key = source.get("output_index"), source.get("output_key")
    if isinstance(out, torch.Tensor):
        if index is not None or key is not None:
            raise NNBridgeError(f"{where}: forward returns one tensor; remove `output_index:`/`output_key:`")
        return None, None, {"returns": "tensor", "shape": list(out.shape)}
    if isinstance(out, (list, tuple)):
        kind = type(out).__name__
        record: dict[str, Any] = {"returns": kind, "n": len(out), "shapes": _shapes(out)}
        if key is not None:
            raise NNBridgeError(f"{where}: forward returns a {kind}, not a dict; use `output_index:` instead of `output_key:`")
        if index is not None:
            if not -len(out) <= int(index) < len(out) or not isinstance(out[int(index)], torch.Tensor):
                raise NNBridgeError(f"{where}: `output_index: {index}` does not name a tensor of the "
                                    f"{len(out)} outputs {_shapes(out)}; use 0..{len(out) - 1}")
            return int(index) % len(out), None, {**record, "index": int(index) % len(out), "how": "output_index"}
        full = [i for i, v in enumerate(out) if isinstance(v, torch.Tensor) and tuple(v.shape[2:]) == spatial]
        if not full:
            raise NNBridgeError(f"{where}: forward returns a {kind} of {len(out)} outputs {_shapes(out)}, none at "
                                f"the input's spatial size {list(spatial)}; set `output_index:` to the logits")
        how = ("the only output" if len(out) == 1 else
               f"the only one of {len(out)} outputs at the input's spatial size" if len(full) == 1 else
               f"the last of {len(full)} outputs at the input's spatial size (the deepest head, as "
               "UNet++ predicts without deep supervision); `output_index:` chooses another")
        return full[-1], None, {**record, "index": full[-1], "how": f"default: {how}"}
    if isinstance(out, dict):
        record = {"returns": "dict", "keys": [str(k) for k in out], "shapes": _shapes(out.values())}
        if index is not None:
            raise NNBridgeError(f"{where}: forward returns a dict; use `output_key:` (one of {list(out)}) instead of `output_index:`")
        if key is not None:
            if key not in out or not isinstance(out[key], torch.Tensor):
                raise NNBridgeError(f"{where}: `output_key: {key}` is not a tensor entry of forward's dict "
                                    f"(keys {list(out)}); set it to the logits' key")
            return None, key, {**record, "key": key, "how": "output_key"}
        full = [k for k, v in out.items() if isinstance(v, torch.Tensor) and tuple(v.shape[2:]) == spatial]
        if len(full) != 1:
            raise NNBridgeError(f"{where}: forward returns a dict with keys {list(out)}; set `output_key:` to the logits' key")
        return None, full[0], {**record, "key": full[0], "how": "default: the only entry at the input's spatial size"}
    raise NNBridgeError(f"{where}: forward returns a {type(out).__name__}; nnbridge takes a tensor, a list/tuple "
                        "(with `output_index:`) or a dict (with `output_key:`)")


def _runs_at(network: torch.nn.Module, channels: int, size: tuple[int, ...]) -> str | None:
    """None if ``network`` takes a batch of that spatial size and returns logits of that size,
    else why not (one line)."""
    try:
        with torch.no_grad():
            out = network(torch.zeros((1, channels, *size)))
    except Exception as exc:  # noqa: BLE001 - any failure means "not this size"
        return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:160]}"
    if tuple(out.shape[2:]) != tuple(size):
        return f"output spatial size {list(out.shape[2:])} differs from the input's {list(size)}"
    return None


def probe_spatial(network: torch.nn.Module, channels: int, example: tuple[int, ...]
                  ) -> tuple[tuple[int, ...], tuple[int, ...], dict[str, Any]]:
    """(spatial multiple, fixed axes, record): per axis the smallest step m dividing the example
    size such that the example grown by m on that axis runs and keeps its size; an axis where
    no such m exists is fixed (the network runs at the example size only, as a ViT with a
    position embedding per patch)."""
    multiple, fixed, tried = [], [], {}
    for axis, size in enumerate(example):
        failures = []
        for m in (d for d in range(1, size + 1) if size % d == 0):
            grown = tuple(s + m if i == axis else s for i, s in enumerate(example))
            why = _runs_at(network, channels, grown)
            if why is None:
                multiple.append(m)
                break
            failures.append({"step": m, "error": why})
        else:
            multiple.append(size)
            fixed.append(axis)
        tried[str(axis)] = failures[-3:]
    record = {"spatial_multiple": multiple, "how": "probed: per axis the smallest step m dividing "
              "example_size such that example_size + m runs and keeps its size", "fixed_axes": fixed,
              "last_failures": tried}
    return tuple(multiple), tuple(fixed), record


def check_labels(labels: Any, num_outputs: int, region_based: bool, where: str) -> None:
    """``labels:`` of a plain model against its output channels: softmax, every class 0..C-1 named
    once with ``background: 0`` (argmax class 0, never scored, as in nnU-Net's dataset.json);
    sigmoid, one region per output channel. A class the network cannot output would pass every
    Dice gate without a voxel, an unnamed one would never be scored."""
    if not isinstance(labels, dict):
        raise NNBridgeError(f"{where}: `labels:` maps label names to class indices, e.g. {{background: 0, liver: 1}}")
    if region_based:
        regions = [k for k, v in labels.items() if k != "background" and v != 0]
        if len(regions) != num_outputs:
            raise NNBridgeError(f"{where}: `labels:` names {len(regions)} region(s) {regions}, the network has "
                                f"{num_outputs} sigmoid output channel(s); name one region per channel, in order")
        return
    if labels.get("background") != 0 or isinstance(labels.get("background"), bool):
        raise NNBridgeError(f"{where}: `labels:` needs `background: 0` (argmax class 0, never scored; nnU-Net's "
                            f"dataset.json has it too), got {labels}; add it, or use `output: sigmoid` if channel 0 "
                            "is a structure")
    bad = [(k, v) for k, v in labels.items() if isinstance(v, bool) or not isinstance(v, int)]
    if bad:
        raise NNBridgeError(f"{where}: `labels:` {bad[0][0]}: {bad[0][1]!r} is not a class index; softmax labels map "
                            "names to integers (lists of classes are regions: `output: sigmoid`)")
    named = sorted(labels.values())
    if named != list(range(num_outputs)):
        raise NNBridgeError(f"{where}: `labels:` names classes {named}, the network has {num_outputs} output "
                            f"channel(s), classes {list(range(num_outputs))}; name each class once (a class it "
                            "cannot output would pass every gate without a voxel)")


def load_plain_model(source: dict[str, Any]) -> LoadedFold:
    """A plain PyTorch model from its config entry: network, weights proven, its logits output
    chosen, spatial sizes probed (unless given), shapes checked."""

    where = f"model {source.get('name', source['checkpoint'])!r}"
    network, weights, found = build_plain_network(source, where)
    check = verified(network, weights, Path(source["checkpoint"]))
    example = tuple(int(s) for s in source["example_size"])
    channels = int(source["input_channels"])
    try:
        with torch.no_grad():
            out = network(torch.zeros((1, channels, *example)))
    except Exception as exc:  # noqa: BLE001 - the user's network: say where it failed
        raise NNBridgeError(f"{where}: forward at example_size {list(example)} with {channels} input channel(s) "
                            f"failed ({type(exc).__name__}: {str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}); "
                            "fix `example_size:`/`input_channels:`") from exc
    index, key, output_record = choose_output(out, example, source, where)
    prefix = ""
    if index is not None or key is not None:
        network, prefix = OutputSelector(network, index, key).eval(), OutputSelector.PREFIX
        out = out[key] if key is not None else out[index]
    if tuple(out.shape[2:]) != example:
        raise NNBridgeError(f"{where}: output spatial size {tuple(out.shape[2:])} differs from the input's {example}; "
                            "nnbridge takes networks whose logits keep the input's size (segmentation, like nnU-Net's): "
                            "pad the convolutions, or pick the full-size output with `output_index:`/`output_key:`")
    dynamic = tuple(source.get("dynamic_axes", ("batch", "spatial")))
    if source.get("spatial_multiple") is not None:
        multiple = _per_axis(source["spatial_multiple"], len(example), "spatial_multiple", where)
        spatial = {"spatial_multiple": list(multiple), "how": "given (spatial_multiple)", "fixed_axes": []}
    else:
        multiple, fixed, spatial = probe_spatial(network, channels, example)
        if fixed:
            reason = (f"fixed spatial size: the network runs at example_size {list(example)} only (axis "
                      f"{fixed[0]}: example_size + m fails for every m dividing it, e.g. "
                      f"{spatial['last_failures'][str(fixed[0])][-1]['error']})")
            if "spatial" in source.get("dynamic_axes", ()):
                raise NNBridgeError(f"{where}: {reason}; remove `spatial` from `dynamic_axes:`")
            if "dynamic_axes" not in source:
                dynamic = ("batch",)
                reason += "; exported with dynamic_axes [batch]"
            spatial["fixed"] = reason
    spatial["dynamic_axes"] = list(dynamic)
    num_outputs = int(out.shape[1])
    region_based = source.get("output", "softmax") == "sigmoid"
    if source.get("labels"):
        check_labels(source["labels"], num_outputs, region_based, where)
    beyond = [a for a in source.get("mirror_axes") or () if not 0 <= int(a) < len(example)]
    if beyond:
        raise NNBridgeError(f"{where}: `mirror_axes:` {beyond} beyond the spatial axes of example_size {list(example)} "
                            f"(0..{len(example) - 1}, as nnU-Net counts them); fix `mirror_axes:`")
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
        dynamic_axes=dynamic,
        labels=labels,
        source={k: v for k, v in source.items() if k not in ("fold",)},
        weights_origin=found,
        weights_prefix=prefix,
        output=output_record,
        spatial=spatial,
    )
