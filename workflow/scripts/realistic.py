from pathlib import Path

from nnbridge.bench.realistic import realistic_benchmark
from nnbridge.core.records import PeakRecord, RealisticRecord
from nnbridge.core.runlog import logged

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
        peak=PeakRecord.read(snakemake.input.peak).to_dict(),
        two_pass_norm_voxels=snakemake.params.two_pass_norm_voxels,
    )
    RealisticRecord.of(record).write(snakemake.output.json)
    print(record["targets"])
