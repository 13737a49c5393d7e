from nnbridge.export.onnx_export import export_onnx
from nnbridge.models.loader import load_model
from nnbridge.core.records import ExportRecord
from nnbridge.core.runlog import logged, note

with logged(snakemake.log[0]):
    fold = load_model(snakemake.params.source)
    if fold.trainer_note:  # the trainer class is not installed: said once per fold, on the console
        note(f"{snakemake.wildcards.dataset}/{snakemake.wildcards.model} fold {snakemake.wildcards.fold}: {fold.trainer_note}")
    print(fold.weight_check.summary())
    record = export_onnx(fold, snakemake.output.onnx, opset=snakemake.params.opset,
                         fold_batchnorm=snakemake.params.fold_batchnorm, threads=snakemake.threads)
    record["checkpoint_weights"] = fold.weight_check.to_dict()
    ExportRecord.of(record).write(snakemake.output.json)
    print(record["weights"]["summary"], record["shape_checks"])
