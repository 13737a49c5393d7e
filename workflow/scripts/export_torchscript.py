from nnbridge.export.torchscript_export import export_torchscript
from nnbridge.models.loader import load_model
from nnbridge.core.records import TorchscriptRecord
from nnbridge.core.runlog import logged

with logged(snakemake.log[0]):
    fold = load_model(snakemake.params.source)
    record = export_torchscript(fold, snakemake.output.ts)
    TorchscriptRecord.of(record).write(snakemake.output.json)
    print(record["weights"]["summary"], record["shape_checks"])
