# Whole-case parity: nnU-Net's own predictor (torch, CPU) and `nnbridge predict` (the bundle) on
# the fold's validation cases (or, from an image folder, its held-out images), stage by stage,
# with per-stage timings of both; a cascade stage with its previous stage on both sides.
rule case_parity:
    input:
        unpack(get_case_parity_inputs),
    output:
        json=report(
            f"{FOLD_DIR}/case_parity/case_parity.json",
            category="Case parity",
            labels={"model": "{model}", "fold": "{fold}", "file": "case parity"},
        ),
    params:
        **named(
            model_folder=lambda wildcards: get_model(wildcards).folder,
            checkpoint=lambda wildcards: get_model(wildcards).checkpoint,
            raw=lambda wildcards: get_model(wildcards).raw,
            images=get_images_param,
            trusted=lambda wildcards: bool(get_model(wildcards).entry.get("trusted", False)),
            previous_stage=get_previous_stage_reference,
            bundle=lambda wildcards, input: str(Path(input.bundle).parent),
            variants=get_case_parity_variants,
            step=lookup(dpath="case_parity/step", within=config),
            mirroring=lookup(dpath="case_parity/mirroring", within=config),
            max_cases=lookup(dpath="case_parity/max_cases", within=config),
            compare_failed=lookup(dpath="case_parity/compare_failed", within=config),
            threads=lookup(dpath="case_parity/threads", within=config),
            code=code_version("case_parity"),
        ),
    log:
        "logs/{dataset}/{model}/fold_{fold}/case_parity.log",
    benchmark:
        "benchmarks/{dataset}/{model}/fold_{fold}/case_parity.tsv"
    threads: lookup(dpath="case_parity/threads", within=config)
    resources:
        mem_mb=8000,
        runtime=120,
        bench=1,
    conda:
        "../../envs/onnx.yaml"
    script:
        "../scripts/case_parity.py"
