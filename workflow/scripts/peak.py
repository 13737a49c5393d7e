from nnbridge.bench.peak import measure_peak_gflops
from nnbridge.core.runlog import logged, write_json

with logged(snakemake.log[0]):
    record = measure_peak_gflops(snakemake.params.threads)
    write_json(snakemake.output.json, record)
    print(record)
