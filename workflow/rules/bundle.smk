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


# The bundle's `nnbridge verify` on a deployment CPU emulated by QEMU (config verify.emulated_cpus,
# e.g. Haswell: AVX2 without VNNI), with the threads its gates ran with: INT8 results depend on
# the CPU that runs them, and this checks the target's own kernels before shipping.
rule verify_emulated:
    input:
        manifest=f"{MODEL_DIR}/bundle/bundle.json",
    output:
        json=f"{MODEL_DIR}/verify_emulated/{{cpu}}.json",
    params:
        **named(
            bundle=lambda wildcards, input: str(Path(input.manifest).parent),
            code=code_version("verify_emulated"),
        ),
    log:
        "logs/{dataset}/{model}/verify_emulated_{cpu}.log",
    benchmark:
        "benchmarks/{dataset}/{model}/verify_emulated_{cpu}.tsv"
    threads: lookup(dpath="validate/threads", within=config)
    resources:
        mem_mb=4000,
        runtime=120,
    conda:
        "../../envs/onnx.yaml"
    script:
        "../scripts/verify_emulated.py"
