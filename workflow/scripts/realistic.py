from pathlib import Path

from nnbridge.bench.realistic import realistic_benchmark
from nnbridge.core.runlog import logged, read_json, write_json

with logged(snakemake.log[0]):
    record = realistic_benchmark(
        Path(snakemake.output.json).parent,
        patch_size=tuple(snakemake.params.patch_size),
        features=tuple(snakemake.params.features),
        threads=snakemake.params.threads,
        warmup=snakemake.params.warmup,
        repeats=snakemake.params.repeats,
        int8=snakemake.params.int8,
        ir=snakemake.params.ir,
        plans=snakemake.input.get("plans"),
        configuration=snakemake.params.configuration,
        peak=read_json(snakemake.input.peak),
    )
    write_json(snakemake.output.json, record)
    print(record["targets"])
