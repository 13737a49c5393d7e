"""One entry point for every model source: an nnU-Net fold or a plain PyTorch model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .loaded import LoadedFold
from .nnunet import load_nnunet_fold
from .plain import load_plain_model


def load_model(source: dict[str, Any]) -> LoadedFold:
    """Load what a config ``models:`` entry describes, for one fold (see ``nnbridge.pipeline.plan``)."""
    if source.get("kind", "nnunet") == "nnunet":
        return load_nnunet_fold(Path(source["folder"]), source["fold"],
                                source.get("checkpoint", "checkpoint_final.pth"),
                                trusted=bool(source.get("trusted", False)))
    return load_plain_model(source)
