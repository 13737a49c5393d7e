# Speed at a realistic nnU-Net size (128^3 patch, 6 stages, 32->320 features, or the network of
# a plans file; random weights: speed needs no training). ~7 min on 2 cores (6 min 56 s on the AMD
# Zen 4 of README Measured at a slow hour, 2026-12-04).
rule realistic_benchmark:
    input:
        unpack(get_realistic_plans),
        peak=f"{RESULTS}/machine/peak.json",
    output:
        json=report(
            f"{RESULTS}/realistic/realistic.json",
            category="Benchmark",
            labels={"file": "realistic-size benchmark"},
        ),
    params:
        **named(
            patch_size=lookup(dpath="benchmark/realistic/patch_size", within=config),
            features=lookup(dpath="benchmark/realistic/features", within=config),
            warmup=lookup(dpath="benchmark/realistic/warmup", within=config),
            repeats=lookup(dpath="benchmark/realistic/repeats", within=config),
            int8=lookup(dpath="benchmark/realistic/int8", within=config),
            ir=lookup(dpath="benchmark/realistic/ir", within=config),
            configuration=lookup(dpath="benchmark/realistic/configuration", within=config),
            # the exact fp32 graph timed as simplify deploys it at that patch size
            two_pass_norm_voxels=lookup(dpath="simplify/two_pass_norm_voxels", within=config),
            threads=lookup(dpath="benchmark/threads", within=config),
            code=code_version("realistic"),
        ),
    log:
        "logs/realistic_benchmark.log",
    benchmark:
        "benchmarks/realistic_benchmark.tsv"
    threads: lookup(dpath="benchmark/threads", within=config)
    resources:
        mem_mb=16000,
        runtime=120,
        bench=1,
    conda:
        "../../envs/onnx.yaml"
    script:
        "../scripts/realistic.py"
