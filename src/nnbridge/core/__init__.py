"""What every stage shares and nothing in it depends on a stage: errors, logging and JSON, the
configuration, nnU-Net plans, ONNX metadata and graph facts, the CPU's identity, variant keys.
Imports neither torch nor a runtime."""
