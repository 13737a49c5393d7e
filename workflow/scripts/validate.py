from nnbridge.validate.parity import validate_fold
from nnbridge.patches.sampling import load_patches
from nnbridge.core.records import ParityRecord
from nnbridge.core.runlog import logged

with logged(snakemake.log[0]):
    record = validate_fold(
        snakemake.params.source,
        load_patches(snakemake.input.heldout),
        snakemake.params.variants,
        snakemake.params.tolerances,
        threads=snakemake.params.threads,
    )
    ParityRecord.of(record).write(snakemake.output.json)
    for name, result in record["variants"].items():
        print(name, "PASS" if result["passed"] else "FAIL", result.get("failures"))
