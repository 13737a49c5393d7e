from nnbridge.patches import write_patch_sets
from nnbridge.runlog import logged, write_json

with logged(snakemake.log[0]):
    summary = write_patch_sets(
        snakemake.params.model_folder,
        snakemake.params.preprocessed,
        snakemake.wildcards.fold,
        snakemake.output.calibration,
        snakemake.output.heldout,
        n_calibration=snakemake.params.n_calibration,
        n_heldout=snakemake.params.n_heldout,
        seed=snakemake.params.seed,
        foreground_fraction=snakemake.params.foreground_fraction,
    )
    write_json(snakemake.output.json, summary)
