rule validate:
    input:
        unpack(get_fold_inputs),
        heldout=rules.patches.output.heldout,
        patches_record=rules.patches.output.json,
        variants=get_variant_files,
        records=get_variant_records,
    output:
        json=report(
            f"{FOLD_DIR}/validate/parity.json",
            category="Parity",
            labels={"model": "{model}", "fold": "{fold}", "file": "parity"},
        ),
    params:
        source=get_source,
        variants=get_variants,
        tolerances=lambda wildcards: {
            name: variant_tolerance(name, config["validate"]) for name in get_variants(wildcards)
        },
        threads=lookup(dpath="validate/threads", within=config),
        code=code_version("validate"),
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
