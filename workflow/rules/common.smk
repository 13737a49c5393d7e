import re
import sys
import time
from pathlib import Path

from snakemake.exceptions import WorkflowError

from nnbridge.core.artifacts import ARTIFACT_SUFFIXES, EXACT_METHODS, artifact_files, method_kind
from nnbridge.core.config import validate_config
from nnbridge.core.errors import NNBridgeError
from nnbridge.demo.dataset import DEMO_DATASET_NAME
from nnbridge.demo.nnunet import DEMO_PLANS, DEMO_TRAINER
from nnbridge.demo.realsize import PLANS as REALSIZE_PLANS, REALSIZE_DATASET_NAME, TRAINER as REALSIZE_TRAINER
from nnbridge.models import CHECKPOINT_NAMES
from nnbridge.pipeline.codehash import code_version as stage_code_version
from nnbridge.pipeline.params import named  # rules with several settings: params: **named(...)
from nnbridge.core.keys import fold_order
from nnbridge.quantize.cpudefaults import quantize_cpu_params
from nnbridge.core.cpu import cpu_identity, least_capable
from nnbridge.core.emulation import emulated_identities
from nnbridge.pipeline.plan import (
    FoldKey,
    artifact_paths,
    base_variant,
    bundle_plan,
    check_config_names,
    plan_models,
    fold_artifacts,
    fold_variants,
    record_of,
    postprocessing_sources,
    previous_stage_model,
    quantize_mem_mb,
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
REALSIZE_ROOT = config["realsize"]["root"]
REALSIZE_FOLDER = f"{REALSIZE_ROOT}/nnUNet_results/{REALSIZE_DATASET_NAME}/{REALSIZE_TRAINER}__{REALSIZE_PLANS}__3d_fullres"

# model zips are unpacked file by file into <results>/cache/zip/<sha256 prefix>/<member>
ZIP_CACHE = f"{RESULTS}/cache/zip"

# A missing input of one model or fold (plans.json, a listed fold's checkpoint, ...) is found here,
# before any job: that model or fold is left out of the DAG (so the others can run) and listed in
# DAG_FAILURES. The handlers in report.smk then refuse to start without --keep-going (not known
# while this file is read), and with it run the rest, report them failed and exit non-zero.
try:
    check_config_names(config)
    MODELS, DAG_FAILURES = plan_models(
        config["models"], demo_folder=DEMO_MODEL_FOLDER, quantize_names=list(config["quantize"]),
        demo_root=DEMO_ROOT, zip_cache=ZIP_CACHE, produced_folders=(REALSIZE_FOLDER,), keep_going=True,
    )
except NNBridgeError as error:
    raise WorkflowError(str(error)) from None
if DAG_FAILURES and workflow.is_main_process:
    for failure in DAG_FAILURES:
        print(f"nnbridge: {failure['cause']} (left out; with --keep-going the rest runs and the report lists it)",
              file=sys.stderr)

ZIPS = {m.zip.key: str(m.zip.path) for m in MODELS.values() if m.zip is not None}

try:
    BUNDLE_VARIANTS, BUNDLE_DEFAULT, CASE_PARITY_VARIANTS = bundle_plan(config)
except NNBridgeError as error:
    raise WorkflowError(str(error)) from None

FOLD_KEYS = [key for model in MODELS.values() for key in model.fold_keys()]
FOLD_DIR = f"{RESULTS}/{{dataset}}/{{model}}/fold_{{fold}}"
# what the benchmark times once per model (on its reference fold)
ARTIFACTS = ["torch_eager", "torchscript", "onnx_fp32", "onnx_simplified", *config["quantize"]]
MODEL_DIR = f"{RESULTS}/{{dataset}}/{{model}}"


wildcard_constraints:
    dataset="|".join(sorted({re.escape(k.dataset) for k in FOLD_KEYS})),
    model="|".join(sorted({re.escape(k.model) for k in FOLD_KEYS})),
    fold="[0-9]+|all",
    net="unet|unetpp",
    qvariant="|".join(config["quantize"]) or "__none__",
    artifact="|".join(re.escape(a) for a in ARTIFACTS),
    sha="|".join(ZIPS) or "__none__",
    cpu="|".join(re.escape(c) for c in config["verify"]["emulated_cpus"]) or "__none__",


def quantize_names(kind):
    """The quantize entries whose method writes an artifact of ``kind`` (``onnx``, ``ir``), as a
    wildcard constraint of the rule that writes them."""
    names = [re.escape(n) for n, q in config["quantize"].items() if method_kind((q or {}).get("method")) == kind]
    return "|".join(names) or "__none__"


def quantize_outputs(kind):
    """The named outputs of the quantize job for artifacts of ``kind``, i.e. ``artifact`` (its
    main file), each further file by its suffix (an IR's ``bin``), and the ``json`` record."""
    stem = f"{FOLD_DIR}/quantize/{{qvariant}}"
    main, *others = ARTIFACT_SUFFIXES[kind]
    return {"artifact": f"{stem}{main}", **{suffix[1:]: f"{stem}{suffix}" for suffix in others}, "json": f"{stem}.json"}


def files_of(paths):
    """Every file of the artifacts whose main files are ``paths`` (an IR: .xml and .bin)."""
    return sorted({str(f) for path in paths for f in artifact_files(path)})


# each module's imports, scanned once and kept by the sha256 of its text (a changed module is
# scanned again): the import graph is read whenever the workflow is parsed
IMPORT_SCANS = Path(".snakemake") / "nnbridge" / "import_scans.json"
# verify.emulated_cpus as read under QEMU, for every later parse (quantize_identity)
EMULATED_CPUS = Path(".snakemake") / "nnbridge" / "emulated_cpus.json"


def code_version(script):
    """Hash of workflow/scripts/<script>.py and every nnbridge module it imports (transitively):
    an edit of code a stage runs reruns that stage, and only that stage."""
    return stage_code_version(Path(workflow.basedir) / "workflow" / "scripts" / f"{script}.py", cache=IMPORT_SCANS)


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


def get_zip(wildcards):
    """The model zip whose cache folder is <results>/cache/zip/<sha>."""
    return ZIPS[wildcards.sha]


def images_dir(model):
    """Where a model's image folder is preprocessed to (its cases.json beside the data folder)."""
    return f"{RESULTS}/{model.dataset}/{model.name}/preprocessed"


def get_image_inputs(wildcards):
    """The images (and labels) of a model's image folder, and its plans and dataset.json."""
    return {"images": get_model(wildcards).images.files(), **get_fold_inputs_of_model(wildcards)}


def get_images_param(wildcards):
    """The image cases the patches come from (None for preprocessed data or patch arrays)."""
    images = get_model(wildcards).images
    if images is None:
        return None
    return {
        "cases": sorted(images.cases),
        "labels": images.labels is not None,
        "splits": images.splits,
        "folder": images.folder,
        "labels_folder": images.labels,
    }


def get_patch_data(wildcards):
    """The folder holding the model's preprocessed data folder (nnU-Net's, or nnbridge's own
    preprocessing of its image folder)."""
    model = get_model(wildcards)
    return images_dir(model) if model.images is not None else model.preprocessed


def get_preprocessed_inputs(wildcards):
    """Fold inputs plus where its patches come from: the dataset's nnU-Net split (calibration
    and held-out cases), the model's own preprocessing of an image folder, or the arrays a
    plain model's entry names."""
    model = get_model(wildcards)
    if model.images is not None:
        inputs = {**get_fold_inputs(wildcards), "cases": f"{images_dir(model)}/cases.json"}
        if model.images.splits:
            inputs["splits"] = model.images.splits
        return inputs
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


def artifacts_of(model, key):
    """The artifacts fold ``key`` of ``model`` gets, None for all (pipeline.plan.fold_artifacts:
    a bundled model's other folds get the shipped ones unless comparison.folds is all)."""
    return fold_artifacts(config, bundled(model), key == reference_fold(model))


def variants_of(model, key):
    """Every variant of fold ``key`` of ``model`` (every runtime): name -> {kind, path, backend, record}."""
    return fold_variants(RESULTS, key, config, model.quantize, artifacts_of(model, key))


def gets(model, key, artifact):
    """Whether fold ``key`` of ``model`` gets ``artifact`` (torchscript, a quantize entry)."""
    only = artifacts_of(model, key)
    return only is None or artifact in only


def get_variants(wildcards):
    """Every deployable variant of a fold: name -> {kind, path}."""
    key = FoldKey(wildcards.dataset, wildcards.model, wildcards.fold)
    return variants_of(get_model(wildcards), key)


def get_variant_files(wildcards):
    """The files of the artifacts behind a fold's variants (each once, whatever the backends)."""
    return files_of(v["path"] for v in get_variants(wildcards).values())


def reference_fold(model):
    """The fold a model's artifacts are timed on and its searches run on: its first."""
    return sorted(model.fold_keys(), key=lambda k: fold_order(k.fold))[0]


def reference_key(wildcards):
    return reference_fold(get_model(wildcards))


SEARCH_PRIORITY = 2  # below the demo's trainings (demo.smk: 10, 5), above everything else


def searched_once(qvariant):
    """Whether a quantize entry's accuracy search (accuracy_aware, accuracy_control) runs on each
    model's reference fold only (not per_fold: true)."""
    settings = config["quantize"][qvariant] or {}
    search = settings.get("accuracy_aware") or settings.get("accuracy_control")
    return bool(search) and not search.get("per_fold")


def search_priority(wildcards):
    """Scheduling priority of a job on the way to the reference fold's accuracy searches (patches,
    export, simplify, calibrate and the searches themselves): every other fold waits for them
    (get_quantize_decision), and at a 128^3 patch they are the longest jobs of a run, so they
    start first rather than after every fold's exports and references."""
    if str(reference_key(wildcards).fold) != str(wildcards.fold):
        return 0
    qvariant = getattr(wildcards, "qvariant", None)
    searched = searched_once(qvariant) if qvariant else any(map(searched_once, config.get("quantize") or {}))
    return SEARCH_PRIORITY if searched else 0


def get_quantize_decision(wildcards):
    """For a fold other than the model's reference fold: the reference fold's record of an
    accuracy-controlled quantize entry (accuracy_aware, accuracy_control), whose search it reuses
    (the folds share the graph; the search is what costs at real size), unless the entry sets
    per_fold: true."""
    key = reference_key(wildcards)
    if not searched_once(wildcards.qvariant) or str(key.fold) == str(wildcards.fold):
        return {}
    return {"decision": f"{key.dir(RESULTS)}/quantize/{wildcards.qvariant}.json"}


def get_calibration_ranges(wildcards):
    """A static quantize entry's calibration ranges (rule calibrate, by its calibrate_method)."""
    if quantize_method(wildcards) != "static":
        return {}
    method = (config["quantize"][wildcards.qvariant] or {}).get("calibrate_method", "MinMax")
    folder = FoldKey(wildcards.dataset, wildcards.model, wildcards.fold).dir(RESULTS)
    return {"ranges": f"{folder}/quantize/calibration/{method}.json"}


def get_quantize_source(wildcards):
    """The graph a quantize entry starts from (one of simplify's outputs): the deployable one for a
    method whose variant is that fp32 graph (EXACT_METHODS: its normalizations two-pass at real
    patch sizes), the fused one for the quantizers (OpenVINO folds it into MVN, whose inputs NNCF
    quantizes)."""
    folder = FoldKey(wildcards.dataset, wildcards.model, wildcards.fold).dir(RESULTS)
    name = "model" if quantize_method(wildcards) in EXACT_METHODS else "quantizable"
    return {"onnx": f"{folder}/simplify/{name}.onnx"}


def quantize_method(wildcards):
    """A quantize entry's method: it decides the memory the job declares (quantize_mem_mb)."""
    return (config["quantize"][wildcards.qvariant] or {}).get("method", "static")


def get_reference_source(wildcards):
    model = get_model(wildcards)
    return model.source(reference_key(wildcards).fold)


def get_artifact_variants(wildcards):
    """The reference fold's variants (every runtime) of one artifact; none for torch eager."""
    variants = variants_of(get_model(wildcards), reference_key(wildcards))
    return {k: v for k, v in variants.items() if base_variant(k) == wildcards.artifact}


# (artifact, artifact whose benchmark record it reuses when their graphs are the same)
SAME_GRAPH_AS = ("onnx_fp32", "onnx_simplified")


def get_artifact_inputs(wildcards):
    """An artifact's file on the reference fold (the checkpoint for torch eager), the fold's
    ONNX export whose metadata gives the input shape, and for the export the simplified graph's
    benchmark record (:data:`SAME_GRAPH_AS`)."""
    key = reference_key(wildcards)
    model = get_model(wildcards)
    files = {"shape_from": f"{key.dir(RESULTS)}/export/model.onnx"}
    if wildcards.artifact == "torch_eager":
        files["checkpoint"] = model.checkpoint_of(key.fold)
    else:
        files["artifact"] = files_of(v["path"] for v in get_artifact_variants(wildcards).values())
    if wildcards.artifact == SAME_GRAPH_AS[0]:
        # the export takes the simplified graph's timing when simplifying changed nothing in it
        files["same_graph"] = f"{RESULTS}/{wildcards.dataset}/{wildcards.model}/benchmark/artifacts/{SAME_GRAPH_AS[1]}.json"
    return files


def get_artifact_keys(wildcards, keys):
    """Those of ``keys`` (result names such as ``onnx_fp32@openvino``) that belong to this artifact."""
    if wildcards.artifact == "torch_eager":
        return [k for k in keys if k == "torch_eager"]
    return [k for k in keys if k in get_artifact_variants(wildcards)]


def get_fold_artifacts(wildcards):
    """Artifact name → its record (timed on the reference fold) for every variant of this fold."""
    names = ["torch_eager", *dict.fromkeys(base_variant(k) for k in get_variants(wildcards))]
    model_dir = f"{RESULTS}/{wildcards.dataset}/{wildcards.model}"
    return {name: f"{model_dir}/benchmark/artifacts/{name}.json" for name in names}


def get_stop_rule(wildcards):
    """When timing stops (nnbridge.runtime.timing.StopRule; ``repeats`` is its maximum)."""
    section = config["benchmark"]
    return {"min_repeats": section["min_repeats"], "budget_s": section["budget_s"], "rel_ci": section["rel_ci"]}


def get_selfcheck_settings(wildcards):
    """The fold's share of the bundle's self-check budget (validate.selfcheck.max_kb over the
    model's folds) and the patches it may hold."""
    section = config["validate"]["selfcheck"]
    folds = len(get_model(wildcards).fold_keys())
    return {"patches": section["patches"], "max_kb": section["max_kb"] / max(folds, 1)}


def get_variant_records(wildcards):
    """The stage records stating the sha256 of a fold's variant files (checked before use)."""
    return sorted({v["record"] for v in get_variants(wildcards).values()})


def get_validation_summaries():
    """nnU-Net's own validation summaries of the folds, where the model folder has them."""
    out = {}
    for key in FOLD_KEYS:
        model = MODELS[f"{key.dataset}/{key.model}"]
        summary = f"{model.folder}/fold_{key.fold}/validation/summary.json"
        if model.zip is not None:  # unpacked from the zip when it holds the summary
            if model.zip_member(summary):
                out[key.label] = summary
        elif model.folder == DEMO_MODEL_FOLDER or Path(summary).exists():
            out[key.label] = summary
    return out


def bundled(model):
    """Models that get a bundle (nnbridge predict reproduces nnUNetv2_predict): nnU-Net models;
    a cascade stage when its previous stage's model is configured too (its bundle holds that
    model's bundle)."""
    if model.kind != "nnunet":
        return False
    return model.previous_stage is None or previous_stage_model(model, MODELS) is not None


def get_previous_stage_bundle(wildcards):
    """The bundle of a cascade stage's previous stage ({} for other models)."""
    previous = previous_stage_model(get_model(wildcards), MODELS)
    if previous is None:
        return {}
    return {"previous_stage": f"{RESULTS}/{previous.dataset}/{previous.name}/bundle/bundle.json"}


def get_previous_stage_reference(wildcards):
    """A cascade stage's previous stage for whole-case parity: its model folder and checkpoint
    (nnU-Net's predictor of that stage runs first), else None."""
    previous = previous_stage_model(get_model(wildcards), MODELS)
    if previous is None:
        return None
    return {"folder": previous.folder, "checkpoint": previous.checkpoint,
            "trusted": bool(previous.entry.get("trusted", False))}


def get_postprocessing(wildcards):
    """nnU-Net's postprocessing.pkl files for the model's bundle (pipeline.plan.postprocessing_sources)."""
    return postprocessing_sources(get_model(wildcards))


def get_bundle_folds(wildcards):
    """Per fold of a model: the shipped variants' main files (ONNX, or an IR's .xml), its parity
    and benchmark JSON, its self-check set."""
    model = get_model(wildcards)
    folds = {}
    for key in model.fold_keys():
        paths = artifact_paths(variants_of(model, key))
        folds[key.fold] = {
            "files": {name: paths[name] for name in BUNDLE_VARIANTS},
            "records": {name: record_of(paths[name]) for name in BUNDLE_VARIANTS},
            "parity": f"{key.dir(RESULTS)}/validate/parity.json",
            "benchmark": f"{key.dir(RESULTS)}/benchmark/benchmark.json",
            "selfcheck": f"{key.dir(RESULTS)}/validate/selfcheck.npz",
        }
    return folds


def get_bundle_inputs(wildcards):
    files = [*get_fold_inputs_of_model(wildcards).values(), *get_previous_stage_bundle(wildcards).values()]
    for fold in get_bundle_folds(wildcards).values():
        files += [*files_of(fold["files"].values()), *fold["records"].values(), fold["parity"], fold["benchmark"],
                  fold["selfcheck"]]
    sources = get_postprocessing(wildcards)
    files += [spec["pkl"] for spec in [sources["own"], *sources["ensembles"]] if spec]
    return files


def get_fold_inputs_of_model(wildcards):
    model = get_model(wildcards)
    return {"plans": f"{model.folder}/plans.json", "dataset": f"{model.folder}/dataset.json"}


def case_parity_keys():
    """Folds compared on whole cases: every fold of a model with an image folder (on its held-out
    images), numbered folds of models whose raw data is configured (on their validation cases)."""
    if not CASE_PARITY_VARIANTS:
        return []
    keys = []
    for key in FOLD_KEYS:
        model = MODELS[f"{key.dataset}/{key.model}"]
        if bundled(model) and (model.images is not None or (model.raw and key.fold != "all")):
            keys.append(key)
    if config["case_parity"]["folds"] == "first":  # one fold per model: the predictor's stages are fold-independent
        firsts = {}
        for key in sorted(keys, key=lambda k: fold_order(k.fold)):
            firsts.setdefault((key.dataset, key.model), key)
        keys = [k for k in keys if k in firsts.values()]
    return keys


def get_case_parity_inputs(wildcards):
    model = get_model(wildcards)
    inputs = {
        **get_fold_inputs(wildcards),
        "bundle": f"{RESULTS}/{wildcards.dataset}/{wildcards.model}/bundle/bundle.json",
    }
    previous = previous_stage_model(model, MODELS)
    if previous is not None:  # a cascade: nnU-Net's predictor of its previous stage runs first
        inputs["previous_checkpoint"] = previous.checkpoint_of(wildcards.fold)
        inputs["previous_plans"] = f"{previous.folder}/plans.json"
        inputs["previous_dataset"] = f"{previous.folder}/dataset.json"
    if model.images is not None:  # the fold's held-out images, as its patches split them
        inputs["patches"] = f"{FoldKey(wildcards.dataset, wildcards.model, wildcards.fold).dir(RESULTS)}/patches/patches.json"
        return inputs
    inputs["splits"] = f"{model.preprocessed}/splits_final.json"
    inputs["raw_dataset"] = f"{model.raw}/dataset.json"
    return inputs


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
    if config["export"]["torchscript"] and gets(model, key, "torchscript"):
        stages.append(("export_torchscript", f"{base}/export/torchscript.json", {}))
    stages += [("patches", f"{base}/patches/patches.json", {}),
               ("simplify", f"{base}/simplify/simplify.json", {})]
    stages += [("quantize", f"{base}/quantize/{q}.json", {"qvariant": q})
               for q in config["quantize"] if (model.quantize is None or q in model.quantize) and gets(model, key, q)]
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
    for cpu, record in emulated_verify_records(key, model).items():
        out.append({"stage": f"verify_emulated {cpu}", "record": record,
                    "log": stage_log("verify_emulated", **wc, cpu=cpu), "per_model": True, "optional": True})
    return out


def quantize_identity():
    """The CPU the quantize defaults are decided for: this machine, narrowed to the features every
    deployment CPU of verify.emulated_cpus also has (read under QEMU, ~1 s each, and kept in
    .snakemake/nnbridge: a Slurm job's parse, on a node perhaps without QEMU, decides as the
    planning machine did); None without them."""
    targets = {}
    read = emulated_identities(config["verify"]["emulated_cpus"], cache=EMULATED_CPUS)
    for cpu, identity in read.items():
        if identity is None:
            print(f"nnbridge note: verify.emulated_cpus: {cpu} could not be read under QEMU (not installed, or "
                  "not a CPU model it knows): the quantize defaults are this machine's", file=sys.stderr)
        else:
            targets[cpu] = identity
    return least_capable(cpu_identity(), targets) if targets else None


QUANTIZE_FOR = quantize_identity()


def emulated_verify_records(key, model):
    """CPU model → the record of the bundle's verify on it (config verify.emulated_cpus), for a
    bundled model's folds; {} otherwise."""
    if not bundled(model):
        return {}
    return {cpu: f"{RESULTS}/{key.dataset}/{key.model}/verify_emulated/{cpu}.json"
            for cpu in config["verify"]["emulated_cpus"]}


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
                    if config["export"]["torchscript"] and gets(model, key, "torchscript")
                    else None
                ),
                "simplify": f"{base}/simplify/simplify.json",
                "quantize": {
                    q: f"{base}/quantize/{q}.json"
                    for q in config["quantize"]
                    if (model.quantize is None or q in model.quantize) and gets(model, key, q)
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
                "emulated": emulated_verify_records(key, model),
                "kind": model.kind,
                "patches": f"{base}/patches/patches.json",
                "intake": intake_of(model),
            }
        )
    return entries


