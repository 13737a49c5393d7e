"""Export a loaded fold to ONNX (fp32, dynamic batch and spatial axes) and TorchScript (traced).

Every export is checked: the artifact's tensors must carry the checkpoint's weights (matched by
name, then by content hash) and its outputs must match eager PyTorch at two input shapes.
"""

from __future__ import annotations

import json
import platform
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from . import __version__
from .errors import NNBridgeError
from .models import LoadedFold, sha256_file, tensor_digest
from .onnxmeta import META_PREFIX, read_metadata  # noqa: F401 (read_metadata: re-exported)

INPUT_NAME = "input"
OUTPUT_NAME = "logits"


def check_spatial_shape(spatial: tuple[int, ...], multiple: tuple[int, ...]) -> None:
    """Refuse spatial sizes that the network's total stride does not divide."""
    bad = [(s, m) for s, m in zip(spatial, multiple) if s % m]
    if bad:
        raise NNBridgeError(
            f"spatial size {tuple(spatial)} is not a multiple of the network's total stride "
            f"{tuple(multiple)}; use sizes divisible by {tuple(multiple)} per axis"
        )


def probe_shapes(fold: LoadedFold) -> list[tuple[int, ...]]:
    """Two valid input shapes: the patch, and the patch grown by one stride on the first axis
    (or batch 2 when only the batch axis is dynamic; just the patch when nothing is)."""
    first = fold.input_shape
    grown = list(first)
    if "spatial" in fold.dynamic_axes:
        grown[2] += fold.stride_multiple[0]
    elif "batch" in fold.dynamic_axes:
        grown[0] = 2
    else:
        return [first]
    return [first, tuple(grown)]


def software_versions() -> dict[str, str]:
    versions = {"nnbridge": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
                "python": platform.python_version()}
    try:
        from importlib.metadata import version  # noqa: PLC0415

        versions["nnunetv2"] = version("nnunetv2")
    except Exception:  # noqa: BLE001 - nnunetv2 absent is reported, not fatal
        versions["nnunetv2"] = "unavailable"
    return versions


def fold_metadata(fold: LoadedFold, opset: int) -> dict[str, str]:
    """Provenance stored in every ONNX file (all values strings, as ONNX requires)."""
    meta = {
        "source_checkpoint": str(fold.checkpoint_path),
        "source_sha256": fold.checkpoint_sha256,
        "model_kind": fold.kind,
        "fold": fold.fold,
        "patch_size": json.dumps(list(fold.patch_size)),
        "stride_multiple": json.dumps(list(fold.stride_multiple)),
        "dynamic_axes": json.dumps(list(fold.dynamic_axes)),
        "num_input_channels": str(fold.num_input_channels),
        "num_outputs": str(fold.num_outputs),
        "mirror_axes": json.dumps(list(fold.mirror_axes)),
        "opset": str(opset),
        "versions": json.dumps(software_versions()),
    }
    if fold.kind == "nnunet":
        meta.update(trainer=fold.trainer_name, configuration=str(fold.configuration),
                    plans=json.dumps(fold.plans), dataset_json=json.dumps(fold.dataset_json))
        if fold.previous_stage is not None:  # cascade: image channels, then one-hot of these labels
            meta.update(previous_stage=fold.previous_stage,
                        num_image_channels=str(fold.num_image_channels),
                        onehot_labels=json.dumps(list(fold.previous_stage_labels)))
    else:
        meta.update(model_class=fold.trainer_name,
                    init_kwargs=json.dumps(fold.source.get("init_kwargs") or {}),
                    checkpoint_format=str(fold.source.get("format", "state_dict")),
                    labels=json.dumps(fold.labels), region_based=json.dumps(fold.region_based))
    return {META_PREFIX + k: v for k, v in meta.items()}


def unused_at_inference(network: torch.nn.Module, input_shape: tuple[int, ...]) -> list[str]:
    """Parameters that do not influence the output (e.g. deep-supervision heads when it is off).

    Found by one backward pass: a parameter without gradient is not part of the inference graph,
    so an export legitimately leaves it out.
    """
    network.zero_grad(set_to_none=True)
    with torch.enable_grad():
        network(torch.randn(input_shape)).float().sum().backward()
    unused = [name for name, p in network.named_parameters() if p.grad is None]
    network.zero_grad(set_to_none=True)
    return unused


