from pathlib import Path

from nnbridge.bundle.build import build_from_pipeline
from nnbridge.core.runlog import logged

with logged(snakemake.log[0]):
    manifest = build_from_pipeline(
        Path(snakemake.output.manifest).parent,
        plans_file=snakemake.params.plans,
        dataset_file=snakemake.params.dataset_json,
        folds=snakemake.params.folds,
        variant_names=snakemake.params.variants,
        default_variant=snakemake.params.default_variant,
        model=snakemake.wildcards.model,
        dataset=snakemake.wildcards.dataset,
    )
    for name, variant in manifest["variants"].items():
        print(name, "backend:", variant["backend"], "passed:", variant["passed"])
