from nnbridge.bench.artifact import benchmark_artifact
from nnbridge.core.runlog import logged, read_json, write_json

with logged(snakemake.log[0]):
    record = benchmark_artifact(
        snakemake.wildcards.artifact,
        snakemake.params.source,
        snakemake.params.variants,
        snakemake.input.shape_from,
        threads=snakemake.params.threads,
        warmup=snakemake.params.warmup,
        repeats=snakemake.params.repeats,
        stop=snakemake.params.stop,
        tune=snakemake.params.tune,
        sweep_keys=snakemake.params.sweep,
        sweep_batch=snakemake.params.sweep_batch,
        peak=read_json(snakemake.input.peak),
        same_graph=read_json(snakemake.input.same_graph) if "same_graph" in snakemake.input.keys() else None,
    )
    write_json(snakemake.output.json, record)
