from pathlib import Path

from nnbridge.core.runlog import logged, write_json
from nnbridge.demo.realsize import make_realsize_model

with logged(snakemake.log[0]):
    record = make_realsize_model(
        Path(snakemake.params.root),
        n_cases=snakemake.params.n_cases,
        folds=snakemake.params.folds,
        log=snakemake.log[0],
    )
    record.pop("env")
    write_json(snakemake.output.json, record)
