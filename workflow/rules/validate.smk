rule validate:
    input:
        unpack(get_fold_inputs),
        heldout=rules.patches.output.heldout,
        variants=lambda wildcards: list(get_variant_files(wildcards).values()),
    output:
        json=report(
            f"{FOLD_DIR}/validate/parity.json",
            category="Parity",
            labels={"model": "{model}", "fold": "{fold}", "file": "parity"},
        ),
    params:
        model_folder=lambda wildcards: get_model(wildcards).folder,
        checkpoint=lambda wildcards: get_model(wildcards).checkpoint,
        variants=get_variants,
        tolerances=lambda wildcards: {
            name: config["validate"]["tolerances"].get(
                name, config["validate"]["default_tolerance"]
            )
            for name in get_variants(wildcards)
        },
        threads=lookup(dpath="validate/threads", within=config),
        code=code_version("parity", "onnxrun", "models"),
    log:
        "logs/{dataset}/{model}/fold_{fold}/validate.log",
    benchmark:
        "benchmarks/{dataset}/{model}/fold_{fold}/validate.tsv"
    threads: 2
    resources:
        mem_mb=6000,
        runtime=30,
    conda:
        "../../envs/onnx.yaml"
    script:
        "../scripts/validate.py"
