"""abd-edge: data-free class-incremental learning (Always Be Dreaming) for devices.

Importing ``abd_edge`` is cheap and does not import torch: the public names
below load on first use, so ``abd_edge.runtime`` (ONNX Runtime only) can run
on devices without torch.
"""

from __future__ import annotations

import logging
from typing import Any

#: The one place the version is written (pyproject.toml reads it from here).
__version__ = "0.1.0"

# A library logs; the application decides where it goes (and the CLI configures it).
logging.getLogger(__name__).addHandler(logging.NullHandler())

_LAZY = {
    "Learner": ("abd_edge.learner", "Learner"),
    "LearnReport": ("abd_edge.reports", "LearnReport"),
    "Prediction": ("abd_edge.reports", "Prediction"),
    "LearnerConfig": ("abd_edge.config", "LearnerConfig"),
    "TrainConfig": ("abd_edge.config", "TrainConfig"),
    "DreamConfig": ("abd_edge.config", "DreamConfig"),
    "AugmentConfig": ("abd_edge.config", "AugmentConfig"),
    "LossConfig": ("abd_edge.config", "LossConfig"),
    "PrivacyConfig": ("abd_edge.privacy.config", "PrivacyConfig"),
    "LabeledImages": ("abd_edge.data.images", "LabeledImages"),
    "ClassRegistry": ("abd_edge.registry", "ClassRegistry"),
    "AccuracyMatrix": ("abd_edge.metrics", "AccuracyMatrix"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from .extras import import_or_explain

        module, attr = _LAZY[name]
        value = getattr(import_or_explain(module, feature=f"abd_edge.{name}"), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'abd_edge' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
