"""The artifacts of a fold, whatever their kind: an ONNX file, an OpenVINO IR (``.xml`` with its
weights in a ``.bin`` of the same name beside it) or a TorchScript archive — the files each is
made of, the runtimes it runs on and the kind a quantize method writes (what can be read off
its graph: :mod:`.graphs`).

The pipeline, the benchmark, validate and the bundle name an artifact by its main file (the
``.xml`` of an IR) and ask this module for the rest. Imports no torch, no runtime, no ONNX.
"""

from __future__ import annotations

from pathlib import Path

from .errors import NNBridgeError
from .runlog import sha256_file


# kind → its files' suffixes, the main file first
ARTIFACT_SUFFIXES = {"onnx": (".onnx",), "ir": (".xml", ".bin"), "torchscript": (".ts",)}


# the runtimes each kind runs on (the first: where it runs when none is named)
KIND_RUNTIMES = {"onnx": ("onnxruntime", "openvino"), "ir": ("openvino",), "torchscript": ("torchscript",)}


# the quantize methods whose artifact is not an ONNX file (every other one writes ONNX)
METHOD_KINDS = {"openvino_int8": "ir", "openvino_fp32": "ir"}


def method_kind(method: str | None) -> str:
    """The kind of artifact a quantize method writes: ``ir`` (OpenVINO IR) or ``onnx``."""
    return METHOD_KINDS.get(method or "static", "onnx")


def method_runtimes(method: str | None) -> tuple[str, ...]:
    """The runtimes a quantize method's variant runs on: its kind's, but OpenVINO only for ``bf16``
    (an ONNX file whose bf16 only OpenVINO runs; on ONNX Runtime it would be the fp32 graph again)."""
    return ("openvino",) if method == "bf16" else KIND_RUNTIMES[method_kind(method)]


def artifact_path(stem: str, kind: str) -> str:
    """The main file of an artifact of ``kind`` at ``stem`` (``quantize/int8`` → ``quantize/int8.xml``)."""
    return f"{stem}{ARTIFACT_SUFFIXES[kind][0]}"


def artifact_kind(path: str | Path) -> str:
    """The kind of an artifact named by its main file, from the file's suffix."""
    suffix = Path(path).suffix.lower()
    for kind, suffixes in ARTIFACT_SUFFIXES.items():
        if suffix == suffixes[0]:
            return kind
    mains = ", ".join(s[0] for s in ARTIFACT_SUFFIXES.values())
    raise NNBridgeError(f"{path}: not a model file nnbridge knows ({mains}); point at the .onnx, or an IR's .xml")


def artifact_files(path: str | Path) -> list[Path]:
    """Every file of the artifact whose main file is ``path`` (an IR: its ``.xml`` and ``.bin``)."""
    path = Path(path)
    return [path.with_suffix(suffix) for suffix in ARTIFACT_SUFFIXES[artifact_kind(path)]]


def artifact_size(path: str | Path) -> int:
    """Bytes of all the artifact's files."""
    return sum(f.stat().st_size for f in artifact_files(path))


def artifact_sha256(path: str | Path) -> str:
    """sha256 of the artifact's main file, joined by its other files' (``<xml>+<bin>`` for an IR)."""
    return "+".join(sha256_file(f) for f in artifact_files(path))
