from nnbridge.patches.sampling import load_patches
from nnbridge.core.runlog import logged, read_json, write_json
from nnbridge.export.simplify import simplify_onnx

with logged(snakemake.log[0]):
    check = load_patches(snakemake.input.heldout)[:2]
    record = simplify_onnx(
        snakemake.input.onnx, snakemake.output.onnx, check, atol=snakemake.params.atol,
        export_record=read_json(snakemake.input.record),
    )
    write_json(snakemake.output.json, record)
    print(record)
