from pathlib import Path

from nnbridge.core.runlog import logged, write_json
from nnbridge.intake.images import preprocess_images

with logged(snakemake.log[0]):
    record = preprocess_images(snakemake.params.model_folder, snakemake.params.cases,
                               Path(snakemake.output.cases).parent)
    write_json(snakemake.output.cases, record)
    print(f"{len(record['cases'])} case(s) preprocessed by {record['preprocessor']} into {record['data_folder']}")
