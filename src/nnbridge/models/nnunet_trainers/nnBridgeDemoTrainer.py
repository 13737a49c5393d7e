"""nnU-Net v2 trainer for nnbridge's demo model: nnU-Net's own training, only much shorter.

nnU-Net finds this file through ``nnUNet_extTrainer`` (it imports the folder's files by path),
so it uses absolute imports only. Training loop, loss, deep supervision, augmentation,
checkpoints, final validation and ``build_network_architecture`` are nnU-Net's. This trainer
only changes:

- length: ``NNBRIDGE_DEMO_EPOCHS`` epochs (default 10) of ``NNBRIDGE_DEMO_ITERS`` iterations
  (default 20), 2 pseudo-validation batches per epoch instead of 50;
- initial learning rate 0.02 instead of 0.01 (same SGD and poly schedule);
- nnU-Net's progress.png is drawn after the last epoch only (a second per drawing on 2 cores);
- seeded: python, numpy and torch random generators start from ``NNBRIDGE_DEMO_SEED`` (default
  0) plus the fold, so that (with ``nnUNet_n_proc_DA=0``, augmentation in the main process) a
  retraining gives the same model up to floating-point summation order;
- optional ``NNBRIDGE_DEMO_THREADS``: torch threads (``nnUNetv2_train -device cpu`` uses one per
  core; set 1 when several trainings share the cores, or they slow each other down badly);
- a 3D network trains in channels-last memory layout (oneDNN's NDHWC convolutions): a training
  step of the demo network took 0.24 s instead of 0.31-0.36 s on one thread of the AMD Zen 4 of
  README "Measured", 0.24-0.26 s instead of 0.31-0.39 s with oneDNN and ATen held to AVX2
  (2026-12-04); checkpoints are written in the usual contiguous layout all the same.
"""

import os
import random

import numpy as np
import torch

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

DEFAULT_EPOCHS = 10
DEFAULT_ITERATIONS = 20
DEFAULT_VAL_ITERATIONS = 2
DEFAULT_INITIAL_LR = 2e-2


def _env_int(name: str, default: int) -> int:
    """Positive integer from environment variable ``name``; ``default`` when unset or empty."""
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    number = int(value)
    if number < 1:
        raise ValueError(f"{name}={value!r}: must be a positive integer")
    return number


def _skip_plot(output_folder: str) -> None:
    """Stand-in for ``MetaLogger.plot_progress_png`` before the last epoch."""


class nnBridgeDemoTrainer(nnUNetTrainer):
    """Short nnU-Net training for nnbridge's tiny synthetic demo dataset on a CPU."""

    def __init__(
        self,
        plans: dict,
        configuration: str,
        fold: int,
        dataset_json: dict,
        device: torch.device = torch.device("cuda"),
    ):
        super().__init__(plans, configuration, fold, dataset_json, device)
        seed = int(os.environ.get("NNBRIDGE_DEMO_SEED", "0") or 0) + (fold if isinstance(fold, int) else 0)
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        self.num_epochs = _env_int("NNBRIDGE_DEMO_EPOCHS", DEFAULT_EPOCHS)
        self.num_iterations_per_epoch = _env_int("NNBRIDGE_DEMO_ITERS", DEFAULT_ITERATIONS)
        self.num_val_iterations_per_epoch = DEFAULT_VAL_ITERATIONS
        self.initial_lr = DEFAULT_INITIAL_LR
        self.save_every = self.num_epochs + 1  # no checkpoint_latest.pth along the way
        self.channels_last = False  # set by initialize() for a 3D network
        if os.environ.get("NNBRIDGE_DEMO_THREADS", "").strip():
            torch.set_num_threads(_env_int("NNBRIDGE_DEMO_THREADS", 1))

    def initialize(self):
        super().initialize()
        self.channels_last = any(p.dim() == 5 for p in self.network.parameters())  # 3D convolutions
        if self.channels_last:
            self.network.to(memory_format=torch.channels_last_3d)

    def save_checkpoint(self, filename: str) -> None:
        """nnU-Net's checkpoint, its weights in the contiguous layout any training writes."""
        if not self.channels_last:
            return super().save_checkpoint(filename)
        self.network.to(memory_format=torch.contiguous_format)
        try:
            super().save_checkpoint(filename)
        finally:
            self.network.to(memory_format=torch.channels_last_3d)

    def on_train_start(self):
        super().on_train_start()
        self.print_to_log_file(
            f"{self.__class__.__name__}: {self.num_epochs} epochs x {self.num_iterations_per_epoch} "
            f"iterations, batch size {self.batch_size}, patch {list(self.configuration_manager.patch_size)}, "
            f"initial lr {self.initial_lr}, torch threads {torch.get_num_threads()}, memory layout "
            f"{'channels-last' if self.channels_last else 'contiguous'}"
        )

    def on_epoch_end(self):
        logger = self.logger
        if self.current_epoch != self.num_epochs - 1:
            logger.plot_progress_png = _skip_plot
        try:
            super().on_epoch_end()
        finally:
            logger.__dict__.pop("plot_progress_png", None)
