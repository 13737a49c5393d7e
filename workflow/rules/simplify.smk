rule simplify:
    input:
        onnx=rules.export_onnx.output.onnx,
        record=rules.export_onnx.output.json,
        heldout=rules.patches.output.heldout,
    output:
        onnx=f"{FOLD_DIR}/simplify/model.onnx",
        json=f"{FOLD_DIR}/simplify/simplify.json",
    params:
        atol=lookup(dpath="simplify/atol", within=config),
        code=code_version("simplify"),
    log:
        "logs/{dataset}/{model}/fold_{fold}/simplify.log",
    threads: 1
    resources:
        mem_mb=4000,
        runtime=20,
    conda:
        "../../envs/onnx.yaml"
    script:
        "../scripts/simplify.py"
