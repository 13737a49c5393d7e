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
        previous_stage=snakemake.params.previous_stage.get("previous_stage"),
        postprocessing=snakemake.params.postprocessing["own"],
        ensembles=snakemake.params.postprocessing["ensembles"],
    )
    for name, variant in manifest["variants"].items():
        print(name, "backend:", variant["backend"], "passed:", variant["passed"])
    if manifest.get("previous_stage"):
        print("previous stage:", manifest["previous_stage"]["configuration"], manifest["previous_stage"]["model"])
    for record in [manifest.get("postprocessing") or {}, *manifest.get("ensembles", [])]:
        if record:
            print("postprocessing:", record["source"], len(record["steps"]), "step(s)")
