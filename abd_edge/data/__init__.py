"""Datasets: the in-memory form, the input adapter, loaders and task splits.

Everything a Learner accepts passes through :func:`as_labeled_images`; the
loaders are exported for users who want a specific split or option (the
adapter loads a path's training split with default options).
"""

from __future__ import annotations

from .adapters import as_labeled_images
from .cifar import UnsafePickleError, is_cifar_python_dir, load_cifar_python
from .digits import load_digits
from .folder import load_image_folder
from .images import LabeledImages
from .jpeg_npz import load_cifar10_jpeg
from .npz import load_npz
from .splits import class_order, split_tasks, task_datasets

__all__ = [
    "LabeledImages",
    "UnsafePickleError",
    "as_labeled_images",
    "class_order",
    "is_cifar_python_dir",
    "load_cifar10_jpeg",
    "load_cifar_python",
    "load_digits",
    "load_image_folder",
    "load_npz",
    "split_tasks",
    "task_datasets",
]
