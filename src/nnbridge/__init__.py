"""nnbridge: export, quantize and validate nnU-Net v2 models for deployment."""

__version__ = "0.1.0"
