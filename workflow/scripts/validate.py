from pathlib import Path

from nnbridge.core.runlog import logged, read_json
from nnbridge.patches.sampling import load_patches
from nnbridge.core.records import ParityRecord
from nnbridge.validate.parity import validate_fold

with logged(snakemake.log[0]):
    record = validate_fold(
        read_json(snakemake.input.reference),
        load_patches(snakemake.input.heldout, record=snakemake.input.patches_record),
        snakemake.params.variants,
        snakemake.params.tolerances,
        threads=snakemake.params.threads,
        cache_dir=Path(snakemake.output.json).parent / "cache",
        cache_salt=snakemake.params.code,
    )
    ParityRecord.of(record).write(snakemake.output.json)
    for name, result in record["variants"].items():
        print(name, "PASS" if result["passed"] else "FAIL", result.get("failures"))
