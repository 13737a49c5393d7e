from nnbridge.patches.sampling import load_patches
from nnbridge.quantize import quantize_variant, read_decision
from nnbridge.core.records import QuantizeRecord
from nnbridge.core.runlog import logged

with logged(snakemake.log[0]):
    record = quantize_variant(
        snakemake.input.onnx,
        snakemake.output.artifact,
        load_patches(snakemake.input.calibration, record=snakemake.input.patches_record),
        snakemake.params.settings,
        threads=snakemake.threads,
        backends=snakemake.params.backends,
        cpu=snakemake.params.cpu,
        src_record=snakemake.input.record,
        decided=read_decision(snakemake.input.get("decision"), snakemake.params.decided_fold),
        calibration_ranges=snakemake.input.get("ranges"),
    )
    QuantizeRecord.of(record).write(snakemake.output.json)
    print(record)
