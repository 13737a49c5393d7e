"""Reading cases and writing segmentations with nnU-Net's file conventions, without torch.

``SimpleITKIO`` (nnU-Net's default for NIfTI/NRRD/MHA) is implemented here so a deployment needs
only SimpleITK; any other reader/writer named in the plans is taken from an installed nnunetv2
(its ``imageio`` package does not import torch).
"""

from __future__ import annotations

import re
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


def find_cases(input_dir: Path, file_ending: str, channels: int) -> dict[str, list[Path]]:
    """nnU-Net's input convention: ``<case>_<XXXX><file_ending>``, one file per channel."""
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise NNBridgeError(f"{input_dir}: no such input folder")
    pattern = re.compile(rf"^(?P<case>.+)_(?P<channel>\d{{4}}){re.escape(file_ending)}$")
    found: dict[str, dict[int, Path]] = {}
    for path in sorted(input_dir.iterdir()):
        match = pattern.match(path.name)
        if match:
            found.setdefault(match["case"], {})[int(match["channel"])] = path
    if not found:
        raise NNBridgeError(
            f"{input_dir}: no images named <case>_0000{file_ending}; name the channels of each case "
            f"<case>_0000{file_ending} … <case>_{channels - 1:04d}{file_ending}"
        )
    cases: dict[str, list[Path]] = {}
    for case, by_channel in found.items():
        missing = [c for c in range(channels) if c not in by_channel]
        if missing:
            raise NNBridgeError(
                f"{input_dir}: case {case!r} lacks channel(s) "
                + ", ".join(f"{case}_{c:04d}{file_ending}" for c in missing)
                + f"; the model takes {channels} channel(s)"
            )
        cases[case] = [by_channel[c] for c in range(channels)]
    return cases
