from pathlib import Path

from nnbridge.demo import derive_small_plans, write_splits
from nnbridge.runlog import logged

with logged(snakemake.log[0]):
    folder = Path(snakemake.input.plans).parent
    print("wrote", derive_small_plans(folder))
    print("wrote", write_splits(folder))
