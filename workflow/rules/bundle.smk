# The deployable bundle per model: every fold of the shipped variants, plans, dataset.json and a
# manifest with checksums, gates and the runtime chosen per variant (what `nnbridge predict -m` takes).
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
        folds=get_bundle_folds,
        plans=lambda wildcards: get_fold_inputs_of_model(wildcards)["plans"],
        dataset_json=lambda wildcards: get_fold_inputs_of_model(wildcards)["dataset"],
        variants=BUNDLE_VARIANTS,
        default_variant=BUNDLE_DEFAULT,
        code=code_version("bundle"),
    log:
        "logs/{dataset}/{model}/bundle.log",
    localrule: True
    conda:
        "../../envs/onnx.yaml"
    script:
        "../scripts/bundle.py"
