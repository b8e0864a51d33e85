"""The in-memory form every dataset is turned into before training.

A learner call converts whatever the user passed (a torch Dataset, arrays, a
folder, a .npz) into one :class:`LabeledImages`: an N x C x H x W tensor plus
the user's labels. Keeping images as uint8 when they arrive as uint8 holds
CIFAR-10 in 150 MB instead of 600 MB; the float conversion happens per batch
on the training device.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Hashable, Sequence

import torch

from ..errors import DatasetError, ImageSpecError


@dataclass
class LabeledImages:
    """Images (N, C, H, W) with one user label each.

    ``images`` is uint8 (0..255) or a floating dtype (0..1). ``labels`` are
    the user's own labels, a Python list (ints or strings): they become class
    indices only through the learner's class registry. ``class_names``
    optionally maps a label to a human-readable name.
    """

    images: torch.Tensor
    labels: list[Hashable]
    class_names: dict[Hashable, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.images, torch.Tensor):
            raise DatasetError(f"images must be a torch.Tensor, got {type(self.images).__name__}")
        if self.images.dim() != 4:
            raise ImageSpecError(
                f"images must have 4 dimensions (N, C, H, W), got shape {tuple(self.images.shape)}"
            )
        if len(self.labels) != self.images.shape[0]:
            raise DatasetError(
                f"image and label counts differ: {self.images.shape[0]} images, {len(self.labels)} labels"
            )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.images.shape[1:]
        return int(c), int(h), int(w)

    def unique_labels(self) -> list[Hashable]:
        """Distinct labels in a stable order (sorted when sortable, else first seen)."""
        seen = list(dict.fromkeys(self.labels))
        try:
            return sorted(seen)  # type: ignore[type-var]
        except TypeError:
            return seen

    def subset(self, indices: Sequence[int] | torch.Tensor) -> "LabeledImages":
        idx = torch.as_tensor(indices, dtype=torch.long)
        labels = [self.labels[i] for i in idx.tolist()]
        present = set(labels)
        names = {k: v for k, v in self.class_names.items() if k in present}
        return LabeledImages(self.images[idx], labels, names)

    def select_labels(self, keep: Sequence[Hashable]) -> "LabeledImages":
        """The images whose label is in ``keep`` (used to cut class-incremental tasks)."""
        wanted = set(keep)
        idx = [i for i, lab in enumerate(self.labels) if lab in wanted]
        return self.subset(idx)
