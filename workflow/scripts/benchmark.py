from nnbridge.bench.fold import benchmark_fold
from nnbridge.core.runlog import logged, read_json, write_json

with logged(snakemake.log[0]):
    record = benchmark_fold(
        snakemake.params.source,
        snakemake.params.variants,
        threads=snakemake.params.threads,
        warmup=snakemake.params.warmup,
        repeats=snakemake.params.repeats,
        sweep_variants=snakemake.params.sweep,
        sweep_batch=snakemake.params.sweep_batch,
        tune=snakemake.params.tune,
        peak=read_json(snakemake.input.peak),
    )
    write_json(snakemake.output.json, record)
    print(record)