def verify_onnx_weights(model: onnx.ModelProto, weights: dict[str, torch.Tensor],
                        unused: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """Every checkpoint tensor the network uses must be an initializer of the graph (matched by
    name, else by content hash); ``unused`` ones (see :func:`unused_at_inference`) are listed."""
    by_name = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    digests = {tensor_digest(arr) for arr in by_name.values()}
    missing: list[str] = []
    by_content = 0
    for name, tensor in weights.items():
        if tensor.dtype not in (torch.float32, torch.float16, torch.float64) or name in unused:
            continue  # counters such as num_batches_tracked do not enter the graph
        if name in by_name and tensor_digest(tensor) == tensor_digest(by_name[name]):
            continue
        if tensor_digest(tensor) in digests:
            by_content += 1
            continue
        missing.append(name)
    n = sum(1 for k, t in weights.items()
            if t.dtype in (torch.float32, torch.float16, torch.float64) and k not in unused)
    return {
        "ok": not missing,
        "n_tensors": n,
        "matched_by_content": by_content,
        "unused_at_inference": list(unused),
        "missing": missing,
        "summary": (f"weights verified: {n} tensors" if not missing
                    else f"weights NOT verified: first mismatching tensor {missing[0]}"),
    }


def verify_torchscript_weights(module: torch.jit.ScriptModule,
                               weights: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The traced module's state dict must equal the checkpoint's, tensor by tensor."""
    state = module.state_dict()
    missing = [k for k, v in weights.items()
               if k not in state or tensor_digest(state[k]) != tensor_digest(v)]
    return {
        "ok": not missing,
        "n_tensors": len(weights),
        "missing": missing,
        "summary": (f"weights verified: {len(weights)} tensors" if not missing
                    else f"weights NOT verified: first mismatching tensor {missing[0]}"),
    }


def refuse_unproven(weight_proof: dict[str, Any], out_path: Path) -> None:
    """An artifact that does not carry the checkpoint's weights is deleted, never shipped."""
    if not weight_proof["ok"]:
        Path(out_path).unlink(missing_ok=True)
        raise NNBridgeError(f"{out_path}: {weight_proof['summary']}; the export does not carry the "
                            "checkpoint's weights, so it was deleted")


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


def write_onnx(network: torch.nn.Module, dummy: torch.Tensor, out_path: Path, opset: int,
               metadata: dict[str, str],
               dynamic_axes: tuple[str, ...] = ("batch", "spatial")) -> onnx.ModelProto:
    """Export ``network`` traced at ``dummy`` with the legacy exporter (fp32; the batch and/or
    spatial axes dynamic), check the graph and store ``metadata`` (keys with :data:`META_PREFIX`)."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    axes = {0: "batch"} if "batch" in dynamic_axes else {}
    if "spatial" in dynamic_axes:
        axes.update({i + 2: f"spatial_{i}" for i in range(dummy.dim() - 2)})
    dynamic = {INPUT_NAME: axes, OUTPUT_NAME: dict(axes)} if axes else None
    with torch.no_grad(), warnings.catch_warnings():
        # torch warns that folding may alter parameters in training mode; the network is in eval
        # mode, and the weight proof checks every parameter of the graph anyway
        warnings.filterwarnings("ignore", message="It is recommended that constant folding be turned off")
        torch.onnx.export(
            network, (dummy,), str(out_path), dynamo=False, opset_version=opset,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_axes=dynamic,
            do_constant_folding=True,
            # the network is in eval mode; PRESERVE (not EVAL) keeps BatchNormalization nodes
            # instead of folding them into the convolutions, so every checkpoint tensor stays an
            # initializer the weight proof can find (onnxsim and the runtimes fuse them later)
            training=torch.onnx.TrainingMode.PRESERVE,
        )
    model = onnx.load(str(out_path))
    onnx.checker.check_model(model)
    for key, value in metadata.items():
        prop = model.metadata_props.add()
        prop.key, prop.value = key, value
    onnx.save(model, str(out_path))
    return model


def export_onnx(fold: LoadedFold, out_path: Path, opset: int = 17, seed: int = 0) -> dict[str, Any]:
    """Write ``out_path`` (ONNX fp32, dynamic batch and spatial axes, provenance metadata)."""
    import onnxruntime as ort  # noqa: PLC0415

    check_spatial_shape(fold.patch_size, fold.stride_multiple)
    out_path = Path(out_path)
    generator = torch.Generator().manual_seed(seed)
    dummy = torch.randn(fold.input_shape, generator=generator)
    model = write_onnx(fold.network, dummy, out_path, opset, fold_metadata(fold, opset),
                       fold.dynamic_axes)
    weight_proof = verify_onnx_weights(model, fold.weights,
                                       unused_at_inference(fold.network, fold.input_shape))
    refuse_unproven(weight_proof, out_path)

    session = ort.InferenceSession(str(out_path), providers=["CPUExecutionProvider"])
    shape_checks = []
    for shape in probe_shapes(fold):
        x = torch.randn(shape, generator=generator)
        with torch.no_grad():
            ref = fold.network(x).numpy()
        got = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
        shape_checks.append({"shape": list(shape), "max_abs_err": _max_abs(ref, got)})
    return {
        "path": str(out_path),
        "sha256": sha256_file(out_path),
        "size_bytes": out_path.stat().st_size,
        "opset": opset,
        "weights": weight_proof,
        "shape_checks": shape_checks,
        "source": {"kind": fold.kind, "checkpoint": str(fold.checkpoint_path),
                   "sha256": fold.checkpoint_sha256, "model": fold.trainer_name,
                   "weights_origin": fold.weights_origin},
    }


def export_torchscript(fold: LoadedFold, out_path: Path, seed: int = 0) -> dict[str, Any]:
    """Write a traced TorchScript archive (``torch.jit.script`` fails on nnU-Net encoders)."""
    check_spatial_shape(fold.patch_size, fold.stride_multiple)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    dummy = torch.randn(fold.input_shape, generator=generator)
    if isinstance(fold.network, torch.jit.ScriptModule):  # the source is TorchScript already
        traced = fold.network
    else:
        with torch.no_grad():
            traced = torch.jit.trace(fold.network, (dummy,), check_trace=False)
    extra = {"nnbridge.json": json.dumps(fold_metadata(fold, opset=0))}
    torch.jit.save(traced, str(out_path), _extra_files=extra)
    loaded = torch.jit.load(str(out_path), map_location="cpu")
    weight_proof = verify_torchscript_weights(loaded, fold.weights)
    refuse_unproven(weight_proof, out_path)
    shape_checks = []
    for shape in probe_shapes(fold):
        x = torch.randn(shape, generator=generator)
        with torch.no_grad():
            ref = fold.network(x).numpy()
            got = loaded(x).numpy()
        shape_checks.append({"shape": list(shape), "max_abs_err": _max_abs(ref, got)})
    return {
        "path": str(out_path),
        "sha256": sha256_file(out_path),
        "size_bytes": out_path.stat().st_size,
        "weights": weight_proof,
        "shape_checks": shape_checks,
    }
