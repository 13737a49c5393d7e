from pathlib import Path

from nnbridge.demo.nnunet import derive_small_plans, write_splits
from nnbridge.core.runlog import logged

with logged(snakemake.log[0]):
    folder = Path(snakemake.input.plans).parent
    print("wrote", derive_small_plans(folder))
    print("wrote", write_splits(folder))
