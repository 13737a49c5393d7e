"""nnbridge.predict.preprocess against nnunetv2's own preprocessing, on small synthetic volumes."""

from __future__ import annotations

import copy
import subprocess
import sys

import numpy as np
import pytest

from nnbridge.core.errors import NNBridgeError
from nnbridge.predict import preprocess as pp

INTENSITY = {
    "0": {"max": 270.2, "mean": 100.20903015136719, "median": 127.8, "min": -70.1,
          "percentile_00_5": -29.808961868286133, "percentile_99_5": 228.15704345703125,
          "std": 78.23258972167969},
    "1": {"max": 3.0, "mean": 0.5, "median": 0.4, "min": -2.0,
          "percentile_00_5": -1.5, "percentile_99_5": 2.5, "std": 0.75},
}


def _resampling() -> dict:
    def kwargs(is_seg: bool, order: int) -> dict:
        return {"is_seg": is_seg, "order": order, "order_z": 0, "force_separate_z": None}

    return {
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": kwargs(False, 3),
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_seg_kwargs": kwargs(True, 1),
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": kwargs(False, 1),
    }


def make_plans(transpose_forward=(0, 1, 2), schemes=("CTNormalization",), use_mask=(False,),
               spacing=(2.5, 1.0, 1.0), spacing_2d=(0.9, 0.9)) -> dict:
    """A plans dict shaped like nnU-Net's plans.json (only what preprocessing reads, plus an architecture)."""
    backward = [int(i) for i in np.argsort(transpose_forward)]
    arch = {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {}, "_kw_requires_import": []}
    base = {"data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
            "batch_size": 2, "patch_size": [16, 16, 16], "median_image_size_in_voxels": [16.0, 16.0, 16.0],
            "spacing": list(spacing), "normalization_schemes": list(schemes),
            "use_mask_for_norm": list(use_mask),
            **_resampling(), "architecture": arch, "batch_dice": False}
    two_d = {**copy.deepcopy(base), "data_identifier": "nnUNetPlans_2d", "patch_size": [16, 16],
             "spacing": list(spacing_2d), "batch_size": 12}
    return {
        "dataset_name": "Dataset999_Synthetic", "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": list(spacing),
        "original_median_shape_after_transp": [16, 16, 16],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": list(transpose_forward), "transpose_backward": backward,
        "configurations": {
            "2d": two_d,
            "3d_fullres": base,
            "3d_fullres_coarse": {"inherits_from": "3d_fullres", "spacing": [3.0, 1.5, 1.5],
                                  "data_identifier": "coarse"},
        },
        "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": copy.deepcopy(INTENSITY),
    }


