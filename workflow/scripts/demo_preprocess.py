from nnbridge.demo import plan_and_preprocess
from nnbridge.runlog import logged

with logged(snakemake.log[0]):
    plan_and_preprocess(
        snakemake.params.raw,
        snakemake.params.preprocessed,
        configuration=snakemake.params.configuration,
        log=snakemake.log[0],
    )
