"""Reading cases and writing segmentations with nnU-Net's file conventions, without torch.

``SimpleITKIO`` (nnU-Net's default for NIfTI/NRRD/MHA) is implemented here so a deployment needs
only SimpleITK; any other reader/writer named in the plans is taken from an installed nnunetv2
(its ``imageio`` package does not import torch).
"""

from __future__ import annotations

import gzip
import re
import struct
import zlib
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..core.errors import NNBridgeError


class ReaderWriter(Protocol):
    def read_images(self, image_fnames: list[str] | tuple[str, ...]) -> tuple[np.ndarray, dict]: ...

    def write_seg(self, seg: np.ndarray, output_fname: str, properties: dict) -> None: ...


class SimpleITKIO:
    """nnU-Net's ``SimpleITKIO``: (C, Z, Y, X) float32 arrays, spacing reversed to (Z, Y, X)."""

    supported_file_endings = (".nii.gz", ".nrrd", ".mha", ".gipl")

    def read_images(self, image_fnames: list[str] | tuple[str, ...]) -> tuple[np.ndarray, dict]:
        import SimpleITK as sitk  # noqa: PLC0415

        images, geometry, nnunet_spacings = [], [], []
        for fname in image_fnames:
            try:
                image = sitk.ReadImage(str(fname))
            except RuntimeError as exc:
                raise NNBridgeError(f"{fname}: SimpleITK cannot read it ({str(exc).strip().splitlines()[-1]})") from None
            spacing = image.GetSpacing()
            array = sitk.GetArrayFromImage(image)
            if array.ndim == 2:
                array = array[None, None]
                nnunet_spacing = [max(spacing) * 999, *list(spacing)[::-1]]
            elif array.ndim == 3:
                array = array[None]
                nnunet_spacing = list(spacing)[::-1]
            elif array.ndim == 4:
                nnunet_spacing = list(spacing)[::-1][1:]
            else:
                raise NNBridgeError(f"{fname}: {array.ndim} dimensions; nnU-Net reads 2D, 3D or 4D images")
            images.append(array)
            geometry.append((spacing, image.GetOrigin(), image.GetDirection()))
            nnunet_spacings.append([abs(s) for s in nnunet_spacing])
        if len({a.shape for a in images}) > 1:
            shapes = ", ".join(f"{Path(f).name}: {a.shape}" for f, a in zip(image_fnames, images))
            raise NNBridgeError(f"the channels of one case differ in shape ({shapes}); resample them to one grid")
        if len({g[0] for g in geometry}) > 1:
            raise NNBridgeError(f"the channels of one case differ in spacing: {list(map(str, image_fnames))}")
        spacing, origin, direction = geometry[0]
        properties = {
            "sitk_stuff": {"spacing": spacing, "origin": origin, "direction": direction},
            "spacing": nnunet_spacings[0],
        }
        return np.vstack(images, dtype=np.float32, casting="unsafe"), properties

    def read_seg(self, seg_fname: str) -> tuple[np.ndarray, dict]:
        return self.read_images((seg_fname,))

    def write_seg(self, seg: np.ndarray, output_fname: str, properties: dict) -> None:
        import SimpleITK as sitk  # noqa: PLC0415

        if len(properties["sitk_stuff"]["spacing"]) == 2:
            seg = seg[0]
        image = sitk.GetImageFromArray(seg.astype(np.uint8 if np.max(seg) < 255 else np.uint16, copy=False))
        image.SetSpacing(properties["sitk_stuff"]["spacing"])
        image.SetOrigin(properties["sitk_stuff"]["origin"])
        image.SetDirection(properties["sitk_stuff"]["direction"])
        sitk.WriteImage(image, str(output_fname), True)


def reader_writer(name: str) -> ReaderWriter:
    """The plans' ``image_reader_writer``: built in for SimpleITKIO, else from nnunetv2."""
    if name == "SimpleITKIO":
        return SimpleITKIO()
    try:
        from nnunetv2.imageio.reader_writer_registry import recursive_find_reader_writer_by_name  # noqa: PLC0415
    except ImportError:
        raise NNBridgeError(
            f"the plans name the reader/writer {name!r}; nnbridge has SimpleITKIO built in and takes the "
            "others from nnunetv2: install nnunetv2 (its imageio needs no torch) or convert the images"
        ) from None
    try:
        return recursive_find_reader_writer_by_name(name)()
    except RuntimeError:
        raise NNBridgeError(f"the plans name the reader/writer {name!r}, which nnunetv2 does not have") from None


def num_channels(dataset_json: dict[str, Any]) -> int:
    names = dataset_json.get("channel_names") or dataset_json.get("modality")
    if not names:
        raise NNBridgeError("dataset.json has no 'channel_names'; nnU-Net needs them to find the input channels")
    return len(names)


def case_files(folder: Path, file_ending: str, identifiers: list[str] | None = None) -> dict[str, list[Path]]:
    """Case → its files, found as nnU-Net finds them (``create_lists_from_splitted_dataset_folder``
    in ``nnunetv2.utilities.utils``): a case is a file name without ``_XXXX<file_ending>``, its
    files every ``<case>_<4 digits><file_ending>`` in the folder, sorted. How many channels they
    hold is the reader's business: one per file for SimpleITKIO, three in one RGB ``.png`` for
    NaturalImage2DIO (:func:`check_channels`)."""
    folder = Path(folder)
    files = sorted(p.name for p in folder.iterdir() if p.name.endswith(file_ending) and p.is_file())
    if identifiers is None:
        crop = len(file_ending) + 5
        identifiers = sorted({f[:-crop] for f in files if len(f) > crop})
    cases = {}
    for case in identifiers:
        pattern = re.compile(re.escape(case) + r"_\d\d\d\d" + re.escape(file_ending))
        cases[case] = [folder / f for f in files if pattern.fullmatch(f)]
    return cases


