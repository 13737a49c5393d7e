from nnbridge.validate.parity import validate_fold
from nnbridge.patches.sampling import load_patches
from nnbridge.core.runlog import logged, write_json

with logged(snakemake.log[0]):
    record = validate_fold(
        snakemake.params.source,
        load_patches(snakemake.input.heldout, record=snakemake.input.patches_record),
        snakemake.params.variants,
        snakemake.params.tolerances,
        threads=snakemake.params.threads,
    )
    write_json(snakemake.output.json, record)
    for name, result in record["variants"].items():
        print(name, "PASS" if result["passed"] else "FAIL", result.get("failures"))