def volume(shape=(1, 12, 14, 10), seed=0, border=2, scale=100.0, offset=50.0) -> np.ndarray:
    """Random data inside a zero border, with a zero hole in the middle (filled by the nonzero mask)."""
    rng = np.random.default_rng(seed)
    data = np.zeros(shape, dtype=np.float32)
    last = len(shape) - 2
    inner = (slice(None), *[slice(border, s - border - (i == last)) for i, s in enumerate(shape[1:])])
    data[inner] = rng.normal(offset, scale, size=data[inner].shape).astype(np.float32)
    data[(slice(None), *[slice(s // 2 - 1, s // 2 + 1) for s in shape[1:]])] = 0
    return data


def nnunet_normalize(data, seg, plans, name):
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    manager = PlansManager(copy.deepcopy(plans))
    config, intensity = manager.get_configuration(name), manager.foreground_intensity_properties_per_channel
    return DefaultPreprocessor(verbose=False)._normalize(data.copy(), seg, config, intensity)


def nnunet_run_case(data, properties, plans, name):
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    manager = PlansManager(copy.deepcopy(plans))
    out, _, props = DefaultPreprocessor(verbose=False).run_case_npy(
        data.copy(), None, copy.deepcopy(properties), manager, manager.get_configuration(name), {})
    return out, props


# ------------------------------------------------------------------------------------------------ cropping


def test_crop_to_nonzero_matches_nnunet():
    from nnunetv2.preprocessing.cropping.cropping import crop_to_nonzero

    data = volume((2, 12, 14, 10), border=2)
    data[1] = 0
    data[1, 1, 3, 4] = 7.0  # channel 1 extends the box along the first axis only
    ours = pp.crop_to_nonzero(data)
    ref = crop_to_nonzero(data)
    assert ours[2] == ref[2] == [[1, 10], [2, 12], [2, 7]]
    assert all(isinstance(v, int) for row in ours[2] for v in row)
    assert np.array_equal(ours[0], ref[0]) and ours[0].dtype == ref[0].dtype
    assert np.array_equal(ours[1], ref[1]) and ours[1].dtype == ref[1].dtype == np.int8
    # the zero hole is inside the filled nonzero mask
    assert data[0, 5, 6, 4] == 0 and ours[1][0, 5 - 1, 6 - 2, 4 - 2] == 0
    assert (ours[1] == -1).any()

    seg = np.zeros((1, *data.shape[1:]), dtype=np.int16)
    seg[0, 5:8, 5:8, 4:6] = 2
    seg_before = seg.copy()
    ours = pp.crop_to_nonzero(data, seg, nonzero_label=-3)
    ref = crop_to_nonzero(data, seg.copy(), nonzero_label=-3)
    assert np.array_equal(ours[1], ref[1]) and ours[1].dtype == ref[1].dtype
    assert np.array_equal(seg, seg_before)


def test_crop_all_zero_keeps_everything():
    from nnunetv2.preprocessing.cropping.cropping import crop_to_nonzero

    data = np.zeros((1, 4, 5, 6), dtype=np.float32)
    assert pp.crop_to_nonzero(data)[2] == crop_to_nonzero(data)[2] == [[0, 4], [0, 5], [0, 6]]


@pytest.mark.parametrize("bbox", [
    [[2, 6], [1, 5], [0, 3]],
    [[-2, 3], [3, 9], [1, 4]],  # partly outside
    [[9, 12], [0, 4], [0, 3]],  # entirely outside
])
def test_insert_crop_into_image_matches_acvl(bbox):
    from acvl_utils.cropping_and_padding.bounding_boxes import insert_crop_into_image

    rng = np.random.default_rng(1)
    crop = rng.integers(1, 5, size=(2, *[hi - lo for lo, hi in bbox])).astype(np.uint8)
    image = np.zeros((2, 8, 7, 5), dtype=np.uint8)
    ours = pp.insert_crop_into_image(image.copy(), crop, bbox)
    ref = insert_crop_into_image(image.copy(), crop, bbox)
    assert np.array_equal(ours, ref)
    assert ours.any() == (bbox[0][0] < 8)


# ------------------------------------------------------------------------------------------- normalization


@pytest.mark.parametrize(("schemes", "use_mask"), [
    (("CTNormalization",), (False,)),
    (("ZScoreNormalization",), (False,)),
    (("ZScoreNormalization",), (True,)),
    (("NoNormalization",), (False,)),
    (("RescaleTo01Normalization",), (False,)),
    (("ZScoreNormalization", "CTNormalization"), (True, False)),
])
def test_normalize_matches_nnunet(schemes, use_mask):
    data = volume((len(schemes), 12, 14, 10), seed=2, offset=60.0, scale=120.0)
    seg = np.where(pp.create_nonzero_mask(data), np.int8(0), np.int8(-1))[None]  # uncropped: the mask matters
    plans = make_plans(schemes=schemes, use_mask=use_mask)
    before = data.copy()
    ours = pp.normalize(data, seg, pp.configuration(plans, "3d_fullres"), plans)
    ref = nnunet_normalize(data, seg, plans, "3d_fullres")
    assert ours.dtype == np.float32 and ours.shape == data.shape
    assert np.array_equal(ours, ref)
    assert np.array_equal(data, before)
    if schemes[0] == "NoNormalization":
        assert np.array_equal(ours, data)
    else:
        assert not np.allclose(ours[0], data[0])
    if schemes[0] == "ZScoreNormalization" and use_mask[0]:
        inside = seg[0] >= 0
        assert abs(float(ours[0][inside].mean())) < 1e-4
        assert np.array_equal(ours[0][~inside], data[0][~inside])  # outside the mask: unchanged


def test_rgb_normalization_matches_nnunet():
    rng = np.random.default_rng(3)
    data = rng.integers(0, 256, size=(3, 1, 16, 12)).astype(np.uint8).astype(np.float32)
    plans = make_plans(schemes=("RGBTo01Normalization",) * 3, use_mask=(False,) * 3)
    plans["foreground_intensity_properties_per_channel"]["2"] = INTENSITY["1"]
    seg = np.zeros((1, *data.shape[1:]), dtype=np.int8)
    ours = pp.normalize(data, seg, pp.configuration(plans, "3d_fullres"), plans)
    assert np.array_equal(ours, nnunet_normalize(data, seg, plans, "3d_fullres"))
    assert ours.max() <= 1.0 and ours.max() > 0.9
    with pytest.raises(NNBridgeError, match="0, 255"):
        pp.normalize(data + 300, seg, pp.configuration(plans, "3d_fullres"), plans)


def test_unknown_normalization_scheme():
    plans = make_plans(schemes=("MyFancyNormalization",))
    with pytest.raises(NNBridgeError, match="MyFancyNormalization.*CTNormalization"):
        pp.normalize(volume(), np.zeros((1, 12, 14, 10), np.int8), pp.configuration(plans, "3d_fullres"),
                     plans)


# ---------------------------------------------------------------------------------------------- resampling

RESAMPLE_CASES = {
    "data_order3_isotropic": dict(shape=(2, 10, 11, 9), new_shape=(13, 8, 12), spacing=(1.0, 1.0, 1.0),
                                  new_spacing=(0.77, 1.4, 0.75), kwargs=dict(order=3, force_separate_z=None)),
    "data_aniso_auto_separate_z": dict(shape=(1, 5, 12, 10), new_shape=(10, 10, 12), spacing=(5.0, 1.0, 1.0),
                                       new_spacing=(2.5, 1.2, 0.83), kwargs=dict(order=3, order_z=0,
                                                                                 force_separate_z=None)),
    "data_aniso_axis2_order_z1": dict(shape=(1, 12, 10, 4), new_shape=(9, 13, 7), spacing=(0.8, 0.8, 4.0),
                                      new_spacing=(1.07, 0.62, 2.3), kwargs=dict(order=3, order_z=1,
                                                                                 force_separate_z=None)),
    "data_forced_separate_z": dict(shape=(2, 8, 9, 10), new_shape=(11, 7, 12), spacing=(1.5, 1.0, 1.0),
                                   new_spacing=(1.1, 1.3, 0.83), kwargs=dict(order=3, force_separate_z=True)),
    "seg_separate_z": dict(shape=(1, 5, 12, 10), new_shape=(9, 16, 13), spacing=(5.0, 1.0, 1.0),
                           new_spacing=(2.8, 0.75, 0.77), is_seg=True,
                           kwargs=dict(is_seg=True, order=1, order_z=0, force_separate_z=None)),
    "seg_separate_z_order_z1": dict(shape=(1, 5, 12, 10), new_shape=(9, 8, 13), spacing=(5.0, 1.0, 1.0),
                                    new_spacing=(2.8, 1.5, 0.77), is_seg=True,
                                    kwargs=dict(is_seg=True, order=1, order_z=1, force_separate_z=None)),
    "seg_isotropic_order1": dict(shape=(1, 6, 8, 7), new_shape=(12, 16, 14), spacing=(1.0, 1.0, 1.0),
                                 new_spacing=(0.5, 0.5, 0.5), is_seg=True,
                                 kwargs=dict(is_seg=True, order=1, force_separate_z=None)),
    "probabilities_order1": dict(shape=(3, 5, 9, 8), new_shape=(12, 11, 10), spacing=(4.0, 1.0, 1.0),
                                 new_spacing=(1.7, 0.8, 0.8), kwargs=dict(order=1, order_z=0,
                                                                          force_separate_z=None)),
}


@pytest.mark.parametrize("case", list(RESAMPLE_CASES))
def test_resample_matches_nnunet(case):
    from nnunetv2.preprocessing.resampling.default_resampling import resample_data_or_seg_to_shape

    c = RESAMPLE_CASES[case]
    rng = np.random.default_rng(4)
    if c.get("is_seg"):
        data = rng.integers(0, 4, size=c["shape"]).astype(np.int8)
        data[:, :, : c["shape"][2] // 2] = 0  # some structure, not only noise
    else:
        data = rng.normal(size=c["shape"]).astype(np.float32)
        if case.startswith("probabilities"):
            data = np.exp(data) / np.exp(data).sum(0, keepdims=True)
    before = data.copy()
    args = (np.array(c["new_shape"]), c["spacing"], c["new_spacing"])
    ours = pp.resample_data_or_seg_to_shape(data, *args, **c["kwargs"])
    ref = resample_data_or_seg_to_shape(data.copy(), *args, **c["kwargs"])
    assert ours.shape == ref.shape == (c["shape"][0], *c["new_shape"])
    assert ours.dtype == ref.dtype == data.dtype
    assert np.array_equal(ours, ref)
    assert np.array_equal(data, before)
    if c.get("is_seg"):
        assert set(np.unique(ours)) <= set(np.unique(data))


@pytest.mark.parametrize(("spacing", "new_spacing", "force", "expected"), [
    ((5.0, 1.0, 1.0), (2.5, 1.0, 1.0), None, (True, 0)),
    ((1.0, 1.0, 1.0), (1.0, 4.0, 1.0), None, (True, 1)),
    ((1.0, 1.0, 2.0), (1.0, 1.0, 2.0), None, (False, None)),
    ((1.0, 1.0, 2.0), (1.0, 1.0, 2.0), True, (True, 2)),
    ((0.24, 1.25, 1.25), (0.24, 1.25, 1.25), True, (False, None)),
    ((5.0, 1.0, 1.0), (2.5, 1.0, 1.0), False, (False, None)),
])
def test_determine_do_sep_z_and_axis(spacing, new_spacing, force, expected):
    from nnunetv2.configuration import ANISO_THRESHOLD
    from nnunetv2.preprocessing.resampling.default_resampling import determine_do_sep_z_and_axis

    assert pp.ANISO_THRESHOLD == ANISO_THRESHOLD
    ref = determine_do_sep_z_and_axis(force, spacing, new_spacing)
    ours = pp.determine_do_sep_z_and_axis(force, spacing, new_spacing)
    assert ours == expected == (ref[0], None if ref[1] is None else int(ref[1]))


def test_resample_same_shape_returns_input():
    data = np.ones((1, 4, 5, 6), dtype=np.float32)
    assert pp.resample_data_or_seg_to_shape(data, (4, 5, 6), (1, 1, 1), (1, 1, 1)) is data


@pytest.mark.parametrize("order", [0, 1, 3])
def test_resize_segmentation_matches_batchgenerators(order):
    from batchgenerators.augmentations.utils import resize_segmentation

    rng = np.random.default_rng(5)
    seg = rng.integers(0, 4, size=(6, 7, 5)).astype(np.int16)  # 2x upsampling: many exact ties
    seg[0] = 9
    for new_shape in ((12, 14, 10), (4, 9, 3)):
        ours = pp.resize_segmentation(seg, new_shape, order)
        ref = resize_segmentation(seg, new_shape, order)
        assert ours.dtype == ref.dtype == np.int16
        assert np.array_equal(ours, ref)
    assert np.array_equal(pp.resize_segmentation(np.full((3, 3), 5.0), (6, 6), 1), np.full((6, 6), 5.0))


def test_compute_new_shape_matches_nnunet():
    from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape

    for args in [((13, 40, 41), (3.3, 0.79, 0.79), (2.5, 1.0, 1.0)),
                 ((7, 8, 9), (1.0, 1.0, 1.0), (2.0, 2.0, 2.0))]:
        assert np.array_equal(pp.compute_new_shape(*args), compute_new_shape(*args))
    assert pp.compute_new_shape((7, 8, 9), (1, 1, 1), (2, 2, 2)).tolist() == [4, 4, 4]  # round half to even


# ------------------------------------------------------------------------------------------- plans handling


def test_configuration_resolves_inheritance_like_plans_manager():
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans = make_plans()
    plans["configurations"]["3d_fullres_coarse_bs4"] = {"inherits_from": "3d_fullres_coarse", "batch_size": 4}
    ours = pp.configuration(plans, "3d_fullres_coarse_bs4")
    ref = PlansManager(copy.deepcopy(plans)).get_configuration("3d_fullres_coarse_bs4").configuration
    assert ours == ref
    assert ours["spacing"] == [3.0, 1.5, 1.5] and ours["batch_size"] == 4
    ours["spacing"].append(9.0)
    assert plans["configurations"]["3d_fullres"]["spacing"] == [2.5, 1.0, 1.0]
    with pytest.raises(NNBridgeError, match="3d_lowres.*3d_fullres"):
        pp.configuration(plans, "3d_lowres")
    plans["configurations"]["3d_fullres"]["inherits_from"] = "3d_fullres_coarse"
    with pytest.raises(NNBridgeError, match="circular"):
        pp.configuration(plans, "3d_fullres_coarse")


def test_resampling_function_binds_plans_kwargs():
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans = make_plans()
    config = pp.configuration(plans, "3d_fullres")
    manager = PlansManager(copy.deepcopy(plans)).get_configuration("3d_fullres")
    rng = np.random.default_rng(6)
    probs = rng.random((2, 4, 9, 8)).astype(np.float32)
    seg = rng.integers(0, 3, size=(1, 4, 9, 8)).astype(np.int8)
    args = ((9, 7, 11), (4.0, 1.0, 1.0), (1.8, 1.3, 0.75))
    assert np.array_equal(pp.resampling_function(config, "probabilities")(probs, *args),
                          manager.resampling_fn_probabilities(probs, *args))
    assert np.array_equal(pp.resampling_function(config, "seg")(seg, *args),
                          manager.resampling_fn_seg(seg, *args))
    assert np.array_equal(pp.resampling_function(config, "data")(probs, *args),
                          manager.resampling_fn_data(probs, *args))
    config["resampling_fn_data"] = "resample_torch_fornnunet"
    with pytest.raises(NNBridgeError, match="resample_torch_fornnunet.*only 'resample_data_or_seg_to_shape'"):
        pp.resampling_function(config, "data")
    with pytest.raises(NNBridgeError, match="labels"):
        pp.resampling_function(config, "labels")


# -------------------------------------------------------------------------------------------------- a case


def _check_case(data, properties, plans, name):
    data_before, props_before = data.copy(), copy.deepcopy(properties)
    ours, ours_props = pp.preprocess_case(data, properties, plans, name)
    ref, ref_props = nnunet_run_case(data, properties, plans, name)
    assert ours.dtype == ref.dtype == np.float32
    assert ours.shape == ref.shape
    assert np.array_equal(ours, ref)
    assert ours_props == ref_props
    assert set(ours_props) - set(properties) == {
        "shape_before_cropping", "bbox_used_for_cropping", "shape_after_cropping_and_before_resampling"}
    assert np.array_equal(data, data_before) and properties == props_before
    return ours, ours_props


def test_preprocess_case_3d_anisotropic_transposed():
    # stored as (x, y, z) with thick z slices; nnU-Net works in (z, x, y)
    data = volume((1, 16, 18, 8), seed=7, border=2)
    properties = {"spacing": (0.8, 0.8, 4.0)}
    plans = make_plans(transpose_forward=(2, 0, 1), schemes=("CTNormalization",), spacing=(2.5, 1.0, 1.0))
    out, props = _check_case(data, properties, plans, "3d_fullres")
    assert props["shape_before_cropping"] == (8, 16, 18)
    assert props["bbox_used_for_cropping"] == [[2, 5], [2, 14], [2, 16]]
    assert props["shape_after_cropping_and_before_resampling"] == (3, 12, 14)
    assert out.shape == (1, 5, 10, 11)  # z: separate, nearest between slices
    assert out.flags.c_contiguous


def test_preprocess_case_two_channels_different_schemes():
    data = np.concatenate([volume((1, 12, 14, 10), seed=8),
                           volume((1, 12, 14, 10), seed=9, offset=0.5, scale=1.0)])
    properties = {"spacing": (3.0, 1.2, 1.1), "sitk_stuff": {"origin": (0.0, 0.0, 0.0)}}
    plans = make_plans(transpose_forward=(1, 2, 0),
                       schemes=("ZScoreNormalization", "RescaleTo01Normalization"), use_mask=(True, False))
    out, _ = _check_case(data, properties, plans, "3d_fullres_coarse")
    assert out.shape[0] == 2
    assert out[1].min() >= -0.2 and out[1].max() <= 1.2  # rescaled to [0, 1] before cubic resampling


def test_preprocess_case_2d_configuration_on_3d_volume():
    data = volume((1, 5, 20, 17), seed=10, border=2)
    properties = {"spacing": (4.0, 0.7, 0.7)}
    plans = make_plans(schemes=("ZScoreNormalization",), spacing_2d=(0.9, 0.9))
    out, props = _check_case(data, properties, plans, "2d")
    n_slices = props["shape_after_cropping_and_before_resampling"][0]
    assert out.shape[1] == n_slices  # the slice axis keeps its spacing


def test_preprocess_case_rejects_bad_input():
    plans = make_plans()
    with pytest.raises(NNBridgeError, match="spacing"):
        pp.preprocess_case(volume(), {}, plans, "3d_fullres")
    with pytest.raises(NNBridgeError, match="3d_lowres"):
        pp.preprocess_case(volume(), {"spacing": (1.0, 1.0, 1.0)}, plans, "3d_lowres")


def test_import_does_not_pull_torch_or_nnunet():
    code = ("import sys, nnbridge.predict.preprocess; "
            "bad = [m for m in ('torch', 'nnunetv2', 'acvl_utils', 'batchgenerators', 'pandas') "
            "if m in sys.modules]; assert not bad, bad")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
