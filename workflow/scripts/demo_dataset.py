from pathlib import Path

from nnbridge.demo.dataset import make_dataset
from nnbridge.core.runlog import logged

with logged(snakemake.log[0]):
    raw_root = Path(snakemake.output.dataset_json).parent.parent
    folder = make_dataset(raw_root, n_cases=snakemake.params.n_cases, seed=snakemake.params.seed)
    print("wrote", folder)
