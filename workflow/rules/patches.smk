rule patches:
    input:
        unpack(get_preprocessed_inputs),
    output:
        calibration=f"{FOLD_DIR}/patches/calibration.npz",
        heldout=f"{FOLD_DIR}/patches/heldout.npz",
        json=f"{FOLD_DIR}/patches/patches.json",
    params:
        **named(
            source=get_source,
            preprocessed=get_patch_data,
            images=get_images_param,
            n_calibration=lookup(dpath="patches/calibration", within=config),
            n_heldout=lookup(dpath="patches/heldout", within=config),
            seed=lookup(dpath="patches/seed", within=config),
            foreground_fraction=lookup(dpath="patches/foreground_fraction", within=config),
            code=code_version("patches"),
        ),
    log:
        "logs/{dataset}/{model}/fold_{fold}/patches.log",
    # the reference fold's way to the accuracy searches first (common.smk)
    priority: search_priority
    threads: 1
    resources:
        mem_mb=4000,
        runtime=20,
    conda:
        "../../envs/nnunet.yaml"
    script:
        "../scripts/patches.py"
