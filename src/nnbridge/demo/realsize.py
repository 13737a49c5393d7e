"""A real-size nnU-Net model to measure the pipeline's own cost on, without training.

nnU-Net's default planner on a synthetic dataset of large isotropic volumes gives its default
``3d_fullres`` plan at a 128³-class patch (PlainConvUNet, 6 stages, 32→320 features, ~30 M
parameters); the model folder then holds 5 folds, each with distinct seeded random weights
initialised the way nnU-Net initialises a network before training, saved as nnU-Net
checkpoints, beside nnU-Net's preprocessed cases and its 5-fold split. Everything a user's
trained 3d_fullres model folder holds, at the size that decides what the pipeline costs.

Random weights make the INT8 variants' label maps disagree with fp32 much more than a trained
model's would: accuracy-aware INT8 then spends its whole step budget. The cost measured on this
model is therefore an upper bound for those stages, and a lower bound for ``validate``, which
decides a failing variant on its first held-out patches where a trained model's passing INT8
variants run on all of them (at a 128³ patch ~2-3 s per patch and runtime on 2 threads).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

from .dataset import make_dataset
from .nnunet import nnunet_env, plan_and_preprocess, write_splits

REALSIZE_DATASET_ID = 901
REALSIZE_DATASET_NAME = "Dataset901_NNBridgeRealSize"
PLANS = "nnUNetPlans"
TRAINER = "nnUNetTrainer"
CONFIGURATION = "3d_fullres"


def _random_fold_checkpoint(plans: dict[str, Any], dataset_json: dict[str, Any], fold: int, seed: int,
                            path: Path) -> dict[str, Any]:
    """An nnU-Net checkpoint of the configuration's network with seeded random weights,
    initialised like nnUNetTrainer.initialize does (He init), deep supervision on as in training."""
    import torch  # noqa: PLC0415 - torch only where weights are made
    from dynamic_network_architectures.initialization.weight_init import InitWeights_He  # noqa: PLC0415
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans  # noqa: PLC0415
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels  # noqa: PLC0415
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager  # noqa: PLC0415

    manager = PlansManager(plans)
    config = manager.get_configuration(CONFIGURATION)
    labels = manager.get_label_manager(dataset_json)
    torch.manual_seed(seed + fold)
    network = get_network_from_plans(config.network_arch_class_name, config.network_arch_init_kwargs,
                                     config.network_arch_init_kwargs_req_import,
                                     determine_num_input_channels(manager, config, dataset_json),
                                     labels.num_segmentation_heads, allow_init=True, deep_supervision=True)
    network.apply(InitWeights_He(1e-2))
    checkpoint = {
        "network_weights": network.state_dict(),
        "optimizer_state": None, "grad_scaler_state": None, "logging": {}, "_best_ema": None,
        "current_epoch": 0,
        "init_args": {"plans": plans, "configuration": CONFIGURATION, "fold": fold, "dataset_json": dataset_json,
                      "device": "cpu"},
        "trainer_name": TRAINER,
        "inference_allowed_mirroring_axes": (0, 1, 2),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)
    return {"fold": fold, "parameters": int(sum(p.numel() for p in network.parameters())), "seed": seed + fold}


def make_realsize_model(root: Path, *, n_cases: int = 5, shape: tuple[int, int, int] = (160, 160, 160),
                        folds: int = 5, seed: int = 0, log: Path | None = None) -> dict[str, Any]:
    """Raw data, nnU-Net's own planning and preprocessing (its default planner and plans), and a
    model folder ``<root>/nnUNet_results/<dataset>/nnUNetTrainer__nnUNetPlans__3d_fullres`` with
    ``folds`` random-weight folds. Returns a record: folders, the plan's patch size and features,
    parameters per fold."""
    root = Path(root)
    raw, preprocessed, results = root / "nnUNet_raw", root / "nnUNet_preprocessed", root / "nnUNet_results"
    make_dataset(raw, n_cases=n_cases, shape=shape, seed=seed, dataset_id=REALSIZE_DATASET_ID,
                 dataset_name=REALSIZE_DATASET_NAME)
    dataset_dir = plan_and_preprocess(raw, preprocessed, dataset_id=REALSIZE_DATASET_ID,
                                      configuration=CONFIGURATION, log=log)
    write_splits(dataset_dir, plans=PLANS, configuration=CONFIGURATION)
    plans = json.loads((dataset_dir / f"{PLANS}.json").read_text())
    dataset_json = json.loads((dataset_dir / "dataset.json").read_text())
    folder = results / REALSIZE_DATASET_NAME / f"{TRAINER}__{PLANS}__{CONFIGURATION}"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(dataset_dir / f"{PLANS}.json", folder / "plans.json")
    shutil.copyfile(dataset_dir / "dataset.json", folder / "dataset.json")
    shutil.copyfile(dataset_dir / "dataset_fingerprint.json", folder / "dataset_fingerprint.json")
    made = [_random_fold_checkpoint(plans, dataset_json, fold, seed, folder / f"fold_{fold}" / "checkpoint_final.pth")
            for fold in range(folds)]
    config = plans["configurations"][CONFIGURATION]
    return {"model_folder": str(folder), "preprocessed": str(dataset_dir), "raw": str(raw / REALSIZE_DATASET_NAME),
            "patch_size": config["patch_size"], "features": config["architecture"]["arch_kwargs"]["features_per_stage"],
            "n_cases": n_cases, "case_shape": list(shape), "folds": made, "env": nnunet_env(raw, preprocessed, results)}


def main(argv: list[str] | None = None) -> None:
    """``python -m nnbridge.demo.realsize ROOT [--folds 5] [--cases 5]``: make the model, print its record."""
    parser = argparse.ArgumentParser(prog="python -m nnbridge.demo.realsize", description=__doc__.splitlines()[0])
    parser.add_argument("root")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--cases", type=int, default=5)
    args = parser.parse_args(argv)
    record = make_realsize_model(Path(args.root), n_cases=args.cases, folds=args.folds,
                                 log=Path(args.root) / "plan_and_preprocess.log")
    record.pop("env")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
