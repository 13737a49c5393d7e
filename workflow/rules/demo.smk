# The embedded demo: a synthetic dataset, nnU-Net's real planning/preprocessing and training.
# From the collected model folder on, the DAG treats the demo like any user's model folder.


rule demo_dataset:
    output:
        dataset_json=f"{DEMO_RAW}/{DEMO_DATASET_NAME}/dataset.json",
    params:
        **named(
            n_cases=lookup(dpath="demo/n_cases", within=config),
            seed=lookup(dpath="demo/seed", within=config),
            code=code_version("demo_dataset"),
        ),
    log:
        "logs/demo/dataset.log",
    conda:
        "../../envs/nnunet.yaml"
    script:
        "../scripts/demo_dataset.py"


rule demo_preprocess:
    input:
        dataset_json=rules.demo_dataset.output.dataset_json,
    output:
        plans=f"{DEMO_PREPROCESSED}/nnUNetPlans.json",
        dataset_json=f"{DEMO_PREPROCESSED}/dataset.json",
        fingerprint=f"{DEMO_PREPROCESSED}/dataset_fingerprint.json",
        # a flag beside the data folder, not the folder itself: snakemake would put a
        # .snakemake_timestamp into a directory() output, and nnU-Net's dataset reader
        # refuses a folder with files it does not know
        done=f"{DEMO_PREPROCESSED}/nnUNetPlans_{DEMO_CONFIGURATION}.done",
    params:
        raw=lambda wildcards, input: Path(input.dataset_json).parent.parent,
        preprocessed=lambda wildcards, output: Path(output.plans).parent.parent,
        configuration=DEMO_CONFIGURATION,
        code=code_version("demo_preprocess"),
    log:
        "logs/demo/plan_and_preprocess.log",
    benchmark:
        "benchmarks/demo/plan_and_preprocess.tsv"
    # nnU-Net's fingerprint and preprocessing workers (-npfp, -np): one case per core
    threads: 2
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../../envs/nnunet.yaml"
    script:
        "../scripts/demo_preprocess.py"


rule demo_plans:
    input:
        plans=rules.demo_preprocess.output.plans,
        preprocessed=rules.demo_preprocess.output.done,
    output:
        plans=f"{DEMO_PREPROCESSED}/{DEMO_PLANS}.json",
        splits=f"{DEMO_PREPROCESSED}/splits_final.json",
    params:
        code=code_version("demo_plans"),
    log:
        "logs/demo/plans.log",
    conda:
        "../../envs/nnunet.yaml"
    script:
        "../scripts/demo_plans.py"


rule demo_train:
    input:
        plans=rules.demo_plans.output.plans,
        splits=rules.demo_plans.output.splits,
        preprocessed=rules.demo_preprocess.output.done,
    output:
        checkpoint=f"{DEMO_ROOT}/train/fold_{{fold}}/{DEMO_DATASET_NAME}/{DEMO_TRAINER}__{DEMO_PLANS}__{DEMO_CONFIGURATION}/fold_{{fold}}/checkpoint_final.pth",
        summary=f"{DEMO_ROOT}/train/fold_{{fold}}/{DEMO_DATASET_NAME}/{DEMO_TRAINER}__{DEMO_PLANS}__{DEMO_CONFIGURATION}/fold_{{fold}}/validation/summary.json",
    params:
        **named(
            raw=DEMO_RAW,
            preprocessed=lambda wildcards, input: Path(input.plans).parent.parent,
            results=lambda wildcards, output: Path(output.checkpoint).parents[3],
            epochs=lookup(dpath="demo/epochs", within=config),
            iterations=lookup(dpath="demo/iterations", within=config),
            code=code_version("demo_train"),
        ),
    log:
        "logs/demo/train_fold_{fold}.log",
    benchmark:
        "benchmarks/demo/train_fold_{fold}.tsv"
    # one thread each: on 2 cores the folds train side by side, first (everything of the nnU-Net
    # model waits for them; the plain nets train while its folds are exported)
    threads: 1
    priority: 10
    resources:
        mem_mb=6000,
        runtime=60,
    conda:
        "../../envs/nnunet.yaml"
    script:
        "../scripts/demo_train.py"


