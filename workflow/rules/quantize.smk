rule quantize:
    input:
        onnx=rules.simplify.output.onnx,
        record=rules.simplify.output.json,
        calibration=rules.patches.output.calibration,
        patches_record=rules.patches.output.json,
    output:
        onnx=f"{FOLD_DIR}/quantize/{{qvariant}}.onnx",
        json=f"{FOLD_DIR}/quantize/{{qvariant}}.json",
    params:
        settings=lambda wildcards: config["quantize"][wildcards.qvariant],
        backends=lookup(dpath="backends", within=config),
        # the CPU features this entry's left-out settings are decided by ({} when it gives them
        # all): a CPU of another kind in these reruns the variant, any other change does not
        cpu=lambda wildcards: quantize_cpu_params(config["quantize"][wildcards.qvariant]),
        code=code_version("quantize"),
    log:
        "logs/{dataset}/{model}/fold_{fold}/quantize_{qvariant}.log",
    benchmark:
        "benchmarks/{dataset}/{model}/fold_{fold}/quantize_{qvariant}.tsv"
    threads: 2
    resources:
        mem_mb=6000,
        runtime=60,
    conda:
        "../../envs/onnx.yaml"
    script:
        "../scripts/quantize.py"
