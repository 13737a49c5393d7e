"""Shared fixtures: one real, briefly trained nnU-Net fold for the library tests."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class TinyModel:
    """A real nnU-Net v2 model folder with one trained fold, and its preprocessed dataset."""

    model_folder: Path
    preprocessed: Path
    fold: str = "0"
    checkpoint: str = "checkpoint_final.pth"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    """Dataset → nnU-Net planning/preprocessing → small plans → 1 fold trained briefly (~30 s)."""
    from nnbridge.demo import dataset, nnunet as demo
    from nnbridge.models import TRAINER_DIR

    root = tmp_path_factory.mktemp("tiny_nnunet")
    raw, pre, res = root / "raw", root / "preprocessed", root / "results"
    dataset.make_dataset(raw, n_cases=10, seed=3)
    pre_ds = demo.plan_and_preprocess(raw, pre, log=root / "plan.log")
    demo.derive_small_plans(pre_ds)
    fold_dir = demo.train_fold(0, raw=raw, preprocessed=pre, results=res, epochs=2, iterations=4,
                               log=root / "train.log")
    os.environ.setdefault("nnUNet_extTrainer", str(TRAINER_DIR))
    return TinyModel(model_folder=fold_dir.parent, preprocessed=pre_ds)


@pytest.fixture(scope="session")
def loaded_fold(tiny_model: TinyModel):
    from nnbridge.models.nnunet import load_nnunet_fold

    return load_nnunet_fold(tiny_model.model_folder, tiny_model.fold, tiny_model.checkpoint)


@pytest.fixture(scope="session")
def patch_sets(tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory):
    """Calibration and held-out patches of fold 0 written by the patches stage."""
    from nnbridge.models.nnunet import nnunet_source
    from nnbridge.patches.sampling import load_patches, write_patch_sets

    out = tmp_path_factory.mktemp("patches")
    summary = write_patch_sets(nnunet_source(tiny_model.model_folder, "0"), tiny_model.preprocessed, "0",
                               out / "cal.npz", out / "held.npz", n_calibration=6, n_heldout=4,
                               seed=0, foreground_fraction=0.5)
    return summary, load_patches(out / "cal.npz"), load_patches(out / "held.npz")


@pytest.fixture(scope="session")
def exported(loaded_fold, tmp_path_factory: pytest.TempPathFactory):
    """ONNX and TorchScript exports of the tiny fold."""
    from nnbridge.export.onnx_export import export_onnx
    from nnbridge.export.torchscript_export import export_torchscript

    out = tmp_path_factory.mktemp("export")
    onnx_record = export_onnx(loaded_fold, out / "model.onnx")
    ts_record = export_torchscript(loaded_fold, out / "model.ts")
    return out, onnx_record, ts_record
