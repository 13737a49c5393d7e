"""Why each GPU backend is or is not benchmarked on this machine."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def accelerator_status() -> dict[str, str]:
    """Why each GPU backend is or is not part of the benchmark on this machine (the report shows
    it): ONNX Runtime's CUDA and TensorRT providers, OpenVINO's GPU device, torch CUDA."""
    import onnxruntime as ort  # noqa: PLC0415

    gpu_files = sorted(str(p) for p in Path("/dev").glob("nvidia[0-9]*"))
    no_gpu = "no NVIDIA GPU on this machine (no /dev/nvidia*)"
    providers = ort.get_available_providers()
    status = {}
    for provider, label in (("CUDAExecutionProvider", "onnxruntime CUDA"),
                            ("TensorrtExecutionProvider", "onnxruntime TensorRT")):
        if provider not in providers:
            status[label] = (f"skipped: this onnxruntime build has no {provider} (CPU-only package)"
                             + ("" if gpu_files else f"; {no_gpu}"))
        elif not gpu_files:
            status[label] = f"skipped: {no_gpu}"
        else:
            status[label] = "available, not benchmarked by this nnbridge version"
    try:
        import openvino as ov  # noqa: PLC0415

        devices = ov.Core().available_devices
        status["openvino GPU"] = ("available, not benchmarked by this nnbridge version" if any(
            d.startswith("GPU") for d in devices) else f"skipped: OpenVINO sees only {', '.join(devices)}")
    except ImportError:
        status["openvino GPU"] = "skipped: openvino is not installed"
    if importlib.util.find_spec("torch") is None:
        status["torch CUDA"] = "skipped: torch is not installed"
    elif not gpu_files:
        # CUDA needs the driver's device files: no reason to import torch (~1.5 s on a 2-core AMD Zen 4) to be told so
        status["torch CUDA"] = f"skipped: {no_gpu}"
    else:
        import torch  # noqa: PLC0415

        status["torch CUDA"] = ("available, not benchmarked by this nnbridge version" if torch.cuda.is_available()
                                else "skipped: torch.cuda.is_available() is False")
    return status
