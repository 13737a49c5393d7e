"""The rest of issue 18's matrix: bad inputs a hostile new user tries on the config, the model
entries, plain PyTorch models, their patch files and the ``nnbridge`` command line, beyond the
cases of the issue (tests/test_reliability.py). Each case plants one bad input and asserts the
one-line message (naming the file or key and the fix), the exception or exit code, and that nothing
was written a later run could take for done.

Every case is a row of a table below; :data:`MATRIX` is made of the rows (name → what the message
says), so each entry is one parametrized test. tests/test_reliability.py adds it to ``BAD_INPUTS``,
which the README counts. All cases are library calls or the CLI's ``main()`` in-process: the whole
file takes seconds once the session's tiny nnU-Net model exists.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from nnbridge.core.errors import NNBridgeError

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow/schemas/config.schema.yaml"
SEE = r"; see config/README\.md and .*config\.schema\.yaml$"


def one_line(message: str) -> str:
    assert "\n" not in message.strip() and "Traceback" not in message, message
    return message.strip()


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# ------------------------------------------------------------------ the config's form (the schema)

#: (bad input, change to the shipped config, the message): validate_config, which the workflow runs
#: before anything else (common.smk) and which fills in the defaults
CONFIG_FORM = [
    ("unknown top-level key (modles:)", lambda c: c.update(modles=[]),
     r"^config: invalid value at \(top level\): Additional properties are not allowed \('modles' was unexpected\) "
     r"\(allowed keys: backends, benchmark, .*models, .*validate, verify\)" + SEE),
    ("typo in a model entry's key (fodler:)", lambda c: c["models"][0].update(fodler="x"),
     r"^config: invalid value at models\[0\]: .*\('fodler' was unexpected\) \(allowed keys: checkpoint, .*folder, "),
    ("typo in a quantize entry's key (per_chanel:)", lambda c: c["quantize"]["int8_accurate"].update(per_chanel=True),
     r"^config: invalid value at quantize\.int8_accurate: .*\('per_chanel' was unexpected\) \(allowed keys: .*per_channel"),
    ("typo in a tolerance's key (min_dcie:)", lambda c: c["validate"]["tolerances"].update(onnx_fp32={"min_dcie": 0.9}),
     r"^config: invalid value at validate\.tolerances\.onnx_fp32: .*\('min_dcie' was unexpected\) .*min_dice"),
    ("folds: \"0\" (a string, not a list)", lambda c: c["models"][0].update(folds="0"),
     r"^config: invalid value at models\[0\]\.folds: '0' is not of type 'array'" + SEE),
    ("a fold that is not an integer (folds: [x])", lambda c: c["models"][0].update(folds=["x"]),
     r"^config: invalid value at models\[0\]\.folds\[0\]: 'x' is not valid under any of the given schemas"),
    ("a negative fold (folds: [-1])", lambda c: c["models"][0].update(folds=[-1]),
     r"^config: invalid value at models\[0\]\.folds\[0\]: -1 is less than the minimum of 0"),
    ("a fold listed twice (folds: [0, 0])", lambda c: c["models"][0].update(folds=[0, 0]),
     r"^config: invalid value at models\[0\]\.folds: \[0, 0\] has non-unique elements" + SEE),
    ("a variant listed twice in bundle.variants", lambda c: c["bundle"].update(variants=["onnx_simplified"] * 2),
     r"^config: invalid value at bundle\.variants: \['onnx_simplified', 'onnx_simplified'\] has non-unique elements"),
    ("validate.threads: -1", lambda c: c["validate"].update(threads=-1),
     r"^config: invalid value at validate\.threads: -1 is less than the minimum of 1"),
    ("patches.heldout: 0", lambda c: c["patches"].update(heldout=0),
     r"^config: invalid value at patches\.heldout: 0 is less than the minimum of 1"),
    ("a negative tolerance (max_abs_err: -1)", lambda c: c["validate"]["tolerances"].update(onnx_fp32={"max_abs_err": -1}),
     r"^config: invalid value at validate\.tolerances\.onnx_fp32\.max_abs_err: -1 is less than the minimum of 0"),
    ("an absurd Dice tolerance (min_dice: 1.5)", lambda c: c["validate"].update(default_tolerance={"min_dice": 1.5}),
     r"^config: invalid value at validate\.default_tolerance\.min_dice: 1\.5 is greater than the maximum of 1"),
    ("a tolerance given as text (min_dice: high)", lambda c: c["validate"]["tolerances"].update(onnx_fp32={"min_dice": "high"}),
     r"^config: invalid value at validate\.tolerances\.onnx_fp32\.min_dice: 'high' is not of type 'number', 'null'"),
    ("unknown backend (tensorrt)", lambda c: c.update(backends=["onnxruntime", "tensorrt"]),
     r"^config: invalid value at backends\[1\]: 'tensorrt' is not one of \['onnxruntime', 'openvino'\]"),
    ("backends without onnxruntime", lambda c: c.update(backends=["openvino"]),
     r"^config: invalid value at backends: \['openvino'\] must include 'onnxruntime'"),
    ("a backend listed twice", lambda c: c.update(backends=["onnxruntime", "onnxruntime"]),
     r"^config: invalid value at backends: \['onnxruntime', 'onnxruntime'\] has non-unique elements"),
    ("unknown quantize method (int4)", lambda c: c["quantize"].update(q={"method": "int4"}),
     r"^config: invalid value at quantize\.q\.method: 'int4' is not one of \['static', 'dynamic', 'fp16', 'nncf', "),
    ("a quantize variant name with a dash (int8-x)", lambda c: c["quantize"].update({"int8-x": {"method": "static"}}),
     r"^config: invalid value at quantize: 'int8-x' does not match '\^\[A-Za-z0-9_\]\+\$'"),
    ("unknown calibration method (KL)", lambda c: c["quantize"]["int8_accurate"].update(calibrate_method="KL"),
     r"^config: invalid value at quantize\.int8_accurate\.calibrate_method: 'KL' is not one of \['MinMax', "),
    ("unknown export opset (99)", lambda c: c["export"].update(opset=99),
     r"^config: invalid value at export\.opset: 99 is greater than the maximum of 21"),
    ("export opset as text (\"17\")", lambda c: c["export"].update(opset="17"),
     r"^config: invalid value at export\.opset: '17' is not of type 'integer'"),
    ("models: missing", lambda c: c.pop("models") and None,
     r"^config: invalid value at \(top level\): 'models' is a required property" + SEE),
    ("an empty models: list", lambda c: c.update(models=[]),
     r"^config: invalid value at models: \[\] should be non-empty"),
    ("models: one entry, not a list", lambda c: c.update(models={"folder": "x"}),
     r"^config: invalid value at models: \{'folder': 'x'\} is not of type 'array'"),
    ("an empty config file", lambda c: c.clear(),
     r"^config: invalid value at \(top level\): 'models' is a required property"),
    ("unknown model kind (kind: onnx)", lambda c: c["models"][0].update(kind="onnx"),
     r"^config: invalid value at models\[0\]\.kind: 'onnx' is not one of \['nnunet', 'pytorch'\]"),
    ("trusted: \"yes\" (text, not true)", lambda c: c["models"][0].update(trusted="yes"),
     r"^config: invalid value at models\[0\]\.trusted: 'yes' is not of type 'boolean'"),
    ("a plain model name with a slash (a/b)", lambda c: c["models"][1].update(name="a/b"),
     r"^config: invalid value at models\[1\]\.name: 'a/b' does not match"),
    ("example_size with 4 axes", lambda c: c["models"][1].update(example_size=[16, 16, 16, 16]),
     r"^config: invalid value at models\[1\]\.example_size: \[16, 16, 16, 16\] is too long"),
    ("unknown output type (output: logits)", lambda c: c["models"][1].update(output="logits"),
     r"^config: invalid value at models\[1\]\.output: 'logits' is not one of \['softmax', 'sigmoid'\]"),
    ("patches: without heldout", lambda c: c["models"][1].update(patches={"calibration": "c.npy"}),
     r"^config: invalid value at models\[1\]\.patches: 'heldout' is a required property"),
    ("case_parity.step: 0", lambda c: c["case_parity"].update(step=0),
     r"^config: invalid value at case_parity\.step: 0 is less than or equal to the minimum of 0"),
    ("an empty bundle.variants list", lambda c: c["bundle"].update(variants=[]),
     r"^config: invalid value at bundle\.variants: \[\] should be non-empty"),
    ("a quantize entry left empty (q: null)", lambda c: c["quantize"].update(q=None),
     r"^config: invalid value at quantize\.q: None is not of type 'object'"),
    ("benchmark.repeats: 0", lambda c: c["benchmark"].update(repeats=0),
     r"^config: invalid value at benchmark\.repeats: 0 is less than the minimum of 1"),
]


@pytest.mark.parametrize(("mutate", "message"), [pytest.param(m, r, id=n) for n, m, r in CONFIG_FORM])
def test_config_form(mutate, message):
    from nnbridge.core.config import validate_config

    config = copy.deepcopy(yaml.safe_load((ROOT / "config/config.yaml").read_text()))
    mutate(config)
    with pytest.raises(NNBridgeError, match=message) as info:
        validate_config(config, SCHEMA)
    one_line(str(info.value))


#: (bad input, config/config.yaml text, the message): check_yaml, which the Snakefile runs first
CONFIG_YAML = [
    ("a key given twice at the top level (quantize: twice)",
     "models:\n  - folder: a\nquantize:\n  q8: {method: static}\nbackends: [onnxruntime]\nquantize:\n  f16: {method: fp16}\n",
     r"config\.yaml: key 'quantize' given twice \(lines 3 and 6\); the second would silently replace the first: "
     r"merge them into one$"),
    ("a key given twice in a model entry (folds: twice)",
     "models:\n  - folder: a\n    folds: [0]\n    preprocessed: p\n    folds: [0, 1]\n",
     r"config\.yaml: key 'folds' given twice \(lines 3 and 5\)"),
    ("a tab in the indentation",
     "models:\n\t- folder: a\n",
     r"config\.yaml: YAML syntax error at line 2, column 1: found character '\\t' that cannot start any token "
     r"\(while scanning for the next token\); fix the line \(indent with spaces, close brackets and quotes\)$"),
    ("a quote left open",
     "models:\n  - folder: \"a\n    folds: [0]\n",
     r"config\.yaml: YAML syntax error at line \d+, column \d+: .*; fix the line"),
]


@pytest.mark.parametrize(("text", "message"), [pytest.param(t, r, id=n) for n, t, r in CONFIG_YAML])
def test_config_yaml(tmp_path, text, message):
    from nnbridge.core.config import check_yaml

    (tmp_path / "config.yaml").write_text(text)
    with pytest.raises(NNBridgeError, match=message) as info:
        check_yaml(tmp_path / "config.yaml")
    one_line(str(info.value))


#: (bad input, change to the validated shipped config, the message): names the config refers to,
#: checked when the DAG is built (check_config_names, bundle_plan)
CONFIG_NAMES = [
    ("bundle.variants names torchscript", lambda c: c["bundle"].update(variants=["torchscript"]),
     r"^config bundle\.variants: 'torchscript' is not an ONNX or OpenVINO IR variant of this config; use some of "),
    ("bundle.default_variant not shipped", lambda c: c["bundle"].update(default_variant="fp16"),
     r"^config bundle\.default_variant: 'fp16' is not in bundle\.variants \["),
    ("case_parity.variants names a variant not bundled", lambda c: c["case_parity"]["variants"].append("int8_x"),
     r"^config case_parity\.variants: 'int8_x' is not in bundle\.variants .*; add it there$"),
    ("a bf16 variant without openvino in backends", lambda c: c.update(backends=["onnxruntime"]),
     r"^config quantize\.bf16: method bf16 runs on OpenVINO; add openvino to backends \(now \['onnxruntime'\]\) or "
     r"remove the entry$"),
]


@pytest.mark.parametrize(("mutate", "message"), [pytest.param(m, r, id=n) for n, m, r in CONFIG_NAMES])
def test_config_names(mutate, message, monkeypatch):
    from nnbridge.core.config import validate_config
    from nnbridge.pipeline.plan import bundle_plan, check_config_names

    monkeypatch.chdir(ROOT)
    config = validate_config(yaml.safe_load((ROOT / "config/config.yaml").read_text()), SCHEMA)
    mutate(config)
    with pytest.raises(NNBridgeError, match=message) as info:
        check_config_names(config)
        bundle_plan(config)
    one_line(str(info.value))


# ----------------------------------------------------------------------- models: entries (the DAG)

FOLDER = "Dataset940_X/nnUNetTrainer__nnUNetPlans__3d_fullres"
DATASET_JSON = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "a": 1}, "file_ending": ".nii.gz"}


def _model_folder(root: Path, folder: str = FOLDER, folds=(0, 1), plans=None, dataset=DATASET_JSON) -> Path:
    path = root / folder
    for fold in folds:
        (path / f"fold_{fold}").mkdir(parents=True, exist_ok=True)
        (path / f"fold_{fold}" / "checkpoint_final.pth").write_bytes(b"x")
    path.mkdir(parents=True, exist_ok=True)
    if plans is not False:
        (path / "plans.json").write_text(plans if isinstance(plans, str) else
                                         json.dumps({"configurations": {"3d_fullres": {}}}))
    if dataset is not None:
        (path / "dataset.json").write_text(json.dumps(dataset))
    return path


def _zip(path: Path, members: dict[str, str]) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        for name, text in members.items():
            archive.writestr(zipfile.ZipInfo(name), text)


@pytest.fixture
def inputs(tmp_path, monkeypatch):
    """A working folder (the cwd, as for the workflow) with a good nnU-Net model folder, its
    preprocessed splits, image folders and plain-model files; returns good entries to spoil."""
    monkeypatch.chdir(tmp_path)
    _model_folder(tmp_path)
    Path("pre").mkdir()
    Path("pre/splits_final.json").write_text(json.dumps([{"train": [], "val": []}] * 5))
    for name in ("images", "empty", "unnamed", "png"):
        Path(name).mkdir()
    Path("images/c1_0000.nii.gz").write_bytes(b"x")
    Path("unnamed/c1.nii.gz").write_bytes(b"x")
    Path("png/c1_0000.png").write_bytes(b"x")
    Path("m.pth").write_bytes(b"x")
    Path("cal.npy").write_bytes(b"x")
    Path("not_a.zip").write_text("hello")
    _zip(Path("no_model.zip"), {"readme.txt": "x"})
    _zip(Path("slip.zip"), {f"{FOLDER}/plans.json": "{}", "../../outside.txt": "x"})
    _zip(Path("no_dataset.zip"), {f"{FOLDER}/plans.json": json.dumps({"configurations": {"3d_fullres": {}}}),
                                  f"{FOLDER}/fold_0/checkpoint_final.pth": "x"})
    nnunet = {"folder": FOLDER, "preprocessed": "pre"}
    plain = {"kind": "pytorch", "name": "p", "checkpoint": "m.pth", "class": "nnbridge.demo.nets.UNet",
             "input_channels": 1, "example_size": [16, 16, 16], "patches": {"calibration": "cal.npy", "heldout": "cal.npy"}}
    return tmp_path, nnunet, plain


def _in(where: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (where / name).parent.mkdir(parents=True, exist_ok=True)
        (where / name).write_text(text)


W = r"^config models\[0\] \("  # every message starts by naming the entry
#: (bad input, entries made from (nnunet, plain) good ones, files to plant, the message)
MODEL_ENTRIES = [
    ("the same model folder listed twice", lambda n, p: [n, dict(n)], {},
     r"^config models\[1\] \(nnUNetTrainer__nnUNetPlans__3d_fullres\): Dataset940_X/nnUNetTrainer__nnUNetPlans__3d_fullres "
     r"is listed twice; merge the two entries or rename one$"),
    ("two plain models with one name", lambda n, p: [p, dict(p)], {},
     r"^config models\[1\] \(p\): pytorch/p is listed twice; merge the two entries or rename one$"),
    ("a model folder that does not exist", lambda n, p: [{**n, "folder": "Dataset940_X/T__P__2d"}], {},
     W + r"Dataset940_X/T__P__2d\): folder does not exist; fix the path in config/config\.yaml$"),
    ("a folder that is not an nnU-Net model folder (the dataset folder)", lambda n, p: [{**n, "folder": "Dataset940_X"}], {},
     W + r"Dataset940_X\): folder name must be <Trainer>__<Plans>__<configuration> \(the folder nnU-Net writes under "
     r"nnUNet_results/<Dataset>/\)$"),
    ("a model folder with no fold_*/checkpoint", lambda n, p: [{**n, "folder": "Dataset941_Y/T__P__3d_fullres"}],
     {"Dataset941_Y/T__P__3d_fullres/plans.json": "{}"},
     W + r"Dataset941_Y/T__P__3d_fullres\): no fold_\*/checkpoint_final\.pth found; list `folds:` or fix the path$"),
    ("folder: left empty", lambda n, p: [{**n, "folder": ""}], {},
     r"^config models\[0\]: `folder:` or `zip:` missing \(an nnU-Net model folder or a zip from "
     r"nnUNetv2_export_model_to_zip; plain PyTorch models need `kind: pytorch`\)$"),
    ("an nnU-Net checkpoint name that is not nnU-Net's (model.pth)", lambda n, p: [{**n, "checkpoint": "model.pth"}], {},
     W + r".*\): checkpoint 'model\.pth': an nnU-Net fold has checkpoint_final\.pth or checkpoint_best\.pth$"),
    ("checkpoint_best.pth when the folds have only checkpoint_final.pth",
     lambda n, p: [{**n, "checkpoint": "checkpoint_best.pth"}], {},
     W + r".*\): no fold_\*/checkpoint_best\.pth found; list `folds:` or fix the path$"),
    ("configurations: on a model folder", lambda n, p: [{**n, "configurations": ["2d"]}], {},
     W + r".*\): `configurations:` is for `zip:` entries \(a model folder is one configuration\); remove it$"),
    ("both images: and preprocessed:", lambda n, p: [{**n, "images": "images"}], {},
     W + r".*\): both `images:` and `preprocessed:` given; keep one: `images:` is a folder"),
    ("neither images: nor preprocessed:", lambda n, p: [{"folder": FOLDER}], {},
     W + r".*\): `images:` or `preprocessed:` missing \(calibration and held-out patches come from it\)"),
    ("labels: with preprocessed:", lambda n, p: [{**n, "labels": "labels"}], {},
     W + r".*\): `labels:` goes with `images:`; with `preprocessed:` labels and splits come from the preprocessed "
     r"folder; remove it$"),
    ("an images: folder that does not exist", lambda n, p: [{"folder": FOLDER, "images": "nope"}], {},
     W + r".*\): images folder nope does not exist; fix `images:` of the model in the config$"),
    ("an empty images: folder", lambda n, p: [{"folder": FOLDER, "images": "empty"}], {},
     W + r".*\): empty: no images named <case>_0000\.nii\.gz; name the channels of each case <case>_0000\.nii\.gz"),
    ("images without the _0000 channel suffix", lambda n, p: [{"folder": FOLDER, "images": "unnamed"}], {},
     W + r".*\): unnamed: no images named <case>_0000\.nii\.gz"),
    ("images of another file type than the model's (.png for .nii.gz)", lambda n, p: [{"folder": FOLDER, "images": "png"}],
     {}, W + r".*\): png: no images named <case>_0000\.nii\.gz"),
    ("images with a channel missing", lambda n, p: [{"folder": FOLDER, "images": "images"}],
     {"images/c2_0001.nii.gz": "x"}, W + r".*\): images: case 'c2' lacks channel\(s\) c2_0000\.nii\.gz; the model takes 1"),
    ("images with a label folder missing a case", lambda n, p: [{"folder": FOLDER, "images": "images", "labels": "lab"}],
     {"lab/other.nii.gz": "x"}, W + r".*\): lab/c1\.nii\.gz missing: with `labels:` every case of images needs its label file"),
    ("a splits: file that does not exist", lambda n, p: [{"folder": FOLDER, "images": "images", "splits": "s.json"}], {},
     W + r".*\): splits file s\.json does not exist; fix `splits:` or remove it$"),
    ("raw: with images:", lambda n, p: [{"folder": FOLDER, "images": "images", "raw": "raw"}], {},
     W + r".*\): `raw:` is for `preprocessed:` entries \(whole-case parity runs on the held-out images\); remove it$"),
    ("previous_stage_segs: on a model that is no cascade stage", lambda n, p: [{**n, "previous_stage_segs": "segs"}], {},
     W + r".*\): `previous_stage_segs:` is for cascade stages only \(plans\.json gives this configuration no "
     r"previous_stage\); remove it$"),
    ("plans.json that is JSON but not plans (a list)", lambda n, p: [n], {f"{FOLDER}/plans.json": "[]"},
     W + r".*\): Dataset940_X/nnUNetTrainer__nnUNetPlans__3d_fullres/plans\.json: not nnU-Net's plans \(no "
     r"'configurations' object\); an nnU-Net model folder holds it"),
    ("plans.json of another configuration than the folder's", lambda n, p: [n],
     {f"{FOLDER}/plans.json": json.dumps({"configurations": {"2d": {}}})},
     W + r".*\): .*/plans\.json: has no configuration '3d_fullres' \(the folder name's last part\); it has \['2d'\]: "
     r"fix the folder name or copy the model's own plans\.json$"),
    ("dataset.json that is not JSON", lambda n, p: [n], {f"{FOLDER}/dataset.json": "{labels"},
     W + r".*\): .*/dataset\.json: not valid JSON \(line 1, column 2: Expecting property name enclosed in double "
     r"quotes\); an nnU-Net model folder holds it"),
    ("dataset.json without file_ending, with images:", lambda n, p: [{"folder": FOLDER, "images": "images"}],
     {f"{FOLDER}/dataset.json": "{}"},
     W + r".*\): the model's dataset\.json has no 'file_ending'; nnU-Net needs it to find images$"),
    ("preprocessed: a folder without splits_final.json", lambda n, p: [{**n, "preprocessed": "empty"}], {},
     W + r".*\): empty/splits_final\.json: missing; it is written when nnU-Net trains a fold: copy it from the "
     r"training machine's nnUNet_preprocessed folder, or fix `preprocessed:`$"),
    ("a model's quantize: list naming no configured variant", lambda n, p: [{**n, "quantize": ["int9"]}], {},
     W + r".*\): quantize variant 'int9' is not in the config's quantize section \['int8'\]$"),
    ("zip: and folder: together", lambda n, p: [{"zip": "not_a.zip", "folder": FOLDER}], {},
     r"^config models\[0\] \(not_a\.zip\): give `zip:` or `folder:`, not both$"),
    ("zip: a file that is not a zip", lambda n, p: [{"zip": "not_a.zip", "images": "images"}], {},
     r"^not_a\.zip: not a zip file \(corrupt or truncated\?\); re-copy it or re-export it with "
     r"nnUNetv2_export_model_to_zip$"),
    ("zip: a zip that does not exist", lambda n, p: [{"zip": "nope.zip", "images": "images"}], {},
     r"^nope\.zip: zip not found; fix `zip:` of the model in the config$"),
    ("zip: a zip without a model folder", lambda n, p: [{"zip": "no_model.zip", "images": "images"}], {},
     r"^no_model\.zip: no model folder in the zip \(<Dataset>/<Trainer>__<Plans>__<configuration>/plans\.json\); "
     r"export the model with nnUNetv2_export_model_to_zip$"),
    ("zip: a member outside the zip's root (zip-slip)", lambda n, p: [{"zip": "slip.zip", "images": "images"}], {},
     r"^slip\.zip: member '\.\./\.\./outside\.txt' lies outside the zip's root \(zip-slip\); refusing to unpack it"),
    ("zip: a model folder without dataset.json", lambda n, p: [{"zip": "no_dataset.zip", "images": "images"}], {},
     r"^config models\[0\] \(no_dataset\.zip\) Dataset940_X/nnUNetTrainer__nnUNetPlans__3d_fullres: no dataset\.json in "
     r"the zip; re-export the model with nnUNetv2_export_model_to_zip$"),
    ("folds: on a plain model", lambda n, p: [{**p, "folds": [0, 1]}], {},
     r"^config models\[0\] \(p\): `folds:` is for nnU-Net model folders, a plain PyTorch model ignores it \(a plain "
     r"model is one checkpoint; `fold:` names the split whose held-out cases it is checked on\); remove it$"),
    ("folder: on a plain model", lambda n, p: [{**p, "folder": FOLDER}], {},
     r"^config models\[0\] \(p\): `folder:` is for nnU-Net model folders, a plain PyTorch model ignores it; remove it$"),
    ("class: on an nnU-Net model folder (kind: pytorch forgotten)", lambda n, p: [{**n, "class": "my.Net"}], {},
     r"^config models\[0\] \(Dataset940_X/nnUNetTrainer__nnUNetPlans__3d_fullres\): `class:` is for plain PyTorch "
     r"models \(`kind: pytorch`\); an nnU-Net model folder takes its network, labels and folds from the folder: remove "
     r"it, or add `kind: pytorch`$"),
    ("example_size: on an nnU-Net model folder", lambda n, p: [{**n, "example_size": [64, 64, 64]}], {},
     W + r".*\): `example_size:` is for plain PyTorch models"),
    ("a plain model without name:", lambda n, p: [{k: v for k, v in p.items() if k != "name"}], {},
     r"^config models\[0\] \(kind: pytorch\): a plain PyTorch model needs name; see config/README\.md$"),
    ("a plain model's labels: given as a folder", lambda n, p: [{**p, "labels": "labels"}], {},
     r"^config models\[0\] \(p\): `labels:` of a plain model maps label names to class indices, e\.g\. "),
    ("a plain state dict without class:", lambda n, p: [{k: v for k, v in p.items() if k != "class"}], {},
     r"^config models\[0\] \(p\): `class:` missing; a state dict needs its model class"),
    ("format: pickle without trusted: true", lambda n, p: [{**p, "format": "pickle"}], {},
     r"^config models\[0\] \(p\): `format: pickle` runs arbitrary code when loaded; add `trusted: true` if you trust"),
    ("spatial_multiple with another number of axes than example_size", lambda n, p: [{**p, "spatial_multiple": [2, 2]}], {},
     r"^config models\[0\] \(p\): spatial_multiple \[2, 2\] has not one value per axis of example_size \[16, 16, 16\]$"),
    ("example_size not a multiple of spatial_multiple", lambda n, p: [{**p, "spatial_multiple": 4, "example_size": [18, 16, 16]}],
     {}, r"^config models\[0\] \(p\): example_size \[18, 16, 16\] is not a multiple of spatial_multiple \[4, 4, 4\]; "
         r"use sizes divisible by \[4, 4, 4\] per axis$"),
    ("a plain model with both preprocessed: and patches:", lambda n, p: [{**p, "preprocessed": "pre"}], {},
     r"^config models\[0\] \(p\): give either `preprocessed:` \(\+ `data_identifier:`, nnU-Net preprocessed cases\) or "
     r"`patches: \{calibration: \.\.\., heldout: \.\.\.\}` \(arrays\), not both or neither$"),
    ("a plain model with preprocessed: but no data_identifier:",
     lambda n, p: [{**{k: v for k, v in p.items() if k != "patches"}, "preprocessed": "pre"}], {},
     r"^config models\[0\] \(p\): `data_identifier:` missing \(the folder in pre holding the cases\)$"),
    ("a plain model's patch file missing", lambda n, p: [{**p, "patches": {"calibration": "cal.npy", "heldout": "h.npy"}}],
     {}, r"^config models\[0\] \(p\): h\.npy: patch file missing; fix `patches: heldout:` of the model$"),
    ("a plain model's checkpoint that is a folder", lambda n, p: [{**p, "checkpoint": "images"}], {},
     r"^config models\[0\] \(p\): images: checkpoint missing; fix `checkpoint:` of the model$"),
    ("a plain model's fold beyond splits_final.json",
     lambda n, p: [{**{k: v for k, v in p.items() if k != "patches"}, "preprocessed": "pre", "data_identifier": "d",
                    "fold": 7}], {},
     r"^config models\[0\] \(p\): pre/splits_final\.json has 5 folds, fold 7 is configured; remove it from `folds:` or "),
]


@pytest.mark.parametrize(("entries", "plant", "message"), [pytest.param(e, f, r, id=n) for n, e, f, r in MODEL_ENTRIES])
def test_model_entries(inputs, entries, plant, message):
    """plan_models as the workflow calls it when it builds the DAG: refused in one line, nothing
    written (no zip unpacked, no cache folder)."""
    from nnbridge.pipeline.plan import plan_models

    work, nnunet, plain = inputs
    _in(work, plant)
    before = files_under(work)
    with pytest.raises(NNBridgeError, match=message) as info:
        plan_models(entries(nnunet, plain), quantize_names=["int8"], zip_cache=work / "results/cache/zip")
    one_line(str(info.value))
    # nothing written, but the zip's sha256, cached by path, size and mtime (reading a zip hashes it)
    assert [f for f in files_under(work) if not f.startswith("results")] == before
    assert [f for f in files_under(work) if f.startswith("results")] in (
        [], ["results", "results/cache", "results/cache/zip", "results/cache/zip/sha256.json"])


# --------------------------------------------------------------- kind: pytorch, loading the model

NET = "nnbridge.demo.nets.UNet"
KWARGS = {"in_channels": 1, "num_classes": 2, "features": [4, 8]}

NETS_PY = """import torch


