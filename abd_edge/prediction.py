"""What ``predict`` returns, in the training engine and on a device: one shape for both.

Torch-free, so the runtime (numpy + ONNX Runtime only) shares it with the
engine: ``Learner.predict`` fills it with torch tensors
(``reports.Prediction``), a device's ``predict`` with numpy arrays
(``runtime.RuntimePrediction``, which adds the bundle version).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar

ArrayT = TypeVar("ArrayT")


@dataclass
class PredictionResult(Generic[ArrayT]):
    """Predicted class indices with the user's labels and names for them, and the class probabilities."""

    indices: ArrayT
    labels: list[int | str]
    names: list[str]
    probabilities: ArrayT = field(repr=False)