def find_cases(input_dir: Path, file_ending: str, channels: int) -> dict[str, list[Path]]:
    """nnU-Net's input convention: ``<case>_<XXXX><file_ending>`` (:func:`case_files`). The files
    of a case must be numbered ``_0000`` up without a gap (nnU-Net would silently feed ``_0002`` as
    the second channel when ``_0001`` is missing) and be at most ``channels`` files."""
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise NNBridgeError(f"{input_dir}: no such input folder" if not input_dir.exists() else
                            f"{input_dir}: not a folder; -i takes the folder holding <case>_0000{file_ending} …")
    found = {case: files for case, files in case_files(input_dir, file_ending).items() if files}
    if not found:
        raise NNBridgeError(
            f"{input_dir}: no images named <case>_0000{file_ending}; name the channels of each case "
            f"<case>_0000{file_ending} … <case>_{channels - 1:04d}{file_ending}"
        )
    for case, files in found.items():
        numbers = [int(f.name[len(case) + 1:len(case) + 5]) for f in files]
        missing = [c for c in range(max(numbers) + 1) if c not in numbers]
        if missing:
            raise NNBridgeError(
                f"{input_dir}: case {case!r} lacks channel(s) "
                + ", ".join(f"{case}_{c:04d}{file_ending}" for c in missing)
                + f"; the model takes {channels} channel(s)"
            )
        if len(files) > channels:
            raise NNBridgeError(f"{input_dir}: case {case!r} has {len(files)} files ({files[0].name} … "
                                f"{files[-1].name}); the model takes {channels} channel(s)")
    return found


def check_channels(data: np.ndarray, files: list[Path] | list[str], channels: int) -> None:
    """The channels the reader made of a case's files are the ``channels`` the model takes."""
    if data.shape[0] != channels:
        names = ", ".join(Path(f).name for f in files)
        raise NNBridgeError(f"{names}: hold {data.shape[0]} channel(s) as the plans' reader reads them; the "
                            f"model takes {channels} (dataset.json channel_names): give each case "
                            f"<case>_0000 … _{channels - 1:04d} or one file with {channels} channels")


def check_finite(data: np.ndarray, files: list[Path] | list[str]) -> None:
    """Refuse NaN/Inf voxels, naming the file(s) and the count. nnU-Net refuses them in its dataset
    check (``verify_dataset_integrity``: "replace NaN values with something that makes sense for
    your images"), while its predictor would turn them into NaN logits and an all-background
    segmentation without a word."""
    finite = np.isfinite(data)
    if finite.all():
        return
    per_channel = [int(c.size - np.count_nonzero(c)) for c in finite]
    if len(files) == data.shape[0]:
        where = "; ".join(f"{Path(f).name}: {n}" for f, n in zip(files, per_channel) if n)
    else:
        where = f"{', '.join(Path(f).name for f in files)}: {sum(per_channel)}"
    raise NNBridgeError(f"{where} NaN/Inf voxel(s) of {finite[0].size}; nnU-Net cannot segment non-finite "
                        "intensities (its dataset check refuses them): replace them with a value that makes "
                        "sense for the image")


def check_complete(path: Path) -> None:
    """Refuse a truncated or corrupt image file that its reader would read anyway: SimpleITK reads a
    ``.nii.gz`` cut in half (or a short ``.nii``) without an error, the missing voxels as zeros.
    A ``.gz`` file must decompress to its end with a matching CRC; a NIfTI file must hold the
    voxels its header announces."""
    path = Path(path)
    name = path.name.lower()
    if not (name.endswith(".gz") or name.endswith(".nii")):
        return
    head = b""
    total = 0
    try:
        with (gzip.open(path, "rb") if name.endswith(".gz") else open(path, "rb")) as handle:
            while block := handle.read(1 << 22):
                if len(head) < 544:
                    head += block[:544 - len(head)]
                total += len(block)
    except (EOFError, OSError, zlib.error) as exc:
        raise NNBridgeError(f"{path}: truncated or corrupt ({exc}); copy the file again") from None
    if name.endswith((".nii", ".nii.gz")):
        needed = _nifti_bytes(head)
        if needed is None:
            raise NNBridgeError(f"{path}: no NIfTI header; not a NIfTI image (or corrupt): copy the file again")
        if total < needed:
            raise NNBridgeError(f"{path}: truncated: holds {total} of the {needed} bytes its header announces; "
                                "copy the file again")


def _nifti_bytes(head: bytes) -> int | None:
    """Header + voxel bytes a NIfTI-1/-2 file announces (vox_offset + voxels × bitpix / 8)."""
    for order in "<>":
        if len(head) >= 348 and struct.unpack(order + "i", head[:4])[0] == 348:
            dims = struct.unpack(order + "8h", head[40:56])
            bitpix = struct.unpack(order + "h", head[72:74])[0]
            offset = struct.unpack(order + "f", head[108:112])[0]
        elif len(head) >= 540 and struct.unpack(order + "i", head[:4])[0] == 540:
            bitpix = struct.unpack(order + "h", head[14:16])[0]
            dims = struct.unpack(order + "8q", head[16:80])
            offset = struct.unpack(order + "q", head[168:176])[0]
        else:
            continue
        n = int(dims[0])
        if not 1 <= n <= 7:
            return None
        voxels = int(np.prod([max(int(d), 1) for d in dims[1:n + 1]], dtype=np.int64))
        return int(offset) + voxels * max(int(bitpix), 8) // 8
    return None
