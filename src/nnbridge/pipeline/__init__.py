"""What the Snakemake workflow needs from the library at DAG time: the plan of models, folds and
variants, and each stage's code hash. Imports neither snakemake nor torch."""
