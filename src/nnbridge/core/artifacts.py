"""The artifacts of a fold, whatever their kind: an ONNX file, an OpenVINO IR (``.xml`` with its
weights in a ``.bin`` of the same name beside it) or a TorchScript archive — the files each is
made of, the runtimes it runs on and the kind a quantize method writes (what can be read off
its graph: :mod:`.graphs`).

The pipeline, the benchmark, validate and the bundle name an artifact by its main file (the
``.xml`` of an IR) and ask this module for the rest. Imports no torch, no runtime, no ONNX.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import NNBridgeError
from .runlog import read_json, sha256_file


# kind → its files' suffixes, the main file first
ARTIFACT_SUFFIXES = {"onnx": (".onnx",), "ir": (".xml", ".bin"), "torchscript": (".ts",)}


# the runtimes each kind runs on (the first: where it runs when none is named)
KIND_RUNTIMES = {"onnx": ("onnxruntime", "openvino"), "ir": ("openvino",), "torchscript": ("torchscript",)}


# the quantize methods whose artifact is not an ONNX file (every other one writes ONNX)
METHOD_KINDS = {"openvino_int8": "ir", "openvino_fp32": "ir"}
# quantize methods whose variant is the fp32 graph itself, an exact variant (``openvino_fp32``: the
# graph as IR): built from the deployable graph (``simplify/model.onnx``, its InstanceNormalizations
# two-pass at real patch sizes: nnbridge.export.norms), where the others start from the fused graph
# the quantizers fold into their own (``simplify/quantizable.onnx``)
EXACT_METHODS = frozenset({"openvino_fp32"})


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


def verify_variant_files(variants: dict[str, dict[str, Any]]) -> None:
    """Each variant's ``path`` against the sha256 its ``record`` states (variants as the workflow
    passes them; those without a record are not checked), before any of them is used."""
    for path, record in sorted({(v["path"], v["record"]) for v in variants.values() if v.get("record")}):
        verify_recorded(path, record)


def verify_recorded(path: str | Path, record_path: str | Path) -> str:
    """Check ``path`` against the sha256 the stage record ``record_path`` states for it (the
    record's ``path`` and ``sha256``; an IR's: of its ``.xml`` and ``.bin``, :func:`artifact_sha256`);
    its sha256, or a one-line :class:`NNBridgeError` naming both files. A second file of the
    stage is found in the record's entries of that form (simplify's ``quantizable``). A later
    stage calls this before it uses an upstream artifact, so a file changed after its stage wrote
    it (edited, truncated, swapped) is never used as if it were that stage's output."""
    path, record_path = Path(path), Path(record_path)
    record = read_json(record_path, fix="rerun the stage that writes it")
    if isinstance(record, dict) and Path(str(record.get("path", ""))).name != path.name:
        record = next((v for v in record.values() if isinstance(v, dict) and "sha256" in v
                       and Path(str(v.get("path", ""))).name == path.name), record)
    expected = record.get("sha256") if isinstance(record, dict) else None
    named = Path(str(record.get("path", ""))).name if isinstance(record, dict) else ""
    if not expected or named != path.name:
        raise NNBridgeError(f"{record_path}: states no sha256 of {path.name}; rerun the stage that writes both "
                            f"(delete {path} and {record_path})")
    known = path.suffix.lower() in {suffixes[0] for suffixes in ARTIFACT_SUFFIXES.values()}
    files = artifact_files(path) if known else [path]
    for file in files:
        if not file.is_file():
            raise NNBridgeError(f"{file}: missing, but {record_path} records it; rerun the stage that writes both")
    actual = [sha256_file(f) for f in files]
    if "+".join(actual) != expected:
        stated = str(expected).split("+")
        stated += [""] * (len(files) - len(stated))
        file, digest, want = next((f, d, w) for f, d, w in zip(files, actual, stated) if d != w) \
            if len(stated) == len(files) else (path, "+".join(actual), str(expected))
        raise NNBridgeError(f"{file}: sha256 {digest[:12]}… differs from {want[:12] or 'none'}… that "
                            f"{record_path} states; the file changed after it was written: delete both files "
                            "and rerun")
    return "+".join(actual)
