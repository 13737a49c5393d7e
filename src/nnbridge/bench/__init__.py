"""Speed: each runtime timed in its own process, this machine's peaks, thread/batch sweeps and ONNX
Runtime settings, speed targets, and the realistic-size benchmark.

Kept empty of imports: a benchmark child process (``python -m nnbridge.bench.measure``) imports
only what its own runtime needs.
"""
