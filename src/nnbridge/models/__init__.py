"""Trained models as every stage needs them: an nnU-Net fold or a plain PyTorch checkpoint, loaded
with provably correct weights (:func:`nnbridge.models.loader.load_model` is the entry point).

This file imports no torch: the workflow reads its names when it builds the DAG.
"""

from pathlib import Path

CHECKPOINT_NAMES = ("checkpoint_final.pth", "checkpoint_best.pth")
# nnbridge's own nnU-Net trainers (the demo's), found by nnU-Net through nnUNet_extTrainer; nnU-Net
# imports every module of that folder, so it holds trainer files only
TRAINER_DIR = Path(__file__).resolve().parent / "nnunet_trainers"
# source files the code above runs without importing them (nnU-Net imports the trainers by path):
# the code hash of a stage that imports this package covers them (nnbridge.pipeline.codehash)
CODE_FILES = ("nnunet_trainers/*.py",)
