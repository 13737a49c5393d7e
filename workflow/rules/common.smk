import re
import sys
import time
from pathlib import Path

from snakemake.exceptions import WorkflowError

from nnbridge.core.config import validate_config
from nnbridge.core.errors import NNBridgeError
from nnbridge.demo.dataset import DEMO_DATASET_NAME
from nnbridge.demo.nnunet import DEMO_PLANS, DEMO_TRAINER
from nnbridge.models import CHECKPOINT_NAMES
from nnbridge.pipeline.codehash import code_version as stage_code_version
from nnbridge.pipeline.plan import (
    FoldKey,
    artifact_paths,
    bundle_plan,
    check_config_names,
    plan_models,
    fold_variants,
    record_of,
    variant_tolerance,
)


try:
    validate_config(
        config, Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml"
    )
except NNBridgeError as error:
    raise WorkflowError(str(error)) from None

RUN_STARTED = time.time()  # failure records older than this are from an earlier run
RESULTS = config["results"]
DEMO_ROOT = config["demo"]["root"]
DEMO_CONFIGURATION = "3d_fullres"
DEMO_RAW = f"{DEMO_ROOT}/nnUNet_raw"
DEMO_PREPROCESSED = f"{DEMO_ROOT}/nnUNet_preprocessed/{DEMO_DATASET_NAME}"
DEMO_MODEL_FOLDER = f"{DEMO_ROOT}/nnUNet_results/{DEMO_DATASET_NAME}/{DEMO_TRAINER}__{DEMO_PLANS}__{DEMO_CONFIGURATION}"

# A missing input of one model or fold (plans.json, a listed fold's checkpoint, ...) is found here,
# before any job: that model or fold is left out of the DAG (so the others can run) and listed in
# DAG_FAILURES. The handlers in report.smk then refuse to start without --keep-going (not known
# while this file is read), and with it run the rest, report them failed and exit non-zero.
try:
    check_config_names(config)
    MODELS, DAG_FAILURES = plan_models(
        config["models"], demo_folder=DEMO_MODEL_FOLDER, quantize_names=list(config["quantize"]),
        demo_root=DEMO_ROOT, keep_going=True,
    )
except NNBridgeError as error:
    raise WorkflowError(str(error)) from None
if DAG_FAILURES and workflow.is_main_process:
    for failure in DAG_FAILURES:
        print(f"nnbridge: {failure['cause']} (left out; with --keep-going the rest runs and the report lists it)",
              file=sys.stderr)

try:
    BUNDLE_VARIANTS, BUNDLE_DEFAULT, CASE_PARITY_VARIANTS = bundle_plan(config)
except NNBridgeError as error:
    raise WorkflowError(str(error)) from None

FOLD_KEYS = [key for model in MODELS.values() for key in model.fold_keys()]
FOLD_DIR = f"{RESULTS}/{{dataset}}/{{model}}/fold_{{fold}}"
MODEL_DIR = f"{RESULTS}/{{dataset}}/{{model}}"


wildcard_constraints:
    dataset="|".join(sorted({re.escape(k.dataset) for k in FOLD_KEYS})),
    model="|".join(sorted({re.escape(k.model) for k in FOLD_KEYS})),
    fold="[0-9]+|all",
    net="unet|unetpp",
    qvariant="|".join(config["quantize"]) or "__none__",


def code_version(script):
    """Hash of workflow/scripts/<script>.py and every nnbridge module it imports (transitively):
    an edit of code a stage runs reruns that stage, and only that stage."""
    return stage_code_version(Path(workflow.basedir) / "workflow" / "scripts" / f"{script}.py")


def get_model(wildcards):
    return MODELS[f"{wildcards.dataset}/{wildcards.model}"]


DEMO_NETS_DIR = f"{DEMO_ROOT}/pytorch"


def demo_plain_entry(net):
    """The config entry of the plain PyTorch demo model whose checkpoint is <demo root>/pytorch/<net>.pth."""
    for model in MODELS.values():
        if model.kind == "pytorch" and model.checkpoint == f"{DEMO_NETS_DIR}/{net}.pth":
            return model.entry
    raise WorkflowError(f"no models: entry has checkpoint {DEMO_NETS_DIR}/{net}.pth")


def get_source(wildcards):
    """What nnbridge.models.load_model takes for this fold (an nnU-Net fold or a plain model)."""
    return get_model(wildcards).source(wildcards.fold)