def intake_of(model):
    """Where a model and its data come from, for the report."""
    if model.kind != "nnunet":
        return {}
    intake = {"folder": model.folder, "preprocessed": model.preprocessed}
    if model.zip is not None:
        intake["zip"] = f"{model.zip.path} (sha256 {model.zip.key}…): {model.zip_folder}"
    if model.images is not None:
        labels = f", labels {model.images.labels}" if model.images.labels else ", no labels"
        intake["images"] = f"{model.images.folder} ({len(model.images.cases)} cases{labels})"
    return intake


def get_realistic_plans(wildcards):
    """The plans file of the realistic-size benchmark, when one is configured."""
    plans = config["benchmark"]["realistic"]["plans"]
    return {"plans": plans} if plans else {}


REALISTIC = f"{RESULTS}/realistic/realistic.json"


def get_realistic():
    """The realistic-size benchmark's record when it is part of the run (``enabled``); otherwise
    it is its own target (``make bench``) and the report shows its last result if there is one."""
    if config["benchmark"]["realistic"]["enabled"]:
        return REALISTIC
    return None


def get_report_inputs(wildcards):
    files = [get_realistic()] if get_realistic() else []
    for entry in get_report_entries():
        files += [entry["export"], entry["simplify"], entry["parity"], entry["benchmark"], entry["patches"]]
        if entry["torchscript"]:
            files.append(entry["torchscript"])
        files += list(entry["quantize"].values())
        if entry["validation_summary"]:
            files.append(entry["validation_summary"])
        if entry["case_parity"]:
            files.append(entry["case_parity"])
        if entry["bundle"]:
            files.append(entry["bundle"])
        files += list(entry["emulated"].values())
    return files


def get_final_outputs():
    return [f"{RESULTS}/report.html", f"{RESULTS}/report.md"]


def get_run_stages():
    """Stages every fold depends on: the machine's peak and the realistic-size benchmark."""
    stages = [{"stage": "machine_peak", "record": f"{RESULTS}/machine/peak.json", "log": stage_log("machine_peak")}]
    if get_realistic():
        stages.append({"stage": "realistic_benchmark", "record": get_realistic(),
                       "log": stage_log("realistic_benchmark"), "optional": True})
    return stages
