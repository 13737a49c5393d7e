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


rule benchmark:
    input:
        unpack(get_fold_inputs),
        variants=get_variant_files,
        records=get_variant_records,
        peak=f"{RESULTS}/machine/peak.json",
    output:
        json=report(
            f"{FOLD_DIR}/benchmark/benchmark.json",
            category="Benchmark",
            labels={"model": "{model}", "fold": "{fold}", "file": "benchmark"},
        ),
    params:
        source=get_source,
        variants=get_variants,
        threads=lookup(dpath="benchmark/threads", within=config),
        warmup=lookup(dpath="benchmark/warmup", within=config),
        repeats=lookup(dpath="benchmark/repeats", within=config),
        sweep=lookup(dpath="benchmark/sweep", within=config),
        sweep_batch=lookup(dpath="benchmark/sweep_batch", within=config),
        tune=lookup(dpath="benchmark/tune", within=config),
        code=code_version("benchmark"),
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
