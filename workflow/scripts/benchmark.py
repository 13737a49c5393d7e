from nnbridge.bench.fold import benchmark_fold
from nnbridge.core.records import BenchmarkRecord, PeakRecord
from nnbridge.core.runlog import logged

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
        peak=PeakRecord.read(snakemake.input.peak).to_dict(),
    )
    BenchmarkRecord.of(record).write(snakemake.output.json)
    print(record)
