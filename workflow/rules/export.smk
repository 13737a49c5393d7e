rule export_onnx:
    input:
        unpack(get_fold_inputs),
    output:
        onnx=f"{FOLD_DIR}/export/model.onnx",
        json=f"{FOLD_DIR}/export/export.json",
    params:
        **named(
            source=get_source,
            opset=lookup(dpath="export/opset", within=config),
            fold_batchnorm=lookup(dpath="export/fold_batchnorm", within=config),
            code=code_version("export_onnx"),
        ),
    log:
        "logs/{dataset}/{model}/fold_{fold}/export_onnx.log",
    benchmark:
        "benchmarks/{dataset}/{model}/fold_{fold}/export_onnx.tsv"
    # the reference fold's way to the accuracy searches first (common.smk)
    priority: search_priority
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../../envs/export.yaml"
    script:
        "../scripts/export_onnx.py"


rule export_torchscript:
    input:
        unpack(get_fold_inputs),
    output:
        ts=f"{FOLD_DIR}/export/model.ts",
        json=f"{FOLD_DIR}/export/torchscript.json",
    params:
        source=get_source,
        code=code_version("export_torchscript"),
    log:
        "logs/{dataset}/{model}/fold_{fold}/export_torchscript.log",
    benchmark:
        "benchmarks/{dataset}/{model}/fold_{fold}/export_torchscript.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../../envs/export.yaml"
    script:
        "../scripts/export_torchscript.py"