rule demo_collect_fold:
    input:
        checkpoint=rules.demo_train.output.checkpoint,
        summary=rules.demo_train.output.summary,
    output:
        checkpoint=f"{DEMO_MODEL_FOLDER}/fold_{{fold}}/checkpoint_final.pth",
        summary=f"{DEMO_MODEL_FOLDER}/fold_{{fold}}/validation/summary.json",
    log:
        "logs/demo/collect_fold_{fold}.log",
    localrule: True
    conda:
        "../../envs/coreutils.yaml"
    shell:
        "(cp {input.checkpoint} {output.checkpoint} && cp {input.summary} {output.summary}) 2> {log}"


rule demo_collect_meta:
    input:
        plans=rules.demo_plans.output.plans,
        dataset_json=rules.demo_preprocess.output.dataset_json,
        fingerprint=rules.demo_preprocess.output.fingerprint,
    output:
        plans=f"{DEMO_MODEL_FOLDER}/plans.json",
        dataset_json=f"{DEMO_MODEL_FOLDER}/dataset.json",
        fingerprint=f"{DEMO_MODEL_FOLDER}/dataset_fingerprint.json",
    log:
        "logs/demo/collect_meta.log",
    localrule: True
    conda:
        "../../envs/coreutils.yaml"
    shell:
        "(cp {input.plans} {output.plans} && cp {input.dataset_json} {output.dataset_json}"
        " && cp {input.fingerprint} {output.fingerprint}) 2> {log}"


# The demo's plain PyTorch models (config models with kind: pytorch and a checkpoint under
# <demo root>/pytorch/): a U-Net and a UNet++ trained briefly on fold 0's training cases.
rule demo_train_pytorch:
    input:
        splits=rules.demo_plans.output.splits,
        preprocessed=rules.demo_preprocess.output.done,
    output:
        checkpoint=f"{DEMO_ROOT}/pytorch/{{net}}.pth",
        json=f"{DEMO_ROOT}/pytorch/{{net}}.json",
    params:
        **named(
            preprocessed=lambda wildcards, input: Path(input.splits).parent,
            entry=lambda wildcards: demo_plain_entry(wildcards.net),
            steps=lookup(dpath="demo/pytorch_steps", within=config),
            seed=lookup(dpath="demo/seed", within=config),
            code=code_version("demo_train_pytorch"),
        ),
    log:
        "logs/demo/train_pytorch_{net}.log",
    benchmark:
        "benchmarks/demo/train_pytorch_{net}.tsv"
    # as soon as a core is free after the nnU-Net folds: each heads its model's chain (export →
    # benchmark), and one left for later ran its chain after everyone else's (8 min instead of 6.5)
    threads: 1
    priority: 5
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../../envs/nnunet.yaml"
    script:
        "../scripts/demo_train_pytorch.py"


# A real-size nnU-Net model (nnU-Net's default 3d_fullres plan at a 128^3 patch, 5 folds of seeded
# random weights, no training) to measure the pipeline's own cost on: `make bench-pipeline`
# (config/realsize.yaml points models: at it). Never part of the demo's DAG otherwise.
rule realsize_model:
    output:
        json=f"{REALSIZE_ROOT}/realsize.json",
        plans=f"{REALSIZE_FOLDER}/plans.json",
        dataset_json=f"{REALSIZE_FOLDER}/dataset.json",
        checkpoints=expand(
            f"{REALSIZE_FOLDER}/fold_{{fold}}/checkpoint_final.pth",
            fold=range(lookup(dpath="realsize/folds", within=config)),
        ),
        splits=f"{REALSIZE_ROOT}/nnUNet_preprocessed/{REALSIZE_DATASET_NAME}/splits_final.json",
        raw_dataset_json=f"{REALSIZE_ROOT}/nnUNet_raw/{REALSIZE_DATASET_NAME}/dataset.json",
    params:
        **named(
            root=lambda wildcards, output: Path(output.json).parent,
            n_cases=lookup(dpath="realsize/n_cases", within=config),
            folds=lookup(dpath="realsize/folds", within=config),
            code=code_version("realsize_model"),
        ),
    log:
        "logs/realsize/model.log",
    benchmark:
        "benchmarks/realsize/model.tsv"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=60,
    conda:
        "../../envs/nnunet.yaml"
    script:
        "../scripts/realsize_model.py"
