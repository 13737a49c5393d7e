from nnbridge.patches.sampling import load_patches
from nnbridge.core.records import SimplifyRecord
from nnbridge.core.runlog import logged
from nnbridge.export.simplify import simplify_onnx

with logged(snakemake.log[0]):
    # one held-out patch: a simplifier that breaks the graph shows on any input, and validate
    # gates the simplified graph against PyTorch on every held-out patch (at a 128^3 patch each
    # check run is ~7 s on one thread)
    check = load_patches(snakemake.input.heldout, record=snakemake.input.patches_record)[:1]
    record = simplify_onnx(
        snakemake.input.onnx, snakemake.output.onnx, check, atol=snakemake.params.atol,
        src_record=snakemake.input.record, threads=snakemake.threads,
        quantizable=snakemake.output.quantizable, two_pass_norm_voxels=snakemake.params.two_pass_norm_voxels,
    )
    SimplifyRecord.of(record).write(snakemake.output.json)
    print(record)
