# ONNX Runtime's calibration ranges of a fold's simplified graph, once per calibration method:
# every static INT8 entry of the fold quantizes from them, and reruns after a quantization
# setting change do not calibrate again. At a 128^3 patch this is the memory-hungry part (a graph
# that outputs every activation's range; MinMax runs it on OpenVINO); the quantize jobs need little.
rule calibrate:
    input:
        onnx=rules.simplify.output.quantizable,
        record=rules.simplify.output.json,
        calibration=rules.patches.output.calibration,
        patches_record=rules.patches.output.json,
    output:
        ranges=f"{FOLD_DIR}/quantize/calibration/{{method}}.json",
    wildcard_constraints:
        method="MinMax|Entropy|Percentile",
    params:
        code=code_version("calibrate"),
    log:
        "logs/{dataset}/{model}/fold_{fold}/calibrate_{method}.log",
    benchmark:
        "benchmarks/{dataset}/{model}/fold_{fold}/calibrate_{method}.tsv"
    # the reference fold's way to the accuracy searches first (common.smk)
    priority: search_priority
    threads: 1
    resources:
        # from the graph's activations and weights at its patch once it exists (6 GB for the demo;
        # nnU-Net's default 3d_fullres at a 128^3 patch ~8.4 GB for MinMax ranges collected on
        # OpenVINO, ~13.8 GB for ONNX Runtime's own calibration; its ResEnc-M preset ~11.3 GB on
        # OpenVINO: sized from peaks measured on the AMD EPYC Zen 4 of README "Measured",
        # 2026-12-02/03/05; nnbridge.pipeline.plan.quantize_mem_mb)
        mem_mb=lambda wildcards, input: quantize_mem_mb(input.onnx, calibration=wildcards.method),
        runtime=60,
    conda:
        "../../envs/onnx.yaml"
    script:
        "../scripts/calibrate.py"


# One rule per kind of file a quantize method writes (nnbridge.core.artifacts.method_kind): an ONNX
# file (quantize), or an OpenVINO IR, <name>.xml with its weights in <name>.bin (quantize_ir).
# The same job otherwise; the script writes output.artifact (and the files beside it).
rule quantize:
    input:
        # an accuracy-controlled entry's search runs on the model's reference fold; its other
        # folds quantize with what it chose (unless the entry sets per_fold: true)
        unpack(get_quantize_decision),
        # a static entry's calibration ranges (rule calibrate)
        unpack(get_calibration_ranges),
        # the fused graph, or for an exact method the deployable one (common.smk)
        unpack(get_quantize_source),
        record=rules.simplify.output.json,
        calibration=rules.patches.output.calibration,
        patches_record=rules.patches.output.json,
    output:
        **quantize_outputs("onnx"),
    wildcard_constraints:
        qvariant=quantize_names("onnx"),
    params:
        **named(
            settings=lambda wildcards: config["quantize"][wildcards.qvariant],
            backends=lookup(dpath="backends", within=config),
            # the CPU features this entry's left-out settings are decided by ({} when it gives them
            # all): a CPU of another kind in these reruns the variant, any other change does not
            cpu=lambda wildcards: quantize_cpu_params(config["quantize"][wildcards.qvariant], QUANTIZE_FOR),
            decided_fold=lambda wildcards: reference_key(wildcards).fold,
            code=code_version("quantize"),
        ),
    log:
        "logs/{dataset}/{model}/fold_{fold}/quantize_{qvariant}.log",
    benchmark:
        "benchmarks/{dataset}/{model}/fold_{fold}/quantize_{qvariant}.tsv"
    # the reference fold's way to the accuracy searches first (common.smk)
    priority: search_priority
    # one thread: on the 2-core machines two quantizations (or one beside a validation) run side
    # by side; a profile raises it where cores outnumber parallel jobs (set-threads: quantize=4)
    threads: 1
    resources:
        # from the graph's activations and weights at its patch once it exists, by method: NNCF's
        # statistics (openvino_int8 ~7.1 GB for nnU-Net's default 3d_fullres at a 128^3 patch),
        # else what running the graph needs (a static entry gets its ranges from rule calibrate;
        # 6 GB); nnbridge.pipeline.plan.quantize_mem_mb
        mem_mb=lambda wildcards, input: quantize_mem_mb(input.onnx, quantize_method(wildcards)),
        runtime=60,
    conda:
        "../../envs/onnx.yaml"
    script:
        "../scripts/quantize.py"


use rule quantize as quantize_ir with:
    output:
        **quantize_outputs("ir"),
    wildcard_constraints:
        qvariant=quantize_names("ir"),
