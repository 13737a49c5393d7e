from nnbridge.patches.sampling import load_patches
from nnbridge.core.records import SimplifyRecord
from nnbridge.core.runlog import logged
from nnbridge.export.simplify import simplify_onnx

with logged(snakemake.log[0]):
    check = load_patches(snakemake.input.heldout, record=snakemake.input.patches_record)[:2]
    record = simplify_onnx(
        snakemake.input.onnx, snakemake.output.onnx, check, atol=snakemake.params.atol,
        src_record=snakemake.input.record,
    )
    SimplifyRecord.of(record).write(snakemake.output.json)
    print(record)
