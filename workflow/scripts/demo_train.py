from nnbridge.demo.nnunet import train_fold
from nnbridge.core.runlog import logged

with logged(snakemake.log[0]):
    fold_dir = train_fold(
        int(snakemake.wildcards.fold),
        raw=snakemake.params.raw,
        preprocessed=snakemake.params.preprocessed,
        results=snakemake.params.results,
        epochs=snakemake.params.epochs,
        iterations=snakemake.params.iterations,
        threads=snakemake.threads,
        log=snakemake.log[0],
    )
    print("trained", fold_dir)
