from nnbridge.bench.fold import benchmark_fold
from nnbridge.core.records import BenchmarkRecord, PeakRecord
from nnbridge.core.runlog import logged, read_json

with logged(snakemake.log[0]):
    record = benchmark_fold(
        snakemake.params.source,
        snakemake.params.variants,
        {name: read_json(path) for name, path in snakemake.params.artifacts.items()},
        threads=snakemake.params.threads,
        warmup=snakemake.params.warmup,
        repeats=snakemake.params.repeats,
        stop=snakemake.params.stop,
        peak=PeakRecord.read(snakemake.input.peak).to_dict(),
        export=snakemake.input.export,
    )
    BenchmarkRecord.of(record).write(snakemake.output.json)
    for key, where in record["timed_on"].items():
        print(key, record["results"].get(key, {}).get("p50_ms"), "ms, timed on", where)
