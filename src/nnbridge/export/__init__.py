"""Export a loaded fold to ONNX (:mod:`.onnx_export`) and TorchScript (:mod:`.torchscript_export`),
each proven to carry the checkpoint's weights (:mod:`.weights`, :mod:`.graph_proof`), and simplify
the ONNX graph, kept only when its outputs match (:mod:`.simplify`).

This file imports nothing: the simplify stage's modules import no torch (its graph proof needs
none; onnxsim, the simplifier it runs, may), the export stages do.
"""
