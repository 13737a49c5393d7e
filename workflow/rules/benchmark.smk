# Benchmarks never run beside each other: each holds the `bench` resource the profiles cap at 1.
rule benchmark:
    input:
        unpack(get_fold_inputs),
        variants=get_variant_files,
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
        code=code_version(
            "bench", "onnxrun", "models", "plainmodels", "onnxmeta", "coverage", "opprofile"
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
