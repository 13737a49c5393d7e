from nnbridge.demo.nnunet import plan_and_preprocess, write_preprocessed_flag
from nnbridge.core.runlog import logged

with logged(snakemake.log[0]):
    dataset_dir = plan_and_preprocess(
        snakemake.params.raw,
        snakemake.params.preprocessed,
        configuration=snakemake.params.configuration,
        log=snakemake.log[0],
        processes=snakemake.threads,
    )
    write_preprocessed_flag(dataset_dir, snakemake.params.configuration, snakemake.output.done)
