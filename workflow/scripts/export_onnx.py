from nnbridge.export.onnx_export import export_onnx
from nnbridge.models.loader import load_model
from nnbridge.core.runlog import logged, write_json

with logged(snakemake.log[0]):
    fold = load_model(snakemake.params.source)
    print(fold.weight_check.summary())
    record = export_onnx(fold, snakemake.output.onnx, opset=snakemake.params.opset,
                         fold_batchnorm=snakemake.params.fold_batchnorm)
    record["checkpoint_weights"] = fold.weight_check.to_dict()
    write_json(snakemake.output.json, record)
    print(record["weights"]["summary"], record["shape_checks"])
