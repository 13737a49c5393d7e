from nnbridge.export.torchscript_export import export_torchscript
from nnbridge.models.loader import load_model
from nnbridge.core.runlog import logged, write_json

with logged(snakemake.log[0]):
    fold = load_model(snakemake.params.source)
    record = export_torchscript(fold, snakemake.output.ts)
    write_json(snakemake.output.json, record)
    print(record["weights"]["summary"], record["shape_checks"])
