from nnbridge.patches.sampling import copy_patch_sets, write_patch_sets
from nnbridge.core.records import PatchesRecord
from nnbridge.core.runlog import logged

with logged(snakemake.log[0]):
    source = snakemake.params.source
    if snakemake.params.preprocessed:
        summary = write_patch_sets(
            source,
            snakemake.params.preprocessed,
            snakemake.wildcards.fold,
            snakemake.output.calibration,
            snakemake.output.heldout,
            n_calibration=snakemake.params.n_calibration,
            n_heldout=snakemake.params.n_heldout,
            seed=snakemake.params.seed,
            foreground_fraction=snakemake.params.foreground_fraction,
        )
    else:  # a plain model's own patch arrays
        summary = copy_patch_sets(
            snakemake.input.calibration_in,
            snakemake.input.heldout_in,
            snakemake.output.calibration,
            snakemake.output.heldout,
            channels=source["input_channels"],
            spatial=tuple(source["example_size"]),
            n_calibration=snakemake.params.n_calibration,
            n_heldout=snakemake.params.n_heldout,
        )
    PatchesRecord.of(summary).write(snakemake.output.json)
