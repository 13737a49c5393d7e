from nnbridge.patches.sampling import load_patches
from nnbridge.quantize import quantize_variant
from nnbridge.core.runlog import logged, write_json

with logged(snakemake.log[0]):
    record = quantize_variant(
        snakemake.input.onnx,
        snakemake.output.onnx,
        load_patches(snakemake.input.calibration, record=snakemake.input.patches_record),
        snakemake.params.settings,
        threads=snakemake.threads,
        backends=snakemake.params.backends,
        cpu=snakemake.params.cpu,
        src_record=snakemake.input.record,
    )
    write_json(snakemake.output.json, record)
    print(record)
