from pathlib import Path

from nnbridge.demo.nets import train_demo_net
from nnbridge.patches.sampling import fold_cases
from nnbridge.core.records import DemoNetRecord
from nnbridge.core.runlog import logged

with logged(snakemake.log[0]):
    entry = snakemake.params.entry
    train_cases, _val = fold_cases(Path(snakemake.params.preprocessed), str(entry.get("fold", "all")))
    summary = train_demo_net(
        snakemake.wildcards.net,
        Path(snakemake.params.preprocessed) / entry["data_identifier"],
        train_cases,
        snakemake.output.checkpoint,
        num_classes=entry["init_kwargs"]["num_classes"],
        features=entry["init_kwargs"]["features"],
        steps=snakemake.params.steps,
        seed=snakemake.params.seed,
        threads=snakemake.threads,
    )
    DemoNetRecord.of(summary).write(snakemake.output.json)
    print(summary)
