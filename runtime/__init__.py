"""abd_edge.runtime: the device side. Importing it and predicting never imports torch.

>>> from abd_edge import runtime                     # doctest: +SKIP
>>> device = runtime.open("bundle/")                 # verifies every file's hash
>>> device.predict(camera_frames_uint8_nhwc).names   # ONNX Runtime
>>> device.learn_new_classes((local_images, local_labels))  # dreamed replay, new version
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .device import DeviceBudget, DeviceLearner, UpdateReport
from .serving import RuntimePrediction, to_pixels


def open(path: str | Path, **kwargs: Any) -> DeviceLearner:  # noqa: A001 - the natural verb for a bundle
    """Open and verify the current version of a bundle directory (see :class:`DeviceLearner`)."""
    return DeviceLearner(path, **kwargs)


__all__ = ["open", "DeviceLearner", "DeviceBudget", "RuntimePrediction", "UpdateReport", "to_pixels"]
