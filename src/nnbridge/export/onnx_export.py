"""Export a loaded fold to ONNX (fp32, dynamic batch and spatial axes by default), checked: the
graph's initializers carry the checkpoint's weights and its outputs match eager PyTorch at two
input shapes."""

from __future__ import annotations

import dataclasses
import io
import warnings
from pathlib import Path
from typing import Any

import onnx
import torch

from ..core.runlog import sha256_file
from ..models.loaded import LoadedFold
from ..runtime.ort import onnx_session
from .common import (INPUT_NAME, OUTPUT_NAME, check_spatial_shape, fold_metadata, gradient_shape,
                     raise_multiple, run_shape_checks, traced_size_bound)
from .weights import refuse_unproven, unused_at_inference, verify_onnx_weights


def _export(network: torch.nn.Module, dummy: torch.Tensor, f: Any, opset: int,
            dynamic_axes: tuple[str, ...], *, fold_constants: bool = True, fold_batchnorm: bool = False) -> None:
    axes = {0: "batch"} if "batch" in dynamic_axes else {}
    if "spatial" in dynamic_axes:
        axes.update({i + 2: f"spatial_{i}" for i in range(dummy.dim() - 2)})
    dynamic = {INPUT_NAME: axes, OUTPUT_NAME: dict(axes)} if axes else None
    with torch.no_grad(), warnings.catch_warnings():
        # torch warns that folding may alter parameters in training mode; the network is in eval
        # mode, and the weight proof checks every parameter of the graph anyway
        warnings.filterwarnings("ignore", message="It is recommended that constant folding be turned off")
        torch.onnx.export(
            network, (dummy,), f, dynamo=False, opset_version=opset,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_axes=dynamic,
            do_constant_folding=fold_constants,
            # the network is in eval mode; PRESERVE (not EVAL) keeps BatchNormalization nodes
            # instead of folding them into the convolutions (onnxsim and the runtimes fuse them
            # later); EVAL folds them when asked (export.fold_batchnorm): the weight proof then
            # finds them folded
            training=torch.onnx.TrainingMode.EVAL if fold_batchnorm else torch.onnx.TrainingMode.PRESERVE,
        )


def unfolded_graph(network: torch.nn.Module, dummy: torch.Tensor, opset: int) -> onnx.ModelProto:
    """The export without constant or BatchNorm folding: every parameter an initializer under
    its state-dict name (the weight proof's reference for what folding made of them)."""
    buffer = io.BytesIO()
    _export(network, dummy, buffer, opset, (), fold_constants=False)
    return onnx.load_from_string(buffer.getvalue())


def write_onnx(network: torch.nn.Module, dummy: torch.Tensor, out_path: Path, opset: int,
               metadata: dict[str, str],
               dynamic_axes: tuple[str, ...] = ("batch", "spatial"), fold_batchnorm: bool = False) -> onnx.ModelProto:
    """Export ``network`` traced at ``dummy`` with the legacy exporter (fp32; the batch and/or
    spatial axes dynamic; BatchNorm folded into convolutions only if ``fold_batchnorm``), check
    the graph and store ``metadata`` (keys with :data:`META_PREFIX`)."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    _export(network, dummy, str(out_path), opset, dynamic_axes, fold_batchnorm=fold_batchnorm)
    model = onnx.load(str(out_path))
    onnx.checker.check_model(model)
    for key, value in metadata.items():
        prop = model.metadata_props.add()
        prop.key, prop.value = key, value
    onnx.save(model, str(out_path))
    return model


class _Lazy:
    """A value computed on first call and kept."""

    def __init__(self, make: Any) -> None:
        self.make, self.value = make, None

    def __call__(self) -> Any:
        if self.value is None:
            self.value = self.make()
        return self.value


def export_onnx(fold: LoadedFold, out_path: Path, opset: int = 17, seed: int = 0,
                fold_batchnorm: bool = False, threads: int = 0) -> dict[str, Any]:
    """Write ``out_path`` (ONNX fp32, dynamic batch and spatial axes, provenance metadata),
    proven to carry the checkpoint's weights; a graph whose trace baked in the spatial size is
    exported again with a fixed spatial size (dynamic batch only), the reason recorded.
    ``threads``: ONNX Runtime's threads for the output checks (0: its default, every core)."""
    check_spatial_shape(fold.patch_size, fold.stride_multiple)
    out_path = Path(out_path)
    generator = torch.Generator().manual_seed(seed)
    dummy = torch.randn(fold.input_shape, generator=generator)
    try:  # at a small valid shape; a network that refuses it is asked at its patch
        unused = unused_at_inference(fold.network, gradient_shape(fold), fold.weights_prefix)
    except Exception:  # noqa: BLE001 - any failure of the small pass: the patch decides
        unused = unused_at_inference(fold.network, fold.input_shape, fold.weights_prefix)
    reference = _Lazy(lambda: unfolded_graph(fold.network, dummy, opset))

    def export_proven(fold: LoadedFold) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        model = write_onnx(fold.network, dummy, out_path, opset, fold_metadata(fold, opset),
                           fold.dynamic_axes, fold_batchnorm)
        proof = verify_onnx_weights(model, fold.weights, unused, prefix=fold.weights_prefix,
                                    reference=reference, input_shape=fold.input_shape)
        refuse_unproven(proof, out_path)
        session = onnx_session(out_path, threads)
        return proof, run_shape_checks(fold, lambda x: session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0],
                                    generator)

    weight_proof, shape_checks = export_proven(fold)
    spatial = dict(fold.spatial or {})
    bound = traced_size_bound(shape_checks) if "spatial" in fold.dynamic_axes else None
    if bound:
        session = onnx_session(out_path, threads)
        raised = raise_multiple(fold, lambda x: session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0], generator)
        if raised is not None:
            spatial["raised"] = (f"spatial multiple raised from {list(fold.stride_multiple)} to {list(raised)}: "
                                 f"the network runs at other sizes in PyTorch, but the traced graph does not "
                                 f"({bound}); it holds at multiples of {list(raised)}")
            spatial["spatial_multiple"] = list(raised)
            fold = dataclasses.replace(fold, stride_multiple=raised)
            weight_proof, shape_checks = export_proven(fold)
            bound = traced_size_bound(shape_checks)
    if bound:
        fold = dataclasses.replace(fold, dynamic_axes=tuple(a for a in fold.dynamic_axes if a != "spatial"))
        spatial["fixed"] = (f"fixed spatial size: the traced graph holds the example size ({bound}); "
                            f"exported again with dynamic_axes {list(fold.dynamic_axes)}")
        spatial["dynamic_axes"] = list(fold.dynamic_axes)
        weight_proof, checks = export_proven(fold)
        shape_checks = [*checks, *({**c, "before_fixing": True} for c in shape_checks[1:])]
    return {
        "path": str(out_path),
        "sha256": sha256_file(out_path),
        "size_bytes": out_path.stat().st_size,
        "opset": opset,
        "fold_batchnorm": fold_batchnorm,
        "weights": weight_proof,
        "shape_checks": shape_checks,
        "trainer_fallback": fold.trainer_note,
        "dynamic_axes": list(fold.dynamic_axes),
        "spatial": spatial,
        "output": fold.output,
        "source": {"kind": fold.kind, "checkpoint": str(fold.checkpoint_path),
                   "sha256": fold.checkpoint_sha256, "model": fold.trainer_name,
                   "weights_origin": fold.weights_origin},
    }
