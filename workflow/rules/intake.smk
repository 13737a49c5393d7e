# Models and data as they are shared. A model zip (nnUNetv2_export_model_to_zip) is listed when the
# DAG is built and unpacked file by file, only the files a job needs, each once, into
# <results>/cache/zip/<sha256 prefix>/; an image folder is preprocessed with the model's plans by
# nnU-Net's own preprocessor into results/<dataset>/<model>/preprocessed/.


rule unzip_model_file:
    input:
        # the cache folder is named by the zip's content (sha256): a copied or touched zip with the
        # same bytes is the same model, so its modification time must not rerun anything
        zip=ancient(get_zip),
    output:
        file=f"{ZIP_CACHE}/{{sha}}/{{member}}",
    params:
        code=code_version("unzip_model_file"),
    log:
        f"logs/cache/zip/{{sha}}/{{member}}.log",
    localrule: True
    conda:
        "../../envs/predict.yaml"
    script:
        "../scripts/unzip_model_file.py"


rule preprocess_images:
    input:
        unpack(get_image_inputs),
    output:
        # the cases beside the data folder, not the folder itself: snakemake would put a
        # .snakemake_timestamp into a directory() output, which nnU-Net's dataset reader refuses
        cases=f"{MODEL_DIR}/preprocessed/cases.json",
    params:
        **named(
            model_folder=lambda wildcards: get_model(wildcards).folder,
            cases=lambda wildcards: get_model(wildcards).images.cases,
            code=code_version("preprocess_images"),
        ),
    log:
        "logs/{dataset}/{model}/preprocess_images.log",
    benchmark:
        "benchmarks/{dataset}/{model}/preprocess_images.tsv"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=60,
    conda:
        "../../envs/nnunet.yaml"
    script:
        "../scripts/preprocess_images.py"
