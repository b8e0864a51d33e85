"""scikit-learn's 8x8 handwritten digits as a tiny real dataset.

It ships inside scikit-learn, so examples and tests can train on real images
with no download. The split is stratified so every digit appears in both
halves, which class-incremental tasks of one or two classes depend on.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from ..errors import ConfigError
from .images import LabeledImages

__all__ = ["load_digits"]

_N_CLASSES = 10
_MAX_VALUE = 16.0  # the dataset's pixel scale is 0..16


@lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits as _sk_load_digits

    bunch = _sk_load_digits()
    images = (np.asarray(bunch.images, dtype=np.float64) / _MAX_VALUE).astype(np.float32)
    labels = np.asarray(bunch.target, dtype=np.int64)
    images.setflags(write=False)  # cached: nobody may edit the shared copy
    labels.setflags(write=False)
    return images, labels


def _split_indices(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per class, shuffle with ``seed`` and send round(fraction * count) to test.

    Done by hand rather than with sklearn's splitter so the split depends only
    on numpy's seeded generator, not on a library version's internals.
    """
    rng = np.random.default_rng(seed)
    train_parts, test_parts = [], []
    for cls in range(_N_CLASSES):
        idx = np.flatnonzero(labels == cls)
        idx = idx[rng.permutation(len(idx))]
        n_test = int(round(test_fraction * len(idx)))
        n_test = min(max(n_test, 1), len(idx) - 1)  # both halves keep every class
        test_parts.append(idx[:n_test])
        train_parts.append(idx[n_test:])
    return np.sort(np.concatenate(train_parts)), np.sort(np.concatenate(test_parts))


def load_digits(*, train: bool, test_fraction: float = 0.25, seed: int = 0) -> LabeledImages:
    """Load the train or test part of the 1,797 digits as float32 (N, 1, 8, 8) in [0, 1].

    The same ``seed`` and ``test_fraction`` always give the same split; the
    two parts are disjoint and together hold all 1,797 images. Labels are
    ints 0..9 and ``class_names`` maps each to its digit as a string.
    """
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) or not (
        0.0 < float(test_fraction) < 1.0
    ):
        raise ConfigError(f"test_fraction must be a number strictly between 0 and 1, got {test_fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ConfigError(f"seed must be an int, got {seed!r}")
    images, labels = _digits_arrays()
    train_idx, test_idx = _split_indices(labels, float(test_fraction), int(seed))
    idx = train_idx if train else test_idx
    chosen = torch.from_numpy(images[idx].copy()).unsqueeze(1)
    return LabeledImages(
        chosen,
        [int(v) for v in labels[idx].tolist()],
        {i: str(i) for i in range(_N_CLASSES)},
    )
