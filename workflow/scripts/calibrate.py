from nnbridge.core.runlog import logged
from nnbridge.patches.sampling import load_patches
from nnbridge.quantize import calibrate_ranges

with logged(snakemake.log[0]):
    record = calibrate_ranges(
        snakemake.input.onnx,
        load_patches(snakemake.input.calibration, record=snakemake.input.patches_record),
        snakemake.output.ranges,
        calibrate_method=snakemake.wildcards.method,
        src_record=snakemake.input.record,
        threads=snakemake.threads,
    )
    print(record)