def get_fold_inputs(wildcards):
    """The fold's checkpoint, plus plans.json and dataset.json for an nnU-Net model folder."""
    model = get_model(wildcards)
    inputs = {"checkpoint": model.checkpoint_of(wildcards.fold)}
    if model.kind == "nnunet":
        inputs["plans"] = f"{model.folder}/plans.json"
        inputs["dataset"] = f"{model.folder}/dataset.json"
    return inputs


def get_preprocessed_inputs(wildcards):
    """Fold inputs plus where its patches come from: the dataset's nnU-Net split (calibration
    and held-out cases), or the arrays a plain model's entry names."""
    model = get_model(wildcards)
    if model.preprocessed:
        inputs = {**get_fold_inputs(wildcards), "splits": f"{model.preprocessed}/splits_final.json"}
        if model.previous_stage_segs:  # a cascade stage: the previous stage's segmentations
            inputs["previous_stage_segs"] = model.previous_stage_segs
        return inputs
    patches = model.entry["patches"]
    return {
        **get_fold_inputs(wildcards),
        "calibration_in": patches["calibration"],
        "heldout_in": patches["heldout"],
    }


def get_variants(wildcards):
    """Every deployable variant of a fold: name -> {kind, path}."""
    key = FoldKey(wildcards.dataset, wildcards.model, wildcards.fold)
    return fold_variants(RESULTS, key, config, get_model(wildcards).quantize)


def get_variant_files(wildcards):
    """The artifact files behind a fold's variants (one per artifact, whatever the backends)."""
    return sorted({v["path"] for v in get_variants(wildcards).values()})


def get_variant_records(wildcards):
    """The stage records stating the sha256 of a fold's variant files (checked before use)."""
    return sorted({v["record"] for v in get_variants(wildcards).values()})


def get_validation_summaries():
    """nnU-Net's own validation summaries of the folds, where the model folder has them."""
    out = {}
    for key in FOLD_KEYS:
        model = MODELS[f"{key.dataset}/{key.model}"]
        summary = f"{model.folder}/fold_{key.fold}/validation/summary.json"
        if model.folder == DEMO_MODEL_FOLDER or Path(summary).exists():
            out[key.label] = summary
    return out


def bundled(model):
    """Models that get a bundle (nnbridge predict reproduces nnUNetv2_predict: nnU-Net models,
    cascade stages excepted: it does not run their previous stage)."""
    return model.kind == "nnunet" and model.previous_stage is None


def get_bundle_folds(wildcards):
    """Per fold of a model: the shipped variants' ONNX files, its parity and benchmark JSON."""
    model = get_model(wildcards)
    folds = {}
    for key in model.fold_keys():
        paths = artifact_paths(fold_variants(RESULTS, key, config, model.quantize))
        folds[key.fold] = {
            "files": {name: paths[name] for name in BUNDLE_VARIANTS},
            "records": {name: record_of(paths[name]) for name in BUNDLE_VARIANTS},
            "parity": f"{key.dir(RESULTS)}/validate/parity.json",
            "benchmark": f"{key.dir(RESULTS)}/benchmark/benchmark.json",
        }
    return folds


def get_bundle_inputs(wildcards):
    files = [*get_fold_inputs_of_model(wildcards).values()]
    for fold in get_bundle_folds(wildcards).values():
        files += [*fold["files"].values(), *fold["records"].values(), fold["parity"], fold["benchmark"]]
    return files


def get_fold_inputs_of_model(wildcards):
    model = get_model(wildcards)
    return {"plans": f"{model.folder}/plans.json", "dataset": f"{model.folder}/dataset.json"}


def case_parity_keys():
    """Folds compared on whole cases: numbered folds of models whose raw data is configured."""
    if not CASE_PARITY_VARIANTS:
        return []
    return [
        key
        for key in FOLD_KEYS
        if bundled(MODELS[f"{key.dataset}/{key.model}"])
        and MODELS[f"{key.dataset}/{key.model}"].raw
        and key.fold != "all"
    ]


def get_case_parity_inputs(wildcards):
    model = get_model(wildcards)
    return {
        **get_fold_inputs(wildcards),
        "bundle": f"{RESULTS}/{wildcards.dataset}/{wildcards.model}/bundle/bundle.json",
        "splits": f"{model.preprocessed}/splits_final.json",
        "raw_dataset": f"{model.raw}/dataset.json",
    }