class NotANet:
    def __init__(self, **kwargs):
        pass


class TwoHeads(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv3d(1, 2, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        return y, y[:, :, ::2, ::2, ::2]


class Shrinks(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv3d(1, 2, 3)

    def forward(self, x):
        return self.conv(x)
"""


@pytest.fixture(scope="module")
def plain_files(tmp_path_factory):
    """A tiny U-Net's state dict, one of another width, one of another network, a file of classes."""
    import torch

    from nnbridge.demo.nets import UNet

    root = tmp_path_factory.mktemp("plain_matrix")
    torch.manual_seed(0)
    torch.save(UNet(**KWARGS).state_dict(), root / "net.pth")
    torch.save(UNet(1, 3, [4, 8]).state_dict(), root / "three.pth")
    torch.save(torch.nn.Conv3d(1, 2, 3).state_dict(), root / "conv.pth")
    torch.save({"conv." + k: v for k, v in torch.nn.Conv3d(1, 2, 3, padding=1).state_dict().items()}, root / "heads.pth")
    (root / "empty.pth").write_bytes(b"")
    (root / "nets.py").write_text(NETS_PY)
    (root / "broken.py").write_text("class Net(:\n")
    return root


def _plain(root: Path, **changes) -> dict:
    source = {"kind": "pytorch", "name": "tiny", "fold": "all", "checkpoint": str(root / "net.pth"), "class": NET,
              "init_kwargs": KWARGS, "input_channels": 1, "example_size": [16, 16, 16], "spatial_multiple": 2,
              "labels": {"background": 0, "fg": 1}}
    for key, value in changes.items():
        value = value.replace("ROOT", str(root)) if isinstance(value, str) else value
        if value is None:
            source.pop(key)
        else:
            source[key] = value
    return source


#: (bad input, changes to a good plain model's entry, the message): load_model, the export stage's
#: first step (a failure there writes nothing)
PLAIN_MODELS = [
    ("class: a module that is not installed", {"class": "no_such_pkg.UNet"},
     r"^model 'tiny': cannot import 'no_such_pkg' \(No module named 'no_such_pkg'\); put its folder on PYTHONPATH or "
     r"use `class: path/to/file\.py:ClassName`$"),
    ("class: a name its module does not have", {"class": "nnbridge.demo.nets.UNett"},
     r"^model 'tiny': 'nnbridge\.demo\.nets\.UNett': its module has no 'UNett'; fix `class:` \(its torch\.nn\.Module "
     r"classes: .*NestedUNet, .*UNet\)$"),
    ("class: a class that is not an nn.Module", {"class": "ROOT/nets.py:NotANet", "init_kwargs": {}},
     r"^model 'tiny': '.*nets\.py:NotANet' is not a torch\.nn\.Module class$"),
    ("class: a bare name without its module", {"class": "UNet"},
     r"^model 'tiny': `class: UNet` must be a dotted path \(package\.module\.Class\) or file\.py:Class$"),
    ("class: a .py file that does not exist", {"class": "ROOT/missing.py:Net"},
     r"^model 'tiny': class file .*missing\.py not found; fix `class:` \(path/to/file\.py:ClassName\)$"),
    ("class: a .py file with a syntax error", {"class": "ROOT/broken.py:Net"},
     r"^model 'tiny': importing .*broken\.py failed \(SyntaxError: invalid syntax \(broken\.py, line 1\)\)$"),
    ("init_kwargs: an argument the class does not take", {"init_kwargs": {**KWARGS, "depth": 3}},
     r"^model 'tiny': nnbridge\.demo\.nets\.UNet\(\*\*init_kwargs\) failed \(UNet\.__init__\(\) got an unexpected "
     r"keyword argument 'depth'\); fix `init_kwargs:`$"),
    ("init_kwargs: of another width than the checkpoint", {"checkpoint": "ROOT/three.pth"},
     r"^.*three\.pth: weights do not fit nnbridge\.demo\.nets\.UNet \(Error\(s\) in loading state_dict for UNet: .*size "
     r"mismatch for head\.weight.*\); check `class:` and `init_kwargs:` of model 'tiny'$"),
    ("checkpoint: of another network (strict load)", {"checkpoint": "ROOT/conv.pth"},
     r"^.*conv\.pth: weights do not fit nnbridge\.demo\.nets\.UNet \(.*Missing key\(s\) in state_dict.*\); check "
     r"`class:` and `init_kwargs:` of model 'tiny'$"),
    ("checkpoint: a 0-byte file", {"checkpoint": "ROOT/empty.pth"},
     r"^.*empty\.pth: not a torch checkpoint \(corrupt or truncated file\); re-copy it$"),
    ("format: torchscript for a state dict", {"format": "torchscript"},
     r"^.*net\.pth: not a TorchScript archive \(.*\); set `format:` of model 'tiny'$"),
    ("format: pickle (trusted) for a state dict", {"format": "pickle", "trusted": True},
     r"^.*net\.pth: holds a OrderedDict, not a torch\.nn\.Module; set `format: state_dict`$"),
    ("input_channels: 3 for a 1-channel network", {"input_channels": 3},
     r"^model 'tiny': forward at example_size \[16, 16, 16\] with 3 input channel\(s\) failed \(RuntimeError: .*expected "
     r"input\[1, 3, 16, 16, 16\] to have 1 channels.*\); fix `example_size:`/`input_channels:`$"),
    ("example_size: a 2D size for a 3D network", {"example_size": [16, 16], "spatial_multiple": None},
     r"^model 'tiny': forward at example_size \[16, 16\] with 1 input channel\(s\) failed \(RuntimeError: .*\); fix "
     r"`example_size:`/`input_channels:`$"),
    ("example_size: not a multiple of the network's stride", {"example_size": [15, 16, 16], "spatial_multiple": None},
     r"^model 'tiny': forward at example_size \[15, 16, 16\] with 1 input channel\(s\) failed"),
    ("spatial_multiple: 0", {"spatial_multiple": 0},
     r"^model 'tiny': `spatial_multiple` must be a positive integer or 3 of them$"),
    ("output_index: on a network with one output", {"output_index": 1},
     r"^model 'tiny': forward returns one tensor; remove `output_index:`/`output_key:`$"),
    ("output_index: beyond a network's outputs",
     {"class": "ROOT/nets.py:TwoHeads", "init_kwargs": {}, "checkpoint": "ROOT/heads.pth", "output_index": 5},
     r"^model 'tiny': `output_index: 5` does not name a tensor of the 2 outputs \[\[1, 2, 16, 16, 16\], \[1, 2, 8, 8, 8\]\]; "
     r"use 0\.\.1$"),
    ("a network whose output is smaller than its input",
     {"class": "ROOT/nets.py:Shrinks", "init_kwargs": {}, "checkpoint": "ROOT/heads.pth", "spatial_multiple": None},
     r"^model 'tiny': output spatial size \(14, 14, 14\) differs from the input's \(16, 16, 16\); nnbridge takes "
     r"networks whose logits keep the input's size \(segmentation, like nnU-Net's\): pad the convolutions, or pick "
     r"the full-size output with `output_index:`/`output_key:`$"),
    ("labels: without background", {"labels": {"fg": 1}},
     r"^model 'tiny': `labels:` needs `background: 0` \(argmax class 0, never scored; nnU-Net's dataset\.json has it "
     r"too\), got \{'fg': 1\}; add it, or use `output: sigmoid` if channel 0 is a structure$"),
    ("labels: a class the network cannot output (fg: 5)", {"labels": {"background": 0, "fg": 5}},
     r"^model 'tiny': `labels:` names classes \[0, 5\], the network has 2 output channel\(s\), classes \[0, 1\]; name "
     r"each class once \(a class it cannot output would pass every gate without a voxel\)$"),
    ("labels: more classes than outputs", {"labels": {"background": 0, "a": 1, "b": 2}},
     r"^model 'tiny': `labels:` names classes \[0, 1, 2\], the network has 2 output channel\(s\)"),
    ("labels: one class named twice", {"labels": {"background": 0, "a": 1, "b": 1}},
     r"^model 'tiny': `labels:` names classes \[0, 1, 1\], the network has 2 output channel\(s\)"),
    ("labels: a region list on a softmax model", {"labels": {"background": 0, "fg": [1]}},
     r"^model 'tiny': `labels:` fg: \[1\] is not a class index; softmax labels map names to integers"),
    ("labels: of a sigmoid model naming fewer regions than outputs", {"output": "sigmoid", "labels": {"a": [1]}},
     r"^model 'tiny': `labels:` names 1 region\(s\) \['a'\], the network has 2 sigmoid output channel\(s\); name one "
     r"region per channel, in order$"),
    ("mirror_axes: an axis a 3D network does not have", {"mirror_axes": [0, 3]},
     r"^model 'tiny': `mirror_axes:` \[3\] beyond the spatial axes of example_size \[16, 16, 16\] \(0\.\.2, as nnU-Net "
     r"counts them\); fix `mirror_axes:`$"),
]


@pytest.mark.parametrize(("changes", "message"), [pytest.param(c, r, id=n) for n, c, r in PLAIN_MODELS])
def test_plain_models(plain_files, changes, message):
    from nnbridge.models.loader import load_model

    before = files_under(plain_files)
    with pytest.raises(NNBridgeError, match=message) as info:
        load_model(_plain(plain_files, **changes))
    one_line(str(info.value))
    assert files_under(plain_files) == before


# ------------------------------------------------------------------- patch arrays (kind: pytorch)


def _save(name: str, array=None, **arrays):
    def plant(folder: Path) -> Path:
        path = folder / name
        if arrays or name.endswith(".npz"):
            np.savez(path, **arrays)
        else:
            np.save(path, array)
        return path
    return plant


def _raw(name: str, data: bytes):
    def plant(folder: Path) -> Path:
        (folder / name).write_bytes(data)
        return folder / name
    return plant


def _cut_npy(folder: Path) -> Path:
    np.save(folder / "cut.npy", _good_patches())
    (folder / "cut.npy").write_bytes((folder / "cut.npy").read_bytes()[:3000])
    return folder / "cut.npy"


def _good_patches() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((2, 1, 16, 16, 16)).astype(np.float32)


#: (bad input, the held-out file planted, the message): the patches stage reading a plain model's
#: `patches:` files (tests/test_reliability.py has the issue's: NaN, complex, none, sizes)
PATCH_FILES = [
    ("an .npz of two arrays, none named patches", _save("two.npz", a=_good_patches(), b=_good_patches()),
     r"two\.npz: holds 2 arrays \['a', 'b'\], none named 'patches'; save one array per file \(np\.save\), or name "
     r"it 'patches' \(np\.savez\(path, patches=\.\.\.\)\)$"),
    ("an .npz with no array", _save("none.npz"), r"none\.npz: holds 0 arrays \[\], none named 'patches'"),
    ("an .npy cut short", _cut_npy,
     r"cut\.npy: not a readable \.npy/\.npz array \(Failed to read all data for array\. Expected \(2, 1, 16, 16, 16\)"),
    ("a 0-byte .npy", _raw("empty.npy", b""), r"empty\.npy: not a readable \.npy/\.npz array \(No data left in file\)$"),
    ("an .npy of Python objects (pickled)", _save("objects.npy", np.array([{"a": 1}], dtype=object)),
     r"objects\.npy: not a readable \.npy/\.npz array \(Object arrays cannot be loaded when allow_pickle=False\)$"),
    ("patches without the channel axis", _save("nochannel.npy", _good_patches()[:, 0]),
     r"nochannel\.npy: patches of shape \(2, 16, 16, 16\); expected \(N, 1, 16, 16, 16\)"),
    ("patches with 2 channels for a 1-channel model", _save("two_ch.npy", np.concatenate([_good_patches()] * 2, 1)),
     r"two_ch\.npy: patches of shape \(2, 2, 16, 16, 16\); expected \(N, 1, 16, 16, 16\)"),
    ("a patch file that does not exist", lambda folder: folder / "gone.npy",
     r"gone\.npy: patch file not found; fix `patches:` of the model in the config$"),
]


@pytest.mark.parametrize(("plant", "message"), [pytest.param(p, r, id=n) for n, p, r in PATCH_FILES])
def test_patch_files(tmp_path, plant, message):
    from nnbridge.patches.sampling import copy_patch_sets

    np.save(tmp_path / "cal.npy", _good_patches())
    held = plant(tmp_path)
    out = tmp_path / "out"
    with pytest.raises(NNBridgeError, match=message) as info:
        copy_patch_sets(tmp_path / "cal.npy", held, out / "cal.npz", out / "held.npz", channels=1,
                        spatial=(16, 16, 16), n_calibration=2, n_heldout=2, multiple=2)
    one_line(str(info.value))
    assert not out.exists()


# ------------------------------------------------------------------------------ the command line


def _bundle_copy(bundle: Path, where: Path, edit=None) -> Path:
    copy_ = where / "bundle"
    shutil.copytree(bundle, copy_)
    if edit is not None:
        edit(copy_)
    return copy_


def _manifest(edit):
    def change(folder: Path) -> None:
        path = folder / "bundle.json"
        manifest = json.loads(path.read_text())
        edit(manifest)
        path.write_text(json.dumps(manifest))
    return change


def _json_edit(name: str, edit):
    def change(folder: Path) -> None:
        path = folder / name
        content = json.loads(path.read_text())
        edit(content)
        path.write_text(json.dumps(content))
    return change


def _predict(b, i, o, *extra):
    return ["predict", "-i", str(i), "-o", str(o), "-m", str(b), "--threads", "1", "--disable_tta", *extra]


def _with_case(case: Path, folder: Path, name: str = "case_0000.nii.gz") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(case, folder / name)
    return folder


#: (bad input, how to plant it: (bundle, a good case, scratch folder) → argv, the last stderr line:
#: "nnbridge: error: <cause>", or argparse's "nnbridge <command>: error: <usage error>"); exit code 2
CLI = [
    ("nnbridge without a command", lambda b, c, t: [],
     r"^nnbridge: error: the following arguments are required: command; see nnbridge --help$"),
    ("nnbridge with an unknown command (nnbridge train)", lambda b, c, t: ["train"],
     r"^nnbridge: error: argument command: invalid choice: 'train' \(choose from 'inspect', 'predict', 'verify'\); see "
     r"nnbridge --help$"),
    ("nnbridge predict without -i/-o/-m", lambda b, c, t: ["predict"],
     r"^nnbridge predict: error: the following arguments are required: -i/--input, -o/--output, -m/--model; see "
     r"nnbridge predict --help$"),
    ("nnbridge predict --backend tensorrt", lambda b, c, t: _predict(b, _with_case(c, t / "in"), t / "out", "--backend", "tensorrt"),
     r"^nnbridge predict: error: argument --backend: invalid choice: 'tensorrt' \(choose from 'onnxruntime', "
     r"'openvino'\); see nnbridge predict --help$"),
    ("nnbridge predict --step-size abc", lambda b, c, t: _predict(b, _with_case(c, t / "in"), t / "out", "--step-size", "abc"),
     r"^nnbridge predict: error: argument -step_size/--step-size: invalid float value: 'abc'; see nnbridge predict --help$"),
    ("nnbridge predict -m a folder that does not exist", lambda b, c, t: _predict(t / "nope", _with_case(c, t / "in"), t / "out"),
     r"^nnbridge: error: .*nope: not an nnbridge bundle \(no bundle\.json\); point -m at the bundle folder the pipeline "
     r"wrote \(results/<dataset>/<model>/bundle\)$"),
    ("nnbridge predict -m the model folder instead of the bundle",
     lambda b, c, t: _predict(t, _with_case(c, t / "in"), t / "out"),
     r"^nnbridge: error: .*: not an nnbridge bundle \(no bundle\.json\); point -m at the bundle folder"),
    ("a bundle whose bundle.json is not JSON",
     lambda b, c, t: _predict(_bundle_copy(b, t, lambda f: (f / "bundle.json").write_text("{")), _with_case(c, t / "in"), t / "out"),
     r"^nnbridge: error: .*bundle\.json: not valid JSON \(.*\); rebuild the bundle$"),
    ("a bundle.json of another format",
     lambda b, c, t: _predict(_bundle_copy(b, t, _manifest(lambda m: m.update(format="nnbridge-bundle/0"))),
                              _with_case(c, t / "in"), t / "out"),
     r"^nnbridge: error: .*bundle\.json: format 'nnbridge-bundle/0', expected 'nnbridge-bundle/1'"),
    ("a bundle.json with an entry missing",
     lambda b, c, t: _predict(_bundle_copy(b, t, _manifest(lambda m: m.pop("variants"))), _with_case(c, t / "in"), t / "out"),
     r"^nnbridge: error: .*bundle\.json: no 'variants' entry; the manifest is incomplete: rebuild the bundle or copy it "
     r"again$"),
    ("a bundle with a model file deleted",
     lambda b, c, t: _predict(_bundle_copy(b, t, lambda f: (f / "onnx_fp32/fold_0.onnx").unlink()), _with_case(c, t / "in"), t / "out"),
     r"^nnbridge: error: .*onnx_fp32/fold_0\.onnx: missing from the bundle; rebuild or copy the whole bundle folder$"),
    ("a bundle with plans.json deleted",
     lambda b, c, t: _predict(_bundle_copy(b, t, lambda f: (f / "plans.json").unlink()), _with_case(c, t / "in"), t / "out"),
     r"^nnbridge: error: .*bundle/plans\.json: missing from the bundle; rebuild or copy the whole bundle folder$"),
    ("a bundle with plans.json deleted, --no-verify",
     lambda b, c, t: _predict(_bundle_copy(b, t, lambda f: (f / "plans.json").unlink()), _with_case(c, t / "in"), t / "out",
                              "--no-verify"),
     r"^nnbridge: error: .*bundle/plans\.json: missing; rebuild the bundle, or copy the whole bundle folder again$"),
    ("a bundle whose dataset.json lost its channel_names, --no-verify",
     lambda b, c, t: _predict(_bundle_copy(b, t, _json_edit("dataset.json", lambda d: d.pop("channel_names"))),
                              _with_case(c, t / "in"), t / "out", "--no-verify"),
     r"^nnbridge: error: .*bundle/dataset\.json: no 'channel_names'; nnU-Net needs them to find the input channels: "
     r"rebuild the bundle, or copy the whole bundle folder again$"),
    ("a bundle whose plans.json lacks its configuration, --no-verify",
     lambda b, c, t: _predict(_bundle_copy(b, t, _json_edit("plans.json", lambda p: p["configurations"].pop("3d_fullres"))),
                              _with_case(c, t / "in"), t / "out", "--no-verify"),
     r"^nnbridge: error: .*bundle/plans\.json: no configuration '3d_fullres' \(it has \[.*\]\); rebuild the bundle, "
     r"or copy the whole bundle folder again$"),
    ("a bundle with its model file cut short",
     lambda b, c, t: _predict(_bundle_copy(b, t, lambda f: (f / "onnx_fp32/fold_0.onnx").write_bytes(
         (f / "onnx_fp32/fold_0.onnx").read_bytes()[:1000])), _with_case(c, t / "in"), t / "out"),
     r"^nnbridge: error: .*onnx_fp32/fold_0\.onnx: sha256 differs from bundle\.json; the file was changed or truncated, "
     r"copy the bundle again$"),
    ("nnbridge predict --variant that the bundle lacks",
     lambda b, c, t: _predict(b, _with_case(c, t / "in"), t / "out", "--variant", "int8_static"),
     r"^nnbridge: error: .*bundle: no variant 'int8_static'; the bundle has \['onnx_fp32'\]$"),
    ("nnbridge predict -f a fold not in the bundle", lambda b, c, t: _predict(b, _with_case(c, t / "in"), t / "out", "-f", "3"),
     r"^nnbridge: error: .*bundle: variant 'onnx_fp32' has no fold\(s\) \['3'\]; it has \['0'\]$"),
    ("nnbridge predict --threads -1", lambda b, c, t: _predict(b, _with_case(c, t / "in"), t / "out", "--threads", "-1"),
     r"^nnbridge: error: --threads -1 / --batch-size 1: threads must be >= 0 \(0: the runtime's choice\) and the batch "
     r"size >= 1$"),
    ("nnbridge predict --step-size 0", lambda b, c, t: _predict(b, _with_case(c, t / "in"), t / "out", "--step-size", "0"),
     r"^nnbridge: error: --step-size 0\.0: the sliding window's step must be in \(0, 1\] \(a fraction of the patch "
     r"size; nnU-Net's default 0\.5\)$"),
    ("nnbridge predict --step-size 2", lambda b, c, t: _predict(b, _with_case(c, t / "in"), t / "out", "--step-size", "2"),
     r"^nnbridge: error: --step-size 2\.0: the sliding window's step must be in \(0, 1\]"),
    ("nnbridge predict -i a folder that does not exist", lambda b, c, t: _predict(b, t / "nope", t / "out"),
     r"^nnbridge: error: .*nope: no such input folder$"),
    ("nnbridge predict -i a file", lambda b, c, t: _predict(b, _with_case(c, t / "in") / "case_0000.nii.gz", t / "out"),
     r"^nnbridge: error: .*case_0000\.nii\.gz: not a folder; -i takes the folder holding <case>_0000\.nii\.gz …$"),
    ("nnbridge predict -i an empty folder", lambda b, c, t: (t / "in").mkdir() or _predict(b, t / "in", t / "out"),
     r"^nnbridge: error: .*in: no images named <case>_0000\.nii\.gz; name the channels of each case <case>_0000\.nii\.gz "
     r"… <case>_0000\.nii\.gz$"),
    ("nnbridge predict on images of another file type (.nii for a .nii.gz model)",
     lambda b, c, t: _predict(b, _with_case(c, t / "in", "case_0000.nii"), t / "out"),
     r"^nnbridge: error: .*in: no images named <case>_0000\.nii\.gz"),
    ("nnbridge predict on images without the channel suffix (case.nii.gz)",
     lambda b, c, t: _predict(b, _with_case(c, t / "in", "case.nii.gz"), t / "out"),
     r"^nnbridge: error: .*in: no images named <case>_0000\.nii\.gz"),
    ("nnbridge predict on a file that is not an image", lambda b, c, t: (t / "in").mkdir() or (
        (t / "in/case_0000.nii.gz").write_text("hello") and _predict(b, t / "in", t / "out")),
     r"^nnbridge: error: .*case_0000\.nii\.gz: truncated or corrupt \(Not a gzipped file .*\); copy the file again$"),
    ("nnbridge predict --batch-size 0", lambda b, c, t: _predict(b, _with_case(c, t / "in"), t / "out", "--batch-size", "0"),
     r"^nnbridge: error: --threads 1 / --batch-size 0: threads must be >= 0 \(0: the runtime's choice\) and the batch "
     r"size >= 1$"),
    ("nnbridge predict --postprocessing a file that does not exist",
     lambda b, c, t: _predict(b, _with_case(c, t / "in"), t / "out", "--postprocessing", str(t / "pp.pkl")),
     r"^nnbridge: error: .*pp\.pkl: cannot read it \(No such file or directory\)$"),
    ("nnbridge predict --postprocessing a JSON that is not steps", lambda b, c, t: (t / "pp.json").write_text('{"a": 1}') and
     _predict(b, _with_case(c, t / "in"), t / "out", "--postprocessing", str(t / "pp.json")),
     r"^nnbridge: error: .*pp\.json: postprocessing steps must be a list"),
    ("nnbridge predict -m the same bundle twice (an ensemble of one model)",
     lambda b, c, t: _predict(b, _with_case(c, t / "in"), t / "out", "-m", str(b), str(b)),
     r"^nnbridge: error: the bundles .* hold the same model"),
    ("nnbridge inspect on an ONNX file without nnbridge metadata", lambda b, c, t: _bare_onnx(t),
     r"^nnbridge: error: .*bare\.onnx: no nnbridge metadata; it was not exported by nnbridge$"),
    ("nnbridge inspect on an .xml that is not an OpenVINO IR", lambda b, c, t: (t / "x.xml").write_text("<a/>") and
     ["inspect", str(t / "x.xml")],
     r"^nnbridge: error: .*x\.xml: not an OpenVINO IR"),
    ("nnbridge verify -m a folder that is not a bundle", lambda b, c, t: ["verify", "-m", str(t)],
     r"^nnbridge: error: .*: not an nnbridge bundle \(no bundle\.json\)"),
    ("nnbridge verify on a bundle without a self-check set", lambda b, c, t: ["verify", "-m", str(b)],
     r"^nnbridge: error: .*bundle: the bundle has no self-check set \(built before nnbridge verify existed, or by "
     r"hand\); rebuild it with the pipeline$"),
]


def _bare_onnx(where: Path) -> list[str]:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph), str(where / "bare.onnx"))
    return ["inspect", str(where / "bare.onnx")]


@pytest.mark.parametrize(("plant", "message"), [pytest.param(p, r, id=n) for n, p, r in CLI])
def test_command_line(nifti_bundle, tmp_path, plant, message):
    """``nnbridge`` in-process (its own entry point): exit status 2 and one line on stderr naming
    the file, option or key and the fix; no segmentation written, the shared bundle unchanged."""
    from nnbridge.cli import main
    from nnbridge.core.runlog import sha256_file

    bundle_dir, case = nifti_bundle
    shipped = {p.name: sha256_file(p) for p in bundle_dir.rglob("*") if p.is_file()}
    argv = plant(bundle_dir, case, tmp_path)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = main(argv)
        except SystemExit as exc:  # argparse's usage errors
            rc = exc.code
    assert rc == 2, err.getvalue()
    # the cause is the last line; before it at most what predict announces (runtime, settings)
    *before, last = err.getvalue().strip().splitlines()
    assert re.search(message, one_line(last)), err.getvalue()
    assert all(line.startswith("nnbridge: ") and "error" not in line for line in before), err.getvalue()
    assert not list(tmp_path.glob("out/case*"))
    assert {p.name: sha256_file(p) for p in bundle_dir.rglob("*") if p.is_file()} == shipped


#: every bad input of this file → what its one-line message says (tests/test_reliability.py adds
#: them to BAD_INPUTS, which the README counts)
MATRIX = {name: message for table in (CONFIG_FORM, CONFIG_YAML, CONFIG_NAMES, MODEL_ENTRIES, PLAIN_MODELS, PATCH_FILES, CLI)
          for name, *_, message in table}


def test_every_row_is_its_own_bad_input():
    rows = [row[0] for table in (CONFIG_FORM, CONFIG_YAML, CONFIG_NAMES, MODEL_ENTRIES, PLAIN_MODELS, PATCH_FILES, CLI)
            for row in table]
    assert len(rows) == len(set(rows)) == len(MATRIX)
