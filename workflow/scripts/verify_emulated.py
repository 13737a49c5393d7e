from nnbridge.core.records import EmulatedVerifyRecord
from nnbridge.core.runlog import logged
from nnbridge.predict.emulated import verify_emulated

with logged(snakemake.log[0]):
    record = verify_emulated(snakemake.params.bundle, snakemake.wildcards.cpu, threads=snakemake.threads)
    EmulatedVerifyRecord.of(record).write(snakemake.output.json)
