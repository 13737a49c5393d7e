# The deployable bundle per model: every fold of the shipped variants, plans, dataset.json and a
# manifest with checksums, gates and the runtime chosen per variant (what `nnbridge predict -m` takes);
# nnU-Net's postprocessing.pkl files of the model and its ensembles (their steps in the manifest), and
# for a cascade stage the bundle of its previous stage's model.
rule bundle:
    input:
        get_bundle_inputs,
    output:
        manifest=report(
            f"{MODEL_DIR}/bundle/bundle.json",
            category="Bundle",
            labels={"model": "{model}", "file": "bundle manifest"},
        ),
    params:
        **named(
            folds=get_bundle_folds,
            plans=lambda wildcards: get_fold_inputs_of_model(wildcards)["plans"],
            dataset_json=lambda wildcards: get_fold_inputs_of_model(wildcards)["dataset"],
            variants=BUNDLE_VARIANTS,
            default_variant=BUNDLE_DEFAULT,
            previous_stage=lambda wildcards: {k: str(Path(v).parent) for k, v in get_previous_stage_bundle(wildcards).items()},
            postprocessing=get_postprocessing,
            code=code_version("bundle"),
        ),
    log:
        "logs/{dataset}/{model}/bundle.log",
    localrule: True
    conda:
        "../../envs/onnx.yaml"
    script:
        "../scripts/bundle.py"
