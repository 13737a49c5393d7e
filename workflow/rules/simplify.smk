rule simplify:
    input:
        onnx=rules.export_onnx.output.onnx,
        record=rules.export_onnx.output.json,
        heldout=rules.patches.output.heldout,
        patches_record=rules.patches.output.json,
    output:
        onnx=f"{FOLD_DIR}/simplify/model.onnx",
        # the graph the quantizers take: model.onnx before its InstanceNormalizations were
        # written as two-pass reductions (nnbridge.export.norms), or the same file
        quantizable=f"{FOLD_DIR}/simplify/quantizable.onnx",
        json=f"{FOLD_DIR}/simplify/simplify.json",
    params:
        **named(
            atol=lookup(dpath="simplify/atol", within=config),
            two_pass_norm_voxels=lookup(dpath="simplify/two_pass_norm_voxels", within=config),
            code=code_version("simplify"),
        ),
    log:
        "logs/{dataset}/{model}/fold_{fold}/simplify.log",
    # the reference fold's way to the accuracy searches first (common.smk)
    priority: search_priority
    threads: 1
    resources:
        mem_mb=4000,
        runtime=20,
    conda:
        "../../envs/onnx.yaml"
    script:
        "../scripts/simplify.py"