def get_case_parity_variants(wildcards):
    """Compared variant → its whole-case gate (its own entry, else the default)."""
    section = config["case_parity"]
    return {
        name: {**section["gate"], **section["tolerances"].get(name, {})}
        for name in CASE_PARITY_VARIANTS
    }


def stage_log(rule, **wildcards):
    """The log file of a rule's job: its `log:` pattern with the wildcards filled in."""
    return expand(getattr(rules, rule).log[0], **wildcards)[0]


def fold_stages(key, model):
    """The stages of a fold in pipeline order: stage name, the record it writes, its log (the
    report lists a stage whose record is missing as failed, with the cause it logged)."""
    wc = {"dataset": key.dataset, "model": key.model, "fold": key.fold}
    base = key.dir(RESULTS)
    stages = [("export_onnx", f"{base}/export/export.json", {})]
    if config["export"]["torchscript"]:
        stages.append(("export_torchscript", f"{base}/export/torchscript.json", {}))
    stages += [("patches", f"{base}/patches/patches.json", {}),
               ("simplify", f"{base}/simplify/simplify.json", {})]
    stages += [("quantize", f"{base}/quantize/{q}.json", {"qvariant": q})
               for q in config["quantize"] if model.quantize is None or q in model.quantize]
    stages += [("validate", f"{base}/validate/parity.json", {}),
               ("benchmark", f"{base}/benchmark/benchmark.json", {})]
    out = [{"stage": name if not extra else f"{name} {extra['qvariant']}", "record": record,
            "log": stage_log(name, **wc, **extra)} for name, record, extra in stages]
    if bundled(model):
        out.append({"stage": "bundle", "record": f"{RESULTS}/{key.dataset}/{key.model}/bundle/bundle.json",
                    "log": stage_log("bundle", **wc), "per_model": True, "optional": True})
    if key in case_parity_keys():
        out.append({"stage": "case_parity", "record": f"{base}/case_parity/case_parity.json",
                    "log": stage_log("case_parity", **wc), "optional": True})
    return out


def get_report_entries():
    """Per fold: where each stage's JSON lives (the report reads them all), and its stages with
    their logs (the report lists the failed ones)."""
    entries = []
    for key in FOLD_KEYS:
        model = MODELS[f"{key.dataset}/{key.model}"]
        base = key.dir(RESULTS)
        entries.append(
            {
                "stages": fold_stages(key, model),
                "dataset": key.dataset,
                "model": key.model,
                "fold": key.fold,
                "export": f"{base}/export/export.json",
                "torchscript": (
                    f"{base}/export/torchscript.json"
                    if config["export"]["torchscript"]
                    else None
                ),
                "simplify": f"{base}/simplify/simplify.json",
                "quantize": {
                    q: f"{base}/quantize/{q}.json"
                    for q in config["quantize"]
                    if model.quantize is None or q in model.quantize
                },
                "parity": f"{base}/validate/parity.json",
                "benchmark": f"{base}/benchmark/benchmark.json",
                "validation_summary": get_validation_summaries().get(key.label),
                "case_parity": (
                    f"{base}/case_parity/case_parity.json" if key in case_parity_keys() else None
                ),
                "bundle": (
                    f"{RESULTS}/{key.dataset}/{key.model}/bundle/bundle.json"
                    if bundled(model)
                    else None
                ),
                "kind": model.kind,
            }
        )
    return entries


def get_realistic_plans(wildcards):
    """The plans file of the realistic-size benchmark, when one is configured."""
    plans = config["benchmark"]["realistic"]["plans"]
    return {"plans": plans} if plans else {}


def get_realistic():
    """The realistic-size benchmark's record, when enabled."""
    if config["benchmark"]["realistic"]["enabled"]:
        return f"{RESULTS}/realistic/realistic.json"
    return None


def get_report_inputs(wildcards):
    files = [get_realistic()] if get_realistic() else []
    for entry in get_report_entries():
        files += [entry["export"], entry["simplify"], entry["parity"], entry["benchmark"]]
        if entry["torchscript"]:
            files.append(entry["torchscript"])
        files += list(entry["quantize"].values())
        if entry["validation_summary"]:
            files.append(entry["validation_summary"])
        if entry["case_parity"]:
            files.append(entry["case_parity"])
        if entry["bundle"]:
            files.append(entry["bundle"])
    return files


def get_final_outputs():
    return [f"{RESULTS}/report.html", f"{RESULTS}/report.md"]
