"""Torch-free nnU-Net inference with ONNX Runtime or OpenVINO (nnbridge predict)."""
