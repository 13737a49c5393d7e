from nnbridge.patches.sampling import copy_patch_sets, write_patch_sets
from nnbridge.core.records import PatchesRecord
from nnbridge.core.runlog import logged

with logged(snakemake.log[0]):
    source = snakemake.params.source
    counts = dict(n_calibration=snakemake.params.n_calibration, n_heldout=snakemake.params.n_heldout)
    sampling = dict(seed=snakemake.params.seed, foreground_fraction=snakemake.params.foreground_fraction)
    images = snakemake.params.images
    if images:  # the model's own preprocessing of an image folder
        # imported here: it runs the model (torch, nnU-Net's predictor), the other sources do not
        from nnbridge.patches.images import write_image_patch_sets

        summary = write_image_patch_sets(
            source,
            snakemake.params.preprocessed,
            snakemake.wildcards.fold,
            snakemake.output.calibration,
            snakemake.output.heldout,
            cases=images["cases"],
            labels=images["labels"],
            splits=images["splits"],
            **counts,
            **sampling,
        )
    elif snakemake.params.preprocessed:
        summary = write_patch_sets(
            source,
            snakemake.params.preprocessed,
            snakemake.wildcards.fold,
            snakemake.output.calibration,
            snakemake.output.heldout,
            **counts,
            **sampling,
        )
    else:  # a plain model's own patch arrays
        summary = copy_patch_sets(
            snakemake.input.calibration_in,
            snakemake.input.heldout_in,
            snakemake.output.calibration,
            snakemake.output.heldout,
            channels=source["input_channels"],
            spatial=tuple(source["example_size"]),
            **counts,
            multiple=source.get("spatial_multiple", 1),
            dynamic_spatial="spatial" in source.get("dynamic_axes", ["batch", "spatial"]),
        )
    PatchesRecord.of(summary).write(snakemake.output.json)
