# Benchmarks never run beside each other: each holds the `bench` resource the profiles cap at 1.
# This machine's fp32, INT8 and bf16 peaks, measured once per run: every "% of peak" refers to them.
rule machine_peak:
    output:
        json=f"{RESULTS}/machine/peak.json",
    params:
        threads=lookup(dpath="benchmark/threads", within=config),
        code=code_version("peak"),
    log:
        "logs/machine_peak.log",
    benchmark:
        "benchmarks/machine_peak.tsv"
    threads: lookup(dpath="benchmark/threads", within=config)
    resources:
        mem_mb=2000,
        runtime=10,
        bench=1,
    conda:
        "../../envs/onnx.yaml"
    script:
        "../scripts/peak.py"


# Each artifact of a model (torch eager, TorchScript, each ONNX variant on every runtime) timed
# once, on the model's reference fold: its folds share the architecture. ONNX Runtime settings
# search and the thread/batch sweep run here too, once per machine and architecture.
rule benchmark_artifact:
    input:
        unpack(get_artifact_inputs),
        records=lambda wildcards: sorted({v["record"] for v in get_artifact_variants(wildcards).values()}),
        peak=f"{RESULTS}/machine/peak.json",
    output:
        json=f"{MODEL_DIR}/benchmark/artifacts/{{artifact}}.json",
    params:
        **named(
            source=get_reference_source,
            variants=get_artifact_variants,
            threads=lookup(dpath="benchmark/threads", within=config),
            warmup=lookup(dpath="benchmark/warmup", within=config),
            repeats=lookup(dpath="benchmark/repeats", within=config),
            stop=get_stop_rule,
            tune=lambda wildcards: get_artifact_keys(wildcards, config["benchmark"]["tune"]),
            sweep=lambda wildcards: get_artifact_keys(wildcards, config["benchmark"]["sweep"]),
            sweep_batch=lookup(dpath="benchmark/sweep_batch", within=config),
            code=code_version("benchmark_artifact"),
        ),
    log:
        "logs/{dataset}/{model}/benchmark_{artifact}.log",
    benchmark:
        "benchmarks/{dataset}/{model}/benchmark_{artifact}.tsv"
    threads: lookup(dpath="benchmark/threads", within=config)
    resources:
        mem_mb=6000,
        runtime=60,
        bench=1,
    conda:
        "../../envs/onnx.yaml"
    script:
        "../scripts/benchmark_artifact.py"


# A fold's benchmark: the artifacts' numbers where its graph is the reference fold's, its own
# timing where it differs (e.g. other fp32 fall-backs of accuracy-aware INT8).
rule benchmark:
    input:
        unpack(get_fold_inputs),
        export=f"{FOLD_DIR}/export/model.onnx",
        variants=get_variant_files,
        artifacts=lambda wildcards: list(get_fold_artifacts(wildcards).values()),
        records=get_variant_records,
        peak=f"{RESULTS}/machine/peak.json",
    output:
        json=report(
            f"{FOLD_DIR}/benchmark/benchmark.json",
            category="Benchmark",
            labels={"model": "{model}", "fold": "{fold}", "file": "benchmark"},
        ),
    params:
        **named(
            source=get_source,
            variants=get_variants,
            artifacts=get_fold_artifacts,
            threads=lookup(dpath="benchmark/threads", within=config),
            warmup=lookup(dpath="benchmark/warmup", within=config),
            repeats=lookup(dpath="benchmark/repeats", within=config),
            stop=get_stop_rule,
            code=code_version("benchmark"),
        ),
    log:
        "logs/{dataset}/{model}/fold_{fold}/benchmark.log",
    benchmark:
        "benchmarks/{dataset}/{model}/fold_{fold}/benchmark.tsv"
    threads: lookup(dpath="benchmark/threads", within=config)
    resources:
        mem_mb=6000,
        runtime=60,
        bench=1,
    conda:
        "../../envs/onnx.yaml"
    script:
        "../scripts/benchmark.py"
