"""nnU-Net model zips, read without unpacking them.

``nnUNetv2_export_model_to_zip`` writes paths relative to ``nnUNet_results``:
``<Dataset>/<Trainer>__<Plans>__<configuration>/`` with ``plans.json``, ``dataset.json``,
``dataset_fingerprint.json``, ``fold_<k>/checkpoint_*.pth`` (+ ``progress.png``,
``validation/summary.json``), ``crossval_results_folds_*/`` (``postprocessing.pkl`` …), and per
dataset ``ensembles/`` and ``inference_information.json``. Every folder named
``<Trainer>__<Plans>__<configuration>`` that holds a ``plans.json`` is a model folder (at any depth,
so a zip of a whole ``nnUNet_results`` folder works too); its parent folder names the dataset.

The workflow lists a zip when it builds the DAG (which configurations and folds it holds) and
unpacks only the files a job needs, each once, into ``<cache>/<sha256 prefix>/<member>``
(:func:`extract_member`). A zip with a member outside its root (an absolute path or ``..``:
"zip-slip") is refused as a whole.
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from ..core.errors import NNBridgeError
from ..core.keys import fold_order
from ..core.runlog import sha256_file

SHA_PREFIX = 16
"""Hex digits of the zip's sha256 that name its cache folder."""


@dataclass(frozen=True)
class ZipModelFolder:
    """One ``<Trainer>__<Plans>__<configuration>`` folder inside a zip."""

    path: str
    """Its path inside the zip, e.g. ``Dataset042_Liver/nnUNetTrainer__nnUNetPlans__3d_fullres``."""
    files: frozenset[str]
    """Its files, relative to ``path``."""

    @property
    def dataset(self) -> str:
        return PurePosixPath(self.path).parent.name

    @property
    def name(self) -> str:
        return PurePosixPath(self.path).name

    @property
    def configuration(self) -> str:
        return self.name.split("__")[2]

    def folds(self, checkpoint: str) -> tuple[str, ...]:
        """Folds (``0``…, ``all``) with ``fold_<k>/<checkpoint>`` in the zip."""
        found = {f.split("/")[0][len("fold_"):] for f in self.files
                 if f.startswith("fold_") and f.count("/") == 1 and f.endswith(f"/{checkpoint}")}
        return tuple(sorted(found, key=fold_order))


@dataclass(frozen=True)
class ModelZip:
    """A listed model zip: its sha256 and model folders (nothing unpacked)."""

    path: Path
    sha256: str
    folders: tuple[ZipModelFolder, ...]
    ensembles: tuple[str, ...] = ()
    """The ``<Dataset>/ensembles/ensemble___*/postprocessing.pkl`` members (nnU-Net's choice of
    postprocessing for ensembles of configurations)."""

    @property
    def key(self) -> str:
        """The cache folder name: the first :data:`SHA_PREFIX` hex digits of the sha256."""
        return self.sha256[:SHA_PREFIX]

    def member(self, folder: ZipModelFolder, relative: str) -> str:
        return f"{folder.path}/{relative}"

    def read_json(self, member: str) -> Any:
        with zipfile.ZipFile(self.path) as archive:
            try:
                return json.loads(archive.read(member))
            except KeyError:
                raise NNBridgeError(f"{self.path}: no {member} in the zip; re-export the model with "
                                    "nnUNetv2_export_model_to_zip") from None
            except ValueError as exc:
                raise NNBridgeError(f"{self.path}: {member} is not valid JSON ({exc})") from None


def outside_root(name: str) -> bool:
    """Whether a zip member name escapes the folder it is unpacked into (absolute, drive letter
    or a ``..`` component; backslashes count as separators)."""
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return True
    return any(part == ".." for part in re.split(r"[/\\]", name))


def zip_sha256(path: Path, cache_file: Path | None = None) -> str:
    """sha256 of a zip's bytes; remembered in ``cache_file`` by (path, size, mtime), so a large
    zip is hashed once and not every time the workflow builds its DAG."""
    path = Path(path)
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    known: dict[str, str] = {}
    if cache_file is not None and Path(cache_file).is_file():
        try:
            known = json.loads(Path(cache_file).read_text())
        except ValueError:
            known = {}
    if key in known:
        return known[key]
    digest = sha256_file(path)
    if cache_file is not None:
        try:
            Path(cache_file).parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(f"{cache_file}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps({**known, key: digest}, indent=1) + "\n")
            tmp.replace(cache_file)
        except OSError:  # a read-only results folder: hash again next time
            pass
    return digest


def read_model_zip(path: str | Path, sha_cache: Path | None = None) -> ModelZip:
    """List a model zip: refuse it if a member lies outside its root, find its model folders."""
    path = Path(path)
    if not path.is_file():
        raise NNBridgeError(f"{path}: zip not found; fix `zip:` of the model in the config")
    if not zipfile.is_zipfile(path):
        raise NNBridgeError(f"{path}: not a zip file (corrupt or truncated?); re-copy it or re-export it "
                            "with nnUNetv2_export_model_to_zip")
    with zipfile.ZipFile(path) as archive:
        names = [info.filename for info in archive.infolist()]
    for name in names:
        if outside_root(name):
            raise NNBridgeError(
                f"{path}: member {name!r} lies outside the zip's root (zip-slip); refusing to unpack it: "
                "re-export the model with nnUNetv2_export_model_to_zip"
            )
    files = [n for n in names if not n.endswith("/")]
    roots = sorted({str(PurePosixPath(n).parent) for n in files
                    if PurePosixPath(n).name == "plans.json"
                    and len(PurePosixPath(n).parent.name.split("__")) == 3
                    and PurePosixPath(n).parent.parent.name})
    if not roots:
        raise NNBridgeError(
            f"{path}: no model folder in the zip (<Dataset>/<Trainer>__<Plans>__<configuration>/plans.json); "
            "export the model with nnUNetv2_export_model_to_zip"
        )
    folders = tuple(
        ZipModelFolder(root, frozenset(n[len(root) + 1:] for n in files if n.startswith(f"{root}/")))
        for root in roots
    )
    ensembles = tuple(sorted(n for n in files if PurePosixPath(n).name == "postprocessing.pkl"
                             and PurePosixPath(n).parent.name.startswith("ensemble___")
                             and PurePosixPath(n).parent.parent.name == "ensembles"))
    return ModelZip(path, zip_sha256(path, sha_cache), folders, ensembles)


def extract_member(zip_path: str | Path, member: str, out: str | Path) -> dict[str, Any]:
    """Unpack one member of a zip to ``out`` (written beside and renamed: never half-written)."""
    zip_path, out = Path(zip_path), Path(out)
    if outside_root(member):
        raise NNBridgeError(f"{zip_path}: member {member!r} lies outside the zip's root (zip-slip); refusing it")
    with zipfile.ZipFile(zip_path) as archive:
        try:
            info = archive.getinfo(member)
        except KeyError:
            raise NNBridgeError(f"{zip_path}: no member {member!r}; the zip changed since the workflow listed "
                                "it, run the workflow again") from None
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.{os.getpid()}.part")
        try:
            with archive.open(info) as source, open(tmp, "wb") as target:  # CRC checked on read
                while block := source.read(1 << 20):
                    target.write(block)
            tmp.replace(out)
        finally:
            tmp.unlink(missing_ok=True)
    return {"zip": str(zip_path), "member": member, "bytes": info.file_size, "crc32": f"{info.CRC:08x}"}
