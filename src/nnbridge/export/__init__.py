"""Export a loaded fold to ONNX and TorchScript, each proven to carry the checkpoint's weights, and
simplify the ONNX graph (kept only when its outputs match)."""

from .common import INPUT_NAME, OUTPUT_NAME, check_spatial_shape, fold_metadata, probe_shapes
from .onnx_export import export_onnx, write_onnx
from .torchscript_export import export_torchscript
from .weights import unused_at_inference, verify_onnx_weights, verify_torchscript_weights

__all__ = ["INPUT_NAME", "OUTPUT_NAME", "check_spatial_shape", "export_onnx", "export_torchscript",
           "fold_metadata", "probe_shapes", "unused_at_inference", "verify_onnx_weights",
           "verify_torchscript_weights", "write_onnx"]
