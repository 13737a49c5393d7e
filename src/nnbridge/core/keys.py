"""The keys results are filed under: folds, and variants on a runtime (``name@backend``)."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_BACKEND = "onnxruntime"  # a variant named without ``@backend`` runs on ONNX Runtime


@dataclass(frozen=True, order=True)
class Variant:
    """A variant run on one runtime: ``int8_static`` (ONNX Runtime) or ``int8_static@openvino``."""

    name: str
    backend: str = DEFAULT_BACKEND

    @classmethod
    def parse(cls, key: str) -> Variant:
        name, _, backend = key.partition("@")
        return cls(name, backend or DEFAULT_BACKEND)

    @property
    def key(self) -> str:
        """The name results are filed under: the bare name on ONNX Runtime, else ``name@backend``."""
        return self.name if self.backend == DEFAULT_BACKEND else f"{self.name}@{self.backend}"

    def __str__(self) -> str:
        return self.key


def fold_order(fold: str) -> tuple[bool, int]:
    """Sort key of fold names: numbered folds in order, ``all`` last."""
    return (fold == "all", int(fold) if fold.isdigit() else 0)
