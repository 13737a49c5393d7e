# Eager PyTorch's logits on the fold's held-out patches: the reference every variant is gated
# against, computed once per fold (a quantization change reruns only what it changes).
rule reference:
    input:
        unpack(get_fold_inputs),
        heldout=rules.patches.output.heldout,
        patches_record=rules.patches.output.json,
    output:
        logits=f"{FOLD_DIR}/validate/reference.npy",
        json=f"{FOLD_DIR}/validate/reference.json",
        # a few held-out patches with PyTorch's label maps: the bundle ships them for `nnbridge verify`
        selfcheck=f"{FOLD_DIR}/validate/selfcheck.npz",
    params:
        **named(
            source=get_source,
            selfcheck=get_selfcheck_settings,
            code=code_version("reference"),
        ),
    log:
        "logs/{dataset}/{model}/fold_{fold}/reference.log",
    benchmark:
        "benchmarks/{dataset}/{model}/fold_{fold}/reference.tsv"
    # torch's logits depend on the thread count only in the order of fp32 sums (unlike OpenVINO's
    # kernels, see validate.threads): one thread, so a reference runs beside another job
    threads: 1
    resources:
        mem_mb=6000,
        runtime=30,
    conda:
        "../../envs/onnx.yaml"
    script:
        "../scripts/reference.py"


rule validate:
    input:
        reference=rules.reference.output.json,
        logits=rules.reference.output.logits,
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
        **named(
            variants=get_variants,
            tolerances=lambda wildcards: {
                name: variant_tolerance(name, config["validate"]) for name in get_variants(wildcards)
            },
            threads=lookup(dpath="validate/threads", within=config),
            code=code_version("validate"),
        ),
    log:
        "logs/{dataset}/{model}/fold_{fold}/validate.log",
    benchmark:
        "benchmarks/{dataset}/{model}/fold_{fold}/validate.tsv"
    threads: lookup(dpath="validate/threads", within=config)
    resources:
        mem_mb=6000,
        runtime=30,
    conda:
        "../../envs/onnx.yaml"
    script:
        "../scripts/validate.py"
