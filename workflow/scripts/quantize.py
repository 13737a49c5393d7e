from nnbridge.patches.sampling import load_patches
from nnbridge.quantize import quantize_variant
from nnbridge.core.runlog import logged, write_json

with logged(snakemake.log[0]):
    record = quantize_variant(
        snakemake.input.onnx,
        snakemake.output.artifact,
        load_patches(snakemake.input.calibration),
        snakemake.params.settings,
        threads=snakemake.threads,
        backends=snakemake.params.backends,
        cpu=snakemake.params.cpu,
    )
    write_json(snakemake.output.json, record)
    print(record)
