from nnbridge.core.runlog import logged
from nnbridge.intake.modelzip import extract_member

with logged(snakemake.log[0]):
    print(extract_member(snakemake.input.zip, snakemake.wildcards.member, snakemake.output.file))
