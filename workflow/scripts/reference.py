from nnbridge.core.runlog import logged, write_json
from nnbridge.patches.sampling import load_patches
from nnbridge.validate.parity import reference_logits

with logged(snakemake.log[0]):
    record = reference_logits(snakemake.params.source, load_patches(snakemake.input.heldout),
                              snakemake.output.logits)
    write_json(snakemake.output.json, record)
