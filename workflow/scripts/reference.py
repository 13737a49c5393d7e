from nnbridge.core.runlog import logged, write_json
from nnbridge.patches.sampling import load_patch_cases, load_patches
from nnbridge.validate.reference import reference_logits

with logged(snakemake.log[0]):
    record = reference_logits(
        snakemake.params.source,
        load_patches(snakemake.input.heldout, record=snakemake.input.patches_record),
        snakemake.output.logits,
        groups=load_patch_cases(snakemake.input.heldout),
        selfcheck_out=snakemake.output.selfcheck,
        selfcheck=snakemake.params.selfcheck,
        threads=snakemake.threads,
    )
    write_json(snakemake.output.json, record)
