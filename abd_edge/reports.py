"""What a Learner call returns: the report of an update, and predictions."""

from __future__ import annotations

import dataclasses
import logging
import warnings
from dataclasses import dataclass
from typing import Any, Mapping

import torch

from .prediction import PredictionResult

log = logging.getLogger(__name__)


@dataclass
class LearnReport:
    """What one ``learn_new_classes`` call did."""

    task_index: int
    labels_added: list[int | str]
    names_added: list[str]
    class_indices: list[int]
    n_images: int
    epoch_losses: list[dict[str, float]]
    train_accuracy: float | None  # None after a private update: a statistic of the local data
    train_seconds: float
    train_images_per_second: float
    dream_seconds: float
    dream_iterations: int
    dream_losses: dict[str, float]
    stopped_early: bool = False
    head_align_factor: float | None = None
    privacy: dict[str, Any] | None = None
    data_settings: dict[str, Any] | None = None  # data-dependent settings this call used, auto or explicit
    # False when the model, after this call, classifies fewer than config.new_class_accuracy_floor of the
    # call's own training images correctly: the update did not learn its new classes (a warning is raised too).
    learned_new_classes: bool | None = None
    dream_diversity: dict[str, Any] | None = None  # dreaming.DreamDiversity.to_dict() after this call's dreaming
    # Images per generator pass of this call's dreaming (None: the whole batch, or no dreaming); under
    # dream.max_memory_mb it is the micro-batch re-planned when dreaming started.
    dream_micro_batch: int | None = None

    @property
    def dream_seconds_per_iteration(self) -> float:
        return self.dream_seconds / self.dream_iterations if self.dream_iterations else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["dream_seconds_per_iteration"] = self.dream_seconds_per_iteration
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "LearnReport":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


class NewClassesNotLearnedWarning(UserWarning):
    """An update ended without learning its new classes on its own training data."""


def warn_about(report: LearnReport, floor: float) -> None:
    """Say loudly what a report shows went wrong; the call itself still succeeded."""
    if report.learned_new_classes is False:
        msg = (f"task {report.task_index + 1} did not learn its new classes {report.names_added}: after training, "
               f"only {100 * report.train_accuracy:.1f}% of its own training images are classified correctly "
               f"(floor {100 * floor:.0f}%, config.new_class_accuracy_floor); its predictions for these classes "
               "will be mostly wrong")
        log.warning(msg)
        warnings.warn(msg, NewClassesNotLearnedWarning, stacklevel=3)
    div = report.dream_diversity
    if div and div["class_fractions"] and div["min_fraction"] < 0.25 * div["uniform_fraction"]:
        rare = [i for i, f in enumerate(div["class_fractions"]) if f < 0.25 * div["uniform_fraction"]]
        log.warning("dreams under-represent class indices %s (under a quarter of the uniform share %.1f%%); "
                    "the next update will replay little of them", rare, 100 * div["uniform_fraction"])


@dataclass
class Prediction(PredictionResult["torch.Tensor"]):
    """Predicted class indices with the user's labels and names for them (torch tensors, on the CPU)."""
