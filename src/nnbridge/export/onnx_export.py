"""Export a loaded fold to ONNX (fp32, dynamic batch and spatial axes by default), checked: the
graph's initializers carry the checkpoint's weights and its outputs match eager PyTorch at two
input shapes."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import onnx
import torch

from ..core.runlog import sha256_file
from ..models.loaded import LoadedFold
from ..runtime.ort import onnx_session
from .common import INPUT_NAME, OUTPUT_NAME, _max_abs, check_spatial_shape, fold_metadata, probe_shapes
from .weights import refuse_unproven, unused_at_inference, verify_onnx_weights


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
    check_spatial_shape(fold.patch_size, fold.stride_multiple)
    out_path = Path(out_path)
    generator = torch.Generator().manual_seed(seed)
    dummy = torch.randn(fold.input_shape, generator=generator)
    model = write_onnx(fold.network, dummy, out_path, opset, fold_metadata(fold, opset),
                       fold.dynamic_axes)
    weight_proof = verify_onnx_weights(model, fold.weights,
                                       unused_at_inference(fold.network, fold.input_shape))
    refuse_unproven(weight_proof, out_path)

    session = onnx_session(out_path)
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
        "trainer_fallback": fold.trainer_note,
        "source": {"kind": fold.kind, "checkpoint": str(fold.checkpoint_path),
                   "sha256": fold.checkpoint_sha256, "model": fold.trainer_name,
                   "weights_origin": fold.weights_origin},
    }
