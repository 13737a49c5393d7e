from pathlib import Path

from nnbridge.validate.caseparity import heldout_image_cases, run_case_parity, validation_cases
from nnbridge.core.records import CaseParityRecord
from nnbridge.core.runlog import logged, read_json

with logged(snakemake.log[0]):
    dataset_json = read_json(snakemake.input.dataset)
    images = snakemake.params.images
    if images:  # the fold's held-out images (labels optional: the gate compares two predictors)
        cases = heldout_image_cases(snakemake.input.patches, images["folder"], images["labels_folder"],
                                    dataset_json, max_cases=snakemake.params.max_cases)
    else:
        cases = validation_cases(
            Path(snakemake.input.splits).parent,
            snakemake.wildcards.fold,
            snakemake.params.raw,
            dataset_json["file_ending"],
            max_cases=snakemake.params.max_cases,
        )
    record = run_case_parity(
        model_folder=Path(snakemake.params.model_folder),
        fold=snakemake.wildcards.fold,
        checkpoint=snakemake.params.checkpoint,
        bundle_dir=Path(snakemake.params.bundle),
        cases=cases,
        variants={name: {"gate": gate} for name, gate in snakemake.params.variants.items()},
        out_dir=Path(snakemake.output.json).parent,
        step=snakemake.params.step,
        mirroring=snakemake.params.mirroring,
        threads=snakemake.params.threads,
        trusted=snakemake.params.trusted,
        previous_stage=snakemake.params.previous_stage,
        cache_salt=snakemake.params.code,  # unchanged variants reuse the earlier run's result
        compare_failed=snakemake.params.compare_failed,
    )
    CaseParityRecord.of(record).write(snakemake.output.json)
    for name, result in record["variants"].items():
        print(name, result["backend"], f"SKIPPED: {result['skipped']}" if result.get("skipped") else
              ("PASS" if result["passed"] else "FAIL"), "voxel agreement", result.get("min_voxel_agreement"),
              "speedup", result.get("speedup_vs_nnunet"))
