from nnbridge.bench.peak import measure_peak_gflops
from nnbridge.core.records import PeakRecord
from nnbridge.core.runlog import logged

with logged(snakemake.log[0]):
    record = measure_peak_gflops(snakemake.params.threads)
    PeakRecord.of(record).write(snakemake.output.json)
    print(record)
